#!/usr/bin/env python3
"""quant_eval.py - output error of the converter's precision choices (docs/QUANT.md).

Builds a small random-weight IdeficsForVisionText2Text with transformers (real
layer structure, 224x224 images, shrunk widths), converts it with
idefics-convert under several option sets, reads each .idfx back dequantized
(idefics-quant-bench --dequant), loads those weights into the transformers
model and compares, against the fp32 original on the same image + prompt:
  logits   relative RMS error, mean KL(p_ref || p_q) in nats, top-1 agreement
  image    relative RMS error of the perceiver output (image_hidden_states)
Random weights are Gaussian; trained ones have heavier tails, so read the
numbers as a ranking of the choices, not as the error of the real model.

usage: quant_eval.py BUILD_DIR [WORK_DIR]   (needs torch, transformers, safetensors)
"""
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import IdeficsConfig, IdeficsForVisionText2Text

build = sys.argv[1]
work = sys.argv[2] if len(sys.argv) > 2 else "/tmp/idefics-quant-eval"
tok = os.environ.get("IDEFICS_TOKENIZER", "/work/shared/reference/llama-tokenizer")
convert = os.path.join(build, "tools/convert/idefics-convert")
bench = os.path.join(build, "tools/convert/idefics-quant-bench")
os.makedirs(work, exist_ok=True)

torch.manual_seed(0)
V = 4000
cfg = IdeficsConfig(
    vocab_size=V, additional_vocab_size=3, hidden_size=512, intermediate_size=1376,
    num_hidden_layers=4, num_attention_heads=8, cross_layer_interval=2, qk_layer_norms=True,
    use_resampler=True,
    vision_config=dict(embed_dim=256, image_size=224, patch_size=14, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=1024, hidden_act="gelu"),
    perceiver_config=dict(use_resampler=True, resampler_n_latents=16, resampler_depth=2,
                          resampler_n_heads=4, resampler_head_dim=32, qk_layer_norms_perceiver=True),
)
cfg.architectures = ["IdeficsForVisionText2Text"]
src = os.path.join(work, "hf")
if not os.path.exists(os.path.join(src, "config.json")):
    m = IdeficsForVisionText2Text(cfg)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith(("alpha_cross_attn", "alpha_dense")):
                p.fill_(0.5)  # open gates, so the image path reaches the logits
    m.save_pretrained(src, safe_serialization=True)
model = IdeficsForVisionText2Text.from_pretrained(src, torch_dtype=torch.float32,
                                                  attn_implementation="eager").eval()
ref_state = {k: v.clone() for k, v in model.state_dict().items()}

# one image, a prompt that sees it
g = torch.Generator().manual_seed(1)
T = 48
ids = torch.randint(3, V, (1, T), generator=g)
ids[0, 0] = 1
ids[0, 5:8] = torch.tensor([V, V + 1, V])  # <fake><image><fake>
img_mask = torch.zeros(1, T, 1, dtype=torch.long)
img_mask[0, 6:, 0] = 1
pixels = torch.randn(1, 1, 3, 224, 224, generator=g)


def run():
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                    image_attention_mask=img_mask, use_cache=False)
    return out.logits[0].double(), out.image_hidden_states.double()


ref_logits, ref_img = run()


def rel(a, b):
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


cases = [
    ("f32 (sanity)", ["--quant", "f32"]),
    ("q4 default (embed q8, head q8, vision q4)", []),
    ("q4, vision q8", ["--vision", "q8"]),
    ("q4, head q4", ["--head", "q4"]),
    ("q4, head f16", ["--head", "f16"]),
    ("q4, embed q4", ["--embed", "q4"]),
    ("q4, embed f16", ["--embed", "f16"]),
    ("q4 search 0", ["--search", "0"]),
    ("q4 search 16", ["--search", "16"]),
    ("q8", ["--quant", "q8"]),
    ("f16", ["--quant", "f16"]),
    ("only vision q4 (rest f32)", ["--quant", "f32", "--vision", "q4"]),
    ("only vision q8 (rest f32)", ["--quant", "f32", "--vision", "q8"]),
    ("only head q4 (rest f32)", ["--quant", "f32", "--head", "q4"]),
    ("only head q8 (rest f32)", ["--quant", "f32", "--head", "q8"]),
    ("only embed q4 (rest f32)", ["--quant", "f32", "--embed", "q4"]),
    ("only embed q8 (rest f32)", ["--quant", "f32", "--embed", "q8"]),
]
print(f"{'case':44s} {'MB':>7s} {'logit rel':>10s} {'KL nats':>10s} {'top1':>6s} {'image rel':>10s}")
for name, args in cases:
    out = os.path.join(work, "m.idfx")
    dq = os.path.join(work, "m.safetensors")
    subprocess.run([convert, src, "-o", out, "--tokenizer", tok, "-q"] + args, check=True)
    subprocess.run([bench, "--dequant", out, dq], check=True)
    size = os.path.getsize(out) / 1e6
    state = load_file(dq)
    model.load_state_dict({k: state.get(k, v) for k, v in ref_state.items()})
    lg, im = run()
    p = torch.log_softmax(ref_logits, -1)
    q = torch.log_softmax(lg, -1)
    kl = (p.exp() * (p - q)).sum(-1).mean().item()
    top1 = (lg.argmax(-1) == ref_logits.argmax(-1)).double().mean().item()
    print(f"{name:44s} {size:7.2f} {rel(lg, ref_logits):10.2e} {kl:10.2e} {top1:6.3f} {rel(im, ref_img):10.2e}",
          flush=True)
model.load_state_dict(ref_state)
