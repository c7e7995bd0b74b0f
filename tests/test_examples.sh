#!/usr/bin/env bash
# test_examples.sh - the programs in examples/ on the demo model and example images:
#   test_examples.sh BUILD_EXAMPLES_DIR MODEL.idfx EXAMPLES_DIR
# simple answers a shape question with a shape word; batch_caption captions all six
# images (at least 4 exactly as examples/images.md says; a missing file is skipped
# with exit 1); fewshot builds a three-image prompt and answers; chat_stream --fresh
# answers three questions about one image with a shape, a colour and a count.
set -u
ex=$1 model=$2 img=$3
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }

"$ex/example-simple" "$model" "$img/shapes-01.png" "What shape is in the image?" >"$tmp/simple" 2>"$tmp/err"
rc=$?
echo "simple: $(cat "$tmp/simple") ($(cat "$tmp/err"))"
check '[ $rc -eq 0 ] && grep -Eqx "circle|square|triangle" "$tmp/simple"' "simple: rc $rc"
check 'grep -q "finished: stop" "$tmp/err"' "simple: finish reason"
"$ex/example-simple" "$model" "$tmp/missing.png" "Hi" >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 1 ] && grep -q missing.png "$tmp/err"' "simple with a missing image: rc $rc"

"$ex/example-batch_caption" "$model" "$img"/shapes-0[1-6].png >"$tmp/caps" 2>"$tmp/err"
rc=$?
cat "$tmp/caps"
check '[ $rc -eq 0 ] && [ "$(grep -c " background\.$" "$tmp/caps")" -eq 6 ]' "batch_caption: rc $rc, $(wc -l <"$tmp/caps") lines"
right=0
while IFS='|' read -r _ file _ truth _; do
    file=$(echo "$file" | tr -d ' `') truth=$(echo "$truth" | sed 's/^ *//; s/ *$//')
    grep -qxF "$img/$file: $truth" "$tmp/caps" && right=$((right + 1))
done < <(grep '^| `shapes-' "$img/images.md")
echo "batch_caption: $right of 6 captions exactly right"
check '[ $right -ge 4 ]' "batch_caption: only $right of 6 captions right"
"$ex/example-batch_caption" "$model" "$img/shapes-01.png" "$tmp/missing.png" >"$tmp/caps2" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 1 ] && [ "$(wc -l <"$tmp/caps2")" -eq 1 ] && grep -q "skipping $tmp/missing.png" "$tmp/err"' \
    "batch_caption with a missing image: rc $rc"

"$ex/example-fewshot" "$model" "$img/shapes-01.png" 4 "$img/shapes-02.png" 3 "$img/shapes-05.png" >"$tmp/few" 2>"$tmp/err"
rc=$?
echo "fewshot: $(cat "$tmp/few")"
check '[ $rc -eq 0 ] && [ -n "$(tr -d " \n" <"$tmp/few")" ]' "fewshot: rc $rc ($(cat "$tmp/err"))"
"$ex/example-fewshot" --ids "$model" "$img/shapes-01.png" 4 "$img/shapes-02.png" 3 "$img/shapes-05.png" >"$tmp/ids"
check '[ "$(wc -w <"$tmp/ids")" -gt 40 ]' "fewshot --ids printed $(wc -w <"$tmp/ids") ids"

printf 'What shape is in the image?\n\nWhat colour are the shapes?\nHow many shapes are there?\n' |
    "$ex/example-chat_stream" "$model" "$img/shapes-05.png" --fresh >"$tmp/chat" 2>"$tmp/err"
rc=$?
echo "chat_stream: $(tr '\n' '|' <"$tmp/chat")"
check '[ $rc -eq 0 ] && [ "$(wc -l <"$tmp/chat")" -eq 3 ]' "chat_stream: rc $rc, $(wc -l <"$tmp/chat") lines"
check 'sed -n 1p "$tmp/chat" | grep -Eqx "circle|square|triangle"' "chat_stream: first answer is not a shape"
check 'sed -n 2p "$tmp/chat" | grep -Eqx "red|green|blue|yellow|purple|orange"' "chat_stream: second answer is not a colour"
check 'sed -n 3p "$tmp/chat" | grep -Eqx "[1-4]"' "chat_stream: third answer is not a count"

[ $fail -eq 0 ] && echo "test_examples: ok"
exit $fail
