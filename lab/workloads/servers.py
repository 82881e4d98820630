"""The servers behind `python -m lab.workloads`: agnhost netexec / serve-hostname and a plain HTTP
server standing for nginx-like images. Threaded standard-library servers: each pod runs one small
process, and a blocking handler (a /dial that waits on a peer) must not stall the others."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Every address of the pod by default; tests running a workload in the root namespace bind loopback.
BIND = os.environ.get("KNET_WORKLOAD_BIND", "")
# Every address of both families (a dual-stack pod), as agnhost's Go listeners on ":port": one
# IPv6 socket that takes IPv4 too; peers are reported without the IPv4-mapped form, as Go does.
DUAL = BIND == "" and socket.has_ipv6


def unmapped(addr: tuple) -> tuple:
    host = addr[0]
    if isinstance(host, str) and host.startswith("::ffff:") and "." in host:
        return (host[7:], *addr[1:2])
    return addr[:2]


def host_port(addr: tuple) -> str:
    """`ip:port`, `[ip6]:port` (Go's net.JoinHostPort, as agnhost's /clientip writes RemoteAddr)."""
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def _dual_socket(kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return sock


def hostname() -> str:
    # The node agent sets HOSTNAME to the pod's hostname, as a runtime does; the netns shares the
    # node's UTS namespace, so socket.gethostname() would name the machine instead.
    return os.environ.get("HOSTNAME") or socket.gethostname()


Route = Callable[["Handler", dict[str, list[str]]], tuple[int, str, str]]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: load generators reuse connections
    routes: dict[str, Route] = {}
    fallback: Route | None = None
    server_version = "knet-workload"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        route = self.routes.get(url.path) or self.fallback
        if route is None:
            code, ctype, body = 404, "text/plain", "404 page not found\n"
        else:
            try:
                code, ctype, body = route(self, query)
            except Exception as e:  # a bad request must not kill the server thread's client
                code, ctype, body = 500, "text/plain", f"error: {e}\n"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", f"{ctype}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(OSError):
                self.wfile.write(data)

    do_HEAD = do_GET
    do_POST = do_GET

    def log_message(self, fmt: str, *args: object) -> None:
        # The peer's real address is the point of several scenarios (no NAT between pods).
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.client_address[0]} {fmt % args}\n")


class Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    address_family = socket.AF_INET6 if DUAL else socket.AF_INET

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves its own name (socket.getfqdn): in a pod whose cluster DNS
        # is not up yet that blocks for seconds before the server listens.
        if DUAL:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, tuple]:
        conn, addr = self.socket.accept()
        return conn, unmapped(addr)


def http_server(port: int, routes: dict[str, Route], fallback: Route | None = None) -> ThreadingHTTPServer:
    handler = type("RoutedHandler", (Handler,), {"routes": routes,
                                                  "fallback": staticmethod(fallback) if fallback else None})
    srv = Server((BIND, port), handler)
    threading.Thread(target=srv.serve_forever, name=f"http:{port}", daemon=True).start()
    return srv


def udp_server(port: int, answer: Callable[[bytes, tuple[str, int]], bytes | None]) -> socket.socket:
    sock = _dual_socket(socket.SOCK_DGRAM) if DUAL else socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((BIND, port))

    def loop() -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65535)
            except OSError:
                return
            reply = answer(data, unmapped(peer))
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, peer)

    threading.Thread(target=loop, name=f"udp:{port}", daemon=True).start()
    return sock


def tcp_hostname_server(port: int) -> socketserver.ThreadingTCPServer:
    """serve-hostname --tcp: write the hostname and close."""

    class H(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError):
                self.request.sendall(hostname().encode())

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    srv = socketserver.ThreadingTCPServer((BIND, port), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def text(body: str, code: int = 200) -> tuple[int, str, str]:
    return code, "text/plain", body


# --- agnhost netexec ----------------------------------------------------------------------------

def _udp_answer(data: bytes, peer: tuple[str, int]) -> bytes:
    msg = data.decode(errors="replace").strip()
    if msg == "hostname":
        return hostname().encode()
    if msg.startswith("echo "):
        return msg[5:].encode()
    if msg == "clientip":
        return host_port(peer).encode()
    return b""


def dial_once(protocol: str, host: str, port: int, request: str, timeout: float = 5.0) -> str:
    if protocol == "http":
        path = request if request.startswith("/") else "/" + request
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as resp:
            return resp.read().decode(errors="replace").strip()
    if protocol == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(request.encode(), (host, port))
            return s.recvfrom(65535)[0].decode(errors="replace").strip()
    raise ValueError(f"unsupported protocol {protocol!r}")


def _dial(_h: Handler, q: dict[str, list[str]]) -> tuple[int, str, str]:
    def one(key: str, default: str = "") -> str:
        return (q.get(key) or [default])[0]

    host, port, request = one("host"), one("port"), one("request", "hostname")
    protocol, tries = one("protocol", "http"), int(one("tries", "1"))
    if not host or not port.isdigit():
        return text("host and port are required\n", 400)
    responses: list[str] = []
    errors: list[str] = []
    for _ in range(max(1, tries)):
        try:
            responses.append(dial_once(protocol, host, int(port), request))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    return 200, "application/json", json.dumps({"responses": responses, "errors": errors})


def netexec(http_port: int, udp_port: int) -> None:
    routes: dict[str, Route] = {
        "/": lambda h, q: text(f"NOW: {time.strftime('%Y-%m-%d %H:%M:%S')}"),
        "/hostname": lambda h, q: text(hostname()),
        "/hostName": lambda h, q: text(hostname()),
        "/clientip": lambda h, q: text(host_port(h.client_address)),
        "/echo": lambda h, q: text((q.get("msg") or [""])[0]),
        "/healthz": lambda h, q: text("ok"),
        "/dial": _dial,
        "/exit": lambda h, q: os._exit(int((q.get("code") or ["0"])[0])),
    }
    http_server(http_port, routes)
    if udp_port > 0:
        udp_server(udp_port, _udp_answer)


# --- agnhost serve-hostname ---------------------------------------------------------------------

def serve_hostname(port: int, http: bool, tcp: bool, udp: bool) -> None:
    if http:
        http_server(port, {}, fallback=lambda h, q: text(hostname()))
    if tcp:
        tcp_hostname_server(port)
    if udp:
        udp_server(port, lambda data, peer: hostname().encode())


# --- a plain HTTP server image (nginx, node-js, golang, whale, ...) ------------------------------

def plain_http(ports: list[int], udp_ports: list[int], version: str, image: str) -> None:
    """`/` (and /hello, /index.html) answer "<hostname> <version>": which pod and which rollout
    answered. Any other path is a 404, so a readiness probe on a missing page fails as it would."""
    def body(h: Handler, q: dict[str, list[str]]) -> tuple[int, str, str]:
        return text(f"{hostname()} {version}\n")

    routes: dict[str, Route] = {
        "/": body, "/index.html": body, "/hello": body,
        "/hostname": lambda h, q: text(hostname() + "\n"),
        "/version": lambda h, q: text(version + "\n"),
        "/image": lambda h, q: text(image + "\n"),
        "/healthz": lambda h, q: text("ok\n"),
        "/clientip": lambda h, q: text(host_port(h.client_address) + "\n"),
    }
    for port in ports:
        http_server(port, routes)
    for port in udp_ports:
        udp_server(port, lambda data, peer: f"{hostname()} {version}\n".encode())


def wait_forever() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
