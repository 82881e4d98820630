"""kdns's HTTP endpoints, where CoreDNS has them: /metrics (`prometheus`, :9153), /health
(`health`, :8080), /ready (`ready`, :8181); with flags only, all on --metrics-bind-address.

Each address gets one small threaded HTTP server; `apply` opens and closes them as the
configuration changes (a reload that moves /metrics opens the new address before closing the old).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[[], tuple[int, bytes, str]]  # () -> (status, body, content type)


class Endpoints:
    def __init__(self) -> None:
        self.servers: dict[str, tuple[ThreadingHTTPServer, dict[str, Route]]] = {}

    def apply(self, wanted: dict[str, dict[str, Route]]) -> None:
        """Serve `wanted` ({"host:port": {"/path": route}}); addresses not in it are closed."""
        for address, routes in wanted.items():
            current = self.servers.get(address)
            if current is not None:
                current[1].clear()
                current[1].update(routes)  # the handler reads this dict: changed in place
                continue
            table = dict(routes)
            self.servers[address] = (_serve(address, table), table)
        for address in [a for a in self.servers if a not in wanted]:
            server, _ = self.servers.pop(address)
            server.shutdown()
            server.server_close()

    def close(self) -> None:
        self.apply({})


def _serve(address: str, routes: dict[str, Route]) -> ThreadingHTTPServer:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?")[0])
            if route is None:
                code, body, ctype = 404, b"404 page not found\n", "text/plain"
            else:
                try:
                    code, body, ctype = route()
                except Exception as e:  # a failing route must not kill the endpoint
                    code, body, ctype = 500, f"{e}\n".encode(), "text/plain"
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"http {address}", daemon=True).start()
    return server
