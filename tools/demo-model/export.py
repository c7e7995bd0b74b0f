#!/usr/bin/env python3
"""Packs a trained demo model (train.py --out RUN) into the repository:

  tests/fixtures/demo/hf/          the checkpoint, weights stored as float16 (4.7 MB
                                   instead of 9.4); every number below uses these weights
  tests/fixtures/demo/*.png        held-out test scenes, 64-80 px
  tests/fixtures/demo/questions.tsv  200 questions about them with the expected answer and
                                   what PyTorch (fp32 compute, transformers' IdeficsProcessor
                                   + generate, greedy) answered; header: its score
  tests/fixtures/demo/train_result.json  train.py's result.json of the run and of the runs it
                                   continued (dims, time, accuracy)
  examples/shapes-NN.png           demo images from yet another seed range, 96-256 px, no noise
  models/tiny-shapes.idfx          idefics-convert with the default preset (q4)

Usage: python3 tools/demo-model/export.py --run RUN --convert BUILD/tools/convert/idefics-convert
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

import transformers
from transformers import IdeficsForVisionText2Text, IdeficsImageProcessor, IdeficsProcessor, LlamaTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402
from tokenizer import EOU, FAKE, IMAGE  # noqa: E402

N_QUESTIONS = 200
N_EXAMPLES = 6
MAX_NEW_TOKENS = 24
MODEL_NAME = "tiny-shapes"
TOKENIZER_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "preprocessor_config.json", "generation_config.json"]


def fixture_size(seed):
    return int(np.random.RandomState(seed ^ 0xF1C5).randint(64, 81))


def example_size(seed):
    return int(np.random.RandomState(seed ^ 0xE8A3).randint(96, 257))


def save_fp16_checkpoint(run_hf, out_hf):
    if os.path.isdir(out_hf):
        shutil.rmtree(out_hf)
    os.makedirs(out_hf)
    model = IdeficsForVisionText2Text.from_pretrained(run_hf, torch_dtype=torch.float32)
    model.half().save_pretrained(out_hf, safe_serialization=True)
    for f in TOKENIZER_FILES:
        if os.path.exists(os.path.join(run_hf, f)):
            shutil.copy(os.path.join(run_hf, f), out_hf)
    for root, _, files in os.walk(out_hf):
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def pytorch_answers(hf_dir, items):
    """items: [(png path, question)] -> greedy answers, fp32 compute."""
    model = IdeficsForVisionText2Text.from_pretrained(hf_dir, torch_dtype=torch.float32,
                                                      attn_implementation="eager").eval()
    tok = LlamaTokenizerFast.from_pretrained(hf_dir)
    proc = IdeficsProcessor(IdeficsImageProcessor.from_pretrained(hf_dir), tok,
                            image_size=model.config.vision_config.image_size)
    eou = tok.convert_tokens_to_ids(EOU)
    bad = [[tok.convert_tokens_to_ids(IMAGE)], [tok.convert_tokens_to_ids(FAKE)]]
    from PIL import Image
    out = []
    for path, q in items:
        with Image.open(path) as im:
            im.load()
            im = im.copy()
        # The runtime's instruct turn (runtime/prompt.c): "User: " question, the image, EOU, "\nAssistant:"
        enc = proc(text=[["User: " + q, im, EOU, "\nAssistant:"]], add_end_of_utterance_token=False,
                   return_tensors="pt")
        with torch.no_grad():
            g = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                               eos_token_id=eou, bad_words_ids=bad, pad_token_id=0)
        out.append(tok.decode(g[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", ".."))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="train.py --out folder")
    ap.add_argument("--convert", required=True, help="the idefics-convert binary")
    ap.add_argument("--root", default=root)
    args = ap.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()

    with open(os.path.join(args.run, "result.json")) as f:
        task = json.load(f).get("task", "full")
    shapes.set_task(task)  # the questions the model was (last) trained on
    fx = os.path.join(args.root, "tests", "fixtures", "demo")
    os.makedirs(fx, exist_ok=True)
    for f in os.listdir(fx):
        if f.endswith(".png"):
            os.remove(os.path.join(fx, f))
    hf = os.path.join(fx, "hf")
    save_fp16_checkpoint(os.path.join(args.run, "hf"), hf)
    # The run's result.json, and those of the runs it continued (--init-from RUN/hf), oldest first.
    results, run = [], args.run
    while run:
        with open(os.path.join(run, "result.json")) as f:
            results.insert(0, json.load(f))
        run = os.path.dirname(os.path.normpath(results[0]["init_from"])) if results[0].get("init_from") else None
    with open(os.path.join(fx, "train_result.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")

    # Held-out questions: every question type each test scene supports, scenes in seed order.
    rows = []
    k = 0
    while len(rows) < N_QUESTIONS:
        sc = shapes.scene(shapes.SPLIT_SEEDS["test"] + k)
        name = f"test-{k:03d}.png"
        shapes.render(sc, fixture_size(sc["seed"])).save(os.path.join(fx, name), optimize=True)
        for qt, q, a in shapes.qa_pairs(sc)[:N_QUESTIONS - len(rows)]:
            rows.append((name, qt, q, a))
        k += 1
    answers = pytorch_answers(hf, [(os.path.join(fx, r[0]), r[2]) for r in rows])
    correct = sum(a == r[3] for a, r in zip(answers, rows))
    per = {}
    for a, r in zip(answers, rows):
        per.setdefault(r[1], [0, 0])
        per[r[1]][0] += a == r[3]
        per[r[1]][1] += 1
    with open(os.path.join(fx, "questions.tsv"), "w") as f:
        f.write("# Demo model held-out questions (tools/demo-model/export.py); columns:\n")
        f.write("# image, qtype, question, answer, pytorch_answer (fp32 compute, greedy, transformers "
                f"{transformers.__version__})\n")
        f.write(f"# task {task}\n")
        f.write(f"# pytorch_fp32_correct {correct}/{len(rows)}\n")
        for qt, (c, n) in per.items():
            f.write(f"# pytorch_fp32_{qt} {c}/{n}\n")
        for a, r in zip(answers, rows):
            assert "\t" not in a and "\n" not in a
            f.write("\t".join(r) + "\t" + a + "\n")
    print(f"PyTorch fp32 on {len(rows)} held-out questions: {correct}/{len(rows)} "
          f"({100.0 * correct / len(rows):.1f}%) " + " ".join(f"{qt} {c}/{n}" for qt, (c, n) in per.items()))

    ex = os.path.join(args.root, "examples")
    os.makedirs(ex, exist_ok=True)
    lines = []
    for i in range(N_EXAMPLES):
        sc = dict(shapes.scene(shapes.SPLIT_SEEDS["examples"] + i), noise=0.0)  # clean: small files
        name = f"shapes-{i + 1:02d}.png"
        size = example_size(sc["seed"])
        shapes.render(sc, size).save(os.path.join(ex, name), optimize=True)
        lines.append(f"| `{name}` | {size}x{size} | {shapes.caption(sc)} |")
    with open(os.path.join(ex, "images.md"), "w") as f:
        f.write("# Example images\n\nDrawn by `tools/demo-model/export.py` (seed range "
                f"{shapes.SPLIT_SEEDS['examples']}+, separate from the training, validation and test scenes) for "
                "`tools/run-demo`.\nThe true caption of each:\n\n| file | size | what it shows |\n|---|---|---|\n")
        f.write("\n".join(lines) + "\n")

    os.makedirs(os.path.join(args.root, "models"), exist_ok=True)
    out = os.path.join(args.root, "models", MODEL_NAME + ".idfx")
    subprocess.run([args.convert, hf, "-o", out, "--name", MODEL_NAME, "-q"], check=True)
    print(f"{out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
