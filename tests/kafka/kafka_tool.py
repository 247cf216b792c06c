#!/usr/bin/env python3
"""An independent Kafka client for weir's end-to-end tests (confluent-kafka, fastavro).

  kafka_tool.py create  BROKERS TOPIC PARTITIONS
  kafka_tool.py produce BROKERS TOPIC FILE [--key-field F] [--round-robin] [--format json|avro|avro-confluent|cloudevents|envelope]
                        [--schema AVSC] [--schema-id N] [--header K=V ...]
  kafka_tool.py consume BROKERS TOPIC OUT [--keys] [--raw] [--read-committed]
                                                   all messages up to the current end, as NDJSON
  kafka_tool.py lag     BROKERS GROUP TOPIC              {"committed": N, "end": M, "lag": M - N} as JSON
  kafka_tool.py registry AVSC|- ID                       a schema registry serving AVSC as schema ID
                                                         (prints its port, then serves until killed)
  kafka_tool.py leader-leaves BROKERS TOPIC GROUP        checks the broker: a group whose leader
                                                         leaves while it re-forms still assigns
  kafka_tool.py committed BROKERS GROUP TOPIC PARTITION  {"offset": N, "metadata": "..."} as JSON

`produce` sends each line of FILE as one message, keyed by the JSON field F when the line is an
object that has it (else no key). With --format avro the line's object is encoded with the Avro
schema (plain binary, or the Confluent wire format with --schema-id); lines that are not valid
for the schema are sent as they are (raw bytes that are not Avro). With cloudevents/envelope the
object is wrapped in a CloudEvents 1.0 structured event or the platform's generic envelope, its
timestamp also written as the envelope's `time`/`occurred_at` (RFC 3339, milliseconds).
`consume` writes one JSON value per line (`{"key": ..., "value": ...}` with --keys).
"""
import argparse
import datetime
import io
import json
import struct
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(brokers, topic, partitions):
    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in futures.values():
        try:
            f.result(30)
        except Exception as e:  # noqa: BLE001
            if "already exists" not in str(e).lower() and "TOPIC_ALREADY_EXISTS" not in str(e):
                raise


def delete(brokers, topic):
    """Deletes `topic` and waits until the cluster no longer lists it."""
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.delete_topics([topic]).values():
        f.result(30)
    deadline = time.time() + 30
    while topic in admin.list_topics(timeout=10).topics:
        if time.time() > deadline:
            raise SystemExit(f"{topic} is still listed 30 s after its deletion")
        time.sleep(0.2)


def rfc3339(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def encode(line, args, parsed_schema):
    try:
        obj = json.loads(line)
    except ValueError:
        obj = None
    if args.format == "json":
        return line.encode()
    if args.format in ("avro", "avro-confluent"):
        import fastavro
        if not isinstance(obj, dict):
            return line.encode()
        buf = io.BytesIO()
        if args.format == "avro-confluent":
            buf.write(b"\x00" + struct.pack(">I", args.schema_id))
        try:
            fastavro.schemaless_writer(buf, parsed_schema, obj)
        except Exception:  # noqa: BLE001 - not valid for the schema: send the raw line
            return line.encode()
        return buf.getvalue()
    if not isinstance(obj, dict) or not isinstance(obj.get("timestamp"), int):
        return line.encode()
    ts = obj["timestamp"]
    if args.format == "cloudevents":
        event = {"specversion": "1.0", "id": obj.get("eventId", ""), "type": "platform.data-ingestion.v1",
                 "source": "/tests", "time": rfc3339(ts), "datacontenttype": "application/json", "data": obj}
    else:
        event = {"id": obj.get("eventId", ""), "type": "platform.dataset.ingested.v1", "occurred_at": rfc3339(ts),
                 "source": "tests", "correlation_id": "c-1", "trace_id": "t-1", "payload": obj,
                 "metadata": {"partition_key": "k", "tenant_id": "t"}}
    return json.dumps(event, ensure_ascii=False).encode()


def produce(args):
    parsed_schema = None
    if args.schema:
        import fastavro
        with open(args.schema) as f:
            parsed_schema = fastavro.parse_schema(json.load(f))
    # murmur2 as the Java client: every key, the empty one included, always maps to one partition
    p = Producer({"bootstrap.servers": args.brokers, "linger.ms": 20, "compression.type": "lz4",
                  "enable.idempotence": True, "partitioner": "murmur2_random"})
    failures = []
    headers = [tuple(h.split("=", 1)) for h in args.header]
    n = 0
    partitions = None
    if args.round_robin:  # message n to partition n % count, whatever its key
        partitions = len(p.list_topics(args.topic, timeout=30).topics[args.topic].partitions)
    ts = None  # message timestamp: the event's --timestamp-field (kept for lines without one)
    with open(args.file, encoding="utf-8", errors="surrogateescape") as f:
        for raw in f:
            line = raw.rstrip("\n")
            key = None
            try:
                obj = json.loads(line)
                if isinstance(obj, dict) and isinstance(obj.get(args.key_field), str):
                    key = obj[args.key_field].encode()
                if args.timestamp_field and isinstance(obj, dict) and isinstance(obj.get(args.timestamp_field), int):
                    ts = obj[args.timestamp_field]
            except ValueError:
                pass
            value = encode(line, args, parsed_schema) if args.format != "json" else line.encode(
                "utf-8", errors="surrogateescape")
            while True:
                try:
                    extra = {"timestamp": ts} if args.timestamp_field and ts is not None else {}
                    p.produce(args.topic, value=value, key=key, headers=headers or None,
                              partition=(n % partitions if partitions else
                                         -1 if args.partition is None else args.partition),
                              on_delivery=lambda err, msg: err and failures.append(err), **extra)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
            n += 1
    left = p.flush(120)
    if failures or left:
        sys.exit(f"produce failed: {failures[:3]} ({left} not delivered)")
    print(f"produced {n} messages to {args.topic}", file=sys.stderr)


_schemas = {}


def avro_value(raw, registry_url):
    """A Confluent-framed Avro value decoded with its writer schema from the registry, as JSON
    values (timestamps as RFC 3339, as weir writes them in JSON)."""
    import urllib.request
    import fastavro
    assert raw[0] == 0, "not in the Confluent wire format"
    sid = struct.unpack(">I", raw[1:5])[0]
    if sid not in _schemas:
        with urllib.request.urlopen(f"{registry_url}/schemas/ids/{sid}") as r:
            _schemas[sid] = fastavro.parse_schema(json.loads(json.loads(r.read())["schema"]))
    rec = fastavro.schemaless_reader(io.BytesIO(raw[5:]), _schemas[sid])
    for k, v in rec.items():
        if isinstance(v, datetime.datetime):
            rec[k] = rfc3339(int(v.timestamp() * 1000))
    return rec


def consume(args):
    c = Consumer({"bootstrap.servers": args.brokers, "group.id": "weir-tests-reader",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "isolation.level": "read_committed" if args.read_committed else "read_uncommitted"})
    md = c.list_topics(args.topic, timeout=30)
    parts = sorted(md.topics[args.topic].partitions)
    ends = {}
    for p in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(args.topic, p), timeout=30)
        if hi > lo:
            ends[p] = hi
    c.assign([TopicPartition(args.topic, p, 0) for p in ends])
    done = {p: False for p in ends}
    out = open(args.out, "w", encoding="utf-8")
    n = 0
    idle = 0
    while not all(done.values()):
        m = c.poll(1.0)
        if args.read_committed:
            # transaction markers and aborted messages are never delivered: the position says
            # when a partition is read to its end
            for tp in c.position([TopicPartition(args.topic, p) for p in ends]):
                if tp.offset >= ends[tp.partition]:
                    done[tp.partition] = True
        if m is None:
            idle += 1
            if idle > 120:
                sys.exit(f"consume: timed out; reached {done}")
            continue
        idle = 0
        if m.error():
            continue
        if m.offset() + 1 >= ends[m.partition()]:
            done[m.partition()] = True
        if m.value() is None:
            value = None  # a tombstone
        elif args.avro_registry:
            value = avro_value(m.value(), args.avro_registry)
        else:
            value = m.value().decode("utf-8", errors="replace") if args.raw else json.loads(m.value())
        if args.keys:
            value = {"key": m.key().decode() if m.key() is not None else None, "value": value,
                     "partition": m.partition(), "offset": m.offset(),
                     "headers": {k: v.decode() for k, v in (m.headers() or [])}}
        out.write(json.dumps(value, ensure_ascii=False) + "\n")
        n += 1
    out.close()
    c.close()
    print(f"consumed {n} messages from {args.topic}", file=sys.stderr)


def lag(args):
    c = Consumer({"bootstrap.servers": args.brokers, "group.id": args.group, "enable.auto.commit": False})
    md = c.list_topics(args.topic, timeout=30)
    tps = [TopicPartition(args.topic, p) for p in sorted(md.topics[args.topic].partitions)]
    committed = c.committed(tps, timeout=30)
    total_committed = sum(max(tp.offset, 0) for tp in committed)
    total_end = sum(c.get_watermark_offsets(tp, timeout=30)[1] for tp in tps)
    c.close()
    print(json.dumps({"committed": total_committed, "end": total_end, "lag": total_end - total_committed}))


def committed(args):
    """The group's committed offset of a partition and its metadata, by OffsetFetch v1 itself:
    confluent-kafka reads the metadata as a NUL-terminated string, past its end (a byte
    that is not UTF-8 there made the call fail)."""
    raw = RawMember(args.brokers)
    body = (RawMember.string(args.group) + struct.pack(">i", 1) + RawMember.string(args.topic)
            + struct.pack(">ii", 1, args.partition))
    reply = raw.call(9, 1, body)
    at = 4  # one topic
    n = struct.unpack(">h", reply[at:at + 2])[0]
    at += 2 + n + 4  # its name, one partition
    _, offset, size = struct.unpack(">iqh", reply[at:at + 14])
    at += 14
    metadata = reply[at:at + size].decode("utf-8", errors="replace") if size >= 0 else None
    error = struct.unpack(">h", reply[at + max(size, 0):at + max(size, 0) + 2])[0]
    if error:
        sys.exit(f"OffsetFetch: error {error}")
    print(json.dumps({"offset": offset, "metadata": metadata}))


class RawMember:
    """A group member speaking the Kafka protocol itself (JoinGroup v1, LeaveGroup v0), so that
    it can leave at a moment no client library chooses: after it joined, before it assigns."""

    def __init__(self, brokers):
        import socket
        host, port = brokers.split(",")[0].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.correlation = 0

    @staticmethod
    def string(s):
        b = s.encode()
        return struct.pack(">h", len(b)) + b

    def call(self, api_key, version, body):
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + self.string("weir-test")
        message = header + body
        self.sock.sendall(struct.pack(">i", len(message)) + message)
        size = struct.unpack(">i", self.read(4))[0]
        reply = self.read(size)
        assert struct.unpack(">i", reply[:4])[0] == self.correlation, "out-of-order reply"
        return reply[4:]

    def read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            out += chunk
        return out

    def join(self, group, topic, member_id=""):
        """JoinGroup v1 with the cooperative-sticky protocol: (error, generation, leader, member id)."""
        subscription = struct.pack(">hi", 0, 1) + self.string(topic) + struct.pack(">i", -1)
        body = (self.string(group) + struct.pack(">ii", 6000, 60000) + self.string(member_id)
                + self.string("consumer") + struct.pack(">i", 1) + self.string("cooperative-sticky")
                + struct.pack(">i", len(subscription)) + subscription)
        reply = self.call(11, 1, body)
        error, generation = struct.unpack(">hi", reply[:6])
        at = 6
        fields = []
        for _ in range(3):  # protocol name, leader, member id
            n = struct.unpack(">h", reply[at:at + 2])[0]
            fields.append(reply[at + 2:at + 2 + max(n, 0)].decode())
            at += 2 + max(n, 0)
        return error, generation, fields[1], fields[2]

    def leave(self, group, member_id):
        reply = self.call(13, 0, self.string(group) + self.string(member_id))
        return struct.unpack(">h", reply[:2])[0]


def leader_leaves(args):
    """A group's leader leaves after it joined and before it sent the assignment: the next
    member to join must lead, and be assigned every partition. tansu 0.6.0 kept the gone
    member as the leader, and no member was ever assigned anything again (scripts/tansu/)."""
    import time
    raw = RawMember(args.brokers)
    error, _, leader, member_id = raw.join(args.group, args.topic)
    if error == 79:  # MEMBER_ID_REQUIRED: join again with the id the broker gave
        error, _, leader, member_id = raw.join(args.group, args.topic, member_id)
    if error or leader != member_id:
        sys.exit(f"the raw member did not become the group's leader: error {error}, leader {leader!r}")
    conf = {"bootstrap.servers": args.brokers, "group.id": args.group, "enable.auto.commit": False,
            "partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500}
    error = raw.leave(args.group, member_id)
    if error:
        sys.exit(f"the raw member could not leave: error {error}")
    owned = set()
    c = Consumer(conf)
    partitions = len(c.list_topics(args.topic, timeout=30).topics[args.topic].partitions)
    c.subscribe([args.topic], on_assign=lambda _, ps: owned.update(p.partition for p in ps))
    started = time.monotonic()
    limit = 30
    while len(owned) < partitions and time.monotonic() - started < limit:
        c.poll(0.1)
    c.close()
    if len(owned) < partitions:
        sys.exit(f"a member joining after the leader left was assigned {sorted(owned)} of "
                 f"{partitions} partitions in {limit} s: the broker still waits for the gone leader")
    print(json.dumps({"partitions": partitions, "seconds": round(time.monotonic() - started, 1)}))


def registry(args):
    import http.server
    schemas = {}
    if args.avsc != "-":
        with open(args.avsc) as f:
            schemas[args.id] = json.dumps(json.load(f))

    class Handler(http.server.BaseHTTPRequestHandler):
        def reply(self, status, payload):
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            parts = self.path.rstrip("/").split("/")
            if len(parts) == 4 and parts[1:3] == ["schemas", "ids"] and int(parts[3]) in schemas:
                self.reply(200, json.dumps({"schema": schemas[int(parts[3])]}).encode())
            else:
                self.reply(404, b'{"error_code":40403,"message":"Schema not found"}')

        def do_POST(self):  # register a subject's schema: an id per distinct schema
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            for i, text in schemas.items():
                if text == body["schema"]:
                    return self.reply(200, json.dumps({"id": i}).encode())
            new_id = max(schemas, default=100) + 1
            schemas[new_id] = body["schema"]
            self.reply(200, json.dumps({"id": new_id}).encode())

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("create")
    a.add_argument("brokers"), a.add_argument("topic"), a.add_argument("partitions", type=int)
    a = sub.add_parser("delete")
    a.add_argument("brokers"), a.add_argument("topic")
    a = sub.add_parser("produce")
    a.add_argument("brokers"), a.add_argument("topic"), a.add_argument("file")
    a.add_argument("--key-field", default="datasetName")
    a.add_argument("--format", default="json",
                   choices=["json", "avro", "avro-confluent", "cloudevents", "envelope"])
    a.add_argument("--schema")
    a.add_argument("--schema-id", type=int, default=1)
    a.add_argument("--header", action="append", default=[])
    a.add_argument("--partition", type=int, help="every message to this partition (default: by key)")
    a.add_argument("--round-robin", action="store_true", help="message n to partition n %% count (not by key)")
    a.add_argument("--timestamp-field", help="message timestamps from this epoch-ms field (as producers that set CreateTime to the event time)")
    a = sub.add_parser("consume")
    a.add_argument("brokers"), a.add_argument("topic"), a.add_argument("out")
    a.add_argument("--keys", action="store_true")
    a.add_argument("--raw", action="store_true", help="values as text, not parsed as JSON")
    a.add_argument("--read-committed", action="store_true",
                   help="only messages of committed transactions (isolation.level=read_committed)")
    a.add_argument("--avro-registry", help="values are Confluent-framed Avro: decode them")
    a = sub.add_parser("lag")
    a.add_argument("brokers"), a.add_argument("group"), a.add_argument("topic")
    a = sub.add_parser("registry")
    a.add_argument("avsc"), a.add_argument("id", type=int)
    a = sub.add_parser("leader-leaves")
    a.add_argument("brokers"), a.add_argument("topic"), a.add_argument("group")
    a = sub.add_parser("committed")
    a.add_argument("brokers"), a.add_argument("group"), a.add_argument("topic")
    a.add_argument("partition", type=int)
    args = ap.parse_args()
    if args.cmd == "create":
        create(args.brokers, args.topic, args.partitions)
    elif args.cmd == "delete":
        delete(args.brokers, args.topic)
    elif args.cmd == "produce":
        produce(args)
    elif args.cmd == "lag":
        lag(args)
    elif args.cmd == "registry":
        registry(args)
    elif args.cmd == "leader-leaves":
        leader_leaves(args)
    elif args.cmd == "committed":
        committed(args)

    else:
        consume(args)


if __name__ == "__main__":
    main()
