#!/bin/bash
# Server instructions per accepted event on `POST /events/ingest`, counted by callgrind:
# a load-independent cost figure for a shared machine, where wall-clock throughput is noise.
#
# usage: callgrind-ingest.sh BUILD_DIR [flowrun-bench ingest flags...]
#   e.g. crates/flowrun-bench/scripts/callgrind-ingest.sh target/release --idempotency-key
# Counts user-space instructions of the whole server process (HTTP, engine, SQLite thread)
# while 16 clients ingest for 4 s, after a 1 s warm-up that is not counted.
set -eu
BIN=$1
shift
DIR=$(mktemp -d)
trap 'rm -rf "$DIR"' EXIT
PORT=18777
count() {
    python3 -c "import sqlite3; print(sqlite3.connect('$DIR/db.sqlite').execute('select count(*) from events').fetchone()[0])"
}
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$DIR/cg.out" \
    "$BIN/flowrun" serve --listen "127.0.0.1:$PORT" --database-url "$DIR/db.sqlite" \
    --api-key bench-key --flow-rate-limit 0 >"$DIR/server.log" 2>&1 &
VG=$!
for _ in $(seq 1 240); do
    grep -q "listening" "$DIR/server.log" && break
    sleep 0.5
done
"$BIN/flowrun-bench" --url "http://127.0.0.1:$PORT" ingest --clients 8 --seconds 1 "$@" >/dev/null
N0=$(count)
callgrind_control -i on $VG >/dev/null 2>&1
"$BIN/flowrun-bench" --url "http://127.0.0.1:$PORT" ingest --clients 16 --seconds 4 "$@" >/dev/null
callgrind_control -i off $VG >/dev/null 2>&1
N1=$(count)
callgrind_control -d $VG >/dev/null 2>&1
sleep 1
kill $VG
wait $VG 2>/dev/null || true
TOTAL=$(callgrind_annotate "$DIR/cg.out.1" 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk '{gsub(",", "", $1); print $1}')
EVENTS=$((N1 - N0))
echo "events: $EVENTS  instructions: $TOTAL  per event: $((TOTAL / EVENTS))"
if [ -n "${KEEP_CALLGRIND:-}" ]; then cp "$DIR/cg.out.1" "$KEEP_CALLGRIND"; fi
