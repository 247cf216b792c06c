"""The independent NATS client of the NATS sink's tests (nats-py): creates streams and reads
every message of a stream back, with its headers, as NDJSON.

  nats_sink_tool.py create URL STREAM SUBJECT [--duplicate-window S] [--max-msg-size N]
  nats_sink_tool.py read URL STREAM OUT.ndjson
  nats_sink_tool.py count URL STREAM
  nats_sink_tool.py delete URL STREAM

`read` writes one object a message: {"seq", "subject", "msg_id", "headers", "data"} (data as
text)."""

import argparse
import asyncio
import json

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig


async def create(a):
    nc = await nats.connect(a.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(
            name=a.stream,
            subjects=[a.subject],
            duplicate_window=a.duplicate_window,
            max_msg_size=a.max_msg_size,
        )
    )
    await nc.close()


async def read(a):
    nc = await nats.connect(a.url)
    js = nc.jetstream()
    info = await js.stream_info(a.stream)
    total = info.state.messages
    rows = []
    if total:
        sub = await js.pull_subscribe(
            info.config.subjects[0],
            stream=a.stream,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        while len(rows) < total:
            for m in await sub.fetch(min(1000, total - len(rows)), timeout=10):
                headers = dict(m.headers or {})
                rows.append(
                    {
                        "seq": m.metadata.sequence.stream,
                        "subject": m.subject,
                        "msg_id": headers.get("Nats-Msg-Id"),
                        "headers": headers,
                        "data": m.data.decode("utf-8", "replace"),
                    }
                )
        await sub.unsubscribe()
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    await nc.close()


async def count(a):
    nc = await nats.connect(a.url)
    info = await nc.jetstream().stream_info(a.stream)
    print(info.state.messages)
    await nc.close()


async def delete(a):
    nc = await nats.connect(a.url)
    await nc.jetstream().delete_stream(a.stream)
    await nc.close()


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("url")
    c.add_argument("stream")
    c.add_argument("subject")
    c.add_argument("--duplicate-window", type=float, default=120.0)
    c.add_argument("--max-msg-size", type=int, default=-1)
    r = sub.add_parser("read")
    r.add_argument("url")
    r.add_argument("stream")
    r.add_argument("out")
    n = sub.add_parser("count")
    n.add_argument("url")
    n.add_argument("stream")
    d = sub.add_parser("delete")
    d.add_argument("url")
    d.add_argument("stream")
    a = p.parse_args()
    asyncio.run({"create": create, "read": read, "count": count, "delete": delete}[a.cmd](a))


if __name__ == "__main__":
    main()
