"""Reads a weir Iceberg table back with independent readers, for weir's end-to-end tests.

    read_table.py CATALOG WAREHOUSE TABLE pyiceberg|duckdb|snapshots|files [CATALOG_NAME]

CATALOG is a SQLite file or a postgres:// URL (read with psycopg 3).

- pyiceberg: the table through the SQL catalog (the current snapshot), one JSON object per
  row, timestamps as epoch milliseconds.
- duckdb: the Parquet data files of the current snapshot (listed from its manifests by
  pyiceberg) read by DuckDB, in the same form.
- snapshots: one JSON object per snapshot: its id, parent, operation and summary.
- files: one JSON object per data file of the current snapshot: path, records, bytes.
"""
import json
import os
import sys

from pyiceberg.catalog.sql import SqlCatalog


def ms(v):
    return int(v.timestamp() * 1000) if hasattr(v, "timestamp") else v


def main():
    db, warehouse, name, mode = sys.argv[1:5]
    catalog_name = sys.argv[5] if len(sys.argv) > 5 else "weir"
    props = {}
    if os.environ.get("AWS_ENDPOINT"):  # an S3-compatible server (the tests' moto)
        props = {
            "s3.endpoint": os.environ["AWS_ENDPOINT"],
            "s3.access-key-id": os.environ.get("AWS_ACCESS_KEY_ID", ""),
            "s3.secret-access-key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
        }
    if "://" not in warehouse:
        warehouse = f"file://{warehouse}"
    if db.startswith("postgres://") or db.startswith("postgresql://"):
        uri = "postgresql+psycopg://" + db.split("://", 1)[1]
    else:
        uri = f"sqlite:///{db}"
    catalog = SqlCatalog(catalog_name, uri=uri, warehouse=warehouse, **props)
    table = catalog.load_table(name)
    if mode == "pyiceberg":
        rows = table.scan().to_arrow().to_pylist()
    elif mode == "duckdb":
        import duckdb

        files = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
        if not files:
            return
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        rel = con.read_parquet(files)
        cols = rel.columns
        rows = [dict(zip(cols, r)) for r in rel.fetchall()]
    elif mode == "snapshots":
        for s in table.snapshots():
            print(json.dumps({
                "id": s.snapshot_id,
                "parent": s.parent_snapshot_id,
                "operation": s.summary.operation.value,
                "summary": dict(s.summary.additional_properties),
            }))
        return
    elif mode == "files":
        for t in table.scan().plan_files():
            print(json.dumps({
                "path": t.file.file_path,
                "records": t.file.record_count,
                "bytes": t.file.file_size_in_bytes,
            }))
        return
    else:
        sys.exit(f"unknown mode {mode}")
    for r in rows:
        print(json.dumps({k: ms(v) for k, v in r.items()}, ensure_ascii=False))


if __name__ == "__main__":
    main()
