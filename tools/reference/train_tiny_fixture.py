#!/usr/bin/env python3
"""The fifth reference model, `tiny-trained`: a tiny IDEFICS briefly trained on a toy task.

The four random fixture models have near-tied logits (their top-2 gaps are ~0.3 against a
Q4-induced logit shift of ~0.7), so 4-bit weights flip their argmax at most positions and
say nothing about quantisation on a real, trained model. This model has IDEFICS's full
architecture (CLIP-style vision tower, perceiver resampler with qk norms, LLaMA decoder
with a gated cross-attention block with qk norms and non-zero gates) and is trained for a
few minutes of one CPU thread on an image question-answering task, so its predictions are
confident and depend on the image. make_model_fixtures.py records it exactly like the
others (`--only tiny-trained`), and tests/test_forward.c requires Q4 top-1 agreement with
F32 at >= 95% of its recorded positions.

The task (instruct chat format; details and numbers in tools/reference/README.md):
  images: one shape (circle, square, triangle) in one of six colours on a background of
          another, drawn at random sizes/positions into canvases of 24..48 px;
  turns:  "User:" <image> [<image>] question <EOU> "\nAssistant: " answer <EOU> "\n", 1-3
          turns. Questions are about the last image the turn shows:
            "What colour is the shape?"  -> "red."                                 (60%)
            "Which shape is it?"         -> "a circle."                             (25%)
            "Describe this image."       -> "a red circle on a blue background."    (15%)
          10% of turns have no image (first turn: "User: What colour is the shape?" ->
          "There is no image."; later: "User: Thank you." -> "You are welcome."), 10% show
          two adjacent images, 10% have no <EOU> (question and answer end at "\n").
The branch probabilities are deliberately skewed so that even the positions where the
text itself is uncertain (which question comes next) have a clear argmax, and the
EOU-less turns give generate()'s EOU-suppressed steps a trained second choice.

Usage:
  python3 tools/reference/train_tiny_fixture.py        # train, print loss / checks / simulated Q4
  python3 tools/reference/make_model_fixtures.py --only tiny-trained   # record the fixture
"""

import argparse
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

NAME = "tiny-trained"
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 50, 220),
    "yellow": (240, 220, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES = ["circle", "square", "triangle"]
Q_COLOUR, Q_SHAPE, Q_DESCRIBE = "What colour is the shape?", "Which shape is it?", "Describe this image."
NO_IMAGE_ANSWER = "There is no image."
SMALL_TALK_Q, SMALL_TALK_A = "Thank you.", "You are welcome."
EOU = "<end_of_utterance>"
ANSWER_WEIGHT = 4.0  # loss weight of the answer tokens (the image-dependent part)

TRAIN = dict(
    seed=5000,        # attempt seed: weights init = seed, data = seed + 2
    steps=1200,
    batch=24,
    lr=3e-3,
    warmup=100,
    weight_decay=0.01,
    pool_images=720,  # distinct training images
)

SPEC = dict(
    name=NAME,
    flavour="instruct",
    seed=TRAIN["seed"],
    shard=None,
    trained=True,
    text=dict(hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              cross_layer_interval=2, qk_layer_norms=True, rms_norm_eps=1e-6),
    vision=dict(embed_dim=32, image_size=32, patch_size=8, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=64),
    perceiver=dict(resampler_depth=1, resampler_n_latents=4, resampler_n_heads=2,
                   resampler_head_dim=16, qk_layer_norms_perceiver=True),
    use_resampler=True,
    initializer_range=0.1,
)

# ----------------------------------------------------------------------------------------
# Images


def draw(shape, colour, bg, size=(32, 32), box=None):
    """One filled shape on a plain background. box = (x0, y0, x1, y1) in pixels."""
    w, h = size
    im = Image.new("RGB", (w, h), COLOURS[bg])
    d = ImageDraw.Draw(im)
    if box is None:
        m = min(w, h)
        s = int(round(0.6 * m))
        x0, y0 = (w - s) // 2, (h - s) // 2
        box = (x0, y0, x0 + s, y0 + s)
    x0, y0, x1, y1 = box
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        d.rectangle([x0, y0, x1, y1], fill=fill)
    else:
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return im


def random_image(rng):
    names = list(COLOURS)
    colour = names[rng.randint(len(names))]
    bg = names[(names.index(colour) + 1 + rng.randint(len(names) - 1)) % len(names)]
    shape = SHAPES[rng.randint(len(SHAPES))]
    w, h = int(rng.randint(24, 49)), int(rng.randint(24, 49))
    m = min(w, h)
    s = int(rng.randint(int(0.5 * m), int(0.85 * m) + 1))
    x0, y0 = int(rng.randint(0, w - s + 1)), int(rng.randint(0, h - s + 1))
    return draw(shape, colour, bg, (w, h), (x0, y0, x0 + s - 1, y0 + s - 1)), (shape, colour, bg)


def make_task_images():
    """The fixture cases' images (held out: drawn here, not from the training pool)."""
    return {
        "shape_red_circle.png": draw("circle", "red", "blue", (32, 32), (6, 7, 25, 26)),
        "shape_green_square.png": draw("square", "green", "yellow", (40, 40), (8, 10, 30, 32)),
        "shape_yellow_triangle.png": draw("triangle", "yellow", "black", (44, 30), (10, 3, 34, 26)),
        "shape_white_circle.png": draw("circle", "white", "green", (28, 36), (3, 8, 22, 27)),
        "shape_blue_square.png": draw("square", "blue", "white", (36, 36), (12, 6, 30, 24)),
    }


TASK_ATTRS = {
    "shape_red_circle.png": ("circle", "red", "blue"),
    "shape_green_square.png": ("square", "green", "yellow"),
    "shape_yellow_triangle.png": ("triangle", "yellow", "black"),
    "shape_white_circle.png": ("circle", "white", "green"),
    "shape_blue_square.png": ("square", "blue", "white"),
}

# ----------------------------------------------------------------------------------------
# Conversations. Items are str or ("img", key), as in make_model_fixtures.cases_for.


def answer(q, attrs):
    shape, colour, bg = attrs
    if q == Q_COLOUR:
        return f"{colour}."
    if q == Q_SHAPE:
        return f"a {shape}."
    return f"a {colour} {shape} on a {bg} background."


def sample_conversation(rng, n_pool):
    """Returns the items of one conversation; image keys are ints into the image pool."""
    items = []
    r = rng.rand()
    n_turns = 1 if r < 0.45 else (2 if r < 0.85 else 3)
    for t in range(n_turns):
        # 10% of turns have no <end_of_utterance> (question and answer end at "\n"). This
        # gives the states where generate() suppresses the EOU (min_new_tokens) a trained
        # second choice, so the recorded greedy continuations stay on the task's grammar.
        eou = EOU if rng.rand() >= 0.10 else ""
        if rng.rand() < 0.10:
            # A turn without an image: a first turn sees none; a later one still sees the
            # previous turn's image (spec 4.4), so it is small talk.
            q, a = (Q_COLOUR, NO_IMAGE_ANSWER) if t == 0 else (SMALL_TALK_Q, SMALL_TALK_A)
            items += ["User: " + q + eou, f"\nAssistant: {a}{eou}\n"]
            continue
        n_img = 2 if rng.rand() < 0.10 else 1
        imgs = [int(rng.randint(n_pool)) for _ in range(n_img)]
        r = rng.rand()
        q = Q_COLOUR if r < 0.60 else (Q_SHAPE if r < 0.85 else Q_DESCRIBE)
        # ("A", key, q, eou): the answer turn, filled in from the image's attributes by _batch
        items += ["User:"] + [("img", k) for k in imgs] + [q + eou, ("A", imgs[-1], q, eou)]
    return items


def cases():
    """In-distribution prompts, one per case kind of the instruct fixtures."""
    img = lambda f: ("img", f)  # noqa: E731
    no_eou = dict(add_end_of_utterance_token=False)
    return [
        # No image: the processor's default inserts the EOU between the two texts.
        dict(name="text_only", items=["User: " + Q_COLOUR, "\nAssistant:"]),
        dict(name="one_image", kwargs=no_eou,
             items=["User:", img("shape_red_circle.png"), Q_COLOUR + EOU, "\nAssistant:"]),
        dict(name="two_images", kwargs=no_eou, items=[
            "User:", img("shape_green_square.png"), Q_DESCRIBE + EOU,
            "\nAssistant: " + answer(Q_DESCRIBE, TASK_ATTRS["shape_green_square.png"]) + EOU + "\n",
            "User:", img("shape_yellow_triangle.png"), Q_DESCRIBE + EOU, "\nAssistant:"]),
        dict(name="adjacent_images", kwargs=no_eou, items=[
            "User:", img("shape_white_circle.png"), img("shape_blue_square.png"), Q_COLOUR + EOU,
            "\nAssistant:"]),
        dict(name="chat", kwargs=no_eou, items=[
            "User:", img("shape_yellow_triangle.png"), Q_COLOUR + EOU,
            "\nAssistant: " + answer(Q_COLOUR, TASK_ATTRS["shape_yellow_triangle.png"]) + EOU + "\n",
            "User:", img("shape_red_circle.png"), Q_SHAPE + EOU, "\nAssistant:"]),
        # Processor default: the EOU after the question is inserted between two texts.
        dict(name="auto_eou", items=["User:", img("shape_blue_square.png"), Q_SHAPE, "\nAssistant:"]),
    ]


SPEC["cases"] = cases

# ----------------------------------------------------------------------------------------
# Training


def _batch(convs, tok, pool_pv, attrs, image_id):
    asst_id, colon_id = tok("\nAssistant:", add_special_tokens=False)["input_ids"][-2:]
    eou_id, nl_id = tok.convert_tokens_to_ids(EOU), tok.convert_tokens_to_ids("<0x0A>")
    """Tokenise conversations (prompt_text rule, explicit EOUs) into padded tensors."""
    import make_model_fixtures as mmf

    seqs, imgs = [], []
    for conv in convs:
        items, keys = [], []
        for it in conv:
            if isinstance(it, tuple) and it[0] == "A":
                _, k, q, eou = it
                items.append(f"\nAssistant: {answer(q, attrs[k])}{eou}\n")
            elif isinstance(it, tuple):
                items.append(it)
                keys.append(it[1])
            else:
                items.append(it)
        text = mmf.prompt_text(items, False)
        seqs.append(tok(text, add_special_tokens=False)["input_ids"])
        imgs.append(keys)
    B, T = len(seqs), max(len(s) for s in seqs)
    N = max(1, max(len(k) for k in imgs))
    ids = torch.zeros(B, T, dtype=torch.long)
    am = torch.zeros(B, T, dtype=torch.long)
    iam = torch.zeros(B, T, N, dtype=torch.long)
    pv = torch.zeros(B, N, *pool_pv.shape[1:])
    for b, (s, keys) in enumerate(zip(seqs, imgs)):
        ids[b, :len(s)] = torch.tensor(s)
        am[b, :len(s)] = 1
        cnt = -1
        for t, x in enumerate(s):  # spec 4.4: a token sees the latest <image> (no </s> here)
            cnt += x == image_id
            if cnt >= 0:
                iam[b, t, cnt] = 1
        for i, k in enumerate(keys):
            pv[b, i] = pool_pv[k]
    # Loss weights: ANSWER_WEIGHT on the answer tokens (after "Assistant:" up to and
    # including the <EOU> or "\n"), 1 elsewhere, 0 on padding.
    w = am.float().clone()
    for b in range(B):
        inside = False
        for t in range(1, T):
            if ids[b, t - 1] == colon_id and ids[b, t - 2] == asst_id:
                inside = True
            if inside:
                w[b, t] = ANSWER_WEIGHT * am[b, t]
            if ids[b, t] == eou_id or ids[b, t] == nl_id:
                inside = False
    return ids, am, iam, pv, w


def train(model, spm_proto, seed, log=print):
    """Trains `model` in place (deterministic for a given seed, one thread)."""
    import make_model_fixtures as mmf
    from transformers import IdeficsImageProcessor

    cfg = model.config
    mmf.randomize_weights(model, seed + 1)  # norms, biases and gates start non-trivial too
    rng = np.random.RandomState(seed + 2)
    torch.manual_seed(seed + 3)
    with tempfile.TemporaryDirectory(prefix="idefics-train-tok-") as tmp:
        _, tok = mmf.build_tokenizer(spm_proto, True, tmp)
    image_id = tok.convert_tokens_to_ids(mmf.IMAGE)
    improc = IdeficsImageProcessor(image_size=cfg.vision_config.image_size, image_mean=mmf.CLIP_MEAN,
                                   image_std=mmf.CLIP_STD, image_num_channels=3)
    pool, attrs = [], []
    for _ in range(TRAIN["pool_images"]):
        im, a = random_image(rng)
        pool.append(im)
        attrs.append(a)
    pool_pv = improc(pool, return_tensors="pt").float()

    def conv():
        return sample_conversation(rng, len(pool))

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "latents" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=TRAIN["weight_decay"]),
                             dict(params=no_decay, weight_decay=0.0)], lr=TRAIN["lr"], betas=(0.9, 0.98))
    steps, warm = TRAIN["steps"], TRAIN["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    t0 = time.time()
    ema = None
    for step in range(steps):
        ids, am, iam, pv, lw = _batch([conv() for _ in range(TRAIN["batch"])], tok, pool_pv, attrs, image_id)
        out = model(input_ids=ids, attention_mask=am, pixel_values=pv, image_attention_mask=iam,
                    use_cache=False, return_dict=True)
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        tgt = ids[:, 1:].reshape(-1)
        w = lw[:, 1:].reshape(-1)
        loss = (torch.nn.functional.cross_entropy(logits, tgt, reduction="none") * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"  step {step:5d} loss {loss.item():.4f} (ema {ema:.4f}) {time.time() - t0:6.1f} s")
    model.eval()
    # Held-out evaluation: loss and accuracy on the answer tokens of fresh conversations.
    erng = np.random.RandomState(seed + 4)
    epool, eattrs = [], []
    for _ in range(64):
        im, a = random_image(erng)
        epool.append(im)
        eattrs.append(a)
    epv = improc(epool, return_tensors="pt").float()
    convs = []
    for _ in range(64):
        convs.append(sample_conversation(erng, len(epool)))
    ids, am, iam, pv, _ = _batch(convs, tok, epv, eattrs, image_id)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, pixel_values=pv, image_attention_mask=iam,
                    use_cache=False, return_dict=True)
        lg = out.logits[:, :-1]
        tgt = ids[:, 1:]
        w = am[:, 1:].float()
        ce = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tgt.reshape(-1), reduction="none")
        eval_loss = float((ce * w.reshape(-1)).sum() / w.sum())
        acc = float(((lg.argmax(-1) == tgt).float() * w).sum() / w.sum())
    log(f"  trained {steps} steps in {time.time() - t0:.1f} s")
    info = dict(steps=steps, batch=TRAIN["batch"], lr=TRAIN["lr"], final_train_loss_ema=round(ema, 4),
                heldout_loss=round(eval_loss, 4), heldout_token_accuracy=round(acc, 4))
    log(f"  held-out: loss {eval_loss:.4f}, next-token accuracy {acc:.4f}")
    return info


# ----------------------------------------------------------------------------------------
# Stand-alone check: train, then measure on the fixture prompts (no files written).


def _fake_quant(model, bits_main=4):
    """A pessimistic stand-in for idefics-convert --quant q4: plain absmax, groups of 32,
    Q4 for every Linear (in_features % 32 == 0), Q8 for the token embedding and lm head."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim != 2 or p.shape[1] % 32 or "latents" in n or "position_embedding" in n:
                continue
            q8 = "embed_tokens" in n or "lm_head" in n
            qmax = 127 if (q8 or bits_main == 8) else 7
            g = p.reshape(-1, 32)
            d = g.abs().amax(1, keepdim=True) / qmax
            d[d == 0] = 1
            p.copy_((torch.clamp(torch.round(g / d), -qmax - 1, qmax) * d).reshape(p.shape))


def main():
    import copy

    import make_model_fixtures as mmf
    import tiny_tokenizer
    import transformers
    from transformers import IdeficsForVisionText2Text, IdeficsImageProcessor, IdeficsProcessor

    ap = argparse.ArgumentParser(description="train tiny-trained and report (no files written)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--save", default=None, help="also save_pretrained the trained model here")
    args = ap.parse_args()
    if args.steps:
        TRAIN["steps"] = args.steps
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    spm_proto = tiny_tokenizer.train_tiny_spm()
    vocab = len(mmf.tiny_tokenizer_vocab(spm_proto))
    torch.manual_seed(SPEC["seed"])
    model = IdeficsForVisionText2Text(mmf.build_config(SPEC, vocab))
    print(f"params {sum(p.numel() for p in model.parameters())}")
    info = train(model, spm_proto, SPEC["seed"])
    print(info)
    if args.save:
        model.save_pretrained(args.save)
    with tempfile.TemporaryDirectory() as tmp:
        _, tok = mmf.build_tokenizer(spm_proto, True, tmp)
    S = SPEC["vision"]["image_size"]
    proc = IdeficsProcessor(IdeficsImageProcessor(image_size=S, image_mean=mmf.CLIP_MEAN, image_std=mmf.CLIP_STD),
                            tok, image_size=S)
    imgs = make_task_images()
    variants = {}
    for bits in (8, 4):
        variants[bits] = copy.deepcopy(model)
        _fake_quant(variants[bits], bits)
    agree = {8: 0, 4: 0}
    npos, gaps, shifts = 0, [], []
    for case in cases():
        items = [imgs[it[1]] if isinstance(it, tuple) else it for it in case["items"]]
        enc = proc(text=[items], return_tensors="pt", **case.get("kwargs", {}))
        kw = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  pixel_values=enc["pixel_values"], image_attention_mask=enc["image_attention_mask"],
                  use_cache=False)
        with torch.no_grad():
            lg = model(**kw).logits[0]
            top = torch.topk(lg, 2, dim=-1).values
            gaps += (top[:, 0] - top[:, 1]).tolist()
            for bits in (8, 4):
                lq = variants[bits](**kw).logits[0]
                agree[bits] += int((lq.argmax(-1) == lg.argmax(-1)).sum())
                if bits == 4:
                    shifts += ((lq - lg) - (lq - lg).mean(-1, keepdim=True)).pow(2).mean(-1).sqrt().tolist()
            top2 = torch.topk(lg, 2, dim=-1)
            ids = enc["input_ids"][0]
            for t in range(lg.shape[0]):
                gap = float(top2.values[t, 0] - top2.values[t, 1])
                if gap < 2.0:
                    ctx = tok.decode(ids[max(0, t - 4):t + 1])
                    print(f"    low gap {gap:.3f} at {t} after {ctx!r}: "
                          f"{tok.convert_ids_to_tokens(top2.indices[t].tolist())}")
            blank = dict(kw, pixel_values=torch.zeros_like(kw["pixel_values"]))
            gen = model.generate(**kw, max_new_tokens=12, do_sample=False)
            genb = model.generate(**blank, max_new_tokens=12, do_sample=False)
        T = lg.shape[0]
        npos += T
        a = tok.decode(gen[0, T:])
        b = tok.decode(genb[0, T:])
        print(f"  {case['name']:16s} T={T:3d} answer {a!r}  blank image {b!r}")
    # Held-out answer accuracy per question (greedy, exact string), and with blank images.
    qrng = np.random.RandomState(99)
    correct = {Q_COLOUR: 0, Q_SHAPE: 0, Q_DESCRIBE: 0}
    blank_same = 0
    n_eval = 40
    for i in range(n_eval):
        im, attrs = random_image(qrng)
        for q in correct:
            enc = proc(text=[["User:", im, q + EOU, "\nAssistant:"]], add_end_of_utterance_token=False,
                       return_tensors="pt")
            kw = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      pixel_values=enc["pixel_values"], image_attention_mask=enc["image_attention_mask"])
            T = enc["input_ids"].shape[1]
            with torch.no_grad():
                out = tok.decode(model.generate(**kw, max_new_tokens=24, do_sample=False)[0, T:])
                outb = tok.decode(model.generate(**dict(kw, pixel_values=torch.zeros_like(kw["pixel_values"])),
                                                 max_new_tokens=24, do_sample=False)[0, T:])
            correct[q] += out.split(EOU)[0].strip() == answer(q, attrs)
            if i < 3:
                print(f"    {attrs} {q!r} -> {out!r}")
            blank_same += outb == out
    print("held-out answer accuracy: " + ", ".join(f"{q!r} {c}/{n_eval}" for q, c in correct.items())
          + f"; blanking the image leaves {blank_same}/{3 * n_eval} answers unchanged")
    g = np.array(gaps)
    print(f"positions {npos}: sim Q8 agree {100 * agree[8] / npos:.1f}%  sim Q4 agree {100 * agree[4] / npos:.1f}%")
    print(f"sim Q4 logit shift RMS (per position, mean-centred): median {np.median(shifts):.3f}, "
          f"max {np.max(shifts):.3f}")
    print(f"prompt top-2 gap: min {g.min():.3f}, 5th pct {np.percentile(g, 5):.3f}, median {np.median(g):.3f}")


if __name__ == "__main__":
    main()
