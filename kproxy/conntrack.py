"""Stale UDP conntrack entries: which to delete when endpoints change (pure), and deleting them.

UDP has no connection teardown, so a client keeps sending to a DNAT'ed backend that is gone
until its conntrack entry expires (the classic stale-DNS problem). kube-proxy deletes entries
for removed UDP endpoints, and for UDP services that just got endpoints (their entries may hold
a reject from the time there were none).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from kproxy.model import ServicePort, cluster_endpoints


@dataclass(frozen=True)
class Flush:
    """One `conntrack -D` filter."""
    orig_dst: str | None = None
    dst_nat: str | None = None
    orig_port: int | None = None
    protocol: str = "udp"

    def argv(self) -> list[str]:
        args = ["conntrack", "-D", "-p", self.protocol]
        if self.orig_dst:
            args += ["--orig-dst", self.orig_dst]
        if self.orig_port:
            args += ["--orig-port-dst", str(self.orig_port)]
        if self.dst_nat:
            args += ["--dst-nat", self.dst_nat]
        return args


def stale_flushes(old: ServicePort | None, new: ServicePort | None) -> list[Flush]:
    ref = new or old
    if ref is None or ref.protocol != "UDP":
        return []
    old_eps = {e.ip for e in cluster_endpoints(old)} if old else set()
    new_eps = {e.ip for e in cluster_endpoints(new)} if new else set()
    dsts = [*ref.cluster_ips, *ref.external_ips, *ref.load_balancer_ips]
    out: list[Flush] = []
    for gone in sorted(old_eps - new_eps):
        out += [Flush(orig_dst=d, dst_nat=gone) for d in dsts]
        if ref.node_port:
            out.append(Flush(orig_port=ref.node_port, dst_nat=gone))
    if new_eps and not old_eps:
        out += [Flush(orig_dst=d) for d in dsts]
        if ref.node_port:
            out.append(Flush(orig_port=ref.node_port))
    return out


def apply(flushes: list[Flush]) -> int:
    """Run the deletions; "0 flow entries deleted" exits 1 and is not an error."""
    done = 0
    for f in flushes:
        proc = subprocess.run(f.argv(), capture_output=True, text=True)
        if proc.returncode == 0:
            done += 1
    return done
