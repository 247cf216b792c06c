#!/usr/bin/env python3
"""Whether two window outputs hold the same rows: CSV or NDJSON files, matched on the key
columns and window_start (epoch ms or an RFC 3339 time), every column of the first file equal
in the second (numbers numerically, to a relative 1e-9; window_end as a time), no key and
window twice. Exit 0 when equal, 1 with examples otherwise.
usage: same_rows.py EXPECTED ACTUAL --key datasetName [--key ...]
"""
import argparse
import csv
import datetime
import json
import sys

TIMES = ("window_start", "window_end")


def read(path):
    with open(path, newline="", encoding="utf-8") as f:
        if path.endswith(".csv"):
            return [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]
        return [json.loads(line) for line in f if line.strip()]


def ms(v):
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return int(v)
    text = str(v).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return round(t.timestamp() * 1000)


def equal(a, b):
    if a is None or b is None:
        return a is None and b is None
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return x == y or abs(x - y) <= 1e-9 * max(abs(x), abs(y))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("expected")
    ap.add_argument("actual")
    ap.add_argument("--key", action="append", required=True)
    a = ap.parse_args()
    problems = []

    def index(rows, which):
        out = {}
        for r in rows:
            ident = tuple(str(r.get(k)) for k in a.key) + (ms(r.get("window_start")),)
            if ident in out:
                problems.append(f"{which}: {ident} twice")
            out[ident] = r
        return out

    exp, act = index(read(a.expected), "expected"), index(read(a.actual), "actual")
    problems += [f"missing {k}" for k in exp.keys() - act.keys()]
    problems += [f"extra {k}" for k in act.keys() - exp.keys()]
    for ident in exp.keys() & act.keys():
        e, r = exp[ident], act[ident]
        for col, v in e.items():
            if col in a.key or col == "window_start":
                continue
            same = ms(v) == ms(r.get(col)) if col in TIMES else equal(v, r.get(col))
            if not same:
                problems.append(f"{ident} {col}: {v} != {r.get(col)}")
    if problems:
        print(f"{len(problems)} difference(s) in {len(exp)} rows, e.g.:", *problems[:5], sep="\n  ")
        sys.exit(1)
    print(f"{len(exp)} rows equal")


if __name__ == "__main__":
    main()
