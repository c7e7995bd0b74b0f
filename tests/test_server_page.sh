#!/usr/bin/env bash
# test_server_page.sh IDEFICS MODEL EXAMPLES_DIR SCRATCH - the page at / of `idefics serve`
# in headless Chromium (Debian `chromium`): it loads the page, asks about the
# bundled sample image (examples/shapes-01.png, through ?sample=1&ask=...),
# and the streamed answer must appear in the DOM (the conversation and the
# ARIA live region) equal to `idefics ask`'s. Saves SCRATCH/server-page.png.
set -euo pipefail
IDEFICS=$1 MODEL=$2 EX=$3 SCRATCH=$4
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$CHROME" ] || { echo "SKIP: chromium is not installed (Debian: apt install chromium)"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl is not installed"; exit 77; }
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
"$IDEFICS" serve --port 0 -t 2 -m "$MODEL" >"$SCRATCH/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
PORT=""
for _ in $(seq 100); do
    PORT=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$SCRATCH/server.log" 2>/dev/null | grep -o ':[0-9][0-9]*/' | tr -d :/ || true)
    [ -n "$PORT" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health")" = 200 ] && break
    sleep 0.1
done
Q="How many shapes are there?"
want=$("$IDEFICS" ask -m "$MODEL" -i "$EX/shapes-01.png" -p "$Q" -t 2 2>/dev/null)
PAGE="http://127.0.0.1:$PORT/?sample=1&ask=How%20many%20shapes%20are%20there%3F"

# Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
# NUL-separated JSON on fds 3 and 4), so the test waits for the answer in real
# time rather than guessing a delay.
mkfifo "$SCRATCH/to-chrome" "$SCRATCH/from-chrome"
HOME="$SCRATCH" timeout 180 "$CHROME" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --user-data-dir="$SCRATCH/profile" --window-size=900,1100 --remote-debugging-pipe about:blank \
    3<"$SCRATCH/to-chrome" 4>"$SCRATCH/from-chrome" 2>"$SCRATCH/chrome.log" &
CPID=$!
trap 'kill $PID $CPID 2>/dev/null || true; wait $PID $CPID 2>/dev/null || true' EXIT
exec 5>"$SCRATCH/to-chrome" 6<"$SCRATCH/from-chrome"
msg_id=0
# cdp METHOD PARAMS_JSON [SESSION]: send a command, print its "result" (exit 1 on an error reply)
cdp() {
    msg_id=$((msg_id + 1))
    jq -cn --argjson id "$msg_id" --arg m "$1" --argjson p "$2" --arg s "${3:-}" \
        '{id: $id, method: $m, params: $p} + (if $s == "" then {} else {sessionId: $s} end)' | tr -d '\n' >&5
    printf '\0' >&5
    local reply
    while IFS= read -r -d '' -u 6 reply; do
        [ "$(jq -r '.id // empty' <<<"$reply")" = "$msg_id" ] || continue
        jq -e 'has("result")' <<<"$reply" >/dev/null || { echo "CDP $1: $reply" >&2; return 1; }
        jq -c .result <<<"$reply"
        return 0
    done
    return 1
}
js() { cdp Runtime.evaluate "$(jq -cn --arg e "$1" '{expression: $e, returnByValue: true}')" "$SESSION" | jq -r '.result.value // empty'; }
TARGET=$(cdp Target.createTarget "$(jq -cn --arg u "$PAGE" '{url: $u}')" | jq -r .targetId)
SESSION=$(cdp Target.attachToTarget "{\"targetId\":\"$TARGET\",\"flatten\":true}" | jq -r .sessionId)
live=""
for _ in $(seq 600); do # up to 60 s
    live=$(js "document.getElementById('live').textContent" || true)
    [ -n "$live" ] && break
    sleep 0.1
done
js "document.documentElement.outerHTML" >"$SCRATCH/dom.html"
cdp Page.captureScreenshot '{"format":"png"}' "$SESSION" | jq -r .data | base64 -d >"$SCRATCH/server-page.png" || true
cdp Browser.close '{}' >/dev/null 2>&1 || true
fails=0
if [ "$live" = "Answer: $want" ] && grep -q "<div id=\"live\"[^>]*>Answer: $want</div>" "$SCRATCH/dom.html"; then
    echo "ok: the live region announces 'Answer: $want'"
else
    echo "FAIL: no 'Answer: $want' in the live region"; grep -o '<div id="live"[^<]*</div>' "$SCRATCH/dom.html" || true
    tail -n 5 "$SCRATCH/chrome.log"; fails=1
fi
if grep -q "<span>$want</span>" "$SCRATCH/dom.html"; then
    echo "ok: the conversation shows the answer"
else
    echo "FAIL: the conversation does not show '$want'"; fails=1
fi
if [ -s "$SCRATCH/server-page.png" ]; then echo "ok: screenshot $SCRATCH/server-page.png"; else echo "FAIL: no screenshot"; fails=1; fi
[ "$fails" -eq 0 ]
