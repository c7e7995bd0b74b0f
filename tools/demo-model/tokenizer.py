"""The demo model's tokenizer: LLaMA-style SentencePiece BPE trained on the
dataset's text, plus the IDEFICS instruct special tokens.

LLaMA's trainer settings (unk 0, <s> 1, </s> 2, byte fallback, split digits,
dummy prefix, identity normalisation, whitespace kept); the added tokens
<fake_token_around_image>, <image> and <end_of_utterance> get the ids right
after the SentencePiece vocabulary, as 32000-32002 in IDEFICS-9B-instruct.
Training is single-threaded and unshuffled: the same text gives the same
tokenizer.model bytes.
"""

import io
import os
import tempfile

import sentencepiece as spm
from transformers import LlamaTokenizer, LlamaTokenizerFast

import shapes

VOCAB_SIZE = 512
FAKE, IMAGE, EOU = "<fake_token_around_image>", "<image>", "<end_of_utterance>"


def train_spm(lines, vocab_size=VOCAB_SIZE):
    """The serialized SentencePiece ModelProto (bytes)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, model_type="bpe", vocab_size=vocab_size,
        character_coverage=1.0, byte_fallback=True, split_digits=True, split_by_unicode_script=True,
        split_by_whitespace=True, split_by_number=True, allow_whitespace_only_pieces=True,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        max_sentencepiece_length=16, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        shuffle_input_sentence=False, input_sentence_size=0, seed_sentencepiece_size=1000000,
        minloglevel=2)
    return out.getvalue()


def build(out_dir):
    """Writes tokenizer.model, tokenizer.json and the tokenizer configs into out_dir;
    returns (fast tokenizer, base vocabulary size)."""
    proto = train_spm(shapes.corpus_lines())
    n_base = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    with tempfile.TemporaryDirectory(prefix="demo-tok-") as tmp:
        path = os.path.join(tmp, "tokenizer.model")
        with open(path, "wb") as f:
            f.write(proto)
        slow = LlamaTokenizer(vocab_file=path, legacy=True, add_bos_token=True, add_eos_token=False,
                              pad_token="<unk>", padding_side="left")
        slow.add_special_tokens({"additional_special_tokens": [FAKE, IMAGE, EOU]})
        slow_dir = os.path.join(tmp, "slow")
        slow.save_pretrained(slow_dir)
        fast = LlamaTokenizerFast.from_pretrained(slow_dir, legacy=True, from_slow=True, padding_side="left")
        fast.save_pretrained(out_dir)  # inside: it copies tokenizer.model from slow_dir
    ids = [fast.convert_tokens_to_ids(t) for t in (FAKE, IMAGE, EOU)]
    assert ids == [n_base, n_base + 1, n_base + 2], ids
    assert len(fast) == n_base + 3
    return fast, n_base


if __name__ == "__main__":
    import sys
    tok, n = build(sys.argv[1] if len(sys.argv) > 1 else "/tmp/demo-tokenizer")
    print("base vocab", n, "total", len(tok))
    for t in ["User: What shape is in the image?<fake_token_around_image><image><fake_token_around_image>"
              "<end_of_utterance>\nAssistant: An orange star at the top of a grey background.<end_of_utterance>"]:
        print(tok.tokenize(t))
