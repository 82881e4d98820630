"""A test backend for the ingress tests, run inside a lab pod (standard library only):

    python3 backend.py --name "Whale Type A" --port 80 [--dual-stack]

Every answer starts with the backend's name on a line of its own ("Whale Type A"), followed by a
JSON line with what it received (method, path, headers, body length, client address).
  /slow?ms=N  waits N ms before answering (requests in flight during a reload)
  Upgrade: websocket -> 101, then echoes raw bytes (the upgrade passes through the proxy)
SIGTERM is a graceful stop, as a pod's process does it: the listener closes, idle keep-alive
connections are closed, requests in flight are answered, then the process exits.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: set[socket.socket] = set()
        self.busy = 0
        self.stopping = False


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "knet-test-backend"
    name = "backend"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(30)

    def handle_one_request(self) -> None:
        with STATE.lock:
            if STATE.stopping:
                self.close_connection = True
                return
            STATE.idle.add(self.connection)
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            self.raw_requestline = b""
        with STATE.lock:
            STATE.idle.discard(self.connection)
            if not self.raw_requestline:
                self.close_connection = True
                return
            STATE.busy += 1
        try:
            if not self.parse_request():
                return
            method = getattr(self, "do_" + self.command, None)
            if method is None:
                self.send_error(501)
                return
            method()
            self.wfile.flush()
        finally:
            with STATE.lock:
                STATE.busy -= 1
                if STATE.stopping:
                    self.close_connection = True

    def _answer(self, code: int = 200, body_len: int = 0) -> None:
        url = urlsplit(self.path)
        ms = parse_qs(url.query).get("ms", ["0"])[0]
        if url.path == "/slow":
            time.sleep(int(ms) / 1000)
        info = {"name": self.name, "method": self.command, "path": self.path, "body": body_len,
                "client": self.client_address[0], "headers": {k.lower(): v for k, v in self.headers.items()}}
        data = (self.name + "\n" + json.dumps(info) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        self._answer()

    do_HEAD = do_GET

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n) if n else b""
        self._answer(200, len(body))

    do_PUT = do_POST

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.connection.sendall(f"hello from {self.name}\n".encode())
        while data := self.connection.recv(65536):
            self.connection.sendall(data)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--dual-stack", action="store_true", help="listen on [::] for IPv6 and IPv4 clients")
    args = ap.parse_args()
    Handler.name = args.name
    server = (DualStackServer if args.dual_stack else ThreadingHTTPServer)(("::" if args.dual_stack else "0.0.0.0",
                                                                             args.port), Handler)
    server.daemon_threads = True
    done = threading.Event()

    def graceful(*_: object) -> None:
        def run() -> None:
            server.shutdown()
            server.server_close()
            with STATE.lock:
                STATE.stopping = True
                for conn in list(STATE.idle):
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with STATE.lock:
                    if STATE.busy == 0:
                        break
                time.sleep(0.02)
            done.set()

        threading.Thread(target=run, daemon=True).start()

    signal.signal(signal.SIGTERM, graceful)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    done.wait()


if __name__ == "__main__":
    main()
