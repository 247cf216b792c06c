"""Reference values of the SQL tests' service_status view, computed from the input file alone.

A line is an event when it is a JSON object whose fields match the service-health schema
(the built-in `service-health` schema: `SERVICE_HEALTH_AVSC` in sources/src/schema.rs, also
written out in tests/model/window_model.py; unknown fields ignored). Per service it prints
the number of events, the newest timestamp, the largest latency and the statuses of the events
at the newest timestamp (more than one when the newest time is shared).

    python health_reference.py EVENTS.ndjson
"""
import json
import sys

REQUIRED = {
    "eventId": str,
    "timestamp": int,
    "serviceName": str,
    "namespace": str,
    "healthStatus": str,
    "latencyMs": int,
    "errorRate": (int, float),
}
# healthStatus is an Avro enum (HEALTHY, DEGRADED, UNHEALTHY, UNKNOWN); in JSON its symbols
# are not enforced (docs/src/concepts/dead-letters.md): any string is a status.


def event(line):
    try:
        e = json.loads(line)
    except ValueError:
        return None
    if not isinstance(e, dict):
        return None
    for name, kind in REQUIRED.items():
        v = e.get(name)
        if v is None or isinstance(v, bool) or not isinstance(v, kind):
            return None
    m = e.get("message")
    if m is not None and not isinstance(m, str):
        return None
    return e


def main(path):
    good = 0
    services = {}
    with open(path, "rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if not line.strip():
                continue
            e = event(line)
            if e is None:
                continue
            good += 1
            s = services.setdefault(
                e["serviceName"],
                {"checks": 0, "last_seen": None, "worst_latency": None, "latest": []},
            )
            s["checks"] += 1
            t = e["timestamp"]
            if s["last_seen"] is None or t > s["last_seen"]:
                s["last_seen"] = t
                s["latest"] = [e["healthStatus"]]
            elif t == s["last_seen"]:
                s["latest"].append(e["healthStatus"])
            if s["worst_latency"] is None or e["latencyMs"] > s["worst_latency"]:
                s["worst_latency"] = e["latencyMs"]
    json.dump({"good": good, "services": services}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
