#!/usr/bin/env bash
# The cost-per-delivery curve from 10 to 10,000 clients, for our server and
# Bun, measured side by side by compare.sh (server on core 0, load on core 1).
# Writes images/scaling.csv and, if gnuplot is installed, images/scaling.png.
#
#   load/scaling.sh            # about two million deliveries per point
#   load/scaling.sh --quick    # a tenth of that
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZES=(10 100 1000 10000)
SERVERS=${SERVERS:-ours,bun}
export OURS_ARGS=${OURS_ARGS:---max-connections 0 --max-connections-per-ip 0 --rate-limit 0}
export OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/chat-scaling.XXXX)}
workloads=$(printf 'S%s,' "${SIZES[@]}")
"$ROOT/load/compare.sh" "$@" -w "${workloads%,}" -s "$SERVERS"

csv=$ROOT/images/scaling.csv
IFS=, read -r -a names <<<"$SERVERS"
{
    printf 'clients'
    printf ',%s_us_per_delivery' "${names[@]}"
    printf '\n'
    for n in "${SIZES[@]}"; do
        printf '%s' "$n"
        for s in "${names[@]}"; do
            printf ',%s' "$(jq -r '.server_cpu_us_per_delivery // empty | . * 1000 | round / 1000' "$OUT_DIR/$s-S$n.json" 2>/dev/null)"
        done
        printf '\n'
    done
} >"$csv"
echo "wrote $csv"
cat "$csv"

if command -v gnuplot >/dev/null; then
    cols=""
    for i in "${!names[@]}"; do
        cols+="'$csv' using 1:$((i + 2)) with linespoints lw 2 pt 7 title '${names[$i]}', "
    done
    gnuplot <<GP
set terminal pngcairo size 800,480 font "sans,11"
set output '$ROOT/images/scaling.png'
set datafile separator ','
set key bottom right
set logscale x
set xlabel 'connected clients (one sender, 8 messages in flight, 64-byte messages)'
set ylabel 'server CPU per delivery (µs)'
set yrange [0:*]
set grid
set title 'Fan-out cost per delivery, server pinned to one core'
plot ${cols%, }
GP
    echo "wrote $ROOT/images/scaling.png"
else
    echo "gnuplot not installed (apt-get install gnuplot-nox): no plot" >&2
fi
