#!/usr/bin/env bash
# Runs one workload against N of our server nodes sharing their rooms
# through one Redis (all on this machine), with chat-load spreading its
# clients over the nodes, and prints chat-load's report, then the CPU of
# redis-server and of each node. Starts everything itself and stops it at
# the end.
#
#   load/nodes.sh                                    # 3 nodes, chat-load's default workload
#   load/nodes.sh -n 3 --clients 300 --senders 3 --messages 1000
#   load/nodes.sh -n 1 --clients 100 --senders 10 --messages 2000   # one node, through Redis
#   load/nodes.sh -n 1 --no-redis --clients 100 --senders 10 --messages 2000   # the same alone
#
# Options (before the workload's flags, which go to chat-load as they are;
# --url and --server-pid are the script's):
#   -n, --nodes N   server nodes (default 3)
#   --no-redis      no Redis: the nodes run alone (only with -n 1)
# With --json among the workload's flags, stdout is one JSON object: the
# report, with the whole run's CPU added as whole_run_cpu.
#
# Environment:
#   SERVER_BIN  our server binary   (default: <repo>/target/release/server, built if missing)
#   LOAD_BIN    the load tool       (default: <repo>/target/release/chat-load, built if missing)
#   NODE_ARGS   flags for every node (default: history in memory, limits lifted
#               as a load test needs)
#   SERVER_CPU  core(s) for the nodes (default 0), REDIS_CPU for redis-server
#               (default 0), LOAD_CPU for chat-load (default 1)
#   PORT        first node's port (default 2301; nodes take PORT, PORT+1, ...)
#   OUT_DIR     logs and the report (default: a new /tmp/chat-nodes.XXXX)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=${SERVER_BIN:-$TARGET/release/server}
LOAD_BIN=${LOAD_BIN:-$TARGET/release/chat-load}
NODE_ARGS=${NODE_ARGS---db :memory: --max-connections 0 --max-connections-per-ip 0 --rate-limit 0}
SERVER_CPU=${SERVER_CPU:-0}
REDIS_CPU=${REDIS_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT=${PORT:-2301}

nodes=3
redis=1
while [[ $# -gt 0 ]]; do
    case $1 in
        -n|--nodes) nodes=$2; shift 2 ;;
        --no-redis) redis=0; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
WORKLOAD=("$@")

die() { echo "nodes.sh: $*" >&2; exit 1; }
[[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes takes a positive number"
((redis == 1 || nodes == 1)) || die "--no-redis runs one node alone: several nodes share their rooms only through Redis"
for a in "${WORKLOAD[@]}"; do
    case $a in --url|--url=*|--server-pid|--server-pid=*) die "$a is set by the script" ;; esac
done
command -v taskset >/dev/null || die "needs taskset (util-linux)"
command -v ss >/dev/null || die "needs ss (iproute2)"
command -v jq >/dev/null || die "needs jq (apt-get install jq)"
((redis == 0)) || command -v redis-server >/dev/null || die "needs redis-server (apt-get install redis-server)"

if [[ ! -x $SERVER_BIN || ! -x $LOAD_BIN ]]; then
    echo "nodes.sh: building the server and chat-load (release)..." >&2
    (cd "$ROOT" && cargo build --release -q -p chat -p chat-load --bin server --bin chat-load) || die "cannot build"
fi

OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/chat-nodes.XXXX)}
mkdir -p "$OUT_DIR"
# Every node and chat-load need one descriptor per connection.
ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

listening() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# The first port from $1 up that nobody listens on.
free_port() {
    local p=$1
    while listening "$p"; do p=$((p + 1)); done
    echo "$p"
}

# Waits until process $1 listens on port $2; fails naming log $3 if it dies first.
await_port() {
    for _ in $(seq 100); do
        listening "$2" && return 0
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    die "$(basename "$3" .log) did not start listening on port $2; log: $3"
}

# CPU seconds (utime + stime) of process $1 so far, from /proc/PID/stat.
TICKS=$(getconf CLK_TCK)
cpu_of() {
    # Fields 14 and 15, counted after the command name's closing parenthesis.
    local stat
    stat=$(cat "/proc/$1/stat") || { echo 0; return; }
    awk -v t="$TICKS" '{ print ($12 + $13) / t }' <<<"${stat##*)}"
}

redis_note=
if ((redis == 1)); then
    RPORT=$(free_port 6390)
    taskset -c "$REDIS_CPU" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
        >"$OUT_DIR/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    await_port "$REDIS_PID" "$RPORT" "$OUT_DIR/redis.log"
    redis_note="--redis redis://127.0.0.1:$RPORT/0"
fi

URLS=() NODE_PIDS=()
port=$PORT
for ((i = 1; i <= nodes; i++)); do
    port=$(free_port "$port")
    # shellcheck disable=SC2086  # NODE_ARGS and redis_note are lists of words on purpose
    taskset -c "$SERVER_CPU" "$SERVER_BIN" --addr "127.0.0.1:$port" $redis_note $NODE_ARGS \
        >"$OUT_DIR/node$i.log" 2>&1 &
    NODE_PIDS+=($!)
    PIDS+=($!)
    await_port "$!" "$port" "$OUT_DIR/node$i.log"
    URLS+=("ws://127.0.0.1:$port")
    port=$((port + 1))
done
url_list=$(IFS=,; echo "${URLS[*]}")
pid_list=$(IFS=,; echo "${NODE_PIDS[*]}")

echo "nodes.sh: $nodes node(s) on core $SERVER_CPU${redis_note:+, redis-server on core $REDIS_CPU (port $RPORT)}, chat-load on core $LOAD_CPU; logs in $OUT_DIR" >&2
cpu0=()
for pid in "${PIDS[@]}"; do cpu0+=("$(cpu_of "$pid")"); done
t0=$(date +%s.%N)
status=0
taskset -c "$LOAD_CPU" "$LOAD_BIN" --url "$url_list" --server-pid "$pid_list" --quiet "${WORKLOAD[@]}" \
    >"$OUT_DIR/report" 2>"$OUT_DIR/chat-load.err" || status=$?
t1=$(date +%s.%N)
cpu1=()
for pid in "${PIDS[@]}"; do cpu1+=("$(cpu_of "$pid")"); done

[[ -s $OUT_DIR/chat-load.err ]] && cat "$OUT_DIR/chat-load.err" >&2
if ((status != 0)); then
    cat "$OUT_DIR/report"
    exit "$status"
fi

wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
# CPU seconds of process number $1 (in PIDS) over the chat-load run.
used() { awk -v a="${cpu0[$1]}" -v b="${cpu1[$1]}" 'BEGIN { printf "%.2f\n", b - a }'; }
first_node=$((redis == 1 ? 1 : 0))

# With --json: one object, the report with the whole run's CPU added.
if jq -e . "$OUT_DIR/report" >/dev/null 2>&1; then
    node_cpu=$(for ((i = 0; i < nodes; i++)); do used $((first_node + i)); done | jq -s .)
    redis_cpu=null
    ((redis == 1)) && redis_cpu=$(used 0)
    jq --argjson wall "$wall" --argjson redis "$redis_cpu" --argjson nodes "$node_cpu" \
        '. + {whole_run_cpu: {seconds: $wall, redis_server_cpu_seconds: $redis, node_cpu_seconds: $nodes}}' \
        "$OUT_DIR/report"
    exit 0
fi

cat "$OUT_DIR/report"
# Messages the senders sent, for Redis's cost per message: each one is a
# script call and a publish to every node.
sent=$(awk '$1 == "sent" { print $2; exit }' "$OUT_DIR/report")
sent=${sent:-0}
echo
echo "CPU over the whole chat-load run ($wall s, connecting included; chat-load's own"
echo "figures above cover only the measured window):"
row() { # name pid core index
    awk -v name="$1" -v pid="$2" -v core="$3" -v c="$(used "$4")" -v wall="$wall" -v sent="$sent" '
        BEGIN {
            per = sent > 0 ? sprintf(", %.1f µs per message sent", c * 1e6 / sent) : ""
            pct = wall > 0 ? 100 * c / wall : 0
            printf "  %-12s pid %-8s core %-4s %7.2f s  %4.0f%% of a core%s\n", name, pid, core, c, pct, per
        }'
}
if ((redis == 1)); then
    row redis-server "$REDIS_PID" "$REDIS_CPU" 0
fi
for ((i = 0; i < nodes; i++)); do
    row "node $((i + 1))" "${NODE_PIDS[$i]}" "$SERVER_CPU" $((first_node + i))
done
