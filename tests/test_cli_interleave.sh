#!/usr/bin/env bash
# test_cli_interleave.sh - images and text in any order through `idefics ask`:
#   test_cli_interleave.sh IDEFICS_BIN BASE.idfx INSTRUCT.idfx FIXTURES_MODELS_DIR FEWSHOT_EXAMPLE
# The prompt ids (ask --dry-run --json) are compared with the HF processor's
# input_ids recorded in tests/fixtures/models/*/cases:
#   - every case as a --raw prompt with <img:PATH> markers (full_text, images in place);
#   - the base cases whose items need no <end_of_utterance>, as --raw -p/-i items in order;
#   - chat turns: one -p (the model's order) against the cases that are exactly one turn;
# and, where no HF fixture exists (three images, several -p in one turn), three
# independent paths must agree: ask, the examples/fewshot.c program (API calls),
# and `idefics tokenize` of the same text with the image tokens written out.
# Skips (77) without python3 or the models.
set -u
bin=$1 base=$2 inst=$3 fx=$4 fewshot=$5
for f in "$base" "$inst"; do [ -f "$f" ] || { echo "SKIP: no model $f"; exit 77; }; done
command -v python3 >/dev/null || { echo "SKIP: python3 needed to read the fixtures"; exit 77; }
exec python3 - "$bin" "$base" "$inst" "$fx" "$fewshot" <<'PYEOF'
import json, os, re, subprocess, sys, tempfile
bin_, base, inst, fx, fewshot = sys.argv[1:6]
models = {"tiny-base": base, "tiny-instruct": inst}
fails = 0
passed = []

def ask_ids(model, *args):
    r = subprocess.run([bin_, "ask", "-m", model, "--dry-run", "--json", *args], capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip()
    return json.loads(r.stdout)["prompt_tokens"], r.stderr

def tokenize(model, text):
    r = subprocess.run([bin_, "tokenize", "-m", model, text], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else None

def expect(name, got, want, err=""):
    global fails
    if got == want:
        passed.append(name)
    else:
        fails += 1
        print("FAIL: %s\n  got  %s\n  want %s\n  %s" % (name, got, want, err))

IMG_RUN = re.compile(r"<fake_token_around_image>((?:<image><fake_token_around_image>)+)")
for mname, model in models.items():
    cdir = os.path.join(fx, mname, "cases")
    for cf in sorted(os.listdir(cdir)):
        if not cf.endswith(".json"):
            continue
        case = json.load(open(os.path.join(cdir, cf)))
        want = case["input_ids"][0]
        files = [os.path.join(fx, it["file"]) for it in case["prompt"] if it["type"] == "image"]
        # 1. the recorded full text as a raw prompt, each image run replaced by markers
        it = iter(files)
        text = case["full_text"]
        assert text.startswith("<s>")
        raw = IMG_RUN.sub(lambda m: "".join("<img:%s>" % next(it) for _ in range(m.group(1).count("<image>"))),
                          text[3:])
        got, err = ask_ids(model, "--raw", "-p", raw)
        expect("%s/%s: --raw with <img:> markers (%d images)" % (mname, case["case"], len(files)), got, want, err)
        # 2. the processor's items as --raw -p/-i in order (when HF inserted no <end_of_utterance>)
        if not case["add_end_of_utterance_token_effective"]:
            args = ["--raw"]
            for item in case["prompt"]:
                args += ["-i", os.path.join(fx, item["file"])] if item["type"] == "image" else ["-p", item["text"]]
            got, err = ask_ids(model, *args)
            expect("%s/%s: --raw -p/-i items" % (mname, case["case"]), got, want, err)

# 3. one chat turn with one -p: the model's own order
case = json.load(open(os.path.join(fx, "tiny-base", "cases", "one_image.json")))
got, err = ask_ids(base, "-i", os.path.join(fx, "images/red_square.png"), "-p", "Describe this image.")
expect("tiny-base/one_image: -i IMAGE -p QUESTION (base turn: images, then the question)", got,
       case["input_ids"][0], err)
case = json.load(open(os.path.join(fx, "tiny-instruct", "cases", "chat.json")))
got, err = ask_ids(inst, "-p", "What is in this image?", "-i", os.path.join(fx, "images/red_square.png"))
# the case's first turn is exactly an instruct turn: question, image, <end_of_utterance>, "\nAssistant:"
first = case["input_ids"][0][:len(got)] if got else None
expect("tiny-instruct/chat first turn: -p QUESTION -i IMAGE (instruct turn: question, then images)",
       got if got and len(got) > 15 else None, first, err)

# 4. several -p: one turn in command-line order, text before, between and after images
img = lambda n: os.path.join(fx, "images", n)
for mname, model in models.items():
    eou = "<end_of_utterance>" if mname == "tiny-instruct" else ""
    args = ["-p", "Compare", "-i", img("ring_gray.png"), "-p", "with", "-i", img("noise_small.png"),
            "-i", img("red_square.png"), "-p", "Which has more dots?"]
    got, err = ask_ids(model, *args)
    raw_text = ("User: Compare<img:%s>with<img:%s><img:%s>Which has more dots?%s\nAssistant:"
                % (img("ring_gray.png"), img("noise_small.png"), img("red_square.png"), eou))
    want_raw, err2 = ask_ids(model, "--raw", "-p", raw_text)
    F = "<fake_token_around_image>"
    want_tok = tokenize(model, "User: Compare%s<image>%swith%s<image>%s<image>%sWhich has more dots?%s\nAssistant:"
                        % (F, F, F, F, F, eou))
    expect("%s: -p/-i/-p/-i/-i/-p turn == --raw text" % mname, got, want_raw, err + err2)
    expect("%s: -p/-i/-p/-i/-i/-p turn == tokenize of the text" % mname, got, want_tok, err)
    # image first, then text: the same turn as -i IMAGE -p QUESTION on a base model
    got, err = ask_ids(model, "-i", img("red_square.png"), "-p", "What is it?", "-p", "Be brief.")
    want = tokenize(model, "User:%s<image>%sWhat is it?Be brief.%s\nAssistant:" % (F, F, eou))
    expect("%s: -i/-p/-p turn == tokenize of the text" % mname, got, want, err)

# 5. few-shot with three images: ask --raw, the fewshot example (API calls) and tokenize agree
shapes = [img("shape_red_circle.png"), img("shape_blue_square.png"), img("shape_yellow_triangle.png")]
for mname, model in models.items():
    eou = "<end_of_utterance>" if mname == "tiny-instruct" else ""
    q = "How many shapes are there?"
    text = ("User:<img:%s>%s%s\nAssistant: 1%s\nUser:<img:%s>%s%s\nAssistant: 1%s\nUser:<img:%s>%s%s\nAssistant:"
            % (shapes[0], q, eou, eou, shapes[1], q, eou, eou, shapes[2], q, eou))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    got, err = ask_ids(model, "--raw", "-f", f.name)
    os.unlink(f.name)
    r = subprocess.run([fewshot, "--ids", model, shapes[0], "1", shapes[1], "1", shapes[2]],
                       capture_output=True, text=True)
    api = [int(x) for x in r.stdout.split()] if r.returncode == 0 else r.stderr
    F3 = "<fake_token_around_image><image><fake_token_around_image>"
    tok = tokenize(model, re.sub(r"<img:[^>]*>", F3, text))
    expect("%s: few-shot, three images: ask --raw -f == examples/fewshot.c" % mname, got, api, err)
    expect("%s: few-shot, three images: ask --raw -f == tokenize" % mname, got, tok, err)
    if got and got.count(tok[4] if tok else -1) < 3:
        fails += 1
        print("FAIL: %s few-shot: fewer than three image tokens" % mname)

for p in passed:
    print("ok:", p)
print("test_cli_interleave: %d passed, %d failed" % (len(passed), fails))
sys.exit(1 if fails else 0)
PYEOF
