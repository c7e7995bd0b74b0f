#!/usr/bin/env bash
# test_server.sh IDEFICS MODEL EXAMPLES_DIR SCRATCH - `idefics serve` end to end with curl
# (tools/server, docs/SERVER.md). Every server is started on a free loopback port
# (--port 0; the port is read from its log) and stopped at the end. Checks:
# every endpoint; each error status (400 401 404 405 413 429 503); streaming ==
# non-streaming == `idefics ask`; 8 concurrent clients == the same requests one
# by one; a client that disconnects mid-stream frees its slot (/metrics); a
# follow-up question does not re-encode its image (/metrics); the API key.
set -euo pipefail
IDEFICS=$1 MODEL=$2 EX=$3 SCRATCH=$4
for t in curl jq; do
    command -v $t >/dev/null || { echo "SKIP: $t is not installed (tools/lib/setup.sh installs it)"; exit 77; }
done
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() { # check NAME EXPECTED ACTUAL
    if [ "$2" == "$3" ]; then ok "$1"; else bad "$1: expected [$2], got [$3]"; fi
}

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start NAME ARGS... : starts a server, sets PORT and PID, waits for /health 200
start() {
    local name=$1; shift
    local log="$SCRATCH/$name.log"
    "$IDEFICS" serve --port 0 -t 2 "$@" >"$log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    PORT=""
    for _ in $(seq 100); do
        PORT=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$log" 2>/dev/null | grep -o ':[0-9][0-9]*/' | tr -d :/ || true)
        [ -n "$PORT" ] && break
        sleep 0.1
    done
    [ -n "$PORT" ] || { cat "$log"; echo "FAIL: server $name did not start"; exit 1; }
    URL="http://127.0.0.1:$PORT"
    C="$URL/v1/chat/completions"
    for _ in $(seq 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" = 200 ] && return 0
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    cat "$log"
    echo "FAIL: server $name never became healthy"
    exit 1
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
metric() { curl -s "$URL/metrics" "${@:2}" | awk -v m="$1" '$1 == m {print $2}'; }
busy_wait() { # until a slot is busy (at most 5 s), so the next request finds it taken
    for _ in $(seq 50); do [ "$(metric idefics_slots_busy)" = 1 ] && return 0; sleep 0.1; done
}
status() { curl -s -o "$SCRATCH/body" -w '%{http_code}' "$@" || true; }

# body IMAGE QUESTION [extra JSON fields] : a request with the text before the image
# (the order `idefics ask` uses: the question, then the image)
body() {
    local b64
    b64=$(base64 -w0 "$1")
    printf '{"messages":[{"role":"user","content":[{"type":"text","text":%s},{"type":"image_url","image_url":{"url":"data:image/png;base64,%s"}}]}],"temperature":0%s}' \
        "$(jq -Rn --arg q "$2" '$q')" "$b64" "${3:-}"
}
chat() { curl -s "$URL/v1/chat/completions" -H 'Content-Type: application/json' "$@"; }
# the content of a streamed answer: concatenated deltas, after checking the SSE framing
stream_content() {
    local f=$1
    grep -q '^data: \[DONE\]$' "$f" || { echo "<no [DONE]>"; return; }
    [ "$(tail -n 2 "$f" | head -n 1)" = "data: [DONE]" ] || { echo "<[DONE] not last>"; return; }
    grep '^data: {' "$f" | sed 's/^data: //' | jq -j 'select(.object == "chat.completion.chunk") | .choices[0].delta.content // ""'
}

QUESTIONS=("How many shapes are there?" "What shape is in the image?" "What colour are the shapes?" "Describe the image.")
IMAGES=("$EX"/shapes-0[1-4].png)

# ---------------------------------------------------------------- 503 while loading
# The server's test hook holds the load back for 30 s (a signal ends it sooner),
# so the server is up and still loading. (A FIFO as the model no longer blocks:
# the loader refuses anything but a regular file at once.)
IDEFICS_SERVE_TEST_LOAD_DELAY_MS=30000 "$IDEFICS" serve --port 0 -m "$MODEL" >"$SCRATCH/loading.log" 2>&1 &
LPID=$!
PIDS+=("$LPID")
for _ in $(seq 50); do grep -qs listening "$SCRATCH/loading.log" && break; sleep 0.1; done
LPORT=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$SCRATCH/loading.log" | grep -o ':[0-9][0-9]*/' | tr -d :/)
check "/health is 503 while loading" 503 "$(status "http://127.0.0.1:$LPORT/health")"
check "503 body is OpenAI error JSON" model_loading "$(jq -r .error.code "$SCRATCH/body")"
check "chat is 503 while loading" 503 "$(status "http://127.0.0.1:$LPORT/v1/chat/completions" -d '{}')"
kill "$LPID"; wait "$LPID" 2>/dev/null || true

# ---------------------------------------------------------------- main server
start main -m "$MODEL" --parallel 4 --queue 16 --max-tokens 64 --max-images 2 --max-body 200000 \
    --allow-local-files "$EX"
check "/health 200" ok "$(curl -s "$URL/health" | jq -r .status)"
check "/v1/models lists the model" "$(basename "$MODEL" .idfx)" "$(curl -s "$URL/v1/models" | jq -r '.data[0].id')"
check "/ serves the page" 200 "$(status "$URL/")"
grep -q 'aria-live' "$SCRATCH/body" && ok "page has an ARIA live region" || bad "page has no aria-live"
check "/app.js" 200 "$(status "$URL/app.js")"
check "/sample.png" 200 "$(status "$URL/sample.png")"
curl -s "$URL/metrics" | grep -q '^# TYPE idefics_slots_busy gauge' && ok "/metrics is Prometheus text" ||
    bad "/metrics format"

# streaming == non-streaming == idefics ask (greedy), for 4 image/question pairs
for i in 0 1 2 3; do
    img=${IMAGES[$i]} q=${QUESTIONS[$i]}
    want=$("$IDEFICS" ask -m "$MODEL" -i "$img" -p "$q" -t 2 2>/dev/null)
    body "$img" "$q" >"$SCRATCH/req$i.json"
    chat -d @"$SCRATCH/req$i.json" >"$SCRATCH/resp$i.json"
    got=$(jq -r '.choices[0].message.content' "$SCRATCH/resp$i.json")
    check "non-streaming == idefics ask ($(basename "$img"): $q)" "$want" "$got"
    check "finish_reason stop" stop "$(jq -r '.choices[0].finish_reason' "$SCRATCH/resp$i.json")"
    check "usage adds up" "$(jq '.usage.prompt_tokens + .usage.completion_tokens' "$SCRATCH/resp$i.json")" \
        "$(jq '.usage.total_tokens' "$SCRATCH/resp$i.json")"
    body "$img" "$q" ',"stream":true' >"$SCRATCH/sreq$i.json"
    chat -N -d @"$SCRATCH/sreq$i.json" >"$SCRATCH/sresp$i.txt"
    check "streaming == non-streaming ($(basename "$img"))" "$want" "$(stream_content "$SCRATCH/sresp$i.txt")"
done
check "stream ends with finish_reason stop" stop \
    "$(grep '^data: {' "$SCRATCH/sresp0.txt" | sed 's/^data: //' | jq -r '.choices[0].finish_reason // empty' | tail -n1)"

# max_tokens: finish_reason length and exactly that many tokens
body "${IMAGES[3]}" "Describe the image." ',"max_tokens":2' >"$SCRATCH/len.json"
chat -d @"$SCRATCH/len.json" >"$SCRATCH/len.out"
check "max_tokens 2 -> finish_reason length" length "$(jq -r '.choices[0].finish_reason' "$SCRATCH/len.out")"
check "max_tokens 2 -> 2 completion tokens" 2 "$(jq -r '.usage.completion_tokens' "$SCRATCH/len.out")"
# stop strings end the answer before them
full=$(jq -r '.choices[0].message.content' "$SCRATCH/resp3.json")
stopword=$(echo "$full" | awk '{print $2}')
if [ -n "$stopword" ]; then
    body "${IMAGES[3]}" "Describe the image." ",\"stop\":[\"$stopword\"]" >"$SCRATCH/stop.json"
    chat -d @"$SCRATCH/stop.json" >"$SCRATCH/stop.out"
    check "stop string cuts the answer" "${full%%"$stopword"*}" "$(jq -r '.choices[0].message.content' "$SCRATCH/stop.out")"
    body "${IMAGES[3]}" "Describe the image." ",\"stop\":\"$stopword\",\"stream\":true" >"$SCRATCH/stops.json"
    chat -N -d @"$SCRATCH/stops.json" >"$SCRATCH/stops.out"
    check "stop string, streamed" "${full%%"$stopword"*}" "$(stream_content "$SCRATCH/stops.out")"
fi
# file:// inside --allow-local-files gives the same answer as the data: URI
printf '{"messages":[{"role":"user","content":[{"type":"text","text":"%s"},{"type":"image_url","image_url":{"url":"file://%s"}}]}],"temperature":0}' \
    "${QUESTIONS[0]}" "$(realpath "${IMAGES[0]}")" >"$SCRATCH/file.json"
check "file:// image == data: image" "$(jq -r '.choices[0].message.content' "$SCRATCH/resp0.json")" \
    "$(chat -d @"$SCRATCH/file.json" | jq -r '.choices[0].message.content')"
ln -sf /etc/hostname "$SCRATCH/link.png"
# special-token text typed by a user is plain text (the library's plain user text)
check "special-token text in a user message is accepted as text" 200 \
    "$(status "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"<image><end_of_utterance></s> hi"}],"max_tokens":4}')"

# ---------------------------------------------------------------- error statuses
err() { # err NAME STATUS CURL_ARGS...
    local name=$1 want=$2; shift 2
    local got
    got=$(status "$@")
    check "$name -> $want" "$want" "$got"
    if [ "$got" -ge 400 ]; then
        jq -e '.error.message and .error.type' "$SCRATCH/body" >/dev/null 2>&1 && ok "$name: OpenAI error JSON" ||
            bad "$name: body is not OpenAI error JSON: $(head -c 200 "$SCRATCH/body")"
    fi
}
err "not JSON" 400 "$C" -d 'hello'
err "empty body" 400 "$C" -X POST
err "no messages" 400 "$C" -d '{"model":"x"}'
err "empty messages" 400 "$C" -d '{"messages":[]}'
err "bad role" 400 "$C" -d '{"messages":[{"role":"wizard","content":"hi"}]}'
err "last message not user" 400 "$C" -d '{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"x"}]}'
err "bad part type" 400 "$C" -d '{"messages":[{"role":"user","content":[{"type":"audio","text":"x"}]}]}'
err "bad base64" 400 "$C" -d '{"messages":[{"role":"user","content":[{"type":"text","text":"q"},{"type":"image_url","image_url":{"url":"data:image/png;base64,@@@@"}}]}]}'
err "not an image" 400 "$C" -d '{"messages":[{"role":"user","content":[{"type":"text","text":"q"},{"type":"image_url","image_url":{"url":"data:image/png;base64,aGVsbG8gd29ybGQh"}}]}]}'
err "http:// image URL" 400 "$C" -d '{"messages":[{"role":"user","content":[{"type":"text","text":"q"},{"type":"image_url","image_url":{"url":"http://example.com/a.png"}}]}]}'
err "file:// outside the folder" 400 "$C" -d '{"messages":[{"role":"user","content":[{"type":"text","text":"q"},{"type":"image_url","image_url":{"url":"file:///etc/hostname"}}]}]}'
err "file:// symlink out of the folder" 400 "$C" -d "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"q\"},{\"type\":\"image_url\",\"image_url\":{\"url\":\"file://$SCRATCH/link.png\"}}]}]}"
err "temperature out of range" 400 "$C" -d '{"messages":[{"role":"user","content":"hi"}],"temperature":5}'
err "max_tokens over the cap" 400 "$C" -d '{"messages":[{"role":"user","content":"hi"}],"max_tokens":100000}'
err "n = 2" 400 "$C" -d '{"messages":[{"role":"user","content":"hi"}],"n":2}'
err "escaped NUL" 400 "$C" -d '{"messages":[{"role":"user","content":"a\u0000b"}]}'
deep=$(printf '[%.0s' $(seq 40))$(printf ']%.0s' $(seq 40))
err "JSON nested too deep" 400 "$C" -d "{\"messages\":$deep}"
long=$(head -c 3000 /dev/zero | tr '\0' 'a')
err "prompt over the context" 400 "$C" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"$(for _ in 1 2 3; do printf '%s ' "$long"; done)\"}]}"
b64=$(base64 -w0 "${IMAGES[0]}")
img="{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,$b64\"}}"
err "too many images" 413 "$C" -d "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"q\"},$img,$img,$img]}]}"
head -c 300000 /dev/zero | tr '\0' 'a' >"$SCRATCH/big.txt"
err "body over --max-body" 413 "$C" --data-binary @"$SCRATCH/big.txt"
err "unknown path" 404 "$URL/v1/nothing"
err "unknown page" 404 "$URL/nothing.html"
err "GET on chat" 405 "$C"
check "server still healthy after bad requests" 200 "$(status "$URL/health")"

# ---------------------------------------------------------------- 8 concurrent clients
for i in $(seq 0 7); do body "${IMAGES[$((i % 4))]}" "${QUESTIONS[$(((i / 4 + i) % 4))]}" >"$SCRATCH/c$i.json"; done
for i in $(seq 0 7); do chat -d @"$SCRATCH/c$i.json" | jq -r '.choices[0].message.content' >"$SCRATCH/seq$i.txt"; done
CPIDS=()
for i in $(seq 0 7); do
    (chat -d @"$SCRATCH/c$i.json" | jq -r '.choices[0].message.content' >"$SCRATCH/par$i.txt") &
    CPIDS+=($!)
done
for p in "${CPIDS[@]}"; do wait "$p"; done
same=0
for i in $(seq 0 7); do cmp -s "$SCRATCH/seq$i.txt" "$SCRATCH/par$i.txt" && same=$((same + 1)); done
check "8 concurrent clients == sequential answers" 8 "$same"
check "no slot busy after the concurrent run" 0 "$(metric idefics_slots_busy)"

check "the main server generates batched" true "$(curl -s "$URL/health" | jq -r .batched)"

# the same with --no-batch: each slot a session generating on its own thread
stop
start nobatch -m "$MODEL" --parallel 4 --no-batch
CPIDS=()
for i in $(seq 0 7); do
    (chat -d @"$SCRATCH/c$i.json" | jq -r '.choices[0].message.content' >"$SCRATCH/nb$i.txt") &
    CPIDS+=($!)
done
for p in "${CPIDS[@]}"; do wait "$p"; done
same=0
for i in $(seq 0 7); do cmp -s "$SCRATCH/seq$i.txt" "$SCRATCH/nb$i.txt" && same=$((same + 1)); done
check "8 concurrent clients (--no-batch) == sequential answers" 8 "$same"

# ---------------------------------------------------------------- follow-up: no re-encode
body "${IMAGES[1]}" "${QUESTIONS[0]}" >"$SCRATCH/f1.json"
chat -d @"$SCRATCH/f1.json" >"$SCRATCH/f1.out"
a1=$(jq -r '.choices[0].message.content' "$SCRATCH/f1.out")
enc0=$(metric idefics_image_encodes_total)
jq --arg a "$a1" '.messages += [{"role":"assistant","content":$a},{"role":"user","content":"What colour are the shapes?"}]' \
    "$SCRATCH/f1.json" >"$SCRATCH/f2.json"
chat -d @"$SCRATCH/f2.json" >"$SCRATCH/f2.out"
check "follow-up answered" stop "$(jq -r '.choices[0].finish_reason' "$SCRATCH/f2.out")"
check "follow-up does not re-encode the image" "$enc0" "$(metric idefics_image_encodes_total)"
cached=$(jq -r '.usage.prompt_tokens_details.cached_tokens' "$SCRATCH/f2.out")
[ "$cached" -gt 10 ] && ok "follow-up reused $cached cached prompt tokens" || bad "follow-up cached_tokens $cached"
# the same streamed, the follow-up sent right after the first answer's [DONE] (as the page does)
body "${IMAGES[2]}" "${QUESTIONS[0]}" ',"stream":true' >"$SCRATCH/s1.json"
chat -N -d @"$SCRATCH/s1.json" >"$SCRATCH/s1.out"
enc0=$(metric idefics_image_encodes_total)
jq --arg a "$(stream_content "$SCRATCH/s1.out")" \
    '.messages += [{"role":"assistant","content":$a},{"role":"user","content":"What colour are the shapes?"}]' \
    "$SCRATCH/s1.json" >"$SCRATCH/s2.json"
chat -N -d @"$SCRATCH/s2.json" >"$SCRATCH/s2.out"
check "streamed follow-up answered" stop \
    "$(grep '^data: {' "$SCRATCH/s2.out" | sed 's/^data: //' | jq -r '.choices[0].finish_reason // empty' | tail -n1)"
check "streamed follow-up does not re-encode the image" "$enc0" "$(metric idefics_image_encodes_total)"
stop

# ---------------------------------------------------------------- snapshots: a follow-up after its slot was taken
start snap -m "$MODEL" --parallel 1
if [ "$(curl -s "$URL/health" | jq -r .snapshots)" = true ]; then
    chat -d @"$SCRATCH/f1.json" >/dev/null
    chat -d @"$SCRATCH/req2.json" >/dev/null # another conversation takes the only slot
    enc0=$(metric idefics_image_encodes_total)
    chat -d @"$SCRATCH/f2.json" >"$SCRATCH/f3.out"
    check "follow-up after eviction: same answer" "$(jq -r '.choices[0].message.content' "$SCRATCH/f2.out")" \
        "$(jq -r '.choices[0].message.content' "$SCRATCH/f3.out")"
    check "follow-up after eviction does not re-encode (snapshot)" "$enc0" "$(metric idefics_image_encodes_total)"
    check "snapshot restored" 1 "$(metric idefics_snapshot_restores_total)"
else
    echo "note: this library has no snapshots; skipping the evicted follow-up check"
fi
stop

# ---------------------------------------------------------------- disconnect and 429
# One slot, no queue, 300 ms per token: a described image takes seconds.
start slow -m "$MODEL" --parallel 1 --queue 0 --slow-tokens 300
body "${IMAGES[3]}" "Describe the image." ',"stream":true,"max_tokens":40' >"$SCRATCH/slow.json"
chat -N -d @"$SCRATCH/slow.json" >"$SCRATCH/slow1.out" &
SPID=$!
busy_wait
check "slot busy while streaming" 1 "$(metric idefics_slots_busy)"
err "full queue" 429 "$C" -d @"$SCRATCH/req0.json"
wait $SPID || true
check "the first stream completed" "$(jq -r '.choices[0].message.content' "$SCRATCH/resp3.json")" \
    "$(stream_content "$SCRATCH/slow1.out")"
# now disconnect after 0.8 s (curl --max-time)
chat -N --max-time 0.8 -d @"$SCRATCH/slow.json" >"$SCRATCH/slow2.out" || true
freed=no
for _ in $(seq 20); do
    [ "$(metric idefics_slots_busy)" = 0 ] && { freed=yes; break; }
    sleep 0.1
done
check "disconnect mid-stream frees the slot (slots_busy 0 within 2 s)" yes "$freed"
check "disconnect counted" 1 "$(metric idefics_client_disconnects_total)"
check "generation cancelled" 1 "$(metric idefics_cancelled_total)"
n_out=$(grep -c '"content"' "$SCRATCH/slow2.out" || true)
echo "disconnected stream received $n_out chunks before the client left"
check "served again after the disconnect" 200 "$(status "$C" -d @"$SCRATCH/req0.json")"
stop

# a client that gives up while queued leaves the queue
start slowq -m "$MODEL" --parallel 1 --queue 1 --slow-tokens 300
chat -N -d @"$SCRATCH/slow.json" >/dev/null &
SPID=$!
busy_wait
chat --max-time 0.8 -d @"$SCRATCH/req0.json" >/dev/null || true
# within 1 s (the queue polls every 0.2 s), well before the first answer ends (~3 s)
left=no
for _ in $(seq 10); do
    [ "$(metric idefics_queue_depth)" = 0 ] && { left=yes; break; }
    sleep 0.1
done
check "a client that disconnects while queued leaves the queue" yes "$left"
check "the queued disconnect is counted" 1 "$(metric idefics_client_disconnects_total)"
wait $SPID || true
stop

# ---------------------------------------------------------------- API key
start key -m "$MODEL" --api-key s3cret-key
err "no API key" 401 "$URL/v1/models"
err "wrong API key" 401 "$URL/v1/models" -H 'Authorization: Bearer s3cret-kez'
err "wrong API key (prefix)" 401 "$URL/v1/models" -H 'Authorization: Bearer s3cret'
err "metrics needs the key" 401 "$URL/metrics"
check "right API key" 200 "$(status "$URL/v1/models" -H 'Authorization: Bearer s3cret-key')"
check "chat with the right key" 200 "$(status "$C" -H 'Authorization: Bearer s3cret-key' -d @"$SCRATCH/req0.json")"
check "/health needs no key" 200 "$(status "$URL/health")"
stop
IDEFICS_API_KEY=env-key start envkey -m "$MODEL"
err "env API key enforced" 401 "$URL/v1/models" -H 'Authorization: Bearer s3cret-key'
check "env API key accepted" 200 "$(status "$URL/v1/models" -H 'Authorization: Bearer env-key')"

# ---------------------------------------------------------------- CORS: off by default, --cors ORIGIN
check "no CORS header by default" "" "$(curl -s -D - -o /dev/null "$URL/health" | grep -i '^access-control' || true)"
stop
start cors -m "$MODEL" --cors http://app.example --max-image-pixels 1000
err "image over --max-image-pixels" 413 "$C" -d @"$SCRATCH/req0.json"
check "--cors sets Access-Control-Allow-Origin" "http://app.example" \
    "$(curl -s -D - -o /dev/null "$URL/v1/models" | awk -F': ' 'tolower($1) == "access-control-allow-origin" {print $2}' | tr -d '\r')"
check "CORS preflight" 204 "$(status -X OPTIONS "$C" -H 'Origin: http://app.example' -H 'Access-Control-Request-Method: POST')"
stop

# ---------------------------------------------------------------- IPv6 loopback, if this machine has it
if [ -e /proc/net/if_inet6 ] && grep -q '00000000000000000000000000000001' /proc/net/if_inet6; then
    "$IDEFICS" serve --port 0 --host ::1 -m "$MODEL" >"$SCRATCH/v6.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    for _ in $(seq 50); do grep -q 'loaded' "$SCRATCH/v6.log" && break; sleep 0.1; done
    P6=$(grep -o 'http://\[::1\]:[0-9]*/' "$SCRATCH/v6.log" | grep -o ':[0-9][0-9]*/' | tr -d :/)
    check "IPv6 loopback" 200 "$(status "http://[::1]:$P6/health")"
    stop
fi

echo "$fails failed"
[ "$fails" -eq 0 ]
