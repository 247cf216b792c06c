#!/usr/bin/env python3
"""A webhook receiver for weir's end-to-end tests: verifies every request's signature with
the `standardwebhooks` library (the independent checker: PyPI's reference implementation of
Standard Webhooks), drops rows whose `_row_id` it already holds, and records everything.

    receiver.py --port 0 --secret whsec_... [--state FILE]

Prints `listening PORT` once it serves. A request with a bad or missing signature is
answered 401 and counted; a good one 200 (or what the faults say). `GET /_state` answers
the record as JSON: `rows` (first delivery of each row id) and `paths` (its URL path),
`arrivals` ([path, row id] of every row of every accepted request, repeats included, in
the order they arrived), `requests`, `timeline` ([time, status] of each answer), `webhook_ids`,
`repeated_rows`, `repeats_differing` (repeated ids whose row differs from its first
delivery), `bad_signatures`, `answers` (status counts). `POST /_faults` sets the faults:
`{"statuses": [429, 503, ...]}` answers the next requests with these statuses (each one
request; `retry_after` adds a `Retry-After` header to 429 and 503), `{"refuse": "TEXT",
"refuse_status": 400, "refuse_body": "..."}` answers requests whose body contains TEXT with
that status and body, `{"fail_every": N}` answers every Nth signed request 503 (no
`Retry-After`). `POST /_reset` empties the record (not the faults). With `--state`, the record is saved after each request and loaded at
start, so a receiver restarted on the same port goes on with it.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

LOCK = threading.Lock()


def empty_state():
    return {
        "rows": {},
        "arrivals": [],
        "requests": 0,
        "webhook_ids": {},
        "repeated_rows": 0,
        "repeats_differing": 0,
        "bad_signatures": 0,
        "answers": {},
        "content_types": {},
        "paths": {},
        "timeline": [],
        "signed": 0,
    }


STATE = empty_state()
RECORD = None
FAULTS = {"statuses": [], "retry_after": None, "refuse": None, "fail_every": None}


def rows_of(body, content_type):
    """The row objects of a body: JSON rows (an array or one object) or CloudEvents."""
    doc = json.loads(body)
    items = doc if isinstance(doc, list) else [doc]
    if content_type.startswith("application/cloudevents"):
        return [e["data"] for e in items]
    return items


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # answers go out at once (no Nagle wait between the head and the body)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with LOCK:
            key = str(status)
            STATE["answers"][key] = STATE["answers"].get(key, 0) + 1
            if self.path not in ("/_state", "/_faults", "/_reset"):
                STATE["timeline"].append([time.time(), status])

    def do_GET(self):
        if self.path == "/_state":
            with LOCK:
                text = json.dumps(STATE).encode()
            self.answer(200, text, [("Content-Type", "application/json")])
        else:
            self.answer(404)

    def do_PUT(self):
        self.do_POST()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/_faults":
            with LOCK:
                FAULTS.update(json.loads(body))
            self.answer(200)
            return
        if self.path == "/_reset":
            with LOCK:
                STATE.clear()
                STATE.update(empty_state())
                save()
            self.answer(200)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            WEBHOOK.verify(body, headers)
        except WebhookVerificationError as e:
            with LOCK:
                STATE["bad_signatures"] += 1
            self.answer(401, f"bad signature: {e}".encode())
            return
        with LOCK:
            STATE["signed"] = STATE.get("signed", 0) + 1
            status = FAULTS["statuses"].pop(0) if FAULTS["statuses"] else None
            every = FAULTS.get("fail_every")
            if status is None and every and STATE["signed"] % every == 0:
                status = 503
            refuse = FAULTS["refuse"]
        if status is not None:
            extra = []
            if FAULTS["retry_after"] is not None and status in (429, 503):
                extra.append(("Retry-After", str(FAULTS["retry_after"])))
            self.answer(status, b"try again later", extra)
            return
        if refuse and refuse.encode() in body:
            self.answer(
                FAULTS.get("refuse_status", 400),
                FAULTS.get("refuse_body", "refused").encode(),
                [("Content-Type", "text/plain"), ("X-Reason", "test-refusal")],
            )
            return
        ctype = headers.get("content-type", "")
        rows = rows_of(body, ctype)
        with LOCK:
            STATE["requests"] += 1
            wid = headers["webhook-id"]
            STATE["webhook_ids"][wid] = STATE["webhook_ids"].get(wid, 0) + 1
            STATE["content_types"][ctype] = STATE["content_types"].get(ctype, 0) + 1
            for row in rows:
                rid = row["_row_id"]
                STATE.setdefault("arrivals", []).append([self.path, rid])
                first = STATE["rows"].get(rid)
                if first is None:
                    STATE["rows"][rid] = row
                    STATE["paths"][rid] = self.path
                else:
                    STATE["repeated_rows"] += 1
                    if first != row:
                        STATE["repeats_differing"] += 1
            save()
            if RECORD:
                keep = {k: v for k, v in headers.items() if k.startswith(("webhook-", "ce-")) or k == "content-type"}
                RECORD.write(json.dumps({"path": self.path, "headers": keep, "body": body.decode()}) + "\n")
        self.answer(200, b"ok")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # a client killed mid-request (the crash tests' kill -9) is no error of the receiver
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


def save():
    if ARGS.state:
        tmp = ARGS.state + ".tmp"
        with open(tmp, "w") as f:
            json.dump(STATE, f)
        os.replace(tmp, ARGS.state)


def main():
    global ARGS, WEBHOOK
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--secret", required=True)
    p.add_argument("--state")
    p.add_argument("--record", help="append each accepted request (headers, body) to this NDJSON file")
    ARGS = p.parse_args()
    global RECORD
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that the record is flushed
    RECORD = open(ARGS.record, "a", buffering=1 << 20) if ARGS.record else None
    WEBHOOK = Webhook(ARGS.secret)
    if ARGS.state and os.path.exists(ARGS.state):
        with open(ARGS.state) as f:
            STATE.update(json.load(f))
    server = Server(("127.0.0.1", ARGS.port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if RECORD:
            RECORD.close()


if __name__ == "__main__":
    sys.exit(main())
