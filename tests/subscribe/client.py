"""Independent subscription clients of weir's tests (cli/tests/subscribe.rs): the `websockets`
package for WebSockets and the standard library's http.client (and raw sockets) for
Server-Sent Events. Every mode prints JSON lines on stdout.

  follow --transport ws|sse --port P --query Q [--token T] [--stop-after N] [--seconds S]
      one JSON line per message, until `finished`, an error message, N change messages, or S s;
      a refusal prints {"http_status": code, "body": {...}}
  stuck --port P --query Q --seconds S
      subscribes over SSE with a tiny receive buffer, reads the response head and then nothing
      for S s, then reads what is left: {"got_bytes", "closed", "error_seen"}
  stuck-ws --port P --query Q --seconds S
      the same over a WebSocket (`websockets` stops reading the socket once 2 messages wait):
      {"got_messages", "closed", "error_seen"}
  idle --port P --query Q --count N
      opens N SSE subscriptions, prints {"ready": N} once every one answered 200, holds them
      until stdin closes
"""

import argparse
import json
import socket
import sys
import time
import http.client


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def is_change(m):
    return m.get("op") in ("upsert", "delete", "insert", "update")


def follow_ws(a):
    import websockets.sync.client as wsc
    from websockets.exceptions import InvalidStatus, ConnectionClosed

    headers = {"Authorization": "Bearer " + a.token} if a.token else {}
    url = f"ws://127.0.0.1:{a.port}/subscribe?{a.query}"
    try:
        ws = wsc.connect(url, additional_headers=headers, open_timeout=30)
    except InvalidStatus as e:
        body = e.response.body or b"{}"
        out({"http_status": e.response.status_code, "body": json.loads(body)})
        return
    changes = 0
    deadline = time.time() + a.seconds
    with ws:
        while time.time() < deadline:
            try:
                text = ws.recv(timeout=max(0.1, deadline - time.time()))
            except TimeoutError:
                break
            except ConnectionClosed:
                out({"closed": True})
                return
            m = json.loads(text)
            out(m)
            if "error" in m or m.get("op") == "finished":
                return
            changes += is_change(m)
            if a.stop_after and changes >= a.stop_after:
                return


def follow_sse(a):
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=a.seconds)
    headers = {"Accept": "text/event-stream"}
    if a.token:
        headers["Authorization"] = "Bearer " + a.token
    if a.last_event_id:
        headers["Last-Event-ID"] = a.last_event_id
    conn.request("GET", "/subscribe?" + a.query, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        out({"http_status": resp.status, "body": json.loads(resp.read() or b"{}")})
        return
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    changes = 0
    deadline = time.time() + a.seconds
    event_id = None
    while time.time() < deadline:
        try:
            line = resp.readline()
        except (socket.timeout, TimeoutError):
            break
        if not line:
            out({"closed": True})
            return
        line = line.decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("data: "):
            m = json.loads(line[6:])
            if "position" in m and "error" not in m and m.get("op") != "finished":
                assert event_id == m["position"], (event_id, m)
            out(m)
            if "error" in m or m.get("op") == "finished":
                return
            changes += is_change(m)
            if a.stop_after and changes >= a.stop_after:
                return


def request(a):
    return (
        f"GET /subscribe?{a.query} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()


def stuck(a):
    s = socket.socket()
    # a small window: the server's buffers fill soon
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", a.port))
    s.sendall(request(a))
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 200 " in head.split(b"\r\n")[0], head
    out({"subscribed": True})
    time.sleep(a.seconds)
    s.settimeout(10)
    got, closed, tail = 0, False, b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            got += len(chunk)
            tail = (tail + chunk)[-4096:]
    except ConnectionResetError:
        closed = True
    except (socket.timeout, TimeoutError):
        pass
    out({"got_bytes": got, "closed": closed, "error_seen": b"fell_behind" in tail})


def stuck_ws(a):
    import websockets.sync.client as wsc
    from websockets.exceptions import ConnectionClosed

    url = f"ws://127.0.0.1:{a.port}/subscribe?{a.query}"
    got, closed, error_seen = 0, False, False
    with wsc.connect(url, max_queue=2, open_timeout=30) as ws:
        out({"subscribed": True})
        time.sleep(a.seconds)
        try:
            while True:
                m = json.loads(ws.recv(timeout=10))
                got += 1
                error_seen = error_seen or "error" in m
        except ConnectionClosed:
            closed = True
        except TimeoutError:
            pass
    out({"got_messages": got, "closed": closed, "error_seen": error_seen})


def idle(a):
    socks = []
    for _ in range(a.count):
        s = socket.create_connection(("127.0.0.1", a.port))
        s.sendall(request(a))
        socks.append(s)
    for s in socks:
        s.settimeout(30)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(1)
            if not chunk:
                raise SystemExit("closed before answering: " + head.decode())
            head += chunk
        assert b" 200 " in head.split(b"\r\n")[0], head
    out({"ready": len(socks)})
    sys.stdin.read()
    for s in socks:
        s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["follow", "stuck", "stuck-ws", "idle"])
    p.add_argument("--transport", choices=["ws", "sse"], default="sse")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--query", required=True)
    p.add_argument("--token")
    p.add_argument("--last-event-id")
    p.add_argument("--stop-after", type=int, default=0)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--count", type=int, default=1)
    a = p.parse_args()
    if a.mode == "follow":
        (follow_ws if a.transport == "ws" else follow_sse)(a)
    elif a.mode == "stuck":
        stuck(a)
    elif a.mode == "stuck-ws":
        stuck_ws(a)
    else:
        idle(a)


if __name__ == "__main__":
    main()
