"""Test helper: publishes the lines of NDJSON files to a NATS JetStream stream with nats-py
(the independent client), creating the stream first when asked.

    nats_publish.py URL create STREAM SUBJECT [SUBJECT...]
    nats_publish.py URL create-interest STREAM SUBJECT [SUBJECT...]   # interest retention
    nats_publish.py URL create-workqueue STREAM SUBJECT [SUBJECT...]  # work-queue retention
    nats_publish.py URL create-partitioned STREAM PREFIX N
        # subjects PREFIX.*, stored as PREFIX.<partition>.<token> by the stream's subject
        # transform {{partition(N,1)}}
    nats_publish.py URL publish-keyed FILE PREFIX FIELD [START [COUNT]]
        # line i goes to PREFIX.<its FIELD, as a subject token> (`_bad` when it has none)
    nats_publish.py URL split STREAM FILE FIELD OUTDIR N
        # FILE's lines (published with publish-keyed) by the partition the stream stored them
        # in: OUTDIR/part-<n>.ndjson, in order; prints the counts
    nats_publish.py URL publish FILE SUBJECT [SUBJECT...]   # line i goes to SUBJECT[i % n]
    nats_publish.py URL info STREAM                          # prints {"messages", "last_seq"}
    nats_publish.py URL delete-consumer STREAM CONSUMER      # when it exists
    nats_publish.py URL ack-all STREAM CONSUMER              # fetches all (acknowledged
        # unless the consumer's ack policy is none, with what a killed reader still held);
        # prints {"ack_floor", "delivered"}
    nats_publish.py URL consumer STREAM CONSUMER             # prints its state (null: none)
    nats_publish.py URL consumers STREAM                     # prints the consumers' names
    nats_publish.py URL recreate STREAM FILTER SUBJECT FILE [CONSUMER]
        # deletes the stream and creates it again capturing FILTER (with a durable pull
        # consumer of everything with explicit acknowledgements when CONSUMER is given, as
        # tools that manage consumers make one), then publishes FILE's lines to SUBJECT, in
        # one go
    nats_publish.py URL purge STREAM                         # deletes every message
    nats_publish.py URL delete-messages STREAM FIRST LAST    # deletes sequences FIRST..=LAST
    nats_publish.py URL steal STREAM CONSUMER COUNT SECONDS
        # waits for the durable CONSUMER, then pulls messages from it (never acknowledged)
        # until COUNT are taken, SECONDS pass, or none came for half a second after some did:
        # another reader of the consumer, taking deliveries meant for the one under test;
        # prints how many it took

Publishes are pipelined (a window of acknowledgements in flight) and every acknowledgement is
checked, so the stream holds every line, in the file's order, when the command returns.
"""

import asyncio
import json
import sys

import nats
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    RetentionPolicy,
    StreamConfig,
    SubjectTransform,
)

WINDOW = 2000


def token(line, field):
    """The subject token of a line's FIELD: letters, digits, `-` and `_` kept, others `_`."""
    try:
        value = json.loads(line).get(field)
    except (ValueError, AttributeError):
        value = None
    if not isinstance(value, str) or not value:
        return "_bad"
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in value)


async def publish(js, lines, subject_of):
    for start in range(0, len(lines), WINDOW):
        batch = lines[start : start + WINDOW]
        acks = await asyncio.gather(
            *(js.publish(subject_of(start + i, line), line, timeout=30) for i, line in enumerate(batch))
        )
        assert len(acks) == len(batch)


async def main():
    url, cmd, *rest = sys.argv[1:]
    nc = await nats.connect(url)
    js = nc.jetstream()
    if cmd == "create":
        stream, *subjects = rest
        await js.add_stream(StreamConfig(name=stream, subjects=subjects))
    elif cmd == "create-interest":
        stream, *subjects = rest
        await js.add_stream(StreamConfig(name=stream, subjects=subjects, retention=RetentionPolicy.INTEREST))
    elif cmd == "create-workqueue":
        stream, *subjects = rest
        await js.add_stream(StreamConfig(name=stream, subjects=subjects, retention=RetentionPolicy.WORK_QUEUE))
    elif cmd == "create-partitioned":
        stream, prefix, n = rest
        transform = SubjectTransform(src=f"{prefix}.*", dest=f"{prefix}.{{{{partition({n},1)}}}}.{{{{wildcard(1)}}}}")
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.*"], subject_transform=transform))
    elif cmd == "publish-keyed":
        path, prefix, field, *span = rest
        with open(path, "rb") as f:
            lines = [line.rstrip(b"\n") for line in f if line.strip()]
        first = int(span[0]) if span else 0
        count = int(span[1]) if len(span) > 1 else len(lines) - first
        lines = lines[first : first + count]
        await publish(js, lines, lambda i, line: f"{prefix}.{token(line, field)}")
    elif cmd == "split":
        stream, path, field, outdir, n = rest
        with open(path, "rb") as f:
            lines = [line.rstrip(b"\n") for line in f if line.strip()]
        info = await js.stream_info(stream)
        assert info.state.messages == len(lines), (info.state.messages, len(lines))
        first = info.state.first_seq
        # line i is the message at sequence first + i; one look-up per token
        partition = {}
        parts = [[] for _ in range(int(n))]
        for i, line in enumerate(lines):
            t = token(line, field)
            if t not in partition:
                msg = await js.get_msg(stream, first + i)
                partition[t] = int(msg.subject.split(".")[1])
            parts[partition[t]].append(line)
        for p, ls in enumerate(parts):
            with open(f"{outdir}/part-{p}.ndjson", "wb") as f:
                f.write(b"".join(l + b"\n" for l in ls))
        print(json.dumps([len(ls) for ls in parts]))
    elif cmd == "publish":
        path, *subjects = rest
        with open(path, "rb") as f:
            lines = [line.rstrip(b"\n") for line in f if line.strip()]
        for start in range(0, len(lines), WINDOW):
            batch = lines[start : start + WINDOW]
            acks = await asyncio.gather(
                *(
                    js.publish(subjects[(start + i) % len(subjects)], line, timeout=30)
                    for i, line in enumerate(batch)
                )
            )
            assert len(acks) == len(batch)
    elif cmd == "info":
        (stream,) = rest
        info = await js.stream_info(stream)
        print(json.dumps({"messages": info.state.messages, "last_seq": info.state.last_seq}))
    elif cmd == "ack-all":
        stream, consumer = rest
        policy = (await js.consumer_info(stream, consumer)).config.ack_policy
        acks = str(getattr(policy, "value", policy)) != "none"
        sub = await js.pull_subscribe_bind(consumer, stream=stream)
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            # until nothing is left to deliver (a timeout under load is not the end)
            if (await js.consumer_info(stream, consumer)).num_pending == 0:
                break
            try:
                msgs = await sub.fetch(1000, timeout=2)
            except (TimeoutError, asyncio.TimeoutError):  # nats-py raises its own, or asyncio's
                continue
            if acks and msgs:  # (a status message ends a fetch with nothing)
                await msgs[-1].ack_sync()
        info = await js.consumer_info(stream, consumer)
        if acks and info.ack_floor.stream_seq < info.delivered.stream_seq:
            # deliveries still pending to a killed reader (it may have had the whole stream
            # before it was killed, so no fetch gets them before ack_wait): under AckPolicy.All
            # an acknowledgement of the last delivery, sent to its reply subject as any client
            # may, acknowledges every one before it
            d = info.delivered
            await nc.request(f"$JS.ACK.{stream}.{consumer}.1.{d.stream_seq}.{d.consumer_seq}.0.0", b"", timeout=5)
            info = await js.consumer_info(stream, consumer)
        print(json.dumps({"ack_floor": info.ack_floor.stream_seq, "delivered": info.delivered.stream_seq}))
    elif cmd == "consumer":
        stream, consumer = rest
        try:
            info = await js.consumer_info(stream, consumer)
        except nats.js.errors.NotFoundError:
            print("null")
        else:
            print(json.dumps({
                "ack_policy": str(getattr(info.config.ack_policy, "value", info.config.ack_policy)),
                "delivered": info.delivered.stream_seq,
                "ack_floor": info.ack_floor.stream_seq,
                "num_ack_pending": info.num_ack_pending,
                "metadata": info.config.metadata or {},
            }))
    elif cmd == "delete-messages":
        stream, first, last = rest
        for seq in range(int(first), int(last) + 1):
            await js.delete_msg(stream, seq)
    elif cmd == "steal":
        stream, consumer, count, seconds = rest
        count, deadline = int(count), asyncio.get_running_loop().time() + float(seconds)
        taken, sub = 0, None
        while taken < count and asyncio.get_running_loop().time() < deadline:
            try:
                if sub is None:
                    await js.consumer_info(stream, consumer)
                    sub = await js.pull_subscribe_bind(consumer, stream=stream)
                taken += len(await sub.fetch(min(500, count - taken), timeout=0.5))
            except (TimeoutError, asyncio.TimeoutError):  # nats-py raises its own, or asyncio's
                if taken > 0:
                    break
            except nats.errors.Error:
                await asyncio.sleep(0.01)
        print(taken)
    elif cmd == "delete-stream":
        (stream,) = rest
        await js.delete_stream(stream)
    elif cmd == "purge":
        (stream,) = rest
        await js.purge_stream(stream)
    elif cmd == "consumers":
        (stream,) = rest
        print(json.dumps(sorted(c.name for c in await js.consumers_info(stream))))
    elif cmd == "recreate":
        stream, filter_subject, subject, path, *consumer = rest
        with open(path, "rb") as f:
            lines = [line.rstrip(b"\n") for line in f if line.strip()]
        await js.delete_stream(stream)
        await js.add_stream(StreamConfig(name=stream, subjects=[filter_subject]))
        for name in consumer:
            await js.add_consumer(
                stream, ConsumerConfig(durable_name=name, ack_policy=AckPolicy.EXPLICIT)
            )
        await publish(js, lines, lambda i, line: subject)
    elif cmd == "delete-consumer":
        stream, consumer = rest
        try:
            await js.delete_consumer(stream, consumer)
        except nats.js.errors.NotFoundError:
            pass
    await nc.drain()


asyncio.run(main())
