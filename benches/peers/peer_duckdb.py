"""DuckDB peer: the benchmark's 1-minute windows per dataset as one SQL query over the NDJSON.

Batch: every event counts (the benchmark's input has no late or bad lines, so this equals
the streaming result). Columns: datasetName, window_start (epoch ms), count, sum_recordCount,
sum_sizeBytes, max_sizeBytes, failure_count; sorted by datasetName, window_start.
usage: peer_duckdb.py EVENTS.ndjson OUT.csv [THREADS]
"""
import sys

import duckdb


def literal(text):
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def main(events, out, threads=None):
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    con.execute(
        f"""
        COPY (
          SELECT datasetName,
                 floor(timestamp / 60000)::BIGINT * 60000 AS window_start,
                 count(*) AS count,
                 sum(recordCount) AS sum_recordCount,
                 sum(sizeBytes) AS sum_sizeBytes,
                 max(sizeBytes) AS max_sizeBytes,
                 count(*) FILTER (WHERE status = 'FAILURE') AS failure_count
          FROM read_json({literal(events)}, format = 'newline_delimited',
               columns = {{timestamp: 'BIGINT', datasetName: 'VARCHAR',
                          recordCount: 'BIGINT', sizeBytes: 'BIGINT', status: 'VARCHAR'}})
          GROUP BY datasetName, window_start
          ORDER BY datasetName, window_start
        ) TO {literal(out)} (HEADER, DELIMITER ',')
        """
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
