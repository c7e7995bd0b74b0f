#!/usr/bin/env bash
# tests/faults/run-faults.sh - runs every row of tests/faults/FAULTS.txt (format
# there) and prints one result line per row, then "faults: N passed, M failed".
# Usage: run-faults.sh IDEFICS CONVERT MAKE_FAULTS FAULT_SIGBUS SRC_ROOT WORKDIR [NAME...]
# With NAMEs, only those rows run. Exit 0 when every row passed.
set -uo pipefail
if [ $# -lt 6 ]; then
    echo "usage: $0 IDEFICS CONVERT MAKE_FAULTS FAULT_SIGBUS SRC_ROOT WORKDIR [NAME...]" >&2
    exit 2
fi
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
export IDEFICS=$(abs "$1") CONVERT=$(abs "$2") MKF=$(abs "$3") SIGBUSP=$(abs "$4") SRC=$(abs "$5")
W=$(abs "$6")
shift 6
only=" $* "
table=$SRC/tests/faults/FAULTS.txt

rm -rf "$W"
mkdir -p "$W/cache"
export W IDEFICS_CACHE_DIR=$W/cache
cd "$W" || exit 1
# shared inputs
export MODEL=$W/model.idfx IMG=$SRC/examples/shapes-01.png HF=$W/hf RAW=$W/raw.idfx
cp "$SRC/models/tiny-shapes.idfx" "$MODEL"
cp -r "$SRC/tests/fixtures/demo/hf" "$HF"
if ! "$CONVERT" "$HF" -o "$RAW" --compress none -q -j 1; then
    echo "faults: cannot convert the demo checkpoint" >&2
    exit 1
fi

pass=0 fail=0
while IFS= read -r line; do
    case $line in '' | '#'*) continue ;; esac
    # NAME | SETUP | COMMAND (may hold " | ") | EXIT | MESSAGE
    name=${line%% | *}; rest=${line#* | }
    setup=${rest%% | *}; rest=${rest#* | }
    msg=${rest##* | }; rest=${rest% | *}
    want=${rest##* | }; cmd=${rest% | *}
    key=${name%% *}
    [ "$only" != "  " ] && [[ $only != *" $key "* ]] && continue
    if [ "$setup" != - ]; then
        if ! out=$(bash -c "$setup" 2>&1); then
            printf 'FAIL %-26s setup failed: %s\n' "$key" "$out"
            fail=$((fail + 1))
            continue
        fi
    fi
    out=$(timeout 60 bash -c "$cmd" 2>&1)
    got=$?
    ok=1
    [ "$got" = "$want" ] || ok=0
    if [ "$msg" != - ]; then
        if [[ $msg == =* ]]; then
            [ "$out" = "${msg#=}" ] || ok=0
        else
            grep -q -F -- "$msg" <<<"$out" || ok=0
        fi
    fi
    # one line of the output, escaped, as evidence
    first=$(grep -v '^$' <<<"$out" | grep -F -m1 -- "${msg#=}" 2>/dev/null || true)
    [ -n "$first" ] || first=$(grep -v '^$' <<<"$out" | tail -n1)
    first=$(printf '%s' "$first" | cut -c1-110 | cat -v)
    if [ $ok = 1 ]; then
        printf 'ok   %-26s exit %-3s %s\n' "$key" "$got" "$first"
        pass=$((pass + 1))
    else
        printf 'FAIL %-26s exit %s (want %s), want message: %s\n     output: %s\n' "$key" "$got" "$want" "$msg" \
            "$(printf '%s' "$out" | tail -n5 | cat -v)"
        fail=$((fail + 1))
    fi
done <"$table"
echo "faults: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
