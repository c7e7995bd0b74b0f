#!/usr/bin/env bash
# test_cli_chat_tty.sh - `idefics chat` on a real terminal (a private tmux server):
#   test_cli_chat_tty.sh IDEFICS_BIN MODEL.idfx libedit|plain
# With libedit: arrow keys edit the line ("/hlp", Left, Left, "e" runs /help) and Up
# recalls the last line (so /help runs twice and no "^[[A" reaches the screen).
# Always: a message is answered, and Ctrl-D leaves with the shell's next output on
# a line of its own. With libedit the history is saved ($IDEFICS_HISTORY) and a new
# chat recalls it. Skips (77) without tmux.
set -u
bin=$1 model=$2 mode=$3
command -v tmux >/dev/null || { echo "SKIP: tmux not found"; exit 77; }
[ -f "$model" ] || { echo "SKIP: no model $model"; exit 77; }
sock=idefics-chat-test-$$
tmp=$(mktemp -d)
trap 'tmux -L "$sock" kill-server 2>/dev/null; tmux -L "$sock-2" kill-server 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
screen() { tmux -L "$sock" capture-pane -p -t chat; }
wait_for() { # wait_for PATTERN COUNT: until the screen shows PATTERN COUNT times (30 s: CI machines are loaded)
    for _ in $(seq 300); do
        [ "$(screen | grep -c -- "$1")" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
keys() { tmux -L "$sock" send-keys -t chat "$@"; }
start() {
    tmux -L "$sock" -f /dev/null new-session -d -s chat -x 160 -y 50 \
        "TERM=xterm IDEFICS_HISTORY='$tmp/history' '$bin' chat -m '$model' -n 4; echo EXIT=\$?; sleep 30"
}
start
wait_for '^>' 1 || { echo "FAIL: no prompt"; screen; exit 1; }
if [ "$mode" = libedit ]; then
    keys "/hlp" Left Left "e" Enter
    wait_for '^commands:' 1 || { echo "FAIL: Left arrow editing: /help did not run"; fail=1; }
    keys Up Enter
    wait_for '^commands:' 2 || { echo "FAIL: Up arrow did not recall /help"; fail=1; }
    screen | grep -qF '^[[' && { echo "FAIL: escape sequences on the screen"; fail=1; }
else
    echo "note: chat built without libedit: no line editing to test"
fi
keys "Hello there" Enter
sleep 1
keys C-d
wait_for '^EXIT=' 1 || { echo "FAIL: chat did not end on Ctrl-D"; fail=1; }
screen >"$tmp/screen"
cat "$tmp/screen" | sed '/^$/d'
grep -qx "EXIT=0" "$tmp/screen" || { echo "FAIL: after Ctrl-D the next output is not on its own line (or exit != 0)"; fail=1; }
if [ "$mode" = libedit ]; then
    # the history is kept: a new chat recalls the last session's lines
    grep -qx "/help" "$tmp/history" 2>/dev/null || { echo "FAIL: history not saved to \$IDEFICS_HISTORY"; fail=1; }
    tmux -L "$sock" kill-server 2>/dev/null
    # a new server on a socket of its own: restarting one on the same socket can race its exit
    sock=$sock-2
    start
    wait_for '^>' 1 || { echo "FAIL: no prompt (second run)"; fail=1; }
    keys Up Up Enter
    wait_for '^commands:' 1 || { echo "FAIL: the saved history was not read back"; screen; fail=1; }
    keys C-d
fi
[ $fail -eq 0 ] && echo "test_cli_chat_tty: ok"
exit $fail
