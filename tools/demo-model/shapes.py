"""Procedural shape images with captions and question/answer pairs.

Every scene is drawn from a numpy RandomState, so a seed gives the same scene,
pixels and text on any machine. A scene holds 1 to 4 copies of one shape in one
colour (sizes and positions vary per copy) on a plain background, with optional
pixel noise. Five question types are asked about it:

  shape     "What shape is in the image?"      -> "star" (circle, square, triangle, star)
  colour    "What colour is the shape?"        -> "red"
  count     "How many shapes are there?"       -> "3"
  where     "Where is the star?" (one shape)   -> "left" | "right" | "top" | "bottom" | "centre"
  describe  "Describe the image."              -> "Three red stars on a black background."

"where" is asked only about single-shape scenes, which put the shape in one of
five regions; scenes with 2-4 shapes scatter them without overlap. TASKS has a
"simple" variant (no stars, no "where"), which the shipped model ends on. Splits come
from separate seed ranges (SPLIT_SEEDS), so no test scene is a training scene.
"""

import math

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (240, 140, 30),
}
BACKGROUNDS = {
    "white": (245, 245, 245),
    "grey": (150, 150, 150),
    "black": (15, 15, 15),
}
PLACES = ["left", "right", "top", "bottom", "centre"]
# Region centres (fractions of the side) for single-shape scenes.
PLACE_XY = {"left": (0.24, 0.5), "right": (0.76, 0.5), "top": (0.5, 0.24), "bottom": (0.5, 0.76), "centre": (0.5, 0.5)}
PLACE_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                "centre": "in the centre"}
NUMBER_WORDS = ["One", "Two", "Three", "Four"]
QTYPES = ["shape", "colour", "count", "where", "describe"]
# Task variants. "full" is everything above. "simple" drops stars (most confused with
# triangles) and the "where" question (captions then leave out the position): the
# shipped model is "full" training continued on "simple" (models/README.md). The
# tokenizer is always trained on the full task's text.
TASKS = {
    "full": dict(shapes=SHAPES, qtypes=QTYPES),
    "simple": dict(shapes=["circle", "square", "triangle"], qtypes=["shape", "colour", "count", "describe"]),
}
_task = TASKS["full"]


def set_task(name):
    global _task
    _task = TASKS[name]
CAPTION_PROMPT = "Describe the image."
QUESTIONS = {
    "shape": ["What shape is in the image?", "What shape do you see?", "Which shape is shown?"],
    "colour": ["What colour is the shape?", "What colour are the shapes?", "Which colour do you see?"],
    "count": ["How many shapes are there?", "How many shapes do you see?", "Count the shapes."],
    "where": ["Where is the {shape}?", "Where is the {colour} {shape}?", "Where is the shape?"],
    "describe": [CAPTION_PROMPT, "What is in the image?", "Describe this picture."],
}
# Train, validation and test scenes come from disjoint seed ranges.
SPLIT_SEEDS = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000, "examples": 4_000_000}


def scene(seed):
    """A scene description (dict) from one seed."""
    rng = np.random.RandomState(seed)
    shape = _task["shapes"][rng.randint(len(_task["shapes"]))]
    colour = list(COLOURS)[rng.randint(len(COLOURS))]
    bg = list(BACKGROUNDS)[rng.randint(len(BACKGROUNDS))]
    # Single shapes are as frequent as 2, 3 and 4 together: they carry "where".
    n = 1 if rng.rand() < 0.4 else int(rng.randint(2, 5))
    objs = []
    if n == 1:
        place = PLACES[rng.randint(len(PLACES))]
        r = rng.uniform(0.15, 0.22)
        cx, cy = PLACE_XY[place]
        objs.append((cx + rng.uniform(-0.06, 0.06), cy + rng.uniform(-0.06, 0.06), r, rng.uniform(0, 2 * math.pi)))
    else:
        place = None
        for _ in range(1000):
            if len(objs) == n:
                break
            r = rng.uniform(0.10, 0.13)
            x, y = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
            if all(math.hypot(x - ox, y - oy) > r + orr + 0.03 for ox, oy, orr, _ in objs):
                objs.append((x, y, r, rng.uniform(0, 2 * math.pi)))
        if len(objs) < n:  # cannot happen with these radii; keep the count honest anyway
            n = len(objs)
    jitter = rng.randint(-18, 19, size=(n, 3))
    noise = float(rng.choice([0.0, 0.0, 3.0, 6.0]))
    return dict(seed=seed, shape=shape, colour=colour, background=bg, count=n, place=place, objects=objs,
                jitter=jitter.tolist(), noise=noise)


def _polygon(shape, cx, cy, r, rot):
    if shape == "square":
        # sides within +-9 degrees of the axes: a square tilted further reads as a diamond
        tilt = (rot / (2 * math.pi) - 0.5) * 0.3
        return [(cx + r * math.cos(tilt + math.pi / 4 + k * math.pi / 2),
                 cy + r * math.sin(tilt + math.pi / 4 + k * math.pi / 2)) for k in range(4)]
    if shape == "diamond":
        return [(cx + r * 0.7 * math.cos(k * math.pi / 2), cy + r * 1.05 * math.sin(k * math.pi / 2))
                for k in range(4)]
    if shape == "triangle":
        return [(cx + r * math.cos(-math.pi / 2 + k * 2 * math.pi / 3),
                 cy + r * 1.1 * math.sin(-math.pi / 2 + k * 2 * math.pi / 3) + r * 0.15) for k in range(3)]
    if shape == "star":
        return [(cx + (r if k % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + k * math.pi / 5),
                 cy + (r if k % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    if shape == "cross":
        a, b = r, r * 0.36
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(shape)


def render(sc, size):
    """The scene as a size x size RGB PIL image (drawn at 2x, then box-filtered down)."""
    s2 = size * 2
    im = Image.new("RGB", (s2, s2), BACKGROUNDS[sc["background"]])
    d = ImageDraw.Draw(im)
    base = np.array(COLOURS[sc["colour"]])
    for (x, y, r, rot), jit in zip(sc["objects"], sc["jitter"]):
        fill = tuple(int(v) for v in np.clip(base + np.array(jit), 0, 255))
        cx, cy, rr = x * s2, y * s2, r * s2
        if sc["shape"] == "circle":
            d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=fill)
        else:
            d.polygon(_polygon(sc["shape"], cx, cy, rr, rot), fill=fill)
    im = im.resize((size, size), Image.BOX)
    if sc["noise"] > 0:
        rng = np.random.RandomState(sc["seed"] ^ 0x5EED)
        a = np.asarray(im).astype(np.float32) + rng.normal(0, sc["noise"], size=(size, size, 3))
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    return im


def plural(shape):
    return shape + "es" if shape == "cross" else shape + "s"


def caption(sc):
    article = "An" if sc["colour"][0] in "aeiou" else "A"
    if sc["count"] == 1 and "where" in _task["qtypes"]:
        return f"{article} {sc['colour']} {sc['shape']} {PLACE_PHRASE[sc['place']]} of a {sc['background']} background."
    if sc["count"] == 1:
        return f"{article} {sc['colour']} {sc['shape']} on a {sc['background']} background."
    return f"{NUMBER_WORDS[sc['count'] - 1]} {sc['colour']} {plural(sc['shape'])} on a {sc['background']} background."


def answer(sc, qtype):
    if qtype == "shape":
        return sc["shape"]
    if qtype == "colour":
        return sc["colour"]
    if qtype == "count":
        return str(sc["count"])
    if qtype == "where":
        return sc["place"]
    if qtype == "describe":
        return caption(sc)
    raise ValueError(qtype)


def qtypes_for(sc):
    return [q for q in _task["qtypes"] if q != "where" or sc["count"] == 1]


def question(sc, qtype, variant):
    return QUESTIONS[qtype][variant % len(QUESTIONS[qtype])].format(shape=sc["shape"], colour=sc["colour"])


def qa_pairs(sc, all_variants=False):
    """[(qtype, question, answer)] for a scene: every type it supports, one phrasing
    each (chosen by the seed) or every phrasing."""
    out = []
    for k, qt in enumerate(qtypes_for(sc)):
        variants = range(len(QUESTIONS[qt])) if all_variants else [(sc["seed"] + k) % len(QUESTIONS[qt])]
        for v in variants:
            out.append((qt, question(sc, qt, v), answer(sc, qt)))
    return out


def corpus_lines():
    """Every question and answer text the full task can produce (tokenizer training)."""
    global _task
    saved, _task = _task, TASKS["full"]
    lines = set()
    for shape in SHAPES:
        for colour in COLOURS:
            for bg in BACKGROUNDS:
                for n in range(1, 5):
                    for place in PLACES if n == 1 else [None]:
                        sc = dict(seed=0, shape=shape, colour=colour, background=bg, count=n, place=place)
                        for qt in qtypes_for(sc):
                            for v in range(len(QUESTIONS[qt])):
                                lines.add(f"User: {question(sc, qt, v)}")
                                lines.add(f"Assistant: {answer(sc, qt)}")
    _task = saved
    return sorted(lines)


if __name__ == "__main__":
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/shapes-preview"
    import os
    os.makedirs(out, exist_ok=True)
    for i in range(12):
        sc = scene(SPLIT_SEEDS["examples"] + i)
        render(sc, 128).save(os.path.join(out, f"{i:02d}.png"))
        print(i, caption(sc))
