"""Runs parameterized queries through psycopg 3 (the Postgres extended query protocol:
Parse/Bind/Describe/Execute with $n placeholders) and prints the rows as JSON.

    python pg_client.py PORT PASSWORD_OR_- '[["SELECT ... WHERE k = %s", ["v"]], ...]' [binary]

With `binary`, results are asked for in the binary format. Values that JSON cannot hold
(timestamps, decimals) are printed as their text; a failing query prints
{"error": ..., "sqlstate": ...} in its place and the next query still runs.
"""
import datetime
import decimal
import json
import sys

import psycopg


def value(v):
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    return v


def main(port, password, queries, binary=False):
    kwargs = {"host": "127.0.0.1", "port": int(port), "user": "weir", "dbname": "weir"}
    if password != "-":
        kwargs["password"] = password
    out = []
    with psycopg.connect(autocommit=True, **kwargs) as conn:
        for sql, params in json.loads(queries):
            try:
                with conn.cursor(binary=binary) as cur:
                    cur.execute(sql, params)
                    names = [d.name for d in cur.description]
                    types = [d.type_code for d in cur.description]
                    rows = [[value(v) for v in r] for r in cur.fetchall()]
                    out.append({"columns": names, "types": types, "rows": rows})
            except psycopg.Error as e:
                out.append({"error": str(e).strip(), "sqlstate": e.sqlstate})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], len(sys.argv) > 4 and sys.argv[4] == "binary")
