"""A peer output's row count and checksum, to compare peers at a glance.

Rows (datasetName, window_start, count, sum_recordCount, sum_sizeBytes, max_sizeBytes,
failure_count) are read from a CSV with a header (by column name), made integers, sorted and
hashed (sha256 of one line per row). Prints one line:
    rows=N sum(count)=N dup_keys=N sha256[:16]=HEX
usage: checksum.py OUT.csv
"""
import csv
import hashlib
import sys

COLUMNS = ("count", "sum_recordCount", "sum_sizeBytes", "max_sizeBytes", "failure_count")


def main(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = sorted(
            (r["datasetName"], int(float(r["window_start"])))
            + tuple(int(float(r[c] or 0)) for c in COLUMNS)
            for r in csv.DictReader(f)
        )
    digest = hashlib.sha256("\n".join(",".join(map(str, r)) for r in rows).encode()).hexdigest()
    keys = {r[:2] for r in rows}
    print(f"rows={len(rows)} sum(count)={sum(r[2] for r in rows)} "
          f"dup_keys={len(rows) - len(keys)} sha256[:16]={digest[:16]}")


if __name__ == "__main__":
    main(sys.argv[1])
