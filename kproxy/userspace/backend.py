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

from kproxy.iptables.backend import JUMPS as IPTABLES_JUMPS
from kproxy.iptables.backend import SyncResult, _run
from kproxy.iptables.rules import FILTER_BASE, Config, filter_static, render_service
from kproxy.model import ServicePort, cluster_endpoints, local_endpoints
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
    lines = ["*filter", *[f":{c} - [0:0]" for c in FILTER_BASE], *filter_static()]
    for key in sorted(proxies):
        r = render_service(proxies[key].sp, cfg)
        lines += r.filter_services + r.filter_external
    lines += ["COMMIT", "*nat", ":KUBE-PORTALS-CONTAINER - [0:0]", ":KUBE-PORTALS-HOST - [0:0]"]
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
    name = "userspace"

    def __init__(self, cfg: Config, udp_idle_timeout: float = 60.0, binary: str = "iptables") -> None:
        self.cfg = cfg
        self.udp_idle_timeout = udp_idle_timeout
        self.binary = binary
        self.proxies: dict[str, PortProxy] = {}
        self.stats: dict = {}

    def ensure_jumps(self) -> None:
        for table, chain, spec in JUMPS:
            target = spec[-1]
            _run([self.binary, "-w", "5", "-t", table, "-N", target])
            if _run([self.binary, "-w", "5", "-t", table, "-C", chain, *spec]).returncode != 0:
                _run([self.binary, "-w", "5", "-t", table, "-I", chain, *spec])

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
        cluster = cluster_endpoints(p.sp)
        local = local_endpoints(p.sp, self.cfg.node_name)
        p.internal.update(local if p.sp.internal_local else cluster, p.sp.affinity_seconds)
        p.external.update(local if p.sp.external_local else cluster, p.sp.affinity_seconds)
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

    async def sync(self, ports: list[ServicePort], full: bool = False) -> SyncResult:
        start = time.monotonic()
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
        if full:
            self.ensure_jumps()
        text = render_portals(self.proxies, self.cfg)
        proc = _run([f"{self.binary}-restore", "--noflush", "-w", "5"], text)
        if proc.returncode != 0:
            raise RuntimeError(f"iptables-restore failed: {proc.stderr.strip()[:2000]}")
        return SyncResult(full=full, services_written=changed, rules=text.count("\n-A "),
                          seconds=time.monotonic() - start)

    def entries(self) -> int:
        return len(self.proxies)

    def close(self) -> None:
        for p in self.proxies.values():
            with contextlib.suppress(Exception):
                self._close(p)
        self.proxies.clear()
