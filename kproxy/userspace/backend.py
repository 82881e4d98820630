"""The userspace data path: one listener per service port in this process, and iptables
REDIRECT rules sending cluster/external IP traffic to it (node ports are listened on directly).

As in the original kube-proxy userspace mode, the proxy opens the backend connection itself, so
backends see the node as the client (also under externalTrafficPolicy: Local, which still
restricts the choice to local endpoints); a refused backend is retried on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field

from knet import netfilter
from kproxy.iptables.backend import ensure_jumps, remove_chains
from kproxy.iptables.rules import FILTER_BASE, render_filter, render_rejects
from kproxy.iptables.rules import JUMPS as IPTABLES_JUMPS
from kproxy.model import Config, ServicePort, SyncResult, categorize
from kproxy.userspace.balancer import Balancer
from kproxy.userspace.relay import TcpFront, UdpFlow, UdpFront, background

log = logging.getLogger("knet.kproxy.userspace")
PORTAL_JUMPS = (
    ("nat", "PREROUTING", ["-m", "comment", "--comment", "handle ClusterIPs; NOTE: this must be before the "
                           "NodePort rules", "-j", "KUBE-PORTALS-CONTAINER"]),
    ("nat", "OUTPUT", ["-m", "comment", "--comment", "handle ClusterIPs; NOTE: this must be before the "
                       "NodePort rules", "-j", "KUBE-PORTALS-HOST"]),
)
JUMPS = PORTAL_JUMPS + tuple(j for j in IPTABLES_JUMPS if j[0] == "filter")


@dataclass
class PortProxy:
    sp: ServicePort
    internal: Balancer = field(default_factory=Balancer)
    external: Balancer = field(default_factory=Balancer)
    servers: list = field(default_factory=list)  # asyncio Servers (TCP) / UdpFronts
    port: int = 0  # the local port the portal rules redirect to


def render_portals(proxies: dict[str, PortProxy], cfg: Config) -> str:
    """iptables-restore input: REDIRECT portals + the same no-endpoint rejects as iptables mode."""
    lines = render_filter([render_rejects(proxies[k].sp, categorize(proxies[k].sp, cfg.node_name))
                           for k in sorted(proxies)])
    lines += ["*nat", ":KUBE-PORTALS-CONTAINER - [0:0]", ":KUBE-PORTALS-HOST - [0:0]"]
    for key in sorted(proxies):
        p = proxies[key]
        if not p.port:
            continue
        proto = p.sp.proto
        dsts = [(ip, bool(p.internal.endpoints)) for ip in p.sp.cluster_ips]
        dsts += [(ip, bool(p.external.endpoints)) for ip in (*p.sp.external_ips, *p.sp.load_balancer_ips)]
        for ip, has_eps in dsts:
            if not has_eps:
                continue  # let the filter REJECT answer instead of a listener with nobody behind it
            for chain in ("KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST"):
                lines.append(f'-A {chain} -m comment --comment "{p.sp.key}" -m {proto} -p {proto} -d {ip}/32 '
                             f"--dport {p.sp.port} -j REDIRECT --to-ports {p.port}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


class UserspaceBackend:
    """The proxying itself runs on `loop` (the daemon's event loop, in the node's namespace:
    listeners are made there); sync() and close() are called from another thread, as every
    backend's are, and hand the socket work to the loop."""

    name = "userspace"

    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop, udp_idle_timeout: float = 60.0,
                 binary: str = "iptables") -> None:
        self.cfg = cfg
        self.loop = loop
        self.udp_idle_timeout = udp_idle_timeout
        self.binary = binary
        self.proxies: dict[str, PortProxy] = {}
        self.stats: dict = {}

    def _on_loop(self, coro, timeout: float = 120.0):
        """Run `coro` on the proxy's loop and wait for it (from any thread but the loop's own)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coro.close()
            raise RuntimeError("userspace backend: sync()/close() must not be called from its event loop's thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _listen(self, sp: ServicePort, port: int, balancer: Balancer) -> tuple[object, int]:
        loop = asyncio.get_running_loop()
        if sp.protocol == "UDP":

            def spawn(flow: UdpFlow, ep) -> None:
                background(loop.create_datagram_endpoint(lambda: flow, remote_addr=(ep.ip, ep.port)))

            front = UdpFront(balancer, self.udp_idle_timeout, self.stats, spawn)
            transport, _ = await loop.create_datagram_endpoint(lambda: front, local_addr=("0.0.0.0", port))
            return front, transport.get_extra_info("sockname")[1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        server = await loop.create_server(lambda: TcpFront(balancer, self.stats), sock=sock, backlog=1024)
        return server, sock.getsockname()[1]

    def _balance(self, p: PortProxy) -> None:
        cats = categorize(p.sp, self.cfg.node_name)
        p.internal.update(list(cats.internal), p.sp.affinity_seconds)
        p.external.update(list(cats.external), p.sp.affinity_seconds)
        alive = {e.addr for e in p.internal.endpoints} | {e.addr for e in p.external.endpoints}
        for server in p.servers:
            if isinstance(server, UdpFront):
                server.sweep(alive)

    async def _open(self, sp: ServicePort) -> PortProxy:
        p = PortProxy(sp=sp)
        if sp.protocol not in ("TCP", "UDP"):
            log.warning("service %s: protocol %s is not proxied in userspace mode", sp.key, sp.protocol)
            return p
        server, p.port = await self._listen(sp, 0, p.internal)
        p.servers.append(server)
        if sp.node_port:
            try:
                server, _ = await self._listen(sp, sp.node_port, p.external)
                p.servers.append(server)
            except OSError as e:
                log.error("service %s: cannot listen on node port %d: %s", sp.key, sp.node_port, e)
        return p

    @staticmethod
    def _close(p: PortProxy) -> None:
        for server in p.servers:
            server.close()

    async def _sync_listeners(self, ports: list[ServicePort]) -> int:
        """Open, re-balance and close listeners to match `ports` (on the loop); the count changed."""
        new = {sp.key: sp for sp in ports}
        changed = 0
        for key in list(self.proxies):
            if key not in new:
                self._close(self.proxies.pop(key))
                changed += 1
        for key, sp in new.items():
            p = self.proxies.get(key)
            if p is not None and (p.sp.protocol, p.sp.node_port) != (sp.protocol, sp.node_port):
                self._close(self.proxies.pop(key))
                p = None
            if p is None:
                p = self.proxies[key] = await self._open(sp)
                changed += 1
            elif p.sp != sp:
                changed += 1
            p.sp = sp
            self._balance(p)
        return changed

    async def _render(self) -> str:
        return render_portals(self.proxies, self.cfg)  # on the loop: self.proxies changes there

    def sync(self, ports: list[ServicePort], full: bool = False) -> SyncResult:
        start = time.monotonic()
        changed = self._on_loop(self._sync_listeners(ports))
        if full:
            ensure_jumps(JUMPS, self.binary)
        text = self._on_loop(self._render())
        netfilter.restore(text, self.binary)
        return SyncResult(full=full, services_written=changed, rules=text.count("\n-A "),
                          seconds=time.monotonic() - start)

    def entries(self) -> int:
        return len(self.proxies)

    async def _close_all(self) -> None:
        for p in self.proxies.values():
            with contextlib.suppress(Exception):
                self._close(p)
        self.proxies.clear()

    def close(self) -> None:
        """Stop proxying (the connections end with this process); the portal rules stay."""
        if self.loop.is_closed() or not self.loop.is_running():
            return
        self._on_loop(self._close_all(), timeout=10)

    def cleanup(self) -> None:
        """Close the listeners and remove the portal chains and the filter chains with their jumps."""
        self.close()
        remove_chains(JUMPS, {"nat": ["KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST"], "filter": list(FILTER_BASE)},
                      self.binary)
