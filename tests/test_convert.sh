#!/usr/bin/env bash
# test_convert.sh - idefics-convert end to end on the tiny HF checkpoint in
# tests/fixtures/convert/tiny-hf (made by transformers, see make_tiny_hf.py):
# every preset's output opens, verifies and holds the reference bytes
# (test_convert_check), --repack keeps the tensors, `idefics inspect` reads it,
# and a missing tensor, a wrong shape, an unknown architecture and a truncated
# shard each fail with an error naming it.
#   test_convert.sh CONVERT CHECK IDEFICS_CLI FIXTURE_DIR
set -u
convert=$1 check=$2 cli=$3 fixture=$4
tok_src=${IDEFICS_SHARED_REF:-/work/shared/reference}/llama-tokenizer/tokenizer.model
if [ ! -f "$tok_src" ]; then
    echo "SKIP: no LLaMA tokenizer at $tok_src"
    exit 77
fi
tmp=$(mktemp -d /tmp/idefics-test-convert-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# An instruct-style tokenizer folder: the shared tokenizer.model plus IDEFICS's added tokens.
mkdir "$tmp/tok"
ln -s "$tok_src" "$tmp/tok/tokenizer.model"
printf '{"<fake_token_around_image>": 32000, "<image>": 32001, "<end_of_utterance>": 32002}\n' \
    > "$tmp/tok/added_tokens.json"

# ---- good conversions
run_ok() { # name preset search template [extra converter args...]
    local name=$1 preset=$2 search=$3 tmpl=$4
    shift 4
    if ! "$convert" "$fixture" -o "$tmp/$name.idfx" --tokenizer "$tmp/tok" -j 2 "$@" > "$tmp/$name.log" 2>&1; then
        fail "convert $name: exit $?"; cat "$tmp/$name.log" >&2; return
    fi
    "$check" "$tmp/$name.idfx" "$fixture" "$preset" "$search" "$tmpl" || fail "check $name"
}
run_ok q4 q4 8 idefics-instruct
grep -q "peak RSS" "$tmp/q4.log" && grep -q "bits/weight" "$tmp/q4.log" || fail "no summary in the log"
grep -q "lm_head.weight" "$tmp/q4.log" || fail "no per-tensor progress lines when stderr is not a terminal"
run_ok q4s3 q4 3 idefics-instruct --search 3 --compress none -q
[ -s "$tmp/q4s3.log" ] && fail "-q still printed: $(head -3 "$tmp/q4s3.log")"
run_ok q8 q8 0 idefics-instruct --quant q8 --compress zstd:3
run_ok f16 f16 0 idefics-instruct --quant f16
run_ok f32 f32 0 idefics-instruct --quant f32 --compress none

# the base tokenizer (no <end_of_utterance>) gives the base chat template
"$convert" "$fixture" -o "$tmp/base.idfx" --tokenizer "$(dirname "$tok_src")" -q \
    && "$check" "$tmp/base.idfx" "$fixture" q4 8 idefics-base || fail "base template"

# repack keeps every tensor byte: the q4 check passes on the repacked file
"$convert" --repack "$tmp/q4.idfx" "$tmp/q4-raw.idfx" --compress none -q || fail "repack exit"
"$check" "$tmp/q4-raw.idfx" "$fixture" q4 8 idefics-instruct || fail "check after repack"
"$cli" inspect "$tmp/q4.idfx" > "$tmp/inspect.txt" 2>&1 || fail "idefics inspect exit"
grep -q "model.perceiver_resampler.latents" "$tmp/inspect.txt" || fail "inspect lacks a tensor"

# ---- errors, each naming what is wrong
bad_case() { # name expected-exit-status-name expected-text sed-script [file-to-break]
    local name=$1 status=$2 text=$3 script=$4
    rm -rf "$tmp/bad" && cp -r "$fixture" "$tmp/bad"
    sed -i "$script" "$tmp/bad/config.json"
    if "$convert" "$tmp/bad" -o "$tmp/bad.idfx" --tokenizer "$tmp/tok" -q > "$tmp/bad.log" 2>&1; then
        fail "$name: converter succeeded"
    fi
    grep -qF -- "$text" "$tmp/bad.log" || fail "$name: message lacks '$text': $(cat "$tmp/bad.log")"
    grep -qF -- "$status" "$tmp/bad.log" || fail "$name: message lacks $status: $(cat "$tmp/bad.log")"
    [ -e "$tmp/bad.idfx" ] && fail "$name: an output file was left behind"
}
# (LlamaForCausalLM is accepted as a text-only model: tests/test_llama.c)
bad_case "unknown architecture" IDEFICS_ERR_UNSUPPORTED "architecture [MistralForCausalLM] with model_type 'mistral'" \
    's/"IdeficsForVisionText2Text"/"MistralForCausalLM"/; s/"model_type": "idefics",$/"model_type": "mistral",/'
bad_case "missing tensor" IDEFICS_ERR_MISSING_TENSOR \
    "tensor 'model.gated_cross_attn_layers.2.alpha_cross_attn' [1] is missing" \
    's/"num_hidden_layers": 4/"num_hidden_layers": 6/'
bad_case "wrong shape" IDEFICS_ERR_BAD_SHAPE \
    "tensor 'model.gated_cross_attn_layers.0.mlp.gate_proj.weight' has shape [128, 64], config.json implies [96, 64]" \
    's/"intermediate_size": 128/"intermediate_size": 96/'
bad_case "bad config value" IDEFICS_ERR_BAD_CONFIG "hidden_size 64 is not a multiple of num_attention_heads 3" \
    's/"num_attention_heads": 2,/"num_attention_heads": 3,/'

# a truncated shard is named with its path
rm -rf "$tmp/bad" && cp -r "$fixture" "$tmp/bad"
shard=$(ls "$tmp/bad"/model-00001-of-*.safetensors)
truncate -s -1000 "$shard"
"$convert" "$tmp/bad" -o "$tmp/bad.idfx" --tokenizer "$tmp/tok" -q > "$tmp/bad.log" 2>&1 && fail "truncated: succeeded"
grep -q "$(basename "$shard"): tensor '.*outside the data area" "$tmp/bad.log" || fail "truncated: $(cat "$tmp/bad.log")"

# the index must agree with the shards: a tensor it places where it is not is an error naming it
rm -rf "$tmp/bad" && cp -r "$fixture" "$tmp/bad"
sed -i 's/"model.norm.weight"/"model.extra_norm.weight"/' "$tmp/bad/model.safetensors.index.json"
"$convert" "$tmp/bad" -o "$tmp/bad.idfx" --tokenizer "$tmp/tok" -q > "$tmp/bad.log" 2>&1 && fail "index lie: succeeded"
grep -q "'model.extra_norm.weight' is not in" "$tmp/bad.log" || fail "index lie: $(cat "$tmp/bad.log")"

# an unexpected extra tensor is a warning, not an error: rename one in its shard's
# header (same length, so the header stays valid) and in the index
rm -rf "$tmp/bad" && cp -r "$fixture" "$tmp/bad"
sed -i 's/post_layernorm\.bias/post_layernorX.bias/' "$tmp/bad"/*.safetensors "$tmp/bad/model.safetensors.index.json"
if "$convert" "$tmp/bad" -o "$tmp/extra.idfx" --tokenizer "$tmp/tok" > "$tmp/bad.log" 2>&1; then
    grep -q "warning: ignoring unexpected tensor 'model.vision_model.post_layernorX.bias'" "$tmp/bad.log" \
        || fail "extra tensor: no warning"
else
    fail "extra tensor: conversion failed: $(tail -3 "$tmp/bad.log")"
fi

# preprocessor_config.json with "image_mean": null / "image_std": null (what transformers
# writes by default): the processor's CLIP constants, not an error
rm -rf "$tmp/bad" && cp -r "$fixture" "$tmp/bad"
printf '{"image_processor_type": "IdeficsImageProcessor", "image_size": 28, "image_mean": null, "image_std": null}\n' \
    > "$tmp/bad/preprocessor_config.json"
if "$convert" "$tmp/bad" -o "$tmp/nullmean.idfx" --tokenizer "$tmp/tok" -q > "$tmp/bad.log" 2>&1; then
    "$cli" inspect "$tmp/nullmean.idfx" > "$tmp/nullmean.txt" 2>&1
    grep -q "vision.image_mean = \[3 F32: 0.48145467, 0.457827508, 0.408210725\]" "$tmp/nullmean.txt" \
        || fail "null image_mean: not the CLIP mean: $(grep image_mean "$tmp/nullmean.txt")"
    grep -q "vision.image_std = \[3 F32: 0.268629551, 0.26130259, 0.275777102\]" "$tmp/nullmean.txt" \
        || fail "null image_std: not the CLIP std: $(grep image_std "$tmp/nullmean.txt")"
else
    fail "null image_mean/image_std: conversion failed: $(cat "$tmp/bad.log")"
fi
# a folder with only pytorch_model.bin: the error points at docs/MODELS.md
rm -rf "$tmp/bad" && cp -r "$fixture" "$tmp/bad"
rm "$tmp/bad"/*.safetensors "$tmp/bad/model.safetensors.index.json"
echo "not really a pickle" > "$tmp/bad/pytorch_model.bin"
"$convert" "$tmp/bad" -o "$tmp/bad.idfx" --tokenizer "$tmp/tok" -q > "$tmp/bad.log" 2>&1 && fail "pytorch_model.bin only: succeeded"
grep -q "only PyTorch weights (pytorch_model.bin).*docs/MODELS.md" "$tmp/bad.log" \
    || fail "pytorch_model.bin only: no hint: $(cat "$tmp/bad.log")"

if [ "$fails" -ne 0 ]; then
    echo "$fails failure(s)" >&2
    exit 1
fi
echo "converter end to end: all checks passed"
