"""Test helper: publishes the lines of NDJSON files to a NATS JetStream stream with nats-py
(the independent client), creating the stream first when asked.

    nats_publish.py URL create STREAM SUBJECT [SUBJECT...]
    nats_publish.py URL publish FILE SUBJECT [SUBJECT...]   # line i goes to SUBJECT[i % n]
    nats_publish.py URL info STREAM                          # prints {"messages", "last_seq"}
    nats_publish.py URL delete-consumer STREAM CONSUMER      # when it exists
    nats_publish.py URL ack-all STREAM CONSUMER              # fetches and acknowledges all

Publishes are pipelined (a window of acknowledgements in flight) and every acknowledgement is
checked, so the stream holds every line, in the file's order, when the command returns.
"""

import asyncio
import json
import sys

import nats
from nats.js.api import StreamConfig

WINDOW = 2000


async def main():
    url, cmd, *rest = sys.argv[1:]
    nc = await nats.connect(url)
    js = nc.jetstream()
    if cmd == "create":
        stream, *subjects = rest
        await js.add_stream(StreamConfig(name=stream, subjects=subjects))
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
        sub = await js.pull_subscribe_bind(consumer, stream=stream)
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2)
            except nats.errors.TimeoutError:
                break
            await msgs[-1].ack_sync()
        info = await js.consumer_info(stream, consumer)
        print(json.dumps({"ack_floor": info.ack_floor.stream_seq}))
    elif cmd == "delete-consumer":
        stream, consumer = rest
        try:
            await js.delete_consumer(stream, consumer)
        except nats.js.errors.NotFoundError:
            pass
    await nc.drain()


asyncio.run(main())
