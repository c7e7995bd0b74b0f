#!/usr/bin/env python3
"""make_image_fixtures.py - writes the image-parity fixtures in tests/fixtures/images/.

For each procedurally generated source image (src/) it records what the real
Hugging Face IdeficsImageProcessor (transformers 4.46.3, PIL path) produces at
image_size 224 and 30, as the resized uint8 RGB *before* rescale (expected/).
The uint8 is a faithful record: the script asserts that the processor's
pixel_values equal normalise(uint8) exactly in float32, so the C test can
compare uint8 images and check normalisation separately.

For JPEG sources it also saves PIL's decode (decoded/) so the C test can
compare the runtime's JPEG decoder (libjpeg-turbo, or the stb_image fallback)
with PIL's libjpeg-turbo decode directly.

manifest.txt has one line per fixture: "name source kind flags", where flags is
a comma list ("-" for none):
  hf_ambiguous  HF 4.46.3 guesses the channel axis from the numpy shape and
                takes an image with height 1 or 3 as channels-first, so its
                output is not an image; the expected file is the PIL path
                (convert_to_rgb -> resize) that HF means to run.
  jpeg          a JPEG: decoded/ holds PIL's decode; libjpeg-turbo builds must
                match exactly, the stb fallback within a few levels
                (see docs/IMAGES.md).

Usage: python3 tools/reference/make_image_fixtures.py [--out tests/fixtures/images]
Deterministic: fixed seeds, no timestamps in the PNGs.
"""
import argparse
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

import transformers
from transformers import IdeficsImageProcessor
from transformers.models.idefics.image_processing_idefics import (
    IDEFICS_STANDARD_MEAN,
    IDEFICS_STANDARD_STD,
    convert_to_rgb,
)

SIZES = (224, 30)


# ----------------------------------------------------------------- content

def grid(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return x / max(w - 1, 1), y / max(h - 1, 1)


def smooth_rgb(w, h, seed):
    """Gradients, a disc, a bar and (small images) a little noise: compresses well."""
    rng = np.random.default_rng(seed)
    u, v = grid(w, h)
    r = 255 * u
    g = 255 * v
    b = 127.5 + 127.5 * np.sin(6.28318 * (u * 1.5 + v * 0.7))
    cx, cy, rad = 0.3 + 0.4 * rng.random(), 0.3 + 0.4 * rng.random(), 0.2
    disc = ((u - cx) ** 2 + (v - cy) ** 2) < rad * rad
    r = np.where(disc, 240, r)
    g = np.where(disc, 40, g)
    bar = (u > 0.7) & (u < 0.78)
    b = np.where(bar, 20, b)
    # Noise only on small images: it keeps rounding honest but costs bytes.
    sigma = 2.0 if w * h <= 60000 else 0.0
    img = np.stack([r, g, b], -1) + rng.normal(0, sigma, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def smooth_gray(w, h, seed):
    return smooth_rgb(w, h, seed)[..., 1]


def alpha_ramp(w, h):
    u, v = grid(w, h)
    a = 255 * (0.5 * u + 0.5 * v)
    a[: h // 4, : w // 4] = 0  # fully transparent corner
    a[-(h // 4):, -(w // 4):] = 255  # fully opaque corner
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def noise_rgb(w, h, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def composite_combos():
    """224x224 RGBA whose (value, alpha) pairs cover the whole composite table
    along the red channel: r = i % 256, alpha = i // 256 scaled to 0..255.
    At 224x224 the resize is the identity, so this checks compositing alone."""
    i = np.arange(224 * 224)
    r = i % 256
    a = np.rint((i // 256) * 255 / (224 * 224 // 256)).astype(np.int64)
    g = 255 - r
    b = (r * 7 + 13) % 256
    return np.stack([r, g, b, a], -1).astype(np.uint8).reshape(224, 224, 4)


# ----------------------------------------------------------------- raw PNG writing

def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(w, h, color_type, depth, rows, extra=b""):
    """Minimal PNG writer for layouts PIL will not save (16-bit RGB, gray + tRNS)."""
    raw = b"".join(b"\x00" + row for row in rows)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
            + extra + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


# ----------------------------------------------------------------- fixture table

def make_sources():
    """Returns [(name, filename, kind, bytes)]."""
    out = []

    def save(name, ext, kind, im, **kw):
        buf = io.BytesIO()
        fmt = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "ppm": "PPM", "pgm": "PPM"}[ext]
        im.save(buf, fmt, **kw)
        out.append((name, f"{name}.{ext}", kind, buf.getvalue()))

    save("rgb_640x480", "png", "rgb", Image.fromarray(smooth_rgb(640, 480, 1)), optimize=True)
    save("rgb_exact_224x224", "png", "rgb", Image.fromarray(smooth_rgb(224, 224, 2)), optimize=True)
    save("rgb_up_50x70", "png", "rgb", Image.fromarray(smooth_rgb(50, 70, 3)), optimize=True)
    save("rgb_wide_4000x300", "png", "rgb", Image.fromarray(smooth_rgb(4000, 300, 4) & 0xFC), optimize=True)
    save("rgb_tall_300x4000", "png", "rgb", Image.fromarray(smooth_rgb(300, 4000, 5) & 0xFC), optimize=True)
    save("rgb_noise_200x150", "png", "rgb", Image.fromarray(noise_rgb(200, 150, 6)))
    save("rgb_448x448", "png", "rgb", Image.fromarray(smooth_rgb(448, 448, 7)), optimize=True)
    save("rgb_225x223", "png", "rgb", Image.fromarray(smooth_rgb(225, 223, 8)), optimize=True)
    save("rgb_tiny_1x1", "png", "rgb", Image.fromarray(np.array([[[200, 30, 90]]], np.uint8)))
    save("rgb_tiny_2x3", "png", "rgb", Image.fromarray(noise_rgb(2, 3, 9)))
    save("rgb_tiny_3x2", "png", "rgb", Image.fromarray(noise_rgb(3, 2, 10)))
    save("rgb_line_7x1", "png", "rgb", Image.fromarray(noise_rgb(7, 1, 11)))
    # Pillow 13 picks the pass order by size (vertical first when the height
    # shrinks by more than twice what the width does): at size 30 these two
    # sit on either side of the switch.
    save("rgb_order_60x90", "png", "rgb", Image.fromarray(noise_rgb(60, 90, 33)))
    save("rgb_order_60x91", "png", "rgb", Image.fromarray(noise_rgb(60, 91, 34)))

    rgba = np.dstack([smooth_rgb(320, 200, 12), alpha_ramp(320, 200)])
    save("rgba_320x200", "png", "rgba", Image.fromarray(rgba), optimize=True)
    save("rgba_combos_224x224", "png", "rgba", Image.fromarray(composite_combos()), optimize=True)
    rgba = np.dstack([noise_rgb(97, 61, 13), np.random.default_rng(14).integers(0, 256, (61, 97), dtype=np.uint8)])
    save("rgba_noise_97x61", "png", "rgba", Image.fromarray(rgba))

    save("l_300x300", "png", "l", Image.fromarray(smooth_gray(300, 300, 15)), optimize=True)
    la = np.dstack([smooth_gray(100, 150, 16), alpha_ramp(100, 150)])
    save("la_100x150", "png", "la", Image.fromarray(la, "LA"), optimize=True)
    bits = (smooth_gray(64, 64, 17) > 128)
    save("bilevel_64x64", "png", "1", Image.fromarray(bits).convert("1"))

    pal = Image.fromarray(smooth_rgb(200, 120, 18)).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    save("p_200x120", "png", "p", pal, optimize=False)
    pal = Image.fromarray(smooth_rgb(160, 160, 19)).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    # Per-entry palette alpha (PNG tRNS with 16 bytes): P with transparency.
    pal.info["transparency"] = bytes((i * 17) & 0xFF for i in range(16))
    save("p_trns_160x160", "png", "p_trns", pal, transparency=pal.info["transparency"])

    # Gray + tRNS (a transparent gray level) and RGB + tRNS (a transparent colour key).
    g = (smooth_gray(70, 50, 20) // 16 * 16).astype(np.uint8)
    rows = [g[y].tobytes() for y in range(50)]
    out.append(("l_trns_70x50", "l_trns_70x50.png", "l_trns",
                png_bytes(70, 50, 0, 8, rows, png_chunk(b"tRNS", struct.pack(">H", int(g[25, 35]))))))
    c = (smooth_rgb(80, 60, 21) // 32 * 32).astype(np.uint8)
    key = c[30, 40]
    rows = [c[y].tobytes() for y in range(60)]
    out.append(("rgb_trns_80x60", "rgb_trns_80x60.png", "rgb_trns",
                png_bytes(80, 60, 2, 8, rows, png_chunk(b"tRNS", struct.pack(">HHH", *map(int, key))))))

    # 16-bit: gray (PIL mode I;16, which clips to 255 on the way to RGB) and RGB (PIL keeps the high byte).
    u, v = grid(120, 90)
    g16 = np.rint(600 * u * v + 40 * u).astype(">u2")
    out.append(("gray16_120x90", "gray16_120x90.png", "gray16",
                png_bytes(120, 90, 0, 16, [g16[y].tobytes() for y in range(90)])))
    rgb16 = (smooth_rgb(64, 48, 22).astype(np.uint32) * 257 + np.random.default_rng(23).integers(0, 257, (48, 64, 3))
             ).clip(0, 65535).astype(">u2")
    out.append(("rgb16_64x48", "rgb16_64x48.png", "rgb16",
                png_bytes(64, 48, 2, 16, [rgb16[y].tobytes() for y in range(48)])))

    save("jpeg_q92_256x192", "jpg", "jpeg", Image.fromarray(smooth_rgb(256, 192, 24)), quality=92)
    save("jpeg444_q95_180x240", "jpg", "jpeg", Image.fromarray(smooth_rgb(180, 240, 25)), quality=95,
         subsampling=0)
    save("jpeg_gray_120x100", "jpg", "jpeg", Image.fromarray(smooth_gray(120, 100, 26)), quality=90)
    # More JPEG layouts (added with the libjpeg-turbo decoder): 4:2:2 at sizes
    # that are not whole MCUs, progressive 4:2:0, and Adobe CMYK (PIL reads it
    # as inverted CMYK and converts with cmyk2rgb). Seeds 35-37; new names only,
    # so the fixtures above stay byte-identical.
    save("jpeg422_q85_131x77", "jpg", "jpeg", Image.fromarray(smooth_rgb(131, 77, 35)), quality=85, subsampling=1)
    save("jpeg_prog_q80_203x150", "jpg", "jpeg", Image.fromarray(smooth_rgb(203, 150, 36)), quality=80,
         progressive=True)
    cmyk = np.dstack([smooth_rgb(96, 64, 37), smooth_gray(96, 64, 38) // 2])
    save("jpeg_cmyk_96x64", "jpg", "jpeg", Image.fromarray(cmyk, "CMYK"), quality=90)

    frames = [Image.fromarray(smooth_rgb(150, 100, 27 + k)).quantize(colors=32) for k in range(2)]
    save("gif_150x100", "gif", "gif", frames[0], save_all=True, append_images=frames[1:], transparency=5,
         duration=100, loop=0)
    save("bmp24_130x97", "bmp", "bmp", Image.fromarray(smooth_rgb(130, 97, 29)))
    save("bmp8_90x70", "bmp", "bmp", Image.fromarray(smooth_rgb(90, 70, 30)).quantize(colors=200))
    save("ppm_90x60", "ppm", "pnm", Image.fromarray(smooth_rgb(90, 60, 31)))
    save("pgm_77x55", "pgm", "pnm", Image.fromarray(smooth_gray(77, 55, 32)))
    return out


# ----------------------------------------------------------------- reference

def pil_path(im, size):
    """What IdeficsImageProcessor does up to the resize, in uint8."""
    arr = np.array(convert_to_rgb(im))
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, arr.shape
    return np.array(Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None))


def normalise(u8):
    mean = np.array(IDEFICS_STANDARD_MEAN, np.float32)
    std = np.array(IDEFICS_STANDARD_STD, np.float32)
    x = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((x - mean) / std).transpose(2, 0, 1)


def png_save(path, arr):
    # PIL writes no timestamp chunk, so reruns are byte-identical.
    Image.fromarray(arr).save(path, "PNG", optimize=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "images"))
    args = ap.parse_args()
    if transformers.__version__ != "4.46.3":
        print(f"warning: transformers {transformers.__version__}, fixtures were specified against 4.46.3",
              file=sys.stderr)
    out = os.path.normpath(args.out)
    for d in ("src", "expected", "decoded"):
        os.makedirs(os.path.join(out, d), exist_ok=True)

    # The hub preprocessor_config.json sets these; the class defaults are None.
    proc = IdeficsImageProcessor(image_mean=IDEFICS_STANDARD_MEAN, image_std=IDEFICS_STANDARD_STD)
    manifest = []
    n_ambiguous = 0
    for name, fname, kind, data in make_sources():
        with open(os.path.join(out, "src", fname), "wb") as f:
            f.write(data)
        im = Image.open(io.BytesIO(data))
        im.load()
        flags = []
        if kind == "jpeg":
            flags.append("jpeg")
            png_save(os.path.join(out, "decoded", name + ".png"), np.array(im.convert("RGB")))
        h = im.size[1]
        for s in SIZES:
            u8 = pil_path(im, s)
            assert u8.shape == (s, s, 3)
            png_save(os.path.join(out, "expected", f"{name}.{s}.png"), u8)
            ref = normalise(u8)
            try:
                hf = proc.preprocess([Image.open(io.BytesIO(data))], image_size=s).numpy()[0]
            except ValueError:
                hf = None  # height 1: one "channel" meets three means
            if h in (1, 3):
                # HF reads (h, w, 3) with h in {1, 3} as channels-first; confirm it
                # really diverges so the flag stays honest.
                assert hf is None or hf.shape != ref.shape or not np.array_equal(hf, ref), name
                if "hf_ambiguous" not in flags:
                    flags.append("hf_ambiguous")
                    n_ambiguous += 1
            else:
                assert hf.dtype == np.float32 and hf.shape == ref.shape, (name, hf.shape)
                assert np.array_equal(hf, ref), (name, s, float(np.abs(hf - ref).max()))
        manifest.append(f"{name} {fname} {kind} {','.join(flags) or '-'}")
        print(f"{name:24s} {im.mode:5s} {im.size[0]}x{im.size[1]} {len(data)} bytes {' '.join(flags)}")

    with open(os.path.join(out, "manifest.txt"), "w") as f:
        f.write("# name source kind flags   (written by tools/reference/make_image_fixtures.py)\n")
        f.write("\n".join(manifest) + "\n")
    total = 0
    for root, _, files in os.walk(out):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
    print(f"{len(manifest)} fixtures, {n_ambiguous} HF-ambiguous, {total} bytes in {out}")


if __name__ == "__main__":
    main()
