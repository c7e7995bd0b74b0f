#!/usr/bin/env bash
# test_cli_devices.sh - `idefics devices` (issue 16; fixes known bug: stray
# arguments were ignored and the CPU backend's kernels were not listed):
#   test_cli_devices.sh IDEFICS_BIN
# Text output starts with the CPU backend and its kernel set; --json is one
# object whose first device is the CPU backend with a non-empty "kernels", and
# every OpenCL device AUTO skips carries a reason; a stray argument is a usage
# error (exit 2) naming it; without an OpenCL library the CPU entry is still
# listed, with the reason on a "no OpenCL device" line, and the exit is 0.
set -u
bin=$1
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$bin" devices >"$tmp/txt" 2>&1
rc=$?
cat "$tmp/txt"
check '[ $rc -eq 0 ]' "devices: exit $rc"
check 'head -n1 "$tmp/txt" | grep -Eq "^cpu: the native CPU backend, [0-9]+ cores, kernels [a-z0-9-]+$"' "first line names the CPU kernels"

"$bin" devices --json >"$tmp/json" 2>&1
rc=$?
cat "$tmp/json"
check '[ $rc -eq 0 ]' "devices --json: exit $rc"
check 'head -n1 "$tmp/json" | grep -qx "{\"devices\": \["' "--json opens one object"
check 'sed -n 2p "$tmp/json" | grep -Eq "\"backend\": \"cpu\".*\"kernels\": \"[a-z0-9-]+\""' "--json: CPU entry first, with kernels"
check '! grep "\"auto\": false" "$tmp/json" | grep -q "\"auto_skip_reason\": \"\""' "--json: every skipped device has a reason"
check 'tail -n1 "$tmp/json" | grep -q "^], \"opencl_note\": \".*\"}$"' "--json closes the object"

"$bin" devices --bogus >"$tmp/out" 2>"$tmp/err"
rc=$?
check '[ $rc -eq 2 ]' "a stray argument: exit $rc, expected 2"
check 'grep -q -- "--bogus" "$tmp/err"' "the usage error names the argument"
check '[ ! -s "$tmp/out" ]' "nothing on stdout for a usage error"

IDEFICS_OPENCL_LIB=/nonexistent/libOpenCL-missing.so "$bin" devices >"$tmp/nolib" 2>&1
rc=$?
cat "$tmp/nolib"
check '[ $rc -eq 0 ]' "without OpenCL: exit $rc"
check 'grep -q "^cpu: the native CPU backend" "$tmp/nolib"' "without OpenCL: the CPU entry is listed"
check 'grep -q "^no OpenCL device: .*libOpenCL-missing" "$tmp/nolib"' "without OpenCL: the reason names the library"

[ $fail -eq 0 ] && echo "test_cli_devices: all checks passed"
exit $fail
