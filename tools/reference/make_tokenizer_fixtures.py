#!/usr/bin/env python3
"""make_tokenizer_fixtures.py - expected token ids from the Hugging Face LLaMA
tokenizer, for tests/test_tokenizer.c (no Python needed at test time).

Writes into tests/fixtures/tokenizer/:
  llama_parity.tsv  ids for the real LLaMA vocabulary (read from
                    $IDEFICS_SHARED_REF/llama-tokenizer/tokenizer.model; the
                    vocabulary itself is never written into the repo)
  tiny/             a tiny SentencePiece BPE tokenizer trained here, saved both
                    as tokenizer.model and (via LlamaTokenizerFast) tokenizer.json
  tiny_parity.tsv   ids for the tiny tokenizer

Both tokenizers get the three IDEFICS special tokens appended
(<fake_token_around_image>, <image>, <end_of_utterance>), as idefics-9b-instruct
has them. The reference is LlamaTokenizerFast(legacy=True, from_slow=True,
add_prefix_space=True); every case is cross-checked against the slow
(SentencePiece) LlamaTokenizer and disagreements are reported.

add_prefix_space=True must be given explicitly: with transformers 4.46 the
default (None) is forwarded to the slow tokenizer and the converter then drops
the Prepend("▁") normalizer, which is NOT how the Hub's IDEFICS tokenizer.json
behaves (it tokenizes "User" after <s> as "▁User" = 4911).

File format, one case per line, tab separated:
  hex(UTF-8 text)  ids (space separated, may be empty)  hex(decode(ids))  hex(decode(ids, skip_special_tokens=True))
Lines starting with '#' are comments.

Usage: python3 tools/reference/make_tokenizer_fixtures.py [--retrain-tiny]
"""
import argparse
import glob
import os
import random
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
SHARED = os.environ.get("IDEFICS_SHARED_REF", os.path.join(ROOT, "..", "shared", "reference"))
REAL_MODEL = os.path.join(SHARED, "llama-tokenizer", "tokenizer.model")
SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]

# Multilingual lines mixed into the tiny tokenizer's training corpus, so that
# its vocabulary has some multi-byte characters (and still lacks most).
MULTI = [
    "Le café est très bon, naïve façade à Noël.",
    "Über die Brücke gehen wir schön langsam.",
    "El niño comió piña en España mañana.",
    "日本語のテキストを少し書きます。東京は大きい。",
    "中文测试，我们今天去学校。",
    "Привет мир, как дела сегодня?",
    "Ελληνικά γράμματα και λέξεις.",
    "emoji 🤗 and 👍 are common 🤗🤗",
]

WORDS = ["the", "image", "shows", "a", "cat", "on", "mat", "User:", "Assistant:", "What", "is", "in", "this",
         "picture?", "café", "naïve", "Ünïcödé", "日本", "語", "中文", "Привет", "🤗", "👍🏽", "1234", "3.14",
         "don't", "hello", "world", "(x)", "[y]", "{z}", "x=1;", "#include", "<stdio.h>", "http://a.b/c?d=e",
         "   ", "\t", "\n", "\r\n", "▁", "<0x0A>", "<s", "image>", "<imag", "e\u0301", "\u00a0", "\u3000", "ﬁ",
         "Ⅻ", "½", "ß", "İ", "ǅ", "\u200d", "a" * 40]
INLINE = ["<s>", "</s>", "<unk>"] + SPECIALS


def parity_strings():
    """>= 300 cases: hand-picked edge cases, then seeded random mixtures."""
    fixed = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", " \n ", "\r\n", "\t\t\t", " \t \n",
        "a", " a", "a ", " a ", "  a  ", "Hello world", " Hello", "Hello ", "  Hello  world  ",
        "Hello\nworld", "Hello\n\nworld\n", "trailing spaces   ", "   leading spaces",
        "<s>User: What is in this image?<fake_token_around_image><image><fake_token_around_image>",
        "<s>User: What is in this image?<fake_token_around_image><image><fake_token_around_image>"
        "<end_of_utterance>\nAssistant: A cat on a mat.<end_of_utterance>\nUser:<fake_token_around_image>"
        "<image><fake_token_around_image>And who is that?<end_of_utterance>\nAssistant:",
        "<s>", "</s>", "<unk>", "<image>", "<image> ", " <image>", " <image> ", "a<image>b", "a <image> b",
        "<image><image>", "<image>\n<image>", "<image>x", "x<image>", "<s><s>", "<s> </s>", "</s>x",
        "<fake_token_around_image><image><fake_token_around_image>", "<end_of_utterance>",
        "<image", "image>", "<imag", "<image<image>>", "<<image>>", "<s", "</s", "<0x0A>", "<0x0A>x",
        "▁", "▁▁", "▁x", "x▁", "▁ ▁", "_", "__init__",
        "café", "naïve", "Ünïcödé", "e\u0301", "Ⅻ ½ ß İ ǅ ﬁ", "\u00a0", "a\u00a0b", "\u3000", "\u200b",
        "\u200d", "\ufeff", "\x00", "a\x00b", "\x7f", "\x1b[0m",
        "日本語のテキスト", "中文测试", "한국어 텍스트", "Привет мир", "مرحبا بالعالم", "עברית", "ελληνικά",
        "हिन्दी", "ไทย", "🤗", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "😀😃😄😁", "🤗 hugging face",
        "0", "1234567890", "3.14159", "1,000,000", "-42", "2024-01-01", "0x1F", "1e-6",
        "!?.,;:'\"()[]{}<>@#$%^&*-_=+/\\|`~", "...", "!!!", "???", "--", "—", "…", "«»", "„“",
        "int main(void) { return 0; }", "for (i = 0; i < n; i++)\n\tx += i;",
        "def f(x):\n    return x * 2\n", "https://huggingface.co/HuggingFaceM4/idefics-9b",
        "user@example.com", "C:\\Windows\\System32", "$HOME/.bashrc", "SELECT * FROM t WHERE a = 1;",
        "a" * 1000, "ab" * 300, " " * 50, "\n" * 20, "\t" * 10, "x " * 100, "🤗" * 30,
        "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "tHe QuIcK",
        "I'm", "don't", "we've", "y'all", "rock'n'roll",
    ]
    # A long mixed paragraph (a few KB) to exercise long segments.
    para = ("The image shows a small cat sitting on a red mat, next to a café table. " * 10
            + "日本語のテキスト、中文测试、Привет мир! 🤗 " * 5 + "Numbers: 1234567890 3.14159\n" * 5)
    fixed.append(para)
    fixed.append("<s>" + para + "<image>" + para[:500] + "<end_of_utterance>")
    rng = random.Random(1234)
    out = list(dict.fromkeys(fixed))  # keeps order, drops duplicates
    while len(out) < 330:
        parts = []
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.15:
                parts.append(rng.choice(INLINE))
            elif r < 0.25:
                parts.append(rng.choice([" ", "  ", "\n", "\t", " \n"]))
            else:
                parts.append(rng.choice(WORDS))
        sep = rng.choice(["", " ", " ", "\n"])
        s = sep.join(parts)
        if s not in out:
            out.append(s)
    return out


def load_pair(model_file):
    from transformers import LlamaTokenizer, LlamaTokenizerFast
    fast = LlamaTokenizerFast(vocab_file=model_file, legacy=True, from_slow=True, add_prefix_space=True)
    fast.add_special_tokens({"additional_special_tokens": SPECIALS})
    slow = LlamaTokenizer(vocab_file=model_file, legacy=True)
    slow.add_special_tokens({"additional_special_tokens": SPECIALS})
    return fast, slow


def write_parity(path, fast, slow, strings, title):
    n_diff = 0
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("# %s: hex(text)\\tids\\thex(decode)\\thex(decode skip_special) from LlamaTokenizerFast\n" % title)
        f.write("# generated by tools/reference/make_tokenizer_fixtures.py; do not edit\n")
        for s in strings:
            ids = fast(s, add_special_tokens=False).input_ids
            sids = slow(s, add_special_tokens=False).input_ids
            if ids != sids:
                n_diff += 1
                print("  fast/slow differ on %r:\n    fast %s\n    slow %s" % (s[:60], ids[:20], sids[:20]))
            dec = fast.decode(ids)
            dec_skip = fast.decode(ids, skip_special_tokens=True)
            f.write("%s\t%s\t%s\t%s\n" % (s.encode("utf-8").hex(), " ".join(map(str, ids)),
                                          dec.encode("utf-8").hex(), dec_skip.encode("utf-8").hex()))
    print("%s: %d cases, %d fast/slow disagreements" % (path, len(strings), n_diff))


def train_tiny(tiny_dir):
    import sentencepiece as spm
    lines = []
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            with open(p, encoding="utf-8", errors="ignore") as f:
                lines += [ln.strip() for ln in f if ln.strip()]
    lines += MULTI * 20
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        # Settings of the LLaMA tokenizer (identity normalizer, no whitespace
        # folding, digits split, byte fallback), at a tiny vocabulary size.
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(tmp, "tiny"), model_type="bpe", vocab_size=700,
            character_coverage=0.9995, byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
            num_threads=1, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
        from transformers import LlamaTokenizerFast
        os.makedirs(tiny_dir, exist_ok=True)
        fast = LlamaTokenizerFast(vocab_file=os.path.join(tmp, "tiny.model"), legacy=True, from_slow=True,
                                  add_prefix_space=True)
        fast.add_special_tokens({"additional_special_tokens": SPECIALS})
        fast.save_pretrained(tiny_dir)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--retrain-tiny", action="store_true", help="train the tiny tokenizer again")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    strings = parity_strings()
    tiny_dir = os.path.join(OUT, "tiny")
    if args.retrain_tiny or not os.path.exists(os.path.join(tiny_dir, "tokenizer.model")):
        train_tiny(tiny_dir)
    fast, slow = load_pair(os.path.join(tiny_dir, "tokenizer.model"))
    write_parity(os.path.join(OUT, "tiny_parity.tsv"), fast, slow, strings, "tiny tokenizer")
    if os.path.exists(REAL_MODEL):
        fast, slow = load_pair(REAL_MODEL)
        vec = "<s>User: What is in this image?<fake_token_around_image><image><fake_token_around_image>"
        got = fast(vec, add_special_tokens=False).input_ids
        assert got == [1, 4911, 29901, 1724, 338, 297, 445, 1967, 29973, 32000, 32001, 32000], got
        write_parity(os.path.join(OUT, "llama_parity.tsv"), fast, slow, strings, "LLaMA vocabulary")
    else:
        print("skipping the LLaMA fixtures: %s not found" % REAL_MODEL, file=sys.stderr)


if __name__ == "__main__":
    main()
