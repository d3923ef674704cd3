#!/usr/bin/env bash
# Takes the README's screenshots from a real session: a server and three
# clients (alice, bob, carol) in tmux panes, chatting in #lobby and #rust,
# a private message, then a server restart the clients reconnect from.
#
# Needs: tmux, aha (ANSI to HTML), chromium (headless, HTML to PNG).
#   apt-get install -y tmux aha chromium
# Usage: scripts/screenshots.sh            (writes images/*.png)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/images
PORT=${PORT:-24242}
URL=ws://127.0.0.1:$PORT
SOCK=chat-shots-$$
WORK=$(mktemp -d)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

for tool in tmux aha chromium; do
    command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
done

cargo build --quiet --bins
BIN=$CARGO_TARGET_DIR/debug

t() { tmux -L "$SOCK" "$@"; }
cleanup() { t kill-server 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Waits (at most 10 s) until pane $1 shows the text $2.
wait_for() {
    for _ in $(seq 200); do
        if t capture-pane -J -p -t "demo:0.$1" | grep -qF -- "$2"; then return 0; fi
        sleep 0.05
    done
    echo "error: pane $1 never showed: $2" >&2
    t capture-pane -p -t "demo:0.$1" >&2
    exit 1
}

# Types a line into pane $1 and presses Enter.
say() { t send-keys -t "demo:0.$1" -l -- "$2"; t send-keys -t "demo:0.$1" Enter; }

# Four panes of 100x24 in a 2x2 grid: 0 server, 1 alice, 2 bob, 3 carol.
t -f /dev/null new-session -d -s demo -x 201 -y 49
t set-option -g status off
t set-option -g default-terminal tmux-256color
t split-window -h -t demo:0.0
t split-window -v -t demo:0.0
t split-window -v -t demo:0.2
# After the splits: 0 top left, 1 bottom left, 2 top right, 3 bottom right.
SERVER=0 ALICE=2 BOB=1 CAROL=3
# History in a file of its own, kept across the restart below.
server_cmd="$BIN/server --addr 127.0.0.1:$PORT --db $WORK/chat.db"
t send-keys -t demo:0.$SERVER "clear; $server_cmd" Enter
wait_for $SERVER "listening on"

t send-keys -t demo:0.$ALICE "clear; $BIN/client --url $URL --nick alice" Enter
wait_for $ALICE "[#lobby alice]"
t send-keys -t demo:0.$BOB "clear; $BIN/client --url $URL --nick bob" Enter
wait_for $BOB "[#lobby bob]"
t send-keys -t demo:0.$CAROL "clear; $BIN/client --url $URL --nick carol" Enter
wait_for $CAROL "[#lobby carol]"

say $ALICE "hi all"
wait_for $CAROL "hi all"
say $BOB "hello alice! how is the new client?"
wait_for $ALICE "new client?"
say $ALICE "lines I type are never clobbered now"
wait_for $CAROL "never clobbered"
say $CAROL "/me waves"
wait_for $ALICE "carol waves"
say $CAROL "alice: the prompt says where you are now"
wait_for $ALICE "where you are now"
say $ALICE "/msg bob lunch at 12:30?"
wait_for $BOB "lunch at"
say $BOB "/msg alice sure"
wait_for $ALICE "sure"
say $BOB "/join #rust"
wait_for $BOB "joined #rust"
say $CAROL "/join #rust"
wait_for $BOB "carol (127.0.0.1"
say $CAROL "anyone tried tokio-websockets?"
wait_for $BOB "tokio-websockets?"
say $BOB "yes: small and quick"
wait_for $CAROL "small and quick"

# The server restarts: everyone reconnects, on their own, to their rooms.
t send-keys -t demo:0.$SERVER C-c
wait_for $ALICE "reconnecting"
t send-keys -t demo:0.$SERVER "$server_cmd" Enter
wait_for $ALICE "reconnected"
wait_for $CAROL "reconnected"
wait_for $BOB "reconnected"
say $CAROL "that was quick"
wait_for $BOB "that was quick"
say $ALICE "/who"
wait_for $ALICE "in #lobby"
# Alice is half-way through a line when a message arrives.
t send-keys -t demo:0.$ALICE -l "still typing th"
say $BOB "/join #lobby"
say $BOB "back in the lobby"
wait_for $ALICE "back in the lobby"

# Rewrites each SGR sequence, adding grey while faint is on and the
# foreground is the default (state kept across the lines of one pane).
FAINT_AS_GREY='
    BEGIN { our ($dim, $fg) = (0, 0) }
    sub sgr {
        my @p = length $_[0] ? split(/;/, $_[0]) : (0);
        for (my $i = 0; $i < @p; $i++) {
            my $x = $p[$i];
            if ($x == 0) { ($dim, $fg) = (0, 0) }
            elsif ($x == 2) { $dim = 1 }
            elsif ($x == 22) { $dim = 0 }
            elsif (($x >= 30 && $x <= 37) || ($x >= 90 && $x <= 97)) { $fg = 1 }
            elsif ($x == 39) { $fg = 0 }
            elsif ($x == 38 || $x == 48) {
                $fg = 1 if $x == 38;
                $i += (($p[$i + 1] // 0) == 5) ? 2 : 4;
            }
        }
        return "\e[$_[0]m" . ($dim && !$fg ? "\e[38;5;244m" : "");
    }
    s/\e\[([0-9;]*)m/sgr($1)/ge;
'

# Capture every pane with its colours and lay them out as terminals.
html=$WORK/session.html
{
    cat <<'HEAD'
<!doctype html><meta charset="utf-8"><style>
body { margin: 0; padding: 12px; background: #1d1f21; display: grid;
       grid-template-columns: 1fr 1fr; gap: 12px; }
.term { background: #000; border-radius: 6px; overflow: hidden;
        box-shadow: 0 2px 8px #0008; }
.title { background: #3a3c3e; color: #ddd; font: 13px sans-serif;
         padding: 4px 10px; }
pre { margin: 0; padding: 8px 10px; color: #d0d0d0; height: 30em;
      font: 13px/1.25 "DejaVu Sans Mono", monospace; white-space: pre; }
</style>
HEAD
    for pane in "$SERVER server" "$ALICE alice" "$BOB bob" "$CAROL carol"; do
        set -- $pane
        echo "<div class=term><div class=title>$2</div><pre>"
        # aha has no faint (SGR 2: our dimmed notices and history): show it
        # as grey (colour 244) wherever the text has no colour of its own.
        # tmux writes attributes only when they change (dim may start with
        # ESC[2m or ESC[0;2m and outlive an ESC[39m), so the filter follows
        # the SGR state rather than matching one sequence.
        t capture-pane -e -p -t "demo:0.$1" | perl -pe "$FAINT_AS_GREY" \
            | aha --no-header --black
        echo "</pre></div>"
    done
} > "$html"

shot() {
    chromium --headless --no-sandbox --disable-gpu \
        --disable-background-networking --disable-component-update \
        --disable-sync --no-first-run --hide-scrollbars \
        --user-data-dir="$(mktemp -d -p "$WORK")" \
        --screenshot="$1" --window-size="$2" "file://$3" >/dev/null 2>&1
}
mkdir -p "$OUT"
shot "$OUT/session.png" 1640,900 "$html"
echo "wrote $OUT/session.png"
