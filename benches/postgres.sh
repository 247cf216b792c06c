#!/usr/bin/env bash
# PostgreSQL sink benchmark (not in CI), against a throwaway local PostgreSQL server (initdb in
# a temporary folder, fsync off, as the `postgres` user when run as root):
#   benches/postgres.sh [ROWS] [EVENTS]   (default: 500000 2000000)
# 1. The write paths, with psql, on ROWS window rows (a text key, window_start, window_end, three
#    bigints) in batches of 10,000, into an empty table and then again over it (every row an
#    update): COPY (csv) into a temporary staging table then one INSERT … SELECT DISTINCT ON …
#    ON CONFLICT DO UPDATE per batch; binary COPY into it then the merge without DISTINCT ON
#    (what the sink does with a batch of distinct keys); one multi-row
#    INSERT … VALUES … ON CONFLICT DO UPDATE per batch; and `psql \copy` of all rows into a
#    table without a key and into one with the same primary key, as ceilings.
# 2. The sink in a pipeline: EVENTS benchmark events (benches/events.sh), 1-second windows per
#    dataset (many rows), to a CSV file (no database: the reference), to the postgres sink
#    without and with checkpoints (1 s); then `psql \copy` of the CSV file's rows into a table
#    without a key and into one with the sink's primary key, in the same run. Prints rows/s of
#    each over the run's wall time (a lower bound of the sink's rate), the sink's own rows/s
#    over its own time (encoding the rows and the database's calls; logged when it finishes),
#    their ratio to the two `psql \copy` figures, and the pipeline's events per CPU-second of
#    weir (the server's CPU aside).
# 3. The same pipeline into the table with a foreign key that refuses one dataset's rows at the
#    merge: the sink finds them by merging again in halves; its rows/s, and the dead letters
#    checked against the rows the key refuses.
# WEIR_BIN picks the binary (default: a release build of weir-cli).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ROWS=${1:-500000}
N=${2:-2000000}
cache=${WEIR_CACHE:-$HOME/.cache/weir}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
WEIR=${WEIR_BIN:-$CARGO_TARGET_DIR/release/weir}
if [ -z "${WEIR_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q --locked -p weir-cli)
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
work=$(mktemp -d)
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; as_pg=(runuser -u postgres --); fi
cleanup() {
  "${as_pg[@]}" "$bin/pg_ctl" -D "$work/data" -m fast stop > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$bin/initdb" -D "$work/data" -A trust -U weir --no-sync > /dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$work/data" -l "$work/server.log" -w \
  -o "-p $port -k $work -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_wal_size=4GB" start > /dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=weir PGDATABASE=postgres
psql_() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
now() { date +%s.%N; }
rate() { python3 -c "import sys; n, a, b = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]); print(f'{n / (b - a):10.0f} rows/s ({b - a:6.2f} s)')" "$@"; }

echo "== write paths: $ROWS rows, batches of 10000 (PostgreSQL $("$bin/postgres" --version | awk '{print $3}'))"
python3 - "$work" "$ROWS" <<'PY'
import os, random, sys
work, rows = sys.argv[1], int(sys.argv[2])
random.seed(7)
B = 10000
cols = '"datasetName", window_start, window_end, events, records, bytes'
upd = "window_end = EXCLUDED.window_end, events = EXCLUDED.events, records = EXCLUDED.records, bytes = EXCLUDED.bytes"
lines = []
for i in range(rows):
    key = f"dataset-{i % 5000:05d}-é"
    start = 1700000000 + (i // 5000) * 60
    lines.append((key, start, random.randint(1, 10**6), random.randint(1, 10**9), random.randint(1, 10**12)))
def ts(s):
    import datetime
    return datetime.datetime.fromtimestamp(s, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.000Z')
with open(f"{work}/rows.csv", "w") as all_:
    for k, s, a, b, c in lines:
        all_.write(f'"{k}",{ts(s)},{ts(s + 60)},{a},{b},{c}\n')
copy = open(f"{work}/copy.sql", "w")
binary = open(f"{work}/binary.sql", "w")
export = open(f"{work}/export.sql", "w")
ins = open(f"{work}/insert.sql", "w")
stage = "CREATE TEMPORARY TABLE stage (LIKE t_copy INCLUDING DEFAULTS INCLUDING CONSTRAINTS, weir_epoch bigint NOT NULL, weir_seq bigint NOT NULL, weir_delete boolean NOT NULL) ON COMMIT DELETE ROWS;\n"
copy.write(stage)
binary.write(stage)
export.write(stage.replace(" ON COMMIT DELETE ROWS", ""))
for n, off in enumerate(range(0, rows, B)):
    chunk = lines[off:off + B]
    path = f"{work}/chunk-{n}.csv"
    with open(path, "w") as f:
        for j, (k, s, a, b, c) in enumerate(chunk):
            f.write(f'"{k}",{ts(s)},{ts(s + 60)},{a},{b},{c},1,{off + j},f\n')
    copy.write("BEGIN;\n")
    copy.write(f"\\copy stage ({cols}, weir_epoch, weir_seq, weir_delete) FROM '{path}' (FORMAT csv)\n")
    copy.write(f'WITH l AS (SELECT DISTINCT ON ("datasetName", window_start) {cols}, weir_delete FROM stage WHERE weir_epoch <= 9223372036854775807 '
               f'ORDER BY "datasetName", window_start, weir_epoch DESC, weir_seq DESC) '
               f'INSERT INTO t_copy ({cols}) SELECT {cols} FROM l WHERE NOT l.weir_delete ON CONFLICT ("datasetName", window_start) DO UPDATE SET {upd};\n')
    copy.write("COMMIT;\n")
    # the same batch as binary COPY data (made with psql before the timing), merged as the
    # sink merges a batch whose keys are distinct (no DISTINCT ON)
    export.write(f"\\copy stage ({cols}, weir_epoch, weir_seq, weir_delete) FROM '{path}' (FORMAT csv)\n")
    export.write(f"\\copy stage ({cols}, weir_epoch, weir_seq, weir_delete) TO '{path}.bin' (FORMAT binary)\nTRUNCATE stage;\n")
    binary.write("BEGIN;\n")
    binary.write(f"\\copy stage ({cols}, weir_epoch, weir_seq, weir_delete) FROM '{path}.bin' (FORMAT binary)\n")
    binary.write(f'WITH l AS (SELECT {cols}, weir_delete FROM stage WHERE weir_epoch <= 9223372036854775807) '
                 f'INSERT INTO t_binary ({cols}) SELECT {cols} FROM l WHERE NOT l.weir_delete ON CONFLICT ("datasetName", window_start) DO UPDATE SET {upd};\n')
    binary.write("COMMIT;\n")
    values = ",".join(f"('{k}','{ts(s)}','{ts(s + 60)}',{a},{b},{c})" for k, s, a, b, c in chunk)
    ins.write(f'INSERT INTO t_insert ({cols}) VALUES {values} ON CONFLICT ("datasetName", window_start) DO UPDATE SET {upd};\n')
PY
table() { echo "CREATE TABLE $1 (\"datasetName\" text NOT NULL, window_start timestamptz NOT NULL, window_end timestamptz, events bigint, records bigint, bytes bigint${2:-, PRIMARY KEY (\"datasetName\", window_start)});"; }
psql_ -c "$(table t_copy)" -c "$(table t_binary)" -c "$(table t_insert)" -c "$(table t_plain ' ')" -c "$(table t_keyed)"
psql_ -f "$work/export.sql"
for pass in "empty table" "all updates"; do
  a=$(now); psql_ -f "$work/copy.sql"; b=$(now)
  echo "  COPY csv into staging + merge    ($pass): $(rate "$ROWS" "$a" "$b")"
  a=$(now); psql_ -f "$work/binary.sql"; b=$(now)
  echo "  COPY binary into staging + merge ($pass): $(rate "$ROWS" "$a" "$b")"
  a=$(now); psql_ -f "$work/insert.sql"; b=$(now)
  echo "  multi-row INSERT ON CONFLICT ($pass): $(rate "$ROWS" "$a" "$b")"
done
a=$(now); psql_ -c "\\copy t_plain FROM '$work/rows.csv' (FORMAT csv)"; b=$(now)
echo "  psql \\copy, no key               : $(rate "$ROWS" "$a" "$b")"
a=$(now); psql_ -c "\\copy t_keyed FROM '$work/rows.csv' (FORMAT csv)"; b=$(now)
echo "  psql \\copy, same primary key     : $(rate "$ROWS" "$a" "$b")"
[ "$(psql_ -At -c 'SELECT count(*) FROM t_copy')" = "$(psql_ -At -c 'SELECT count(*) FROM t_insert')" ]
[ "$(psql_ -At -c 'SELECT count(*) FROM t_binary')" = "$(psql_ -At -c 'SELECT count(*) FROM t_insert')" ]

echo "== the sink in a pipeline: $N events, 1-second windows per dataset ($WEIR)"
events=$("$repo/benches/events.sh" "$N" "$WEIR")
pipeline() { # sink-yaml [rest]
  cat <<YAML
name: bench
sources:
  events:
    file: { path: $events }
    format: json
    schema: data-ingestion
    event_time: { field: timestamp, max_out_of_orderness: 5s }
windows:
  per_dataset_1s:
    from: events
    key: [datasetName]
    tumbling: 1s
    aggregates:
      count: count(*)
      sum_recordCount: sum(recordCount)
      sum_sizeBytes: sum(sizeBytes)
      max_sizeBytes: max(sizeBytes)
      failure_count: count(*) FILTER (WHERE status = 'FAILURE')
    sinks: [out]
sinks:
  out: $1
dead_letter: { file: { path: "$work/dead.ndjson" } }
${2:-}
YAML
}
run() { # name sink-yaml [rest]
  pipeline "$2" "${3:-}" > "$work/$1.yaml"
  RUST_LOG=warn,weir_sinks::postgres=info /usr/bin/time -o "$work/$1.time" -f '%e %U %S %M' "$WEIR" run "$work/$1.yaml" > "$work/$1.summary" 2> "$work/$1.log"
  read -r wall usr sys rss < <(tail -1 "$work/$1.time")
  rows=$(sed -n 's/^  sink out: \([0-9]*\) rows.*/\1/p' "$work/$1.summary")
  sink=$(sed -n 's/.*postgres sink finished.*busy_ms=\([0-9]*\) rows_per_s=\([0-9]*\).*/sink own time: \1 ms, \2 rows\/s/p' "$work/$1.log")
  python3 -c "import sys; name, n, rows, wall, cpu, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]) + float(sys.argv[6]), int(sys.argv[7]); print(f'  {name:<20} rows={rows} wall={wall:6.2f}s rows/s(wall)={rows / wall:8.0f} weir cpu={cpu:6.2f}s events/cpu-s={n / cpu:8.0f} peak_rss={rss // 1024} MiB', sys.argv[8])" \
    "$1" "$N" "$rows" "$wall" "$usr" "$sys" "$rss" "$sink"
  echo "$rows" > "$work/$1.rows"
}
run csv_file "{ file: { path: \"$work/out.csv\" } }"
run postgres "{ postgres: { url: \"postgres://weir@127.0.0.1:$port/postgres\", table: public.bench_windows } }"
psql_ -c 'DROP TABLE bench_windows'
run postgres_checkpoint "{ postgres: { url: \"postgres://weir@127.0.0.1:$port/postgres\", table: public.bench_windows } }" \
  "checkpoint: { dir: \"$work/state\", interval: 1s }"
rows=$(cat "$work/csv_file.rows")
psql_ -c 'CREATE TABLE plain_windows (LIKE bench_windows)' -c 'CREATE TABLE keyed_windows (LIKE bench_windows INCLUDING ALL)'
a=$(now); psql_ -c "\\copy plain_windows FROM '$work/out.csv' (FORMAT csv, HEADER)"; b=$(now)
echo "  psql \\copy of the same rows, no key:          $(rate "$rows" "$a" "$b")"
plain=$(python3 -c "import sys; print(int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])))" "$rows" "$a" "$b")
a=$(now); psql_ -c "\\copy keyed_windows FROM '$work/out.csv' (FORMAT csv, HEADER)"; b=$(now)
echo "  psql \\copy of the same rows, same primary key: $(rate "$rows" "$a" "$b")"
keyed=$(python3 -c "import sys; print(int(sys.argv[1]) / (float(sys.argv[3]) - float(sys.argv[2])))" "$rows" "$a" "$b")
for r in postgres postgres_checkpoint; do
  sink=$(sed -n 's/.*postgres sink finished.*rows_per_s=\([0-9]*\).*/\1/p' "$work/$r.log")
  python3 -c "import sys; n, s, p, k = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]); print(f'  ratio {n:<20} sink {s:8.0f} rows/s (own time) = {s / k:4.2f}x psql \\\\copy into the same keyed table, {s / p:4.2f}x into one without a key')" "$r" "$sink" "$plain" "$keyed"
done
[ "$(psql_ -At -c 'SELECT count(*) FROM bench_windows')" = "$rows" ]

echo "== one dataset's rows refused at the merge by a foreign key (the merge made again in halves)"
psql_ -c 'CREATE TABLE datasets (name text PRIMARY KEY)' \
  -c 'INSERT INTO datasets SELECT DISTINCT "datasetName" FROM bench_windows WHERE "datasetName" <> (SELECT min("datasetName") FROM bench_windows)' \
  -c 'TRUNCATE bench_windows' \
  -c 'ALTER TABLE bench_windows ADD CONSTRAINT known_dataset FOREIGN KEY ("datasetName") REFERENCES datasets (name)'
victim=$(psql_ -At -c "SELECT count(*) FROM plain_windows WHERE \"datasetName\" NOT IN (SELECT name FROM datasets)")
rm -f "$work/dead.ndjson"
run postgres_refusing "{ postgres: { url: \"postgres://weir@127.0.0.1:$port/postgres\", table: public.bench_windows } }"
dead=$(grep -c '"postgres_refused"' "$work/dead.ndjson" || true)
echo "  refused rows: $dead dead letters, $victim expected"
[ "$dead" = "$victim" ]
[ "$(psql_ -At -c 'SELECT count(*) FROM bench_windows')" = "$((rows - victim))" ]
