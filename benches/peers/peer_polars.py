"""Polars peer: the benchmark's 1-minute windows per dataset, a lazy scan and a group-by.

Batch, like peer_duckdb.py (the same columns and order). Threads: POLARS_MAX_THREADS.
usage: peer_polars.py EVENTS.ndjson OUT.csv
"""
import sys

import polars as pl

SCHEMA = {
    "timestamp": pl.Int64,
    "datasetName": pl.String,
    "recordCount": pl.Int64,
    "sizeBytes": pl.Int64,
    "status": pl.String,
}


def main(events, out):
    windows = (
        pl.scan_ndjson(events, schema=SCHEMA)
        .with_columns(window_start=(pl.col("timestamp") // 60_000) * 60_000)
        .group_by("datasetName", "window_start")
        .agg(
            count=pl.len(),
            sum_recordCount=pl.col("recordCount").sum(),
            sum_sizeBytes=pl.col("sizeBytes").sum(),
            max_sizeBytes=pl.col("sizeBytes").max(),
            failure_count=(pl.col("status") == "FAILURE").sum(),
        )
        .sort("datasetName", "window_start")
        .collect()
    )
    windows.write_csv(out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
