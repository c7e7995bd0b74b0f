#!/usr/bin/env bash
# test_cli_ask.sh - `idefics ask` and `idefics chat` on a tiny converted model:
#   test_cli_ask.sh IDEFICS_BIN MODEL.idfx IMAGES_DIR
# ask: the streamed answer equals the --json "text", the JSON lists the prompt
# and generated ids, bad input gives exit 1 (runtime) or 2 (usage) with the
# message on stderr and nothing on stdout. chat: piped turns, /image, /reset,
# a bad /image is reported and the chat goes on. Skips (77) without python3
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
check '[ $? -eq 0 ]' "ask exit status ($(cat "$tmp/err1"))"
"$bin" ask -m "$model" -i "$img/red_square.png" -p "What is in this image?" -n 12 --json >"$tmp/json" 2>"$tmp/err2"
check '[ $? -eq 0 ]' "ask --json exit status ($(cat "$tmp/err2"))"
python3 - "$tmp/json" "$tmp/stream" <<'EOF' || fail=1
import json, sys
j = json.loads(open(sys.argv[1], encoding="utf-8").read())
stream = open(sys.argv[2], "rb").read().decode("utf-8")
ok = True
def need(c, msg):
    global ok
    if not c: print("FAIL:", msg); ok = False
need(j["status"] == "IDEFICS_OK", "status %s" % j["status"])
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
check '[ $? -eq 2 ]' "ask without -p must be a usage error"
"$bin" ask -m "$model" -p "Hi" --temp hot >"$tmp/out" 2>"$tmp/err"
check '[ $? -eq 2 ]' "--temp hot must be a usage error"

# chat from a pipe
printf 'Hello\n/image %s\nWhat is this?\n/image %s\n/reset\nAgain\n/quit\nnot reached\n' \
    "$img/red_square.png" "$tmp/nope.png" |
    "$bin" chat -m "$model" -n 3 >"$tmp/chat" 2>"$tmp/chat_err"
rc=$?
check '[ $rc -eq 0 ]' "chat exit status $rc ($(cat "$tmp/chat_err"))"
check 'grep -q "conversation cleared" "$tmp/chat_err"' "/reset not acknowledged"
check 'grep -q "nope.png" "$tmp/chat_err"' "bad /image not reported"
# three answered turns, each ended by a newline (answers of this model may hold newlines too)
check '[ "$(wc -l <"$tmp/chat")" -ge 3 ]' "chat printed $(wc -l <"$tmp/chat") lines"

[ $fail -eq 0 ] && echo "test_cli_ask: ok"
exit $fail
