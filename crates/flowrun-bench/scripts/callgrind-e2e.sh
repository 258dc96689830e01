#!/bin/bash
# Server instructions per run of the e2e scenario (fire → 3 × webhooks.send → sink), counted
# by callgrind: a load-independent cost figure for a shared machine, where wall-clock
# throughput is noise. Under callgrind the server runs some fifty times slower, so its enqueue
# batches are fuller than at full speed: compare builds with each other, not with perf figures.
#
# usage: callgrind-e2e.sh BUILD_DIR [CLIENTS]
#   e.g. crates/flowrun-bench/scripts/callgrind-e2e.sh target/release 16
# Counts user-space instructions of the whole server process (HTTP, engine, SQLite thread,
# outbound requests) while CLIENTS clients (default 16) fire for 6 s, after a 2 s warm-up
# that is not counted.
set -eu
BIN=$1
CLIENTS=${2:-16}
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
PORT=18778
count() {
    python3 -c "import sqlite3; print(sqlite3.connect('$DIR/db.sqlite').execute(\"select count(*) from executions where status = 'success'\").fetchone()[0])"
}
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$DIR/cg.out" \
    "$BIN/flowrun" serve --listen "127.0.0.1:$PORT" --database-url "$DIR/db.sqlite" \
    --api-key bench-key --flow-rate-limit 0 --allow-private-targets >"$DIR/server.log" 2>&1 &
VG=$!
for _ in $(seq 1 240); do
    grep -q "listening" "$DIR/server.log" && break
    sleep 0.5
done
"$BIN/flowrun-bench" --url "http://127.0.0.1:$PORT" e2e --clients "$CLIENTS" --seconds 1.5 >/dev/null
N0=$(count)
callgrind_control -i on $VG >/dev/null 2>&1
"$BIN/flowrun-bench" --url "http://127.0.0.1:$PORT" e2e --clients "$CLIENTS" --seconds 5.5 >/dev/null
# The last attempt records commit just after the sink has seen the requests.
sleep 1
callgrind_control -i off $VG >/dev/null 2>&1
N1=$(count)
callgrind_control -d $VG >/dev/null 2>&1
sleep 1
kill $VG
wait $VG 2>/dev/null || true
TOTAL=$(callgrind_annotate "$DIR/cg.out.1" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",", "", $1); print $1}')
RUNS=$((N1 - N0))
echo "runs: $RUNS  instructions: $TOTAL  per run: $((TOTAL / RUNS))"
if [ -n "${KEEP_CALLGRIND:-}" ]; then cp "$DIR/cg.out.1" "$KEEP_CALLGRIND"; fi
