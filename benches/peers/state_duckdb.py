"""DuckDB reference for `state_bench`: the memory of DuckDB's hash aggregate over the same rows.

The rows are `state_bench`'s (keep the two in step): two passes over KEYS keys, pass p's row
i has key `dataset_%08d` % ((i * P[p] + p) % KEYS), time 1699999200000 + i / 10000 (ms),
recordCount i % 1000, sizeBytes (i * 7919) % 1000000. DuckDB generates them itself (no file
reader in the measure) and aggregates them as the window does (GROUP BY key and 1-hour
window_start: count, sum, max), reducing the groups to one row so that no result is held.

Prints peak RSS minus the RSS before the query (VmHWM, /proc/self/status), per key, and the
peak of DuckDB's own accounting (`duckdb_memory()`, polled every 20 ms from a second cursor).
usage: state_duckdb.py KEYS [THREADS]
"""
import sys
import threading
import time

import duckdb

PASSES = [1_000_003, 7_368_787]
BASE_MS = 1_699_999_200_000
import os
WATCH = os.environ.get('WATCH') == '1'


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def rows(keys):
    parts = []
    for p, mult in enumerate(PASSES):
        parts.append(
            f"""SELECT {BASE_MS} + i // 10000 AS ts,
                      'dataset_' || lpad(((i * {mult} + {p}) % {keys})::VARCHAR, 8, '0') AS datasetName,
                      i % 1000 AS recordCount,
                      (i * 7919) % 1000000 AS sizeBytes
               FROM range({keys}) t(i)"""
        )
    return " UNION ALL ".join(parts)


def main(keys, threads=None):
    keys = int(keys)
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SELECT 1").fetchall()
    base = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    peak_reported = [0]
    done = threading.Event()
    watcher = con.cursor()

    def watch():
        while not done.is_set():
            used = watcher.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
            peak_reported[0] = max(peak_reported[0], used or 0)
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    if WATCH:
        t.start()
    started = time.time()
    groups, events = con.execute(
        f"""SELECT count(*), sum(events) FROM (
              SELECT datasetName, ts // 3600000 * 3600000 AS window_start,
                     count(*) AS events, sum(recordCount) AS records, max(sizeBytes) AS max_bytes
              FROM ({rows(keys)})
              GROUP BY datasetName, window_start)
            WHERE records >= 0 AND max_bytes >= 0"""
    ).fetchone()
    took = time.time() - started
    done.set()
    if WATCH:
        t.join()
    peak = status("VmHWM:")
    assert groups == keys and events == 2 * keys, (groups, events)
    print(
        f"duckdb {keys} keys threads={threads or 'default'}: {took:.1f} s, "
        f"rss_peak_per_key={(peak - base) / keys:.1f} "
        f"reported_peak_per_key={peak_reported[0] / keys:.1f} rss_base_mb={base / 1e6:.0f}"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
