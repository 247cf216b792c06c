#!/usr/bin/env python3
"""The rebalance pause of a worker pool (benches/pool_cost.sh runs it).

    pool_pause.py WEIR PIPELINE EVENTS PORT_A PORT_B PARTITIONS

Starts worker `a` of PIPELINE (whose `serve` takes its port from WEIR_HTTP_PORT, refresh
100ms), reading until caught up. Once `a` has read 15% of EVENTS, starts worker `b` (a
join); once every partition made progress again, stops `b` with SIGTERM (a leave: it hands
its partitions over); then waits for `a` to finish. Polls `weir_status` of each running
worker every 100 ms. The pause of an event is the longest time, over the partitions not yet
read to their end, from the event to the partition's first progress (its `events_in`
growing) after it. Prints `join_pause_s=... leave_pause_s=...`.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request


def status(port):
    """(partition -> records_in, partition -> ended) of a worker, or None."""
    body = json.dumps(
        {"query": "SELECT partition, events_in, ended FROM weir_status WHERE stage = 'source'"}
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/sql",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            rows = json.loads(r.read())
    except Exception:
        return None
    return (
        {row["partition"]: row["events_in"] or 0 for row in rows},
        {row["partition"]: bool(row["ended"]) for row in rows},
    )


def start(weir, pipeline, worker, port, log):
    env = dict(os.environ, WEIR_HTTP_PORT=str(port), RUST_LOG="warn")
    return subprocess.Popen(
        [weir, "run", pipeline, "--worker", worker, "--until-caught-up"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),
    )


def pause_after(event, ports, last, partitions, timeout=60.0):
    """Seconds from `event` until every partition (of `partitions`) not ended progressed
    after it. A counter that went down (a new job's) is not progress; its next rise is."""
    waiting = set()
    progressed = {}
    ended = set()
    deadline = event + timeout
    while time.time() < deadline:
        now = time.time()
        for port in ports():
            s = status(port)
            if s is None:
                continue
            counts, ends = s
            ended |= {p for p, e in ends.items() if e}
            for p, n in counts.items():
                before = last.get((port, p))
                last[(port, p)] = n
                if before is not None and n > before and p not in progressed:
                    progressed[p] = now
            waiting |= set(counts)
        if len(waiting) >= partitions:
            left = waiting - ended - set(progressed)
            if not left:
                live = [t for p, t in progressed.items() if p not in ended]
                return max(live, default=now) - event
        time.sleep(0.1)
    return float("nan")


def main():
    weir, pipeline, events, port_a, port_b, partitions = sys.argv[1:7]
    events, partitions = int(events), int(partitions)
    logdir = os.path.dirname(pipeline)
    a = start(weir, pipeline, "a", port_a, f"{logdir}/a.err")
    last = {}
    while True:
        s = status(port_a)
        if s and sum(s[0].values()) >= 0.15 * events:
            break
        if a.poll() is not None:
            sys.exit("worker a ended before 15% of the events: use more events")
        time.sleep(0.1)
    # prime the counters just before the join
    for port in (port_a,):
        s = status(port)
        for p, n in (s or ({}, {}))[0].items():
            last[(port, p)] = n
    joined = time.time()
    b = start(weir, pipeline, "b", port_b, f"{logdir}/b.err")
    join = pause_after(joined, lambda: (port_a, port_b), last, partitions)
    time.sleep(1.0)
    last.clear()
    for port in (port_a, port_b):
        s = status(port)
        for p, n in (s or ({}, {}))[0].items():
            last[(port, p)] = n
    left = time.time()
    b.send_signal(signal.SIGTERM)
    only_a = {k: v for k, v in last.items() if k[0] == port_a}
    leave = pause_after(left, lambda: (port_a,), only_a, partitions)
    b.wait(timeout=120)
    a.wait(timeout=600)
    print(f"join_pause_s={join:.2f} leave_pause_s={leave:.2f}")


if __name__ == "__main__":
    main()
