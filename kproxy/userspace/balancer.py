"""Backend choice for the userspace proxy: round robin with ClientIP affinity (pure, clock injected)."""

from __future__ import annotations

import time
from collections.abc import Callable

from kproxy.model import Endpoint


class Balancer:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.endpoints: list[Endpoint] = []
        self.affinity_seconds: int | None = None
        self.next = 0
        self.sticky: dict[str, tuple[Endpoint, float]] = {}

    def update(self, endpoints: list[Endpoint], affinity_seconds: int | None) -> None:
        self.endpoints = list(endpoints)
        self.affinity_seconds = affinity_seconds
        alive = {e.addr for e in endpoints}
        # A client stuck to an endpoint that is gone must move on.
        self.sticky = {c: v for c, v in self.sticky.items() if v[0].addr in alive}
        if not affinity_seconds:
            self.sticky.clear()

    def candidates(self, client_ip: str) -> list[Endpoint]:
        """Endpoints in the order to try for a new connection from `client_ip` (first = choice,
        the rest = retry order after a refused connect, as the original userspace proxy did)."""
        if not self.endpoints:
            return []
        now = self.clock()
        if self.affinity_seconds:
            hit = self.sticky.get(client_ip)
            if hit and now - hit[1] < self.affinity_seconds:
                first = hit[0]
                return [first] + [e for e in self.endpoints if e != first]
        n = len(self.endpoints)
        start = self.next % n
        self.next = (start + 1) % n
        return self.endpoints[start:] + self.endpoints[:start]

    def record(self, client_ip: str, endpoint: Endpoint) -> None:
        """The connection to `endpoint` succeeded: (re)start the client's affinity timer."""
        if self.affinity_seconds:
            self.sticky[client_ip] = (endpoint, self.clock())

    def forget(self, endpoint: Endpoint) -> None:
        self.sticky = {c: v for c, v in self.sticky.items() if v[0] != endpoint}
