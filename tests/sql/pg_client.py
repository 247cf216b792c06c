"""Runs parameterized queries through psycopg 3 (the Postgres extended query protocol:
Parse/Bind/Describe/Execute with $n placeholders) and prints the rows as JSON.

    python pg_client.py PORT PASSWORD_OR_- '[["SELECT ... WHERE k = %s", ["v"]], ...]'

Values that JSON cannot hold (timestamps) are printed as their ISO text; a failing query
prints {"error": ..., "sqlstate": ...} in its place and the next query still runs.
"""
import datetime
import json
import sys

import psycopg


def value(v):
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    return v


def main(port, password, queries):
    kwargs = {"host": "127.0.0.1", "port": int(port), "user": "weir", "dbname": "weir"}
    if password != "-":
        kwargs["password"] = password
    out = []
    with psycopg.connect(autocommit=True, **kwargs) as conn:
        for sql, params in json.loads(queries):
            try:
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    names = [d.name for d in cur.description]
                    types = [d.type_code for d in cur.description]
                    rows = [[value(v) for v in r] for r in cur.fetchall()]
                    out.append({"columns": names, "types": types, "rows": rows})
            except psycopg.Error as e:
                out.append({"error": str(e).strip(), "sqlstate": e.sqlstate})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
