"""Stale UDP conntrack entries: which to delete when endpoints change (pure), and deleting them;
and the conntrack sysctls of kube-proxy's configuration.

UDP has no connection teardown, so a client keeps sending to a DNAT'ed backend that is gone
until its conntrack entry expires (the classic stale-DNS problem). kube-proxy deletes entries
for removed UDP endpoints, and for UDP services that just got endpoints (their entries may hold
a reject from the time there were none).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kproxy.config import Conntrack
from kproxy.model import ServicePort, cluster_endpoints


@dataclass(frozen=True)
class Flush:
    """One `conntrack -D` filter."""
    orig_dst: str | None = None
    dst_nat: str | None = None
    orig_port: int | None = None
    protocol: str = "udp"
    family: int = 4  # conntrack's table of that family (-f ipv6: a node port's entries have no address to tell)

    def argv(self) -> list[str]:
        args = ["conntrack", "-D", *(["-f", "ipv6"] if self.family == 6 else []), "-p", self.protocol]
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
    fam = ref.family
    for gone in sorted(old_eps - new_eps):
        out += [Flush(orig_dst=d, dst_nat=gone, family=fam) for d in dsts]
        if ref.node_port:
            out.append(Flush(orig_port=ref.node_port, dst_nat=gone, family=fam))
    if new_eps and not old_eps:
        out += [Flush(orig_dst=d, family=fam) for d in dsts]
        if ref.node_port:
            out.append(Flush(orig_port=ref.node_port, family=fam))
    return out


def flush_stale(old: Mapping[str, ServicePort], new: Mapping[str, ServicePort], changed: Iterable[str]) -> int:
    """After a sync has programmed `new`: delete the stale entries of the `changed` service ports."""
    flushes = [f for k in changed for f in stale_flushes(old.get(k), new.get(k))]
    return apply(flushes) if flushes else 0


def apply(flushes: list[Flush]) -> int:
    """Run the deletions; "0 flow entries deleted" exits 1 and is not an error."""
    done = 0
    for f in flushes:
        proc = subprocess.run(f.argv(), capture_output=True, text=True)
        if proc.returncode == 0:
            done += 1
    return done


# --- conntrack settings (KubeProxyConfiguration.conntrack) ---------------------------------------

SYSCTL_DIR = "/proc/sys/net/netfilter"


def sysctl_plan(ct: Conntrack, cpus: int) -> list[tuple[str, int]]:
    """The conntrack sysctls kube-proxy sets for these settings, as (name, value): the table size
    max(maxPerCore x CPUs, min) when maxPerCore > 0, the TCP established / close-wait timeouts,
    be_liberal when asked for, and the UDP timeouts when given (0 or unset: left alone). The hash
    table size (/sys/module/nf_conntrack/parameters/hashsize) is a module parameter of the whole
    machine: kproxy leaves it, where kube-proxy sets it to a quarter of the table size."""
    plan: list[tuple[str, int]] = []
    if ct.max_per_core:
        plan.append(("nf_conntrack_max", max(ct.max_per_core * cpus, ct.min or 0)))
    for name, seconds in (("nf_conntrack_tcp_timeout_established", ct.tcp_established_timeout),
                          ("nf_conntrack_tcp_timeout_close_wait", ct.tcp_close_wait_timeout),
                          ("nf_conntrack_udp_timeout", ct.udp_timeout),
                          ("nf_conntrack_udp_timeout_stream", ct.udp_stream_timeout)):
        if seconds:
            plan.append((name, int(seconds)))
    if ct.tcp_be_liberal:
        plan.append(("nf_conntrack_tcp_be_liberal", 1))
    return plan


def apply_sysctls(plan: list[tuple[str, int]], directory: str = SYSCTL_DIR) -> list[str]:
    """Write each sysctl that differs, in the calling thread's network namespace (the timeouts are
    per namespace; nf_conntrack_max is writable only in the machine's first namespace, elsewhere
    it is read-only and left). Returns one line per value not set."""
    problems = []
    for name, value in plan:
        path = f"{directory}/{name}"
        try:
            with open(path) as f:
                if int(f.read().strip() or 0) == value:
                    continue
            with open(path, "w") as f:
                f.write(f"{value}\n")
        except (OSError, ValueError) as e:
            problems.append(f"{name}={value} not set: {getattr(e, 'strerror', None) or e}")
    return problems
