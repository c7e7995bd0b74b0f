#!/usr/bin/env bash
# test_get_model.sh - tools/get-model without a network: a huggingface_hub cache laid
# out as the Hub's snapshot of HuggingFaceM4/idefics-9b-instruct (refs/main ->
# snapshots/<commit>/, holding the tiny transformers-made checkpoint and the LLaMA
# tokenizer), read with --offline:
#   test_get_model.sh GET_MODEL IDEFICS_CONVERT IDEFICS_CLI TINY_HF_DIR
# --dry-run lists the files and the converter command and writes nothing; --board
# takes the board's layout; a real run converts (inspect reads the result); a
# pytorch_model.bin-only snapshot and an empty cache fail with clear messages.
# Skips (77) without python3, huggingface_hub (pip install huggingface_hub) or the tokenizer.
set -u
getmodel=$1 convert=$2 cli=$3 tiny=$4
tok=${IDEFICS_SHARED_REF:-/work/shared/reference}/llama-tokenizer/tokenizer.model
command -v python3 >/dev/null || { echo "SKIP: python3 not found"; exit 77; }
python3 -c "import huggingface_hub" 2>/dev/null ||
    { echo "SKIP: huggingface_hub is not installed (pip install huggingface_hub); tools/get-model needs it"; exit 77; }
[ -f "$tok" ] || { echo "SKIP: no LLaMA tokenizer at $tok"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HOME=$tmp/hf-home

# the Hub cache layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}
commit=0123456789abcdef0123456789abcdef01234567
repo=$tmp/hub/models--HuggingFaceM4--idefics-9b-instruct
mkdir -p "$repo/refs" "$repo/snapshots/$commit"
printf '%s' $commit >"$repo/refs/main"
cp "$tiny"/* "$repo/snapshots/$commit/"
cp "$tok" "$repo/snapshots/$commit/tokenizer.model"
printf '{"<fake_token_around_image>": 32000, "<image>": 32001, "<end_of_utterance>": 32002}\n' \
    >"$repo/snapshots/$commit/added_tokens.json"

"$getmodel" --cache-dir "$tmp/hub" --offline --dry-run --convert "$convert" -o "$tmp/out.idfx" >"$tmp/dry" 2>&1
rc=$?
cat "$tmp/dry"
check '[ $rc -eq 0 ]' "dry run: exit $rc"
check 'grep -q "model-00001-of-00002.safetensors" "$tmp/dry" && grep -q "tokenizer.model" "$tmp/dry"' "dry run lists the files"
check 'grep -q "would run: .*idefics-convert .*snapshots/$commit -o $tmp/out.idfx --quant q4 --layout rowtile" "$tmp/dry"' \
    "dry run shows the converter command"
check '[ ! -e "$tmp/out.idfx" ]' "dry run wrote the output"

"$getmodel" --cache-dir "$tmp/hub" --offline --dry-run --board raspberry-pi-5 --convert "$convert" >"$tmp/dry2" 2>&1
check 'grep -q -- "--layout grouptile" "$tmp/dry2"' "--board raspberry-pi-5 must give grouptile: $(tail -1 "$tmp/dry2")"
"$getmodel" --cache-dir "$tmp/hub" --offline --dry-run --board no-such-board >"$tmp/dry3" 2>&1
rc=$?
check '[ $rc -eq 2 ] && grep -q "raspberry-pi-5" "$tmp/dry3"' "unknown board: exit $rc, $(cat "$tmp/dry3")"

"$getmodel" --cache-dir "$tmp/hub" --offline --convert "$convert" -o "$tmp/out.idfx" --layout grouptile -j 2 \
    >"$tmp/run" 2>"$tmp/run_err"
rc=$?
check '[ $rc -eq 0 ] && [ "$(cat "$tmp/run")" = "$tmp/out.idfx" ]' "conversion: exit $rc ($(tail -3 "$tmp/run_err"))"
"$cli" inspect "$tmp/out.idfx" >"$tmp/inspect" 2>&1
check 'grep -q "general.name = \"idefics-9b-instruct\"" "$tmp/inspect" && grep -q "layout grouptile" "$tmp/inspect"' \
    "inspect of the result: $(grep -E "general.name|converter.options" "$tmp/inspect")"

# a snapshot with only pytorch_model.bin: the hint to docs/MODELS.md
rm "$repo/snapshots/$commit"/*.safetensors "$repo/snapshots/$commit/model.safetensors.index.json"
echo "not a pickle" >"$repo/snapshots/$commit/pytorch_model.bin"
"$getmodel" --cache-dir "$tmp/hub" --offline --dry-run >"$tmp/bin" 2>&1
rc=$?
check '[ $rc -eq 1 ] && grep -q "only PyTorch weights.*docs/MODELS.md" "$tmp/bin"' "pytorch_model.bin only: $(cat "$tmp/bin")"

# nothing in the cache for another repository: a clear failure, offline
"$getmodel" HuggingFaceM4/idefics-9b --cache-dir "$tmp/hub" --offline --dry-run >"$tmp/none" 2>&1
rc=$?
check '[ $rc -eq 1 ] && grep -q "download of HuggingFaceM4/idefics-9b failed" "$tmp/none"' "empty cache: $(cat "$tmp/none")"

# --from-folder: no Hub at all
"$getmodel" --from-folder "$tiny" --dry-run --convert "$convert" >"$tmp/ff" 2>&1
rc=$?
check '[ $rc -eq 1 ] && grep -q "no tokenizer" "$tmp/ff"' "--from-folder without a tokenizer: $(cat "$tmp/ff")"

[ $fail -eq 0 ] && echo "test_get_model: ok"
exit $fail
