#!/usr/bin/env bash
# Runs the same workloads against our server and the peer servers in
# /work/shared/peers, one server at a time (server pinned to core 0, load to
# core 1), and prints a table with ratios against ours.
#
#   load/compare.sh                         # all workloads, all servers, full scale
#   load/compare.sh --quick                 # about a tenth of the scale
#   load/compare.sh -w W1,W3 -s ours,bun    # a subset
#   load/compare.sh -w W3 -s ours,bun -r 5  # five runs each, interleaved: medians
#
# Environment:
#   OURS_BIN   our server binary            (default: <repo>/target/release/server)
#   BASE_BIN   another build of ours, run as server "base" (before and
#              after a change, side by side: -s ours,base)
#   OURS_ARGS  arguments for ours (default: lift its connection caps and
#              rate limit, as a load test needs)
#   OURS_DB    ours keeps history in this SQLite file, emptied before each
#              start (default: <OUT_DIR>/ours-chat.db; :memory: for none)
#   PEERS_DIR  the peers folder             (default: <repo>/../shared/peers)
#   OUT_DIR    where the JSON reports go    (default: a new /tmp/chat-compare.XXXX)
#   SERVER_CPU / LOAD_CPU  cores to pin to  (default: 0 and 1)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
OURS_BIN=${OURS_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/server}
# Load tests need our limits lifted (a per-address cap of 64, a rate limit).
OURS_ARGS=${OURS_ARGS---max-connections 0 --max-connections-per-ip 0 --rate-limit 0}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NODE_PREFIX=/tmp/peer-node
PY_VENV=/tmp/peer-py
SEED_TARGET=/tmp/seed-target
PORT=${PORT:-2190}

workloads=W1,W2,W3,W4
servers=ours,bun,node,python,seed
quick=0
repeat=1
while [[ $# -gt 0 ]]; do
    case $1 in
        -w|--workloads) workloads=$2; shift 2 ;;
        -s|--servers) servers=$2; shift 2 ;;
        -q|--quick) quick=1; shift ;;
        -r|--repeat) repeat=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
IFS=, read -r -a WORKLOADS <<<"$workloads"
IFS=, read -r -a SERVERS <<<"$servers"
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/chat-compare.XXXX)}
mkdir -p "$OUT_DIR"
OURS_DB=${OURS_DB:-$OUT_DIR/ours-chat.db}

# Servers need one descriptor per connection (W4 holds 10,000).
ulimit -n "$(ulimit -Hn)"

die() { echo "compare.sh: $*" >&2; exit 1; }
command -v jq >/dev/null || die "needs jq (apt-get install jq)"
command -v taskset >/dev/null || die "needs taskset (util-linux)"

# The load tool: built once, release mode.
echo "building chat-load..." >&2
(cd "$ROOT" && cargo build --release -q -p chat-load) || die "cannot build chat-load"
LOAD=${CARGO_TARGET_DIR:-$ROOT/target}/release/chat-load

# Workload flags, full scale and --quick scale. S<N> is one step of the
# scaling curve: N clients, one sender with 8 in flight, about two million
# deliveries (a tenth with --quick).
flags() {
    local w=$1
    if [[ $w =~ ^S([0-9]+)$ ]]; then
        local n=${BASH_REMATCH[1]} total=2000000
        [[ $quick == 1 ]] && total=200000
        local m=$((total / n))
        ((m < 100)) && m=100
        echo "--clients $n --senders 1 --in-flight 8 --messages $m"
        return
    fi
    if [[ $quick == 1 ]]; then
        case $w in
            W1) echo "--clients 100 --senders 10 --in-flight 4 --messages 300" ;;
            W2) echo "--clients 200 --senders 1 --in-flight 8 --messages 300" ;;
            W3) echo "--clients 100 --senders 5 --rate 20 --messages 60" ;;
            W4) echo "--clients 1000 --idle --hold 2" ;;
        esac
    else
        case $w in
            W1) echo "--clients 100 --senders 10 --in-flight 4 --messages 2000" ;;
            W2) echo "--clients 1000 --senders 1 --in-flight 8 --messages 1000" ;;
            W3) echo "--clients 500 --senders 5 --rate 20 --messages 200" ;;
            W4) echo "--clients 10000 --idle --hold 3" ;;
        esac
    fi
}
describe() {
    case $1 in
        S*) echo "$1 closed loop, 1 sender x 8 in flight to ${1#S} clients: server CPU per delivery" ;;
        W1) echo "W1 closed loop, 10 senders x 4 in flight: server CPU per delivery" ;;
        W2) echo "W2 closed loop, 1 sender x 8 in flight to many: server CPU per delivery" ;;
        W3) echo "W3 open loop, 5 senders x 20 msg/s: p99 latency" ;;
        W4) echo "W4 idle connections: server memory per connection" ;;
    esac
}

# Installs a peer if missing (as /work/shared/peers/README.md says). Returns 1 if it cannot.
install() {
    case $1 in
        ours) [[ -x $OURS_BIN ]] || (cd "$ROOT" && cargo build --release -q --bin server) ;;
        base) [[ -x ${BASE_BIN:-} ]] || { echo "server base needs BASE_BIN (a server binary)" >&2; return 1; } ;;
        bun) [[ -x $NODE_PREFIX/node_modules/.bin/bun ]] || npm install -s --prefix "$NODE_PREFIX" bun ;;
        node) [[ -d $NODE_PREFIX/node_modules/ws ]] || npm install -s --prefix "$NODE_PREFIX" ws@8 ;;
        python) [[ -x $PY_VENV/bin/python ]] && "$PY_VENV/bin/python" -c 'import websockets' 2>/dev/null ||
            { python3 -m venv "$PY_VENV" && "$PY_VENV/bin/pip" install -q websockets; } ;;
        seed) [[ -x $SEED_TARGET/release/seed-baseline ]] ||
            CARGO_TARGET_DIR=$SEED_TARGET cargo build --release -q --manifest-path "$PEERS_DIR/seed-baseline/Cargo.toml" ;;
        *) echo "unknown server $1 (ours, base, bun, node, python, seed)" >&2; return 1 ;;
    esac
}

# Starts server $1 on $PORT pinned to SERVER_CPU; sets SERVER_PID to the
# process that listens (a launcher may exec or fork, so ask the kernel).
start() {
    local cmd
    case $1 in
        # History on disk, as the server runs by default, in a fresh file.
        ours) rm -f "$OURS_DB" "$OURS_DB"-*; cmd=("$OURS_BIN" --addr "127.0.0.1:$PORT" --db "$OURS_DB") ;;
        base) cmd=("$BASE_BIN" --addr "127.0.0.1:$PORT") ;;
        bun) cmd=("$NODE_PREFIX/node_modules/.bin/bun" "$PEERS_DIR/bun-broadcast.js" "$PORT") ;;
        node) cmd=(env NODE_PATH=$NODE_PREFIX/node_modules node "$PEERS_DIR/node-ws-broadcast.js" "$PORT") ;;
        python) cmd=("$PY_VENV/bin/python" "$PEERS_DIR/py-websockets-broadcast.py" "$PORT") ;;
        seed) cmd=("$SEED_TARGET/release/seed-baseline" "$PORT") ;;
    esac
    # shellcheck disable=SC2086  # OURS_ARGS is a list of words on purpose
    if [[ $1 == ours || $1 == base ]]; then
        taskset -c "$SERVER_CPU" "${cmd[@]}" $OURS_ARGS >"$OUT_DIR/$1.log" 2>&1 &
    else
        taskset -c "$SERVER_CPU" "${cmd[@]}" >"$OUT_DIR/$1.log" 2>&1 &
    fi
    LAUNCHER=$!
    SERVER_PID=
    for _ in $(seq 100); do
        SERVER_PID=$(ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
        [[ -n $SERVER_PID ]] && return 0
        kill -0 "$LAUNCHER" 2>/dev/null || break
        sleep 0.1
    done
    echo "  $1 did not start listening on port $PORT; log: $OUT_DIR/$1.log" >&2
    stop
    return 1
}

stop() {
    [[ -n ${SERVER_PID:-} ]] && kill "$SERVER_PID" 2>/dev/null || true
    kill "$LAUNCHER" 2>/dev/null || true
    wait "$LAUNCHER" 2>/dev/null || true
    # Wait until the port is free again for the next server.
    for _ in $(seq 50); do
        ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q . || break
        sleep 0.1
    done
    SERVER_PID=
}
trap stop EXIT

# The one figure each workload is compared on, from a report.
metric() {
    case $1 in
        W1|W2|S*) jq -r '.server_cpu_us_per_delivery // empty | . * 1000 | round / 1000' "$2" ;;
        W3) jq -r '.run.latency_ms.p99 // empty' "$2" ;;
        W4) jq -r '.server_rss_bytes_per_connection // empty | . / 1000 | . * 100 | round / 100' "$2" ;;
    esac
}
unit() { case $1 in W1|W2|S*) echo "µs/delivery" ;; W3) echo "ms p99" ;; W4) echo "KB/conn" ;; esac; }

[[ $repeat =~ ^[1-9][0-9]*$ ]] || die "--repeat takes a positive number of runs"

# Install every server first; those that cannot be installed are skipped.
READY=()
for s in "${SERVERS[@]}"; do
    if install "$s" >"$OUT_DIR/install-$s.log" 2>&1; then
        READY+=("$s")
    else
        echo "== $s: cannot install or build (see $OUT_DIR/install-$s.log); skipped" >&2
    fi
done

# With --repeat, each workload's runs are interleaved (ours, bun, ..., ours,
# bun, ...) so that a slow spell of the machine falls on every server alike,
# and the table shows each server's median run.
declare -A RESULT NOTE RUNS
for w in "${WORKLOADS[@]}"; do
    f=$(flags "$w") || true
    [[ -n $f ]] || die "unknown workload $w (W1..W4, or S<clients>)"
    for ((run = 1; run <= repeat; run++)); do
        for s in "${READY[@]}"; do
            tag=$s-$w of= value=
            if ((repeat > 1)); then
                tag=$s-$w-$run of=" (run $run of $repeat)"
            fi
            echo "== $s $w$of: $f" >&2
            start "$s" || { NOTE[$s,$w]="did not start"; continue; }
            json=$OUT_DIR/$tag.json
            # shellcheck disable=SC2086  # $f is a list of flags
            taskset -c "$LOAD_CPU" "$LOAD" --url "ws://127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
                --json --quiet $f >"$json" 2>"$OUT_DIR/$tag.err" || true
            stop
            note=
            if jq -e '.error' "$json" >/dev/null 2>&1; then
                note="error: $(jq -r .error "$json")"
            elif [[ -s $json ]]; then
                value=$(metric "$w" "$json")
                [[ -n $value ]] && RUNS[$s,$w]+="$value "
                note=$(jq -r '[ if .run then "\(.run.deliveries_per_sec | round)/s" else empty end,
                    if (.run.lost // 0) > 0 or (.run.missing_percent_of_planned // 0) > 0
                    then "LOST \(.run.missing_percent_of_planned * 10 | round / 10)% of planned" else empty end,
                    if (.run.duplicated // 0) > 0 then "dup \(.run.duplicated)" else empty end,
                    if (.run.reordered // 0) > 0 then "reordered \(.run.reordered)" else empty end,
                    if (.run.load_cpu_percent // 0) > 90 then "load tool saturated" else empty end,
                    if .run.load_core_wakeups and (.run.delivered // 0) > 0
                    then "load core woken \(1000 * .run.load_core_wakeups / .run.delivered * 10 | round / 10)/1k deliveries" else empty end
                    ] | join(", ")' "$json")
            else
                note="no report (see $OUT_DIR/$tag.err)"
            fi
            # A problem in any run stays in the notes.
            if [[ -z ${NOTE[$s,$w]:-} || $note == *LOST* || $note == *dup* || $note == *reordered* || $note == error* ]]; then
                NOTE[$s,$w]=$note
            fi
            echo "   ${value:-?} $(unit "$w")  $note" >&2
            PORT=$((PORT + 1))
        done
    done
    for s in "${READY[@]}"; do
        runs=${RUNS[$s,$w]:-}
        [[ -n $runs ]] || continue
        # The median run (the lower middle one for an even count), and the
        # spread when there were several.
        read -r -a sorted <<<"$(tr ' ' '\n' <<<"$runs" | sed '/^$/d' | sort -g | tr '\n' ' ')"
        RESULT[$s,$w]=${sorted[$(((${#sorted[@]} - 1) / 2))]}
        if ((${#sorted[@]} > 1)); then
            NOTE[$s,$w]="median of ${#sorted[@]} (${sorted[0]}-${sorted[-1]})${NOTE[$s,$w]:+; ${NOTE[$s,$w]}}"
        fi
    done
done

# Ratios are peer / reference: above 1 means the reference (ours, if run) costs less.
ref=${SERVERS[0]}
echo
echo "Results (server on core $SERVER_CPU, load on core $LOAD_CPU; reports in $OUT_DIR)"
echo "ratio = server / $ref (lower figures are better in every column)"
for w in "${WORKLOADS[@]}"; do
    echo
    echo "$(describe "$w")   [$(flags "$w")]"
    printf '  %-8s %14s %8s   %s\n' server "$(unit "$w")" ratio notes
    base=${RESULT[$ref,$w]:-}
    for s in "${SERVERS[@]}"; do
        v=${RESULT[$s,$w]:-}
        r=-
        if [[ -n $v && -n $base ]] && awk "BEGIN{exit !($base > 0)}"; then
            r=$(awk "BEGIN{printf \"%.2f\", $v / $base}")
        fi
        printf '  %-8s %14s %8s   %s\n' "$s" "${v:--}" "$r" "${NOTE[$s,$w]:-}"
    done
done
