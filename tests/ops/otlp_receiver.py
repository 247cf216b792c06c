#!/usr/bin/env python3
"""A minimal OpenTelemetry collector for tests: accepts OTLP/HTTP JSON trace exports
(`POST /v1/traces`, `Content-Type: application/json`, as the OTLP specification defines) and
appends each request as one JSON line {"headers": {...}, "body": <ExportTraceServiceRequest>}
to OUT. Anything else gets the specification's error answers (404, 415, 400).

usage: otlp_receiver.py PORT OUT"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, out = int(sys.argv[1]), sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/v1/traces":
            return self.reply(404, {"code": 5, "message": f"no such path {self.path}"})
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self.reply(415, {"code": 3, "message": "expected application/json"})
        try:
            body = json.loads(raw)
        except ValueError as e:
            return self.reply(400, {"code": 3, "message": str(e)})
        if not isinstance(body.get("resourceSpans"), list):
            return self.reply(400, {"code": 3, "message": "no resourceSpans"})
        with open(out, "a") as f:
            f.write(json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}) + "\n")
        self.reply(200, {})

    def log_message(self, *a):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
