#!/usr/bin/env python3
"""Trains the idefics-edge demo model: a small IdeficsForVisionText2Text (the
IDEFICS architecture unchanged: CLIP-style vision tower, perceiver resampler,
LLaMA decoder with gated cross-attention) that answers questions about the
procedural shape scenes of shapes.py, in the instruct chat format the runtime
builds (runtime/prompt.c):

  <s>User: QUESTION<fake_token_around_image><image><fake_token_around_image><end_of_utterance>
  Assistant: ANSWER<end_of_utterance>

(one line break before "Assistant:"). The loss covers the answer tokens and the
closing <end_of_utterance>, so greedy generation stops by itself.

Every step draws fresh scenes (seeds SPLIT_SEEDS["train"] + ...), renders them
at a random size and resizes them with Pillow's bicubic filter to the model's
input size exactly as IdeficsImageProcessor does. The vision tower and the
perceiver run once per image; every question about that image reuses the
result (passed as perceiver_embeddings), which is the same computation as
passing pixel_values per question.

Exact-match accuracy is measured with teacher forcing: a greedy decoder
produces the reference answer (and then stops) exactly when the argmax at every
answer position is the reference token, so no generate() loop is needed.

Two stages: --vision-steps of the vision tower + perceiver alone on the scene
attributes (pretrain_vision), then --steps of everything on the questions.
--init-from continues a previous run (models/README.md has the recipe).

Usage: python3 tools/demo-model/train.py --out DIR [--task full|simple] [--init-from DIR/hf]
Writes DIR/hf/ (the checkpoint: config, safetensors, tokenizer, preprocessor
config), DIR/train_log.jsonl and DIR/result.json. Seeded: same arguments, same
numbers (on the same torch build and thread count).
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

import transformers
from transformers import IdeficsConfig, IdeficsForVisionText2Text, IdeficsImageProcessor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402
import tokenizer as demo_tokenizer  # noqa: E402

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
FAKE, IMAGE, EOU = demo_tokenizer.FAKE, demo_tokenizer.IMAGE, demo_tokenizer.EOU

# All linear in_features are multiples of 32 so the Q4 row tiles apply.
DIMS = dict(
    text=dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
              cross_layer_interval=2, qk_layer_norms=True, rms_norm_eps=1e-6, max_position_embeddings=128),
    vision=dict(embed_dim=128, image_size=64, patch_size=8, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=384),
    perceiver=dict(resampler_depth=2, resampler_n_latents=16, resampler_n_heads=4, resampler_head_dim=32,
                   qk_layer_norms_perceiver=False),
)
ALPHA_INIT = 0.5  # tanh(0.5) = 0.46: the image path carries signal from step 0
# transformers draws the perceiver latents from N(0, 1) while every linear gets std 0.02,
# so the resampler's output is 97% latents and 3% image (std across images 0.03 of 1.0)
# and the image path hardly learns. Latents at std 0.02 make it 40% image. Only the
# initialisation changes; latents_layer_norm makes the queries scale-free anyway.
LATENTS_INIT_STD = 0.02


def build_config(vocab_size, dims=DIMS):
    cfg = IdeficsConfig(
        vocab_size=vocab_size, additional_vocab_size=3, hidden_act="silu", initializer_range=0.02,
        alpha_initializer="zeros", alpha_type="float", use_cache=True,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        freeze_text_layers=False, freeze_vision_layers=False, freeze_lm_head=False, use_resampler=True,
        vision_config=dict(dims["vision"], hidden_act="gelu", layer_norm_eps=1e-5, num_channels=3),
        perceiver_config=dict(dims["perceiver"], use_resampler=True),
        torch_dtype="float32", **dims["text"])
    cfg._attn_implementation = "eager"
    return cfg


# ---------------------------------------------------------------------- data

def render_size(seed):
    """The size a scene is drawn at before the processor's resize (64..128 px)."""
    return int(np.random.RandomState(seed ^ 0x512E).randint(64, 129))


def to_pixels(im, image_size):
    """IdeficsImageProcessor for one RGB image: bicubic resize, rescale, normalize."""
    im = im.resize((image_size, image_size), Image.BICUBIC)
    a = np.asarray(im, dtype=np.float32) / 255.0
    a = (a - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(a.transpose(2, 0, 1).copy())


class Encoder:
    """Token ids of (question, answer) pairs in the chat format, with the number of
    prompt tokens; cached (the set of texts is small)."""

    def __init__(self, tok):
        self.tok = tok
        self.cache = {}
        self.eou = tok.convert_tokens_to_ids(EOU)

    @staticmethod
    def prompt(question):
        return f"<s>User: {question}{FAKE}{IMAGE}{FAKE}{EOU}\nAssistant:"

    def __call__(self, question, answer):
        key = (question, answer)
        if key not in self.cache:
            p = self.tok(self.prompt(question), add_special_tokens=False)["input_ids"]
            full = self.tok(self.prompt(question) + " " + answer + EOU, add_special_tokens=False)["input_ids"]
            assert full[:len(p)] == p, (question, answer)
            assert full[-1] == self.eou
            self.cache[key] = (full, len(p))
        return self.cache[key]


def make_batch(enc, items, image_token):
    """items: [(image_index, question, answer)] -> tensors for one forward."""
    seqs = [enc(q, a) for _, q, a in items]
    T = max(len(s) for s, _ in seqs)
    B = len(items)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    iam = torch.zeros(B, T, 1, dtype=torch.long)
    for b, (s, n_prompt) in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        attn[b, :len(s)] = 1
        labels[b, n_prompt:len(s)] = ids[b, n_prompt:len(s)]
        iam[b, s.index(image_token):len(s), 0] = 1  # the <image> token and everything after it
    img_idx = torch.tensor([i for i, _, _ in items])
    return ids, attn, labels, iam, img_idx


def scenes_for(split, start, count):
    base = shapes.SPLIT_SEEDS[split]
    return [shapes.scene(base + start + k) for k in range(count)]


def batch_for(scs, enc, image_size, image_token, all_variants=False):
    pix = torch.stack([to_pixels(shapes.render(sc, render_size(sc["seed"])), image_size) for sc in scs])
    items, qtypes = [], []
    for i, sc in enumerate(scs):
        for qt, q, a in shapes.qa_pairs(sc, all_variants=all_variants):
            items.append((i, q, a))
            qtypes.append(qt)
    return pix, make_batch(enc, items, image_token), qtypes


def forward(model, pix, batch):
    ids, attn, labels, iam, img_idx = batch
    vis = model.model.vision_model(pixel_values=pix).last_hidden_state
    lat = model.model.perceiver_resampler(vis)            # [images, latents, dim]
    perc = lat[img_idx].unsqueeze(1)                      # [questions, 1 image, latents, dim]
    out = model(input_ids=ids, attention_mask=attn, perceiver_embeddings=perc, image_attention_mask=iam,
                labels=labels, use_cache=False, return_dict=True)
    return out


@torch.no_grad()
def exact_match(model, pix, batch):
    """Per question: does greedy decoding reproduce the answer exactly (teacher forcing)?"""
    out = forward(model, pix, batch)
    labels = batch[2]
    pred = out.logits[:, :-1].argmax(-1)
    tgt = labels[:, 1:]
    ok = ((pred == tgt) | (tgt == -100)).all(dim=1)
    return ok.tolist(), float(out.loss)


def evaluate(model, enc, split, n_scenes, image_size, image_token, chunk=64):
    model.eval()
    per = {}
    losses = []
    for s in range(0, n_scenes, chunk):
        scs = scenes_for(split, s, min(chunk, n_scenes - s))
        pix, batch, qtypes = batch_for(scs, enc, image_size, image_token)
        ok, loss = exact_match(model, pix, batch)
        losses.append(loss)
        for qt, o in zip(qtypes, ok):
            per.setdefault(qt, []).append(o)
    model.train()
    acc = {qt: sum(v) / len(v) for qt, v in per.items()}
    n = sum(len(v) for v in per.values())
    acc["all"] = sum(sum(v) for v in per.values()) / n
    return acc, float(np.mean(losses)), n


# ------------------------------------------------------------------- training

ATTRIBUTES = {  # stage 1 targets: name -> number of classes
    "colour": len(shapes.COLOURS), "shape": len(shapes.SHAPES), "count": 4,
    "background": len(shapes.BACKGROUNDS), "place": len(shapes.PLACES) + 1,  # + "several shapes"
}


def attribute_targets(scs):
    col, bgs = list(shapes.COLOURS), list(shapes.BACKGROUNDS)
    t = {"colour": [col.index(sc["colour"]) for sc in scs],
         "shape": [shapes.SHAPES.index(sc["shape"]) for sc in scs],
         "count": [sc["count"] - 1 for sc in scs],
         "background": [bgs.index(sc["background"]) for sc in scs],
         "place": [shapes.PLACES.index(sc["place"]) if sc["place"] else len(shapes.PLACES) for sc in scs]}
    return {k: torch.tensor(v) for k, v in t.items()}


def pretrain_vision(model, args, image_size, note):
    """Stage 1, the analogue of IDEFICS starting from a pretrained CLIP: the vision
    tower and the perceiver learn the scene attributes through a linear head on the
    resampled latents (the head is thrown away). From scratch, the image path
    otherwise hardly learns at this budget: answers stayed at chance for 200 joint
    steps while the decoder learned the answer priors."""
    cfg = model.config
    head = torch.nn.Linear(cfg.perceiver_config.resampler_n_latents * cfg.vision_config.embed_dim,
                           sum(ATTRIBUTES.values()))
    params = (list(model.model.vision_model.parameters()) + list(model.model.perceiver_resampler.parameters())
              + list(head.parameters()))
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05)
    M = args.images_per_step
    for step in range(args.vision_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vision_steps, args.lr, args.warmup)
        # its own seed range inside the training split: stage 2 starts at 0
        scs = scenes_for("train", 10_000_000 + step * M, M)
        pix = torch.stack([to_pixels(shapes.render(sc, render_size(sc["seed"])), image_size) for sc in scs])
        vis = model.model.vision_model(pixel_values=pix).last_hidden_state
        out = head(model.model.perceiver_resampler(vis).flatten(1))
        tgt = attribute_targets(scs)
        loss, o, acc = 0.0, 0, {}
        for k, n in ATTRIBUTES.items():
            loss = loss + torch.nn.functional.cross_entropy(out[:, o:o + n], tgt[k])
            acc[k] = round(float((out[:, o:o + n].argmax(1) == tgt[k]).float().mean()), 3)
            o += n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 25 == 0 or step + 1 == args.vision_steps:
            note(dict(event="vision_step", step=step, loss=round(float(loss.detach()), 4), batch_acc=acc))
    model.zero_grad(set_to_none=True)


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--vision-steps", type=int, default=3000, help="stage 1: vision tower + perceiver")
    ap.add_argument("--steps", type=int, default=600, help="stage 2: everything, on the questions")
    ap.add_argument("--init-from", default=None,
                    help="continue from a checkpoint (a previous run's hf/) instead of a fresh model")
    ap.add_argument("--task", default="full", choices=sorted(shapes.TASKS),
                    help="question set (shapes.TASKS)")
    ap.add_argument("--scene-offset", type=int, default=0,
                    help="first training scene of stage 2 (a continuation uses fresh scenes)")
    ap.add_argument("--images-per-step", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    # One thread: on a shared 2-core machine two torch threads ran 3-5x slower per step.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val-scenes", type=int, default=128)
    ap.add_argument("--test-scenes", type=int, default=1024)
    args = ap.parse_args()

    shapes.set_task(args.task)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    hf_dir = os.path.join(args.out, "hf")
    os.makedirs(hf_dir, exist_ok=True)
    log = open(os.path.join(args.out, "train_log.jsonl"), "w")

    def note(rec):
        rec["elapsed_s"] = round(time.time() - t0, 1)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(json.dumps(rec), flush=True)

    t0 = time.time()
    tok, n_base = demo_tokenizer.build(hf_dir)
    if args.init_from:
        model = IdeficsForVisionText2Text.from_pretrained(args.init_from, torch_dtype=torch.float32,
                                                          attn_implementation="eager")
        cfg = model.config
    else:
        cfg = build_config(n_base)
        model = IdeficsForVisionText2Text(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters() if not args.init_from else []:
            if "alpha_" in name:
                p.fill_(ALPHA_INIT)
            elif name.endswith("perceiver_resampler.latents"):
                p.normal_(0.0, LATENTS_INIT_STD)
    model.train()
    image_size = cfg.vision_config.image_size
    image_token = tok.convert_tokens_to_ids(IMAGE)
    enc = Encoder(tok)
    n_params = count_params(model)
    note(dict(event="start", params=n_params, vocab=n_base + 3, args=vars(args), torch=torch.__version__,
              transformers=transformers.__version__))

    t_train = time.time()
    if args.vision_steps:
        pretrain_vision(model, args, image_size, note)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "latents" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "latents" not in n)]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=0.05), dict(params=no_decay, weight_decay=0.0)],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    M = args.images_per_step
    run_loss = None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        scs = scenes_for("train", args.scene_offset + step * M, M)
        pix, batch, _ = batch_for(scs, enc, image_size, image_token)
        out = forward(model, pix, batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss = float(out.loss.detach())
        run_loss = loss if run_loss is None else 0.95 * run_loss + 0.05 * loss
        if step % 25 == 0:
            note(dict(event="step", step=step, loss=round(loss, 4), ema_loss=round(run_loss, 4),
                      lr=round(opt.param_groups[0]["lr"], 6)))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc, vloss, n = evaluate(model, enc, "val", args.val_scenes, image_size, image_token)
            note(dict(event="val", step=step + 1, loss=round(vloss, 4), n=n,
                      acc={k: round(v, 4) for k, v in acc.items()}))
    train_s = time.time() - t_train

    model.eval()
    model.save_pretrained(hf_dir, safe_serialization=True)
    IdeficsImageProcessor(image_size=image_size, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                          image_num_channels=3).save_pretrained(hf_dir)
    acc, tloss, n = evaluate(model, enc, "test", args.test_scenes, image_size, image_token)
    result = dict(params=n_params, vocab=n_base + 3, task=args.task, init_from=args.init_from, scene_offset=args.scene_offset,
                  lr=args.lr, vision_steps=args.vision_steps, steps=args.steps, images_per_step=M, seed=args.seed,
                  threads=args.threads, train_seconds=round(train_s, 1), test_loss=round(tloss, 4),
                  test_questions=n, test_accuracy={k: round(v, 4) for k, v in acc.items()},
                  dims=DIMS, alpha_init=ALPHA_INIT, latents_init_std=LATENTS_INIT_STD, torch=torch.__version__,
                  transformers=transformers.__version__)
    note(dict(event="done", **result))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
