"""Tiny LLaMA-style SentencePiece BPE tokenizer for the reference fixtures.

The real LLaMA vocabulary (32000 rows) would make every tiny model's embedding and
lm_head dominate the checkpoint and the logits files, so the fixtures use a ~384-piece
BPE model trained here on a small built-in English corpus, with LLaMA's trainer and
normalizer settings (unk 0, <s> 1, </s> 2, byte fallback, split digits, dummy prefix,
identity normalisation, whitespace kept). Training is single-threaded and unshuffled
so the same corpus always yields byte-identical tokenizer.model files.
"""

import io
import itertools

import sentencepiece as spm

VOCAB_SIZE = 384

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "grey", "pink"]
SHAPES = ["square", "circle", "triangle", "line", "dot", "star", "box", "ring"]
PLACES = ["left", "right", "top", "bottom", "middle", "centre", "corner", "edge"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
QUESTIONS = [
    "What is in this image?",
    "What colour is the {s}?",
    "How many {s}s are there?",
    "Where is the {c} {s}?",
    "Is there a {c} {s} in the picture?",
    "Describe this image.",
    "What shape is on the {p}?",
    "Can you count the dots?",
    "And what about this one?",
    "Which image has more {s}s?",
]
ANSWERS = [
    "There is a {c} {s} on the {p}.",
    "The {s} is {c}.",
    "I can see {n} {s}s.",
    "The {c} {s} is at the {p} of the image.",
    "Yes, there is a {c} {s} near the {p}.",
    "No, the picture only shows a {c} background.",
    "An image of {n} {c} {s}s on a {c2} background.",
    "The image shows a gradient from {c} to {c2}.",
    "There are {d} small {s}s and {d2} large ones.",
    "The first image has more {s}s than the second image.",
]


def corpus_lines():
    """Deterministic template expansion; every line is a plausible chat or caption line."""
    lines = []
    combos = itertools.product(range(len(COLOURS)), range(len(SHAPES)), range(len(PLACES)))
    for k, (ci, si, pi) in enumerate(combos):
        c, s, p = COLOURS[ci], SHAPES[si], PLACES[pi]
        c2 = COLOURS[(ci + 3) % len(COLOURS)]
        n = NUMBERS[(ci + si + pi) % len(NUMBERS)]
        d, d2 = str((k * 7) % 100), str((k * 13) % 1000)
        q = QUESTIONS[k % len(QUESTIONS)].format(c=c, s=s, p=p)
        a = ANSWERS[(k // len(QUESTIONS)) % len(ANSWERS)].format(c=c, c2=c2, s=s, p=p, n=n, d=d, d2=d2)
        lines.append(f"User: {q}")
        lines.append(f"Assistant: {a}")
        lines.append(f"User:{q} Assistant: {a}")
        if k % 5 == 0:
            lines.append(f"Picture {d}: the {s} at position ({d}, {d2}) is {c}, width {k % 64} pixels.")
    return lines


def train_tiny_spm():
    """Returns the serialized SentencePiece ModelProto (bytes)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=out,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        split_by_unicode_script=True,
        split_by_whitespace=True,
        split_by_number=True,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        max_sentencepiece_length=16,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        seed_sentencepiece_size=1000000,
        minloglevel=2,
    )
    return out.getvalue()


if __name__ == "__main__":
    proto = train_tiny_spm()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    print("pieces:", sp.get_piece_size(), "bytes:", len(proto))
    for text in ["User: What is in this image?", "Assistant: The 3 red squares\nare left."]:
        print(text, "->", sp.encode(text, out_type=str))
