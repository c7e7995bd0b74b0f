#!/usr/bin/env bash
# Runs `tools/run-demo --synthetic` on an existing build folder and checks that it
# finishes (exit 0, its last line) rather than dying of SIGPIPE (exit 141).
# Usage: test_run_demo.sh SRC_ROOT BUILD_DIR
set -uo pipefail
out=$(IDEFICS_BUILD_DIR=$2 "$1/tools/run-demo" --synthetic 2>&1)
rc=$?
printf '%s\n' "$out" | tail -n 20
if [ $rc -ne 0 ]; then
    echo "run-demo --synthetic exited $rc" >&2
    exit 1
fi
grep -q "demo finished" <<<"$out" || { echo "no 'demo finished' line" >&2; exit 1; }
grep -q "verify: .* 0 failed" <<<"$out" || { echo "inspect --verify summary missing" >&2; exit 1; }
echo "run-demo --synthetic: ok"
