#!/usr/bin/env bash
# test_demo_caption.sh - `idefics caption` with the demo model:
#   test_demo_caption.sh IDEFICS_BIN MODEL.idfx FIXTURE_DIR SCRATCH_DIR
# A folder holding one good image, one corrupt .png and a non-image file gives
# exactly one caption line on stdout (the good image, a sentence ending in
# "background.", as every demo caption does), a skip message naming the corrupt
# file on stderr, and exit 0. Only unreadable inputs: exit 1. --json: one JSON
# object per image with path, caption and ms. A folder's images come sorted.
set -u
bin=$1 model=$2 fx=$3 tmp=$4
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
rm -rf "$tmp"
mkdir -p "$tmp/dir"
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }

cp "$fx/test-001.png" "$tmp/dir/good.png"
head -c 64 "$fx/test-000.png" >"$tmp/dir/broken.png" # a PNG cut short after its header
echo "not an image" >"$tmp/dir/notes.txt"

"$bin" caption -m "$model" "$tmp/dir" >"$tmp/out" 2>"$tmp/err"
rc=$?
cat "$tmp/out" "$tmp/err"
check '[ $rc -eq 0 ]' "exit status $rc with one good image"
check '[ "$(wc -l <"$tmp/out")" -eq 1 ]' "one caption line expected"
check 'grep -Eq "^$tmp/dir/good.png: [A-Z].* background\.$" "$tmp/out"' "caption line for good.png"
check 'grep -q "skipping $tmp/dir/broken.png" "$tmp/err"' "skip message for broken.png"
check '! grep -q "notes.txt" "$tmp/out" "$tmp/err"' "a .txt file is not an image"

"$bin" caption -m "$model" "$tmp/dir/broken.png" "$tmp/missing.png" >"$tmp/out2" 2>"$tmp/err2"
rc=$?
check '[ $rc -eq 1 ]' "exit status $rc with no readable image (expected 1)"
check '[ ! -s "$tmp/out2" ]' "nothing on stdout without a caption"
check '[ "$(grep -c skipping "$tmp/err2")" -eq 2 ]' "two skip messages"

cp "$fx/test-002.png" "$tmp/dir/a.png"
"$bin" caption -m "$model" --json -n 32 "$tmp/dir" >"$tmp/out3" 2>"$tmp/err3"
rc=$?
cat "$tmp/out3"
check '[ $rc -eq 0 ]' "--json exit status $rc"
check '[ "$(wc -l <"$tmp/out3")" -eq 2 ]' "two JSON lines"
check 'head -n 1 "$tmp/out3" | grep -Eq "^\{\"path\":\"$tmp/dir/a.png\",\"caption\":\"[^\"]+\",\"ms\":[0-9.]+\}$"' \
    "first JSON line is a.png (sorted) with path, caption, ms"

"$bin" caption -m "$model" >/dev/null 2>&1
check '[ $? -eq 2 ]' "no input is a usage error"

[ $fail -eq 0 ] && echo "caption: all checks passed"
exit $fail
