#!/usr/bin/env bash
# test_demo_caption.sh - `idefics caption` with the demo model:
#   test_demo_caption.sh IDEFICS_BIN MODEL.idfx FIXTURE_DIR SCRATCH_DIR
# A folder holding one good image, one corrupt .png and a non-image file gives
# one caption line on stdout (the good image, a sentence ending in
# "background.", as every demo caption does) and one error record
# ("PATH:! STATUS: message") for the corrupt file, its message on stderr, the
# non-image counted, and exit 1 (issue 12: a failure is never hidden). Only
# good images: exit 0. --json: one JSON object per image with path, status,
# caption and ms. A folder's images come sorted.
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
check '[ $rc -eq 1 ]' "exit status $rc with one good and one broken image (expected 1)"
check '[ "$(wc -l <"$tmp/out")" -eq 2 ]' "two records expected"
check 'grep -Eq "^$tmp/dir/good.png: [A-Z].* background\.$" "$tmp/out"' "caption line for good.png"
check 'grep -q "^$tmp/dir/broken.png:! IDEFICS_ERR_IMAGE_DECODE: " "$tmp/out"' "error record for broken.png"
check 'grep -q "^idefics caption: $tmp/dir/broken.png: image: " "$tmp/err"' "message for broken.png, path once"
check '! grep -q "notes.txt" "$tmp/out"' "a .txt file is not an image"
check 'grep -q "1 non-image file(s) not read" "$tmp/err"' "the .txt file is counted"

"$bin" caption -m "$model" "$tmp/dir/broken.png" "$tmp/missing.png" >"$tmp/out2" 2>"$tmp/err2"
rc=$?
check '[ $rc -eq 1 ]' "exit status $rc with no readable image (expected 1)"
check '[ "$(grep -c ":! IDEFICS_ERR" "$tmp/out2")" -eq 2 ]' "two error records"
check '[ "$(grep -c "^idefics caption: $tmp/" "$tmp/err2")" -eq 2 ]' "two error messages"

cp "$fx/test-002.png" "$tmp/dir/a.png"
rm "$tmp/dir/broken.png"
"$bin" caption -m "$model" --json -n 32 "$tmp/dir" >"$tmp/out3" 2>"$tmp/err3"
rc=$?
cat "$tmp/out3"
check '[ $rc -eq 0 ]' "--json exit status $rc"
check '[ "$(wc -l <"$tmp/out3")" -eq 2 ]' "two JSON lines"
check 'head -n 1 "$tmp/out3" | grep -Eq "^\{\"path\":\"$tmp/dir/a.png\",\"status\":\"ok\",\"caption\":\"[^\"]+\",.*\"ms\":[0-9.]+,"' \
    "first JSON line is a.png (sorted) with path, status, caption, ms"

"$bin" caption -m "$model" >/dev/null 2>&1
check '[ $? -eq 2 ]' "no input is a usage error"

[ $fail -eq 0 ] && echo "caption: all checks passed"
exit $fail
