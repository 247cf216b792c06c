#!/usr/bin/env python3
"""The rebalance pause of a worker pool on a live topic (benches/pool_pause.sh runs it).

    pool_pause.py WEIR PIPELINE BROKERS TOPIC PORT_A PORT_B [RATE] [SETTLE_S]

Produces data-ingestion events stamped with the current time to TOPIC at a fixed RATE
(default 3000 events/s, keyed by datasetName), and runs the pool of PIPELINE (whose `serve`
takes its port from WEIR_HTTP_PORT, refresh 100ms) through four changes of membership,
after a period without one (`none`: the pause the measure sees when nothing happens):

- `join`:  worker b starts beside worker a;
- `leave`: b is stopped with SIGTERM (it hands its partitions over);
- `rejoin`: b starts again;
- `kill`:  b is killed with SIGKILL (its partitions move after the session timeout).

Each change comes SETTLE_S seconds (default 25) after the previous one. Every 100 ms the
script reads each running worker's `/metrics` and notes when a partition's watermark
(`weir_watermark_milliseconds`) moved: the events carry the time they were sent, so a
partition read without a pause moves its watermark at every poll. A partition's *pause* around a change is the
longest time, from its last progress before the change to SETTLE_S after it, in which it did
not progress anywhere; it *moved* when the worker reading it before the change is not the
one reading it after. Prints, per change, the pauses of the partitions that stayed and of
those that moved (most and median, in seconds), and one line per change of the form
`change=join stayed_max_s=... stayed_median_s=... moved_max_s=... moved_median_s=...`.
At the rate of the default, a partition's progress is seen every poll: 0.1-0.3 s is no pause.
"""

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

from confluent_kafka import Producer

WATERMARK = re.compile(r'^weir_watermark_milliseconds\{[^}]*partition="([^"]+)"[^}]*\} (\S+)$')


def status(port):
    """partition -> watermark of a worker's partitions, from its own `/metrics` (SQL to a
    pool worker asks the other workers too, and waits for a dead one), or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
            text = r.read().decode()
    except Exception:
        return None
    out = {}
    for line in text.splitlines():
        m = WATERMARK.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def produce(brokers, topic, rate, running):
    """Produces `rate` events a second until `running` is cleared."""
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    datasets = [f"dataset_{i:05d}" for i in range(200)]
    statuses = ["SUCCESS"] * 9 + ["FAILURE"]
    rng = random.Random(7)
    sent, start, n = 0, time.time(), 0
    while running.is_set():
        due = int((time.time() - start) * rate)
        while sent < due:
            d = rng.choice(datasets)
            event = {
                "eventId": f"evt-{n:010d}",
                "timestamp": int(time.time() * 1000),
                "source": "api-push",
                "datasetName": d,
                "recordCount": rng.randint(1, 50000),
                "sizeBytes": rng.randint(1, 10**8),
                "format": "parquet",
                "location": f"s3://lake/{d}/part.parquet",
                "status": rng.choice(statuses),
            }
            while True:
                try:
                    p.produce(topic, json.dumps(event).encode(), key=d.encode())
                    break
                except BufferError:
                    p.poll(0.01)
            sent += 1
            n += 1
        p.poll(0)
        time.sleep(0.01)
    p.flush(30)


class Watch:
    """Progress seen per partition: a list of (time, worker) of every poll that saw it grow."""

    def __init__(self):
        self.progress = {}
        self.last = {}

    def poll(self, workers):
        now = time.time()
        for worker, port in workers:
            counts = status(port)
            if counts is None:
                continue
            for p, n in counts.items():
                before = self.last.get((worker, p))
                self.last[(worker, p)] = n
                if before is not None and n > before:
                    self.progress.setdefault(p, []).append((now, worker))

    def pauses(self, at, until):
        """(stayed, moved): each partition's longest time without progress from its last
        progress before `at` to `until`."""
        stayed, moved = [], []
        for seen in self.progress.values():
            before = [s for s in seen if s[0] < at]
            after = [s for s in seen if at <= s[0] <= until]
            if not before or not after:
                continue
            times = [before[-1][0]] + [t for t, _ in after] + [until]
            gap = max(b - a for a, b in zip(times, times[1:]))
            (moved if before[-1][1] != after[-1][1] else stayed).append(gap)
        return stayed, moved


def start(weir, pipeline, worker, port, log):
    env = dict(os.environ, WEIR_HTTP_PORT=str(port), RUST_LOG="info")
    return subprocess.Popen(
        [weir, "run", pipeline, "--worker", worker],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )


def run(weir, pipeline, brokers, topic, ports, rate, settle):
    logdir = os.path.dirname(os.path.abspath(pipeline))
    running = threading.Event()
    running.set()
    producer = threading.Thread(target=produce, args=(brokers, topic, rate, running))
    producer.start()
    watch = Watch()
    workers = {"a": (start(weir, pipeline, "a", ports[0], f"{logdir}/a.err"), ports[0])}

    def wait(seconds):
        end = time.time() + seconds
        while time.time() < end:
            for name, (proc, _) in workers.items():
                if proc.poll() is not None and name == "a":
                    sys.exit(f"worker a ended (exit {proc.returncode}): see {logdir}/a.err")
            watch.poll([(w, port) for w, (_, port) in workers.items()])
            time.sleep(0.1)

    changes = []
    try:
        wait(settle)
        for change in ("none", "join", "leave", "rejoin", "kill"):
            at = time.time()
            if change == "none":
                pass
            elif change in ("join", "rejoin"):
                log = f"{logdir}/b.{change}.err"
                workers["b"] = (start(weir, pipeline, "b", ports[1], log), ports[1])
            else:
                proc = workers["b"][0]
                proc.send_signal(signal.SIGTERM if change == "leave" else signal.SIGKILL)
                proc.wait(timeout=120)
                del workers["b"]
            wait(settle)
            changes.append((change, at, at + settle))
    finally:
        for proc, _ in workers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in workers.values():
            proc.wait(timeout=120)
        running.clear()
        producer.join()
    return [(c, watch.pauses(at, until)) for c, at, until in changes]


def describe(gaps):
    if not gaps:
        return "nan", "nan"
    return f"{max(gaps):.2f}", f"{statistics.median(gaps):.2f}"


def main():
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    weir, pipeline, brokers, topic, port_a, port_b = sys.argv[1:7]
    rate = int(sys.argv[7]) if len(sys.argv) > 7 else 3000
    settle = float(sys.argv[8]) if len(sys.argv) > 8 else 25.0
    results = run(weir, pipeline, brokers, topic, (port_a, port_b), rate, settle)
    for change, (stayed, moved) in results:
        s_max, s_med = describe(stayed)
        m_max, m_med = describe(moved)
        print(
            f"change={change} stayed={len(stayed)} stayed_max_s={s_max} "
            f"stayed_median_s={s_med} moved={len(moved)} moved_max_s={m_max} "
            f"moved_median_s={m_med}",
            flush=True,
        )


if __name__ == "__main__":
    main()
