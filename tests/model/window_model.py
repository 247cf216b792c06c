#!/usr/bin/env python3
"""weir's reference model: keyed, event-time tumbling windows over NDJSON events.

This is the project's own statement of the window rules, written independently of the
engine (it imports nothing of weir and shares no code with it), so that the engine's rows can
be checked against it. Python 3.11 standard library only: it runs without any venv.

Rules
-----
Partitions and arrival order
    Each input file is one source partition; its lines arrive in file order (lines are split
    on b"\\n" only; a trailing "\\r" is JSON whitespace). Several input files are several
    partitions: each keeps its own watermark and lateness, their windows are merged.

Bad records
    A line is bad, and takes no further part (it is not aggregated, is not late and does not
    move the watermark), when
      - it is not UTF-8, not JSON (Python's json.loads: NaN/Infinity allowed, the last of
        duplicate names wins), or is JSON but not an object (an empty line is bad too);
      - it does not match the schema (--schema): a required field is missing or null, or a
        field has the wrong type. Types: string (Avro string and enum: any JSON string, enum
        symbols are not enforced), long (a JSON integer, no fraction or exponent, within the
        signed 64-bit range; true/false are not numbers), double (any JSON number), map (a
        JSON object; its values are not checked). Nullable fields (Avro unions with null) may
        be missing or null. Fields the schema does not name are ignored;
      - its event time (--time-field, a long: epoch milliseconds) cannot be read, which the
        schema check already covers (a string such as "not-a-time" is the wrong type).

Windows
    window_start = floor(t / size) * size and window_end = window_start + size (aligned to
    the Unix epoch, half-open [start, end)). One row per (key values, window) that received at
    least one event; a key that is null or missing is a group of its own (null in the row).

Watermark and lateness
    The watermark of a partition is (newest event time seen so far in it) -
    max_out_of_orderness (--ooo), minus infinity before its first good event. An event is late
    when window_end + allowed_lateness (--lateness) <= the watermark at its arrival, that is
    before the event itself is counted. A late event is counted in `late`, never aggregated.

Filters
    --where FIELD=VALUE / FIELD!=VALUE is applied before windowing, as SQL's = and <>: an
    event whose comparison is false, or unknown (the field is null), is removed; a removed
    event is counted in `filtered`, is never late, and still advanced the watermark.

Aggregates (SQL semantics), --agg NAME=FN[:FIELD]
    count            count(*): rows of the window
    count:FIELD      count(FIELD): rows whose FIELD is not null
    sum:FIELD        sum of the non-null values (integers exactly); null when there are none
    min:FIELD, max:FIELD   smallest / largest non-null value; null when there are none
    avg:FIELD        mean of the non-null values, a float; null when there are none
    count_if:FIELD=VALUE   count(*) FILTER (WHERE FIELD = VALUE); null FIELD never counts
    Comparisons with VALUE follow the field's JSON type: strings compare as text, numbers
    numerically (VALUE read as a number).

Output
    One JSON object per line (-o OUT, or stdout): the key fields, window_start, window_end
    (epoch ms), then the aggregates in the order given; sorted by keys (nulls last), then
    window_start. A summary JSON object on stderr:
    {"lines", "bad", "late", "filtered", "windows"}.

usage:
  window_model.py IN.ndjson [IN2.ndjson ...] --schema data-ingestion --key datasetName \\
      [--key source] --size 1m --ooo 5s [--lateness 15s] [--where status!=PARTIAL] \\
      --agg events=count --agg records=sum:recordCount --agg failures=count_if:status=FAILURE \\
      [-o OUT.ndjson]
durations: an integer and a unit among ms, s, m, h, d (500ms, 5s, 1m, 100000d).
"""

import argparse
import json
import math
import re
import sys

STRING, LONG, DOUBLE, MAP = "string", "long", "double", "map"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# name -> [(field, type, nullable)], in the order of the platform's Avro schemas
SCHEMAS = {
    "data-ingestion": [
        ("eventId", STRING, False),
        ("timestamp", LONG, False),
        ("source", STRING, False),
        ("datasetName", STRING, False),
        ("recordCount", LONG, False),
        ("sizeBytes", LONG, False),
        ("format", STRING, False),
        ("location", STRING, False),
        ("status", STRING, False),  # enum SUCCESS, FAILURE, PARTIAL
        ("metadata", MAP, True),  # producers may leave it out
    ],
    "service-health": [
        ("eventId", STRING, False),
        ("timestamp", LONG, False),
        ("serviceName", STRING, False),
        ("namespace", STRING, False),
        ("healthStatus", STRING, False),  # enum HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN
        ("latencyMs", LONG, False),
        ("errorRate", DOUBLE, False),
        ("message", STRING, True),
    ],
}

UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class UsageError(Exception):
    """A command-line value the model cannot use."""


def parse_duration(text):
    """Milliseconds of '500ms', '5s', '1m', '2h', '1d'."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", text)
    if m is None:
        raise UsageError(f"bad duration {text!r}: an integer and ms, s, m, h or d")
    return int(m.group(1)) * UNITS_MS[m.group(2)]


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def has_type(value, kind):
    if kind == STRING:
        return isinstance(value, str)
    if kind == LONG:
        return isinstance(value, int) and not isinstance(value, bool) and (
            INT64_MIN <= value <= INT64_MAX
        )
    if kind == DOUBLE:
        return is_number(value)
    if kind == MAP:
        return isinstance(value, dict)
    raise ValueError(f"unknown field type {kind}")


def decode(raw, schema):
    """The event of one raw line (bytes), or None when the line is bad."""
    try:
        event = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(event, dict):
        return None
    for name, kind, nullable in schema:
        value = event.get(name)
        if value is None:
            if not nullable:
                return None
        elif not has_type(value, kind):
            return None
    return event


def same_value(value, text):
    """SQL `value = 'text'`: True, False, or None (unknown) when value is null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return text.strip().lower() == ("true" if value else "false")
    if is_number(value):
        try:
            return value == (int(text) if re.fullmatch(r"\s*-?\d+\s*", text) else float(text))
        except ValueError:
            return False
    if isinstance(value, str):
        return value == text
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False) == text


class Filter:
    """--where FIELD=VALUE or FIELD!=VALUE."""

    def __init__(self, spec):
        m = re.fullmatch(r"([^!=]+)(!=|=)(.*)", spec)
        if m is None:
            raise UsageError(f"bad --where {spec!r}: FIELD=VALUE or FIELD!=VALUE")
        self.field, self.negate, self.value = m.group(1), m.group(2) == "!=", m.group(3)

    def keeps(self, event):
        eq = same_value(event.get(self.field), self.value)
        if eq is None:
            return False
        return eq != self.negate


class Aggregate:
    """One --agg NAME=FN[:FIELD]; `start()` gives a fresh state, `add` folds an event in."""

    FUNCTIONS = ("count", "sum", "min", "max", "avg", "count_if")

    def __init__(self, spec):
        name, eq, body = spec.partition("=")
        fn, _, arg = body.partition(":")
        if not name or not eq or fn not in self.FUNCTIONS:
            raise UsageError(f"bad --agg {spec!r}: NAME=FN[:FIELD], FN one of {self.FUNCTIONS}")
        self.name, self.fn = name, fn
        self.field = arg or None
        self.match = None
        if fn == "count_if":
            field, eq, value = arg.partition("=")
            if not field or not eq:
                raise UsageError(f"bad --agg {spec!r}: count_if:FIELD=VALUE")
            self.field, self.match = field, value
        elif fn != "count" and self.field is None:
            raise UsageError(f"bad --agg {spec!r}: {fn} needs a field")

    def start(self):
        # counts start at 0; sum/min/max at None (no value yet); avg as [total, n]
        if self.fn in ("count", "count_if"):
            return 0
        if self.fn == "avg":
            return [0, 0]
        return None

    def add(self, state, event):
        fn = self.fn
        if fn == "count":
            if self.field is None or event.get(self.field) is not None:
                return state + 1
            return state
        value = event.get(self.field)
        if fn == "count_if":
            return state + (1 if same_value(value, self.match) else 0)
        if value is None:
            return state
        if fn == "avg":
            state[0] += value
            state[1] += 1
            return state
        if state is None:
            return value
        if fn == "sum":
            return state + value
        if fn == "min":
            return value if value < state else state
        return value if value > state else state  # max

    def merge(self, a, b):
        """Two partitions' states of the same window."""
        if self.fn in ("count", "count_if"):
            return a + b
        if self.fn == "avg":
            return [a[0] + b[0], a[1] + b[1]]
        if a is None or b is None:
            return b if a is None else a
        if self.fn == "sum":
            return a + b
        return min(a, b) if self.fn == "min" else max(a, b)

    def result(self, state):
        if self.fn == "avg":
            total, n = state
            return None if n == 0 else total / n
        return state


def group_value(value):
    """A key value usable in a dict (objects and arrays as their JSON text)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return value


class WindowModel:
    """Feeds lines of partitions in and gives the window rows and the summary."""

    def __init__(self, schema, keys, size_ms, ooo_ms=0, lateness_ms=0, filters=(), aggs=(),
                 time_field="timestamp"):
        if isinstance(schema, str):
            schema = SCHEMAS[schema]
        if size_ms <= 0:
            raise UsageError("the window size must be positive")
        names = [f for f, _, _ in schema]
        if time_field not in names or dict((f, k) for f, k, _ in schema)[time_field] != LONG:
            raise UsageError(f"the event-time field {time_field!r} must be a long of the schema")
        self.schema, self.keys, self.size = schema, list(keys), size_ms
        self.ooo, self.lateness, self.time_field = ooo_ms, lateness_ms, time_field
        self.filters = [f if isinstance(f, Filter) else Filter(f) for f in filters]
        self.aggs = [a if isinstance(a, Aggregate) else Aggregate(a) for a in aggs]
        self.windows = {}  # (key values..., window_start) -> [agg states]
        self.counts = {"lines": 0, "bad": 0, "late": 0, "filtered": 0}

    def partition(self):
        """A new source partition: its own watermark. Returns its `feed(raw_line)`."""
        newest = -math.inf

        def feed(raw):
            nonlocal newest
            self.counts["lines"] += 1
            event = decode(raw, self.schema)
            if event is None:
                self.counts["bad"] += 1
                return
            t = event[self.time_field]
            watermark = newest - self.ooo  # as it stood when the event arrived
            newest = max(newest, t)
            if not all(f.keeps(event) for f in self.filters):
                self.counts["filtered"] += 1
                return
            start = (t // self.size) * self.size
            if start + self.size + self.lateness <= watermark:
                self.counts["late"] += 1
                return
            ident = tuple(group_value(event.get(k)) for k in self.keys) + (start,)
            states = self.windows.get(ident)
            if states is None:
                states = self.windows[ident] = [a.start() for a in self.aggs]
            for i, agg in enumerate(self.aggs):
                states[i] = agg.add(states[i], event)

        return feed

    def feed_file(self, path):
        """Reads one file as one partition."""
        feed = self.partition()
        with open(path, "rb") as f:
            for raw in f:
                feed(raw)

    def feed_lines(self, lines):
        """Reads lines (str or bytes, without newlines) as one partition."""
        feed = self.partition()
        for line in lines:
            feed(line.encode("utf-8") if isinstance(line, str) else line)

    def merge(self, other):
        """Adds another model's windows and counts (same settings): a model per partition."""
        for ident, states in other.windows.items():
            mine = self.windows.get(ident)
            if mine is None:
                self.windows[ident] = [list(s) if isinstance(s, list) else s for s in states]
            else:
                for i, agg in enumerate(self.aggs):
                    mine[i] = agg.merge(mine[i], states[i])
        for k, v in other.counts.items():
            self.counts[k] += v

    def rows(self):
        """The result rows, sorted by keys (nulls last) and window start."""

        def order(ident):
            return tuple((v is None, v if v is not None else 0) for v in ident)

        out = []
        for ident in sorted(self.windows, key=order):
            row = dict(zip(self.keys, ident[:-1]))
            row["window_start"] = ident[-1]
            row["window_end"] = ident[-1] + self.size
            for agg, state in zip(self.aggs, self.windows[ident]):
                row[agg.name] = agg.result(state)
            out.append(row)
        return out

    def summary(self):
        return dict(self.counts, windows=len(self.windows))


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        epilog="See the module's docstring (python3 -m pydoc window_model) for the rules.",
    )
    ap.add_argument("inputs", nargs="+", metavar="IN", help="NDJSON file: one source partition")
    ap.add_argument("--schema", choices=sorted(SCHEMAS), required=True)
    ap.add_argument("--key", action="append", required=True, help="key field (repeatable)")
    ap.add_argument("--time-field", default="timestamp")
    ap.add_argument("--size", required=True, help="window size")
    ap.add_argument("--ooo", default="0s", help="max_out_of_orderness")
    ap.add_argument("--lateness", default="0s", help="allowed_lateness")
    ap.add_argument("--where", action="append", default=[], help="FIELD=VALUE or FIELD!=VALUE")
    ap.add_argument("--agg", action="append", required=True, help="NAME=FN[:FIELD]")
    ap.add_argument("-o", "--out", default="-")
    a = ap.parse_args(argv)
    try:
        model = WindowModel(
            a.schema, a.key, parse_duration(a.size), parse_duration(a.ooo),
            parse_duration(a.lateness), a.where, a.agg, a.time_field,
        )
    except UsageError as e:
        ap.error(str(e))
    for path in a.inputs:
        model.feed_file(path)
    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8")
    try:
        for row in model.rows():
            out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    print(json.dumps(model.summary()), file=sys.stderr)


if __name__ == "__main__":
    main()
