"""The userspace data path: one listener per service port in this process, and iptables
REDIRECT rules sending cluster/external IP traffic to it (node ports are listened on directly).

As in the original kube-proxy userspace mode, the proxy opens the backend connection itself, so
backends see the node as the client (also under externalTrafficPolicy: Local, which still
restricts the choice to local endpoints); a refused backend is retried on the next one.

One backend per IP family (Config.family): the IPv6 one listens on AF_INET6 sockets (IPV6_V6ONLY,
so its node ports and the IPv4 backend's share the port numbers) and writes its portals with
ip6tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from knet import netfilter
from kproxy.iptables.backend import ensure_jumps, family_binary, remove_chains
from kproxy.iptables.rules import FILTER_BASE, host_match, render_filter, render_rejects
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
LOOP_BATCH = 200  # service ports handed to the event loop at a time


@dataclass
class PortProxy:
    sp: ServicePort
    internal: Balancer = field(default_factory=Balancer)
    external: Balancer = field(default_factory=Balancer)
    servers: list = field(default_factory=list)  # asyncio Servers (TCP) / UdpFronts
    port: int = 0  # the local port the portal rules redirect to


def portal_lines(sp: ServicePort, port: int, internal: bool, external: bool) -> list[str]:
    """The REDIRECT rules sending a service port's destinations to its listener (`port`); a
    destination whose traffic has no endpoint gets none (the filter REJECT answers instead of a
    listener with nobody behind it)."""
    if not port:
        return []
    proto = sp.proto
    dsts = [ip for ip in sp.cluster_ips if internal] + \
        [ip for ip in (*sp.external_ips, *sp.load_balancer_ips) if external]
    return [f'-A {chain} -m comment --comment "{sp.key}" -m {proto} -p {proto} -d {host_match(ip)} '
            f"--dport {sp.port} -j REDIRECT --to-ports {port}"
            for ip in dsts for chain in ("KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST")]


def render_portals(portals: dict[str, list[str]], rejects: dict[str, tuple[list[str], list[str]]],
                   changed: dict[str, tuple[list[str], list[str]]] | None = None) -> str:
    """iptables-restore input: the REDIRECT portals + the same no-endpoint rejects as iptables mode.
    `changed` (a partial sync: port key -> its old and new portal lines): only those lines are
    deleted and inserted (the portal entries are disjoint, so their order does not matter), as
    the iptables mode edits KUBE-SERVICES; None (a full sync): the portal chains rewritten whole."""
    lines = render_filter([rejects[k] for k in sorted(rejects)])
    if changed is None:
        lines += ["*nat", ":KUBE-PORTALS-CONTAINER - [0:0]", ":KUBE-PORTALS-HOST - [0:0]"]
        for key in sorted(portals):
            lines += portals[key]
    else:
        lines.append("*nat")
        for old, new in changed.values():
            lines += ["-D" + line[2:] for line in old if line not in new]
            lines += [f"-I {line[3:].partition(' ')[0]} 1 {line[3:].partition(' ')[2]}" for line in new
                      if line not in old]
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
        self.binary = family_binary(binary, cfg.family)
        self.family = socket.AF_INET6 if cfg.family == 6 else socket.AF_INET
        self.proxies: dict[str, PortProxy] = {}  # touched on the loop only
        self.ports: dict[str, ServicePort] = {}  # the rest on the sync thread
        self.portals: dict[str, list[str]] = {}
        self.rejects: dict[str, tuple[list[str], list[str]]] = {}
        self.synced = False
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

    def _socket(self, kind: int, port: int) -> socket.socket:
        """A socket of this backend's family bound to every address (IPv6: only IPv6, so that the
        other family's backend can listen on the same node port)."""
        sock = socket.socket(self.family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::" if self.family == socket.AF_INET6 else "0.0.0.0", port))
        except OSError:
            sock.close()
            raise
        return sock

    async def _listen(self, sp: ServicePort, port: int, balancer: Balancer) -> tuple[object, int]:
        loop = asyncio.get_running_loop()
        if sp.protocol == "UDP":

            def spawn(flow: UdpFlow, ep) -> None:
                background(loop.create_datagram_endpoint(lambda: flow, remote_addr=(ep.ip, ep.port)))

            front = UdpFront(balancer, self.udp_idle_timeout, self.stats, spawn)
            sock = self._socket(socket.SOCK_DGRAM, port)
            transport, _ = await loop.create_datagram_endpoint(lambda: front, sock=sock)
            return front, transport.get_extra_info("sockname")[1]
        sock = self._socket(socket.SOCK_STREAM, port)
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

    async def _sync_listeners(self, changes: dict[str, ServicePort | None]) -> dict[str, tuple[int, bool, bool]]:
        """On the loop: open, re-balance and close the listeners of the service ports in `changes`
        (None: removed). Returns, per port still proxied, what its portal rules need: (listener
        port, internal traffic has endpoints, external traffic has endpoints)."""
        out = {}
        for key, sp in changes.items():
            p = self.proxies.get(key)
            if p is not None and (sp is None or (p.sp.protocol, p.sp.node_port) != (sp.protocol, sp.node_port)):
                self._close(self.proxies.pop(key))
                p = None
            if sp is None:
                continue
            if p is None:
                p = self.proxies[key] = await self._open(sp)
            p.sp = sp
            self._balance(p)
            out[key] = (p.port, bool(p.internal.endpoints), bool(p.external.endpoints))
        return out

    def sync(self, ports: Mapping[str, ServicePort], changed: AbstractSet[str], full: bool = False) -> SyncResult:
        start = time.monotonic()
        full = full or not self.synced
        if full:  # listeners cannot drift: a full sync rewrites the rules, and opens what is missing
            changed = {k for k in ports.keys() | self.ports.keys() if ports.get(k) != self.ports.get(k)}
        changes = {k: ports.get(k) for k in changed}
        opened: dict[str, tuple[int, bool, bool]] = {}
        batch = list(changes.items())
        for i in range(0, len(batch), LOOP_BATCH):  # in slices: the loop serves traffic in between
            opened.update(self._on_loop(self._sync_listeners(dict(batch[i:i + LOOP_BATCH]))))
        edits: dict[str, tuple[list[str], list[str]]] = {}
        for key, sp in changes.items():
            before = self.portals.get(key, [])
            if sp is None:
                self.ports.pop(key, None)
                self.portals.pop(key, None)
                self.rejects.pop(key, None)
                edits[key] = (before, [])
                continue
            self.ports[key] = sp
            self.portals[key] = portal_lines(sp, *opened[key])
            edits[key] = (before, self.portals[key])
            rejects = render_rejects(sp, categorize(sp, self.cfg.node_name))
            if any(rejects):
                self.rejects[key] = rejects
            else:
                self.rejects.pop(key, None)
        if full:
            ensure_jumps(JUMPS, self.binary)
        # Rendered here, on the sync thread, from what the loop reported: the loop only did the
        # socket work of the ports that changed.
        text = render_portals(self.portals, self.rejects, None if full else edits)
        try:
            netfilter.restore(text, self.binary)
        except netfilter.NetfilterError:
            self.synced = False  # the portal rules are not what self.portals says: rewrite them all next time
            raise
        self.synced = True
        return SyncResult(full=full, services_written=len(changes), rules=text.count("\n-A "),
                          seconds=time.monotonic() - start)

    def entries(self) -> int:
        return len(self.ports)

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
