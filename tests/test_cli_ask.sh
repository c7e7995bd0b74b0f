#!/usr/bin/env bash
# test_cli_ask.sh - `idefics ask` and `idefics chat` on a tiny converted model:
#   test_cli_ask.sh IDEFICS_BIN MODEL.idfx IMAGES_DIR
# ask: the streamed answer equals the --json "text", the JSON lists the prompt
# and generated ids, bad input gives exit 1 (runtime) or 2 (usage) with the
# message on stderr and nothing on stdout. chat: piped turns, /image, /reset,
# a bad /image is reported and the chat goes on; /help, unknown commands,
# /reset keeping images, /reset all, a full context; --kv-type, --board, seeds, Ctrl-C. Skips (77) without python3
# (used to read the JSON) or the model.
set -u
bin=$1 model=$2 img=$3
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 needed to read the JSON"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }

# ask, streamed and as JSON, greedy: the same answer
"$bin" ask -m "$model" -i "$img/red_square.png" -p "What is in this image?" -n 12 >"$tmp/stream" 2>"$tmp/err1"
rc=$?
check '[ $rc -eq 0 ]' "ask exit status ($(cat "$tmp/err1"))"
"$bin" ask -m "$model" -i "$img/red_square.png" -p "What is in this image?" -n 12 --json >"$tmp/json" 2>"$tmp/err2"
rc=$?
check '[ $rc -eq 0 ]' "ask --json exit status ($(cat "$tmp/err2"))"
python3 - "$tmp/json" "$tmp/stream" <<'EOF' || fail=1
import json, sys
j = json.loads(open(sys.argv[1], encoding="utf-8").read())
stream = open(sys.argv[2], "rb").read().decode("utf-8")
ok = True
def need(c, msg):
    global ok
    if not c: print("FAIL:", msg); ok = False
need(j["status"] == "IDEFICS_OK", "status %s" % j["status"])
need(j["finish_reason"] in ("stop", "length"), "finish_reason %s" % j.get("finish_reason"))
need(j["finish_reason"] != "length" or len(j["generated_tokens"]) == 12, "length with %d tokens" % len(j["generated_tokens"]))
need(isinstance(j["seed"], int), "seed %r" % j.get("seed"))
need(j["prompt_tokens"][0] == 1 and len(j["prompt_tokens"]) > 8, "prompt ids %s" % j["prompt_tokens"][:4])
need(1 <= len(j["generated_tokens"]) <= 12, "generated %d tokens" % len(j["generated_tokens"]))
need(j["timings"]["n_generated"] == len(j["generated_tokens"]), "timings n_generated")
need(j["timings"]["n_prompt_tokens"] == len(j["prompt_tokens"]), "timings n_prompt_tokens")
need(stream == j["text"] + "\n", "streamed %r != json text %r" % (stream, j["text"]))
sys.exit(0 if ok else 1)
EOF

# seeded sampling is reproducible through the CLI
a=$("$bin" ask -m "$model" -i "$img/ring_gray.png" -p "Describe." -n 8 --temp 1.2 --top-k 30 --top-p 0.9 --seed 11 --json 2>/dev/null)
b=$("$bin" ask -m "$model" -i "$img/ring_gray.png" -p "Describe." -n 8 --temp 1.2 --top-k 30 --top-p 0.9 --seed 11 --json 2>/dev/null)
# (the timings differ from run to run; everything before them must not)
a=${a%%,\"timings\"*} b=${b%%,\"timings\"*}
check '[ -n "$a" ] && [ "$a" = "$b" ]' "same seed, different output: $a / $b"

# errors: message on stderr, nothing on stdout
"$bin" ask -m "$model" -i "$tmp/missing.png" -p "Hi" >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 1 ] && [ ! -s "$tmp/out" ] && grep -q "missing.png" "$tmp/err"' "missing image: rc $rc"
"$bin" ask -m "$model" -p "   " >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 1 ] && [ ! -s "$tmp/out" ] && grep -q EMPTY_PROMPT "$tmp/err"' "empty question: rc $rc"
"$bin" ask -m "$model" -p "Hi" -c 4 >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 1 ] && grep -q CONTEXT_FULL "$tmp/err"' "prompt over -c 4: rc $rc"
"$bin" ask -m "$model" -i "$img/red_square.png" >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 2 ]' "ask without -p must be a usage error"
"$bin" ask -m "$model" -p "Hi" --temp hot >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 2 ]' "--temp hot must be a usage error"

# -n 1 stops at the limit: finish_reason "length"
"$bin" ask -m "$model" -p "Hi" -n 1 --json >"$tmp/j1" 2>/dev/null
check 'grep -q "\"finish_reason\":\"length\"" "$tmp/j1"' "-n 1 must finish with length: $(cat "$tmp/j1")"

# sampling without --seed: a random seed, printed so that the run can be repeated
"$bin" ask -m "$model" -p "Hi" -n 6 --temp 1.5 --json >"$tmp/r1" 2>"$tmp/r1err"
seed=$(sed -n 's/^idefics: seed \([0-9]*\) .*/\1/p' "$tmp/r1err")
check '[ -n "$seed" ] && grep -q "\"seed\":$seed," "$tmp/r1"' "random seed not printed ($(cat "$tmp/r1err"))"
"$bin" ask -m "$model" -p "Hi" -n 6 --temp 1.5 --json --seed "$seed" >"$tmp/r2" 2>/dev/null
a=$(cat "$tmp/r1") b=$(cat "$tmp/r2")
check '[ "${a%%,\"timings\"*}" = "${b%%,\"timings\"*}" ]' "the printed seed does not repeat the run"

# option errors: unknown flag (also at the end of the line) vs a flag missing its value
"$bin" ask -m "$model" -p "Hi" --foo >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 2 ] && grep -q "unknown option --foo" "$tmp/err"' "unknown flag at the end: $(cat "$tmp/err")"
"$bin" ask -m "$model" -p >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 2 ] && grep -q -- "-p needs a value" "$tmp/err"' "flag without value: $(cat "$tmp/err")"
"$bin" ask --help >"$tmp/help"
check 'grep -q "\[-i IMAGE" "$tmp/help"' "ask --help must show -i as optional"
"$bin" ask -m "$model" -p "Hi" --kv-type f8 >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 2 ]' "--kv-type f8 must be a usage error"
# --kv-type f32 runs (and -v says which KV type the session has)
"$bin" ask -m "$model" -i "$img/red_square.png" -p "What is in this image?" -n 4 --kv-type f32 -v >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 0 ] && grep -q "KV f32" "$tmp/err"' "--kv-type f32: $(cat "$tmp/err")"

# a write error is never a success
if [ -w /dev/full ]; then
    "$bin" ask -m "$model" -p "Hi" -n 2 >/dev/full 2>"$tmp/err"
    rc=$?
    check '[ $rc -eq 1 ] && grep -q "cannot write" "$tmp/err"' "ask >/dev/full: rc $rc"
    printf 'Hi\n' | "$bin" chat -m "$model" -n 2 >/dev/full 2>"$tmp/err"
    rc=$?
    check '[ $rc -eq 1 ] && grep -q "cannot write" "$tmp/err"' "chat >/dev/full: rc $rc"
fi

# --board: a profile above the model's context is clamped (said with -v; the demo model has
# 128 positions); an unknown name lists the valid ones
demo=$(dirname "$0")/../models/tiny-shapes.idfx
"$bin" ask -m "$demo" -p "Hi" -n 2 --board 8g -v >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 0 ] && grep -q "clamped to the model" "$tmp/err"' "--board 8g on a small model: $(cat "$tmp/err")"
"$bin" ask -m "$model" -p "Hi" --board no-such-board >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 1 ] && grep -q "memory profiles:.* 8g" "$tmp/err" && grep -q "boards:.*raspberry-pi-5" "$tmp/err"' \
    "unknown board must list the valid names: $(cat "$tmp/err")"

# where the weights live: --no-mmap copies them (-v says "in memory") and gives the same
# greedy answer; --low-memory wins over a board's use_mmap = 0; both flags at once are refused
"$bin" ask -m "$model" -i "$img/red_square.png" -p "What is in this image?" -n 12 --no-mmap -v >"$tmp/nommap" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 0 ] && grep -q "weights in memory" "$tmp/err" && cmp -s "$tmp/nommap" "$tmp/stream"' \
    "--no-mmap: rc $rc, $(grep 'idefics: model' "$tmp/err"), answers differ: $(cat "$tmp/nommap")"
"$bin" ask -m "$model" -p "Hi" -n 2 --board x86-64-linux --low-memory -v >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 0 ] && grep -q "weights mapped" "$tmp/err"' "--board x86-64-linux --low-memory: $(cat "$tmp/err")"
"$bin" ask -m "$model" -p "Hi" -n 2 --no-mmap --low-memory >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 1 ] && grep -q "cannot be combined" "$tmp/err" && [ ! -s "$tmp/out" ]' \
    "--no-mmap --low-memory: rc $rc, $(cat "$tmp/err")"

# user text is text: "<image>" typed in a question is not an image token, --raw recognises it
"$bin" ask -m "$model" -p "What is <image> this?" --dry-run --json >"$tmp/plain" 2>"$tmp/err"
"$bin" ask -m "$model" -p "What is <image> this?" --raw --dry-run --json >"$tmp/rawj" 2>>"$tmp/err"
image_id=$("$bin" tokenize -m "$model" "<image>" 2>/dev/null | tr -cs '0-9' ' ' | awk '{print $NF}')
python3 - "$tmp/plain" "$tmp/rawj" "$image_id" <<'PYEOF' || fail=1
import json, sys
plain = json.load(open(sys.argv[1]))["prompt_tokens"]
raw = json.load(open(sys.argv[2]))["prompt_tokens"]
image_id = int(sys.argv[3])
ok = image_id not in plain and image_id in raw
if not ok: print("FAIL: <image> id %d: plain %s raw %s" % (image_id, plain, raw))
sys.exit(0 if ok else 1)
PYEOF

# Ctrl-C during an answer: the generation is cancelled and ask exits 130. To be sure
# the signal lands during the answer, stdout is a FIFO whose buffer is already full:
# the first token's write blocks until the signal has been sent and the FIFO drained.
if command -v mkfifo >/dev/null && command -v dd >/dev/null; then
    mkfifo "$tmp/fifo"
    exec 3<>"$tmp/fifo"
    head -c 65536 /dev/zero >&3
    "$bin" ask -m "$model" -p "Hi" -n 50 >"$tmp/fifo" 2>"$tmp/sigerr" &
    pid=$!
    sleep 1
    kill -INT $pid
    sleep 0.3
    dd bs=65536 count=1 iflag=fullblock <&3 >/dev/null 2>&1
    wait $pid
    rc=$?
    dd bs=65536 count=1 iflag=nonblock <&3 >/dev/null 2>&1
    exec 3>&-
    check '[ $rc -eq 130 ] && grep -q interrupted "$tmp/sigerr"' "Ctrl-C during ask: rc $rc ($(cat "$tmp/sigerr"))"
fi

# chat from a pipe
echo "not an image" >"$tmp/broken.png"
printf 'Hello\n/image %s\nWhat is this?\n/image %s\n/image %s\n/foo bar\n/help\n/reset\nAgain\n/reset all\nThird\n/quit\nnot reached\n' \
    "$img/red_square.png" "$tmp/nope.png" "$tmp/broken.png" |
    "$bin" chat -m "$model" -n 3 >"$tmp/chat" 2>"$tmp/chat_err"
rc=$?
check '[ $rc -eq 0 ]' "chat exit status $rc ($(cat "$tmp/chat_err"))"
check 'grep -q "conversation cleared; keeping 1 image" "$tmp/chat_err"' "/reset must keep the image and say so"
check 'grep -q "images dropped" "$tmp/chat_err"' "/reset all must say the images are dropped"
check 'grep -q "red_square.png attached" "$tmp/chat_err"' "/image not confirmed"
check 'grep -q "nope.png" "$tmp/chat_err"' "bad /image not reported"
check 'grep -q "broken.png.*IMAGE_DECODE" "$tmp/chat_err" && ! grep -q "broken.png attached" "$tmp/chat_err"' \
    "an undecodable /image must be refused at once, not confirmed"
check 'grep -q "unknown command /foo" "$tmp/chat_err"' "unknown /command not rejected"
check 'grep -q "/reset all" "$tmp/chat_err"' "/help does not list the commands"
# four answered turns (Hello, What is this?, Again, Third); /foo and /help are not sent
check '[ "$(wc -l <"$tmp/chat")" -eq 4 ]' "chat printed $(wc -l <"$tmp/chat") lines, expected 4"

# a full context is explained, with the way out
printf 'Hello there\nAnd again\nAnd again\n' | "$bin" chat -m "$model" -c 24 -n 8 >"$tmp/chat" 2>"$tmp/chat_err"
check 'grep -q "filled the model.s context" "$tmp/chat_err" && grep -q "/reset" "$tmp/chat_err"' \
    "full context not explained: $(cat "$tmp/chat_err")"

[ $fail -eq 0 ] && echo "test_cli_ask: ok"
exit $fail
