"""kube-proxy's two health interfaces, with its JSON bodies.

- The proxy's own `/healthz` and `/livez` (healthzBindAddress, default 0.0.0.0:10256): healthy
  unless a change has waited longer than the health timeout (2 x syncPeriod) without being
  programmed; 200 with `{"lastUpdated": ..., "currentTime": ..., "nodeEligible": true}` or 503.
  (kube-proxy also answers 503 for a node being deleted or tainted for deletion by the cluster
  autoscaler; kproxy does not watch its Node, so nodeEligible is always true.)
- Per Service with `type: LoadBalancer` and `externalTrafficPolicy: Local`, an HTTP server on
  its `spec.healthCheckNodePort`, which a cloud load balancer probes to learn whether this node
  has local endpoints: 200 with the number of ready local endpoints (each address once), 503 when
  there are none or the proxy itself is unhealthy. The body names the Service.

Each server is a small threaded HTTP server on a daemon thread (never the proxy's event loop,
which carries the traffic in userspace mode).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from http.server import ThreadingHTTPServer

from knet import metrics

log = logging.getLogger("knet.kproxy.health")
_START = time.monotonic()


def go_time(unix: float, monotonic: float | None = None) -> str:
    """A time as Go's time.Time.String() prints it (kube-proxy's %q of time.Now()): UTC with
    nanoseconds trimmed of trailing zeros, and the monotonic reading since the process started."""
    whole = int(unix)
    frac = f"{unix - whole:.9f}"[1:].rstrip("0").rstrip(".")
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole)) + frac + " +0000 UTC"
    if monotonic is not None:
        text += f" m=+{monotonic - _START:.9f}"
    return text


class ProxyHealth:
    """kube-proxy's ProxyHealthServer state: when changes were queued and when rules were last
    programmed. Thread-safe (the sync thread writes, HTTP threads read)."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self.last_updated: float | None = None
        self.oldest_queued: float | None = None

    def queued(self) -> None:
        """A change arrived that the data path does not have yet."""
        with self._lock:
            if self.oldest_queued is None:
                self.oldest_queued = self.clock()

    def updated(self, pending_left: bool = False) -> None:
        """A sync programmed everything queued before it started (`pending_left`: changes that
        arrived during the sync are still waiting: their clock keeps running from now)."""
        with self._lock:
            now = self.clock()
            self.last_updated = now
            self.oldest_queued = now if pending_left else None

    def state(self) -> tuple[bool, float | None, float]:
        """(healthy, last updated, now): healthy while starting up and while no queued change is
        older than the timeout."""
        with self._lock:
            now = self.clock()
            healthy = self.oldest_queued is None or now - self.oldest_queued < self.timeout
            return healthy, self.last_updated, now

    def body(self, with_node: bool) -> tuple[int, str]:
        healthy, last, now = self.state()
        mono = time.monotonic()
        shown = now if healthy or last is None else last  # kube-proxy: "recent" when healthy
        text = f'{{"lastUpdated": {json.dumps(go_time(shown, mono - (now - shown)))},' \
               f'"currentTime": {json.dumps(go_time(now, mono))}'
        text += ', "nodeEligible": true}' if with_node else "}"
        return (200 if healthy else 503), text


def service_body(namespace: str, name: str, local_endpoints: int, proxy_healthy: bool) -> tuple[int, str]:
    """A Service health check answer, as kube-proxy writes it (tab-indented JSON)."""
    code = 200 if local_endpoints and proxy_healthy else 503
    text = ("{\n"
            '\t"service": {\n'
            f'\t\t"namespace": {json.dumps(namespace)},\n'
            f'\t\t"name": {json.dumps(name)}\n'
            "\t},\n"
            f'\t"localEndpoints": {local_endpoints},\n'
            f'\t"serviceProxyHealthy": {"true" if proxy_healthy else "false"}\n'
            "}")
    return code, text


def _serve(address: str, answer: Callable[[str], tuple[int, str]], name: str) -> ThreadingHTTPServer:
    return metrics.serve_http(address, lambda path, _headers: (*_encoded(answer(path)), "application/json"), name)


def _encoded(answer: tuple[int, str]) -> tuple[int, bytes]:
    return answer[0], answer[1].encode()


def serve_healthz(health: ProxyHealth, address: str, count: Callable[[str, int], None] | None = None,
                  ) -> ThreadingHTTPServer:
    """/healthz and /livez on "host:port"; `count(path, code)` is told about every answer."""

    def answer(path: str) -> tuple[int, str]:
        if path not in ("/healthz", "/livez"):
            return 404, '{"error": "not found"}'
        code, body = health.body(with_node=path == "/healthz")
        if count is not None:
            count(path, code)
        return code, body

    return _serve(address, answer, "healthz")


class ServiceHealthServers:
    """One health check server per Service that asks for one (kube-proxy's ServiceHealthServer).

    `sync_services` opens and closes servers to match {service key: port}; `update_counts` sets the
    local endpoint counts of the Services that changed. Called from the sync thread; the servers
    answer from their own threads."""

    def __init__(self, health: ProxyHealth, host: str = "0.0.0.0") -> None:
        self.health = health
        self.host = host
        self._lock = threading.Lock()
        self.servers: dict[str, tuple[int, ThreadingHTTPServer]] = {}
        self.counts: dict[str, int] = {}

    def sync_services(self, wanted: Mapping[str, int]) -> list[str]:
        """Returns the errors of servers that could not be opened (a port in use: logged, retried
        at the next call)."""
        errors = []
        for key, (port, server) in list(self.servers.items()):
            if wanted.get(key) != port:
                server.shutdown()
                server.server_close()
                del self.servers[key]
                log.info("closed health check service=%s port=%d", key, port)
        for key, port in wanted.items():
            if key in self.servers:
                continue
            try:
                self.servers[key] = (port, _serve(f"{self.host}:{port}", self._answerer(key), f"health {key}"))
                log.info("serving health check service=%s port=%d", key, port)
            except OSError as e:
                errors.append(f"health check for {key} on port {port}: {e.strerror or e}")
        return errors

    def update_counts(self, counts: Mapping[str, int | None]) -> None:
        """Local ready endpoints of the Services that changed (None: the Service has no health
        check any more)."""
        with self._lock:
            for key, n in counts.items():
                if n is None:
                    self.counts.pop(key, None)
                else:
                    self.counts[key] = n

    def _answerer(self, key: str) -> Callable[[str], tuple[int, str]]:
        namespace, _, name = key.partition("/")

        def answer(_path: str) -> tuple[int, str]:
            with self._lock:
                count = self.counts.get(key, 0)
            healthy, _, _ = self.health.state()
            return service_body(namespace, name, count, healthy)
        return answer

    def close(self) -> None:
        self.sync_services({})
