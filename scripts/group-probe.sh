#!/usr/bin/env bash
# Probes a broker's consumer-group coordinator with plain librdkafka clients (no weir): three
# cooperative-sticky members with a pool's settings (6 s session, 500 ms heartbeats) share a
# topic of 6 partitions; one is killed (SIGKILL) and started again at once, as a pool worker
# is. Prints every member's assignments, then the partitions two live members owned at the
# same time, the generations the group went through and the members the broker expired.
# A coordinator that works gives no overlap and expires only the killed member.
#   scripts/group-probe.sh            against $KAFKA_BROKERS, or scripts/kafka.sh's broker
#   PROBE_SECONDS=40                  how long the members run (default 40)
# Used to tell weir's pool behaviour from the test broker's (docs/src/testing.md).
set -euo pipefail
brokers=${KAFKA_BROKERS:-127.0.0.1:${WEIR_KAFKA_PORT:-9092}}
py=${WEIR_TEST_PYTHON:-${WEIR_CACHE:-$HOME/.cache/weir}/venv/bin/python}
seconds=${PROBE_SECONDS:-40}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
topic="group-probe-$$-$(date +%s)"

cat >"$work/member.py" <<'EOF'
"""One group member: logs `time member event partitions` until its time is up."""
import sys, time
from confluent_kafka import Consumer

brokers, topic, group, name, seconds = sys.argv[1:6]
c = Consumer({"bootstrap.servers": brokers, "group.id": group,
              "partition.assignment.strategy": "cooperative-sticky",
              "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
              "enable.auto.commit": False})
def log(event):
    def cb(_, parts):
        print(f"{time.time():.3f} {name} {event} {','.join(str(p.partition) for p in parts)}",
              flush=True)
    return cb
c.subscribe([topic], on_assign=log("assigned"), on_revoke=log("revoked"),
            on_lost=log("lost"))
end = time.time() + float(seconds)
while time.time() < end:
    c.poll(0.2)
c.close()
print(f"{time.time():.3f} {name} closed", flush=True)
EOF

cat >"$work/report.py" <<'EOF'
"""Partitions owned by two live members at once, from the members' logs."""
import sys
events = []
for path in sys.argv[1:]:
    for line in open(path):
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("assigned", "revoked", "lost", "closed", "killed"):
            ps = parts[3].split(",") if len(parts) > 3 and parts[3] else []
            events.append((float(parts[0]), parts[1], parts[2], ps))
events.sort()
owners, overlaps = {}, []
for t, member, event, ps in events:
    if event in ("closed", "killed"):
        ps = [p for p, o in owners.items() if member in o]
    for p in ps:
        held = owners.setdefault(p, set())
        if event == "assigned":
            if held - {member}:
                overlaps.append((t, p, sorted(held), member))
            held.add(member)
        else:
            held.discard(member)
t0 = events[0][0] if events else 0
for t, member, event, ps in events:
    print(f"{t - t0:7.2f}s {member:>3} {event} {','.join(ps)}")
print(f"overlaps (a partition assigned while another live member held it): {len(overlaps)}")
for t, p, held, member in overlaps:
    print(f"  {t - t0:7.2f}s partition {p} assigned to {member} while {','.join(held)} held it")
EOF

"$py" - "$brokers" "$topic" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient, NewTopic
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
for f in admin.create_topics([NewTopic(sys.argv[2], 6, 1)]).values():
    f.result()
EOF
group="$topic-group"
for m in a b c; do
    "$py" "$work/member.py" "$brokers" "$topic" "$group" "$m" "$seconds" >"$work/$m.log" 2>&1 &
    eval "pid_$m=$!"
done
sleep 12
# shellcheck disable=SC2154 # set by eval above
kill -9 "$pid_b"
echo "$(date +%s.%N | cut -c1-14) b killed" >"$work/kill.log"
"$py" "$work/member.py" "$brokers" "$topic" "$group" b2 "$((seconds - 12))" >"$work/b2.log" 2>&1 &
wait "$pid_a" "$pid_c" 2>/dev/null || true
wait
"$py" "$work/report.py" "$work"/a.log "$work"/b.log "$work"/c.log "$work"/b2.log "$work"/kill.log
echo "(the broker's own log says which members it expired; with tansu started by"
echo " scripts/kafka.sh: RUST_LOG=tansu_broker::coordinator=info, then grep 'missed heartbeat')"
