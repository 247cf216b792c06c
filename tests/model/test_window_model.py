"""Hand-computed checks of the reference model (tests/model/window_model.py).

    cd tests/model && python3 -m unittest -v
(`cargo test -p weir-tests --test model` runs it too.)
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from window_model import DOUBLE, LONG, STRING, UsageError, WindowModel, decode, parse_duration  # noqa: E402

MIN = 60_000


def ingestion(t, dataset="a", status="SUCCESS", records=1, size=10, **extra):
    ev = {
        "eventId": f"e{t}",
        "timestamp": t,
        "source": "s3",
        "datasetName": dataset,
        "recordCount": records,
        "sizeBytes": size,
        "format": "json",
        "location": "x",
        "status": status,
        "metadata": {"owner": "t"},
    }
    ev.update(extra)
    return json.dumps(ev)


def health(t, service="svc", message=None, status="HEALTHY", latency=10, error=0.5):
    return json.dumps({
        "eventId": f"h{t}",
        "timestamp": t,
        "serviceName": service,
        "namespace": "data",
        "healthStatus": status,
        "latencyMs": latency,
        "errorRate": error,
        "message": message,
    })


def run(lines, schema="data-ingestion", keys=("datasetName",), size=MIN, ooo=0, lateness=0,
        where=(), aggs=("events=count",)):
    m = WindowModel(schema, keys, size, ooo, lateness, where, aggs)
    m.feed_lines(lines)
    return m.rows(), m.summary()


class Windows(unittest.TestCase):
    def test_half_open_epoch_aligned_windows(self):
        rows, s = run([ingestion(0), ingestion(59_999), ingestion(60_000), ingestion(-1)],
                      ooo=10 * MIN)
        self.assertEqual(
            [(r["window_start"], r["window_end"], r["events"]) for r in rows],
            [(-MIN, 0, 1), (0, MIN, 2), (MIN, 2 * MIN, 1)],
        )
        self.assertEqual(s, {"lines": 4, "bad": 0, "late": 0, "filtered": 0, "windows": 3})

    def test_late_event_is_counted_apart_and_never_aggregated(self):
        # newest 120 s, ooo 0: the watermark is 120 s when t=30 s arrives; its window
        # [0, 60 s) ended at 60 s <= 120 s: late. t=90 s: window end 120 s <= 120 s: late too.
        rows, s = run([ingestion(0), ingestion(120_000), ingestion(30_000), ingestion(90_000)])
        self.assertEqual([(r["window_start"], r["events"]) for r in rows], [(0, 1), (2 * MIN, 1)])
        self.assertEqual(s["late"], 2)
        self.assertEqual(s["lines"], 4)

    def test_own_time_does_not_make_an_event_late(self):
        # the watermark is taken before the event: a first event far ahead is never late
        rows, s = run([ingestion(10 * MIN), ingestion(10 * MIN + 1)])
        self.assertEqual((len(rows), s["late"]), (1, 0))

    def test_lateness_boundary_exactly_equal_is_late(self):
        # ooo 5 s, lateness 15 s: newest 80 s gives a watermark of 75 s; the window [0, 60 s)
        # is late from 60 + 15 = 75 s on: equal is late
        _, s = run([ingestion(80_000), ingestion(0)], ooo=5_000, lateness=15_000)
        self.assertEqual(s["late"], 1)
        # one millisecond earlier (watermark 74.999 s) it is still accepted
        rows, s = run([ingestion(79_999), ingestion(0)], ooo=5_000, lateness=15_000)
        self.assertEqual(s["late"], 0)
        self.assertEqual([(r["window_start"], r["events"]) for r in rows], [(0, 1), (MIN, 1)])
        # without allowed lateness the same event is late
        _, s = run([ingestion(79_999), ingestion(0)], ooo=5_000)
        self.assertEqual(s["late"], 1)

    def test_watermark_is_per_partition(self):
        m = WindowModel("data-ingestion", ["datasetName"], MIN, 0, 0, (), ["events=count"])
        m.feed_lines([ingestion(10 * MIN)])
        m.feed_lines([ingestion(0), ingestion(1)])  # another partition: its own watermark
        self.assertEqual(m.summary()["late"], 0)
        self.assertEqual([r["events"] for r in m.rows()], [2, 1])


class Filters(unittest.TestCase):
    def test_filtered_events_are_not_counted_but_advance_the_watermark(self):
        rows, s = run(
            [ingestion(0), ingestion(5 * MIN, status="PARTIAL"), ingestion(1_000)],
            where=["status!=PARTIAL"],
        )
        self.assertEqual(s["filtered"], 1)
        self.assertEqual(s["late"], 1)  # the watermark reached 5 min through the filtered one
        self.assertEqual([(r["window_start"], r["events"]) for r in rows], [(0, 1)])

    def test_a_filtered_late_event_counts_as_filtered_only(self):
        _, s = run([ingestion(5 * MIN), ingestion(0, status="PARTIAL")], where=["status!=PARTIAL"])
        self.assertEqual((s["filtered"], s["late"]), (1, 0))

    def test_equality_filter_and_numbers(self):
        lines = [ingestion(0, records=5), ingestion(1, records=6), ingestion(2, records=5)]
        rows, _ = run(lines, where=["recordCount=5"])
        self.assertEqual(rows[0]["events"], 2)
        rows, _ = run(lines, where=["recordCount!=5"])
        self.assertEqual(rows[0]["events"], 1)

    def test_null_never_passes_a_comparison(self):
        lines = [health(0, message=None), health(1, message="x"), health(2, message="y")]
        rows, s = run(lines, schema="service-health", keys=["serviceName"], where=["message!=x"])
        self.assertEqual((rows[0]["events"], s["filtered"]), (1, 2))


class Aggregates(unittest.TestCase):
    def test_sql_aggregates(self):
        lines = [
            ingestion(0, status="FAILURE", records=3, size=10),
            ingestion(1, records=1, size=40),
            ingestion(2, status="FAILURE", records=2, size=25),
        ]
        rows, _ = run(lines, aggs=[
            "events=count", "records=sum:recordCount", "lo=min:recordCount",
            "hi=max:sizeBytes", "avg=avg:sizeBytes", "failures=count_if:status=FAILURE",
            "partial=count_if:status=PARTIAL", "ids=count:eventId",
        ])
        r = rows[0]
        self.assertEqual(list(r), ["datasetName", "window_start", "window_end", "events",
                                   "records", "lo", "hi", "avg", "failures", "partial", "ids"])
        self.assertEqual([r[k] for k in list(r)[3:]], [3, 6, 1, 40, 25.0, 2, 0, 3])

    def test_aggregates_of_no_values_are_null_and_counts_zero(self):
        schema = [("timestamp", LONG, False), ("k", STRING, False), ("v", DOUBLE, True)]
        m = WindowModel(schema, ["k"], MIN, 0, 0, (), [
            "n=count", "nv=count:v", "s=sum:v", "lo=min:v", "hi=max:v", "mean=avg:v",
            "ones=count_if:v=1",
        ])
        m.feed_lines(['{"timestamp": 1, "k": "a", "v": null}', '{"timestamp": 2, "k": "a"}'])
        r = m.rows()[0]
        self.assertEqual([r[k] for k in ("n", "nv", "s", "lo", "hi", "mean", "ones")],
                         [2, 0, None, None, None, None, 0])
        m.feed_lines(['{"timestamp": 3, "k": "a", "v": 1.5}', '{"timestamp": 4, "k": "a", "v": 1}'])
        r = m.rows()[0]
        self.assertEqual([r[k] for k in ("n", "nv", "s", "lo", "hi", "mean", "ones")],
                         [4, 2, 2.5, 1, 1.5, 1.25, 1])

    def test_null_key_is_a_group_of_its_own(self):
        lines = [health(0, message=None), health(1, message="down"), health(2, message=None)]
        rows, _ = run(lines, schema="service-health", keys=["message"])
        self.assertEqual([(r["message"], r["events"]) for r in rows], [("down", 1), (None, 2)])

    def test_compound_keys(self):
        lines = [ingestion(0, "a"), ingestion(1, "b"), ingestion(2, "a")]
        rows, _ = run(lines, keys=["datasetName", "source"])
        self.assertEqual([(r["datasetName"], r["source"], r["events"]) for r in rows],
                         [("a", "s3", 2), ("b", "s3", 1)])


class BadRecords(unittest.TestCase):
    GOOD = ingestion(1_000)

    def test_bad_lines(self):
        ev = json.loads(self.GOOD)

        def changed(**fields):
            e = dict(ev)
            for k, v in fields.items():
                if v is KeyError:
                    del e[k]
                else:
                    e[k] = v
            return json.dumps(e)

        bad = [
            self.GOOD[:40],  # truncated
            "this is not json at all \u0000\u00ff",
            "",  # empty line
            "[1, 2]",  # JSON, not an object
            '"text"',
            self.GOOD + " {}",  # extra data
            changed(timestamp="not-a-time"),
            changed(timestamp=KeyError),
            changed(timestamp=None),
            changed(timestamp=1.5),
            changed(recordCount={"nested": "object"}),
            changed(recordCount=5.0),
            changed(recordCount=True),
            changed(recordCount=2**63),
            changed(status=None),
            changed(source=KeyError),
            changed(datasetName=7),
            changed(metadata="not a map"),
        ]
        for line in bad:
            self.assertIsNone(decode(line.encode(), _schema("data-ingestion")), line)
        not_utf8 = self.GOOD.encode().replace(b'"datasetName": "a"', b'"datasetName": "\xff"')
        self.assertNotEqual(not_utf8, self.GOOD.encode())
        self.assertIsNone(decode(not_utf8, _schema("data-ingestion")))
        good = [
            self.GOOD,
            changed(metadata=None),
            changed(metadata=KeyError),
            changed(extra=[1, None, {"a": 99999999999999999999}]),  # unknown fields: ignored
            changed(recordCount=-(2**63)),
            "  " + self.GOOD + "\r",
            self.GOOD[:-1] + ', "recordCount": 7}',  # the last duplicate wins
        ]
        for line in good:
            self.assertIsNotNone(decode(line.encode(), _schema("data-ingestion")), line)
        self.assertEqual(decode(good[-1].encode(), _schema("data-ingestion"))["recordCount"], 7)
        # a double accepts integers; a string field rejects numbers
        self.assertIsNotNone(decode(health(0, error=0).encode(), _schema("service-health")))
        self.assertIsNone(decode(health(0, message=3).encode(), _schema("service-health")))

    def test_bad_lines_neither_count_nor_move_the_watermark(self):
        rows, s = run([ingestion(0), '{"timestamp": 999999999}', ingestion(10 * MIN)[:20],
                       ingestion(1)])
        self.assertEqual(s, {"lines": 4, "bad": 2, "late": 0, "filtered": 0, "windows": 1})
        self.assertEqual(rows[0]["events"], 2)


class CommandLine(unittest.TestCase):
    def test_cli_rows_and_summary(self):
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "window_model.py")
        with tempfile.TemporaryDirectory() as d:
            inp, out = os.path.join(d, "in.ndjson"), os.path.join(d, "out.ndjson")
            with open(inp, "wb") as f:
                f.write("\n".join([
                    ingestion(0, "données"), ingestion(2 * MIN, "b"), "oops", ingestion(1, "a"),
                    ingestion(2 * MIN + 5, "b", status="PARTIAL", records=4),
                ]).encode() + b"\n")
            p = subprocess.run(
                [sys.executable, script, inp, "--schema", "data-ingestion", "--key", "datasetName",
                 "--size", "1m", "--ooo", "5s", "--where", "status!=FAILURE", "--agg", "n=count",
                 "--agg", "r=sum:recordCount", "-o", out],
                capture_output=True, text=True, check=True,
            )
            self.assertEqual(json.loads(p.stderr),
                             {"lines": 5, "bad": 1, "late": 1, "filtered": 0, "windows": 2})
            with open(out, encoding="utf-8") as f:
                rows = [json.loads(l) for l in f]
            self.assertEqual(rows, [
                {"datasetName": "b", "window_start": 2 * MIN, "window_end": 3 * MIN, "n": 2, "r": 5},
                {"datasetName": "données", "window_start": 0, "window_end": MIN, "n": 1, "r": 1},
            ])

    def test_durations(self):
        self.assertEqual([parse_duration(t) for t in ("500ms", "5s", "1m", "2h", "100000d")],
                         [500, 5_000, 60_000, 7_200_000, 8_640_000_000_000])
        with self.assertRaises(UsageError):
            parse_duration("5 minutes")


def _schema(name):
    from window_model import SCHEMAS
    return SCHEMAS[name]


if __name__ == "__main__":
    unittest.main()
