"""Render kube-proxy's iptables chain layout for a set of service ports (pure).

nat:    KUBE-SERVICES -> KUBE-SVC-* (cluster policy) / KUBE-SVL-* (local policy) -> KUBE-SEP-*;
        KUBE-NODEPORTS and external/LB IPs -> KUBE-EXT-*; KUBE-MARK-MASQ sets the mark that
        KUBE-POSTROUTING masquerades.
filter: KUBE-SERVICES / KUBE-EXTERNAL-SERVICES reject traffic to services with no endpoints
        (and drop external traffic to Local services without local endpoints); KUBE-FORWARD
        accepts marked and established forwarded traffic.
Chain names are hashes of the service port (and endpoint), as kube-proxy computes them, so they
are stable across restarts and a rendered service can be compared with the kernel's.

IPv6 (ip6tables, one proxier per family): the same chains with the same names (kube-proxy's
layout is family-blind), addresses as /128, the `recent` mask of 128 bits, REJECT answering with
icmp6-port-unreachable (ip6tables' default; TCP still gets a reset), and node ports never on ::1
(kube-proxy: localhost node ports do not work on IPv6, there is no route_localnet).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from kproxy.model import DROP, MASQ_MARK, Categories, Config, Endpoint, ServicePort, categorize, masquerade_external

__all__ = ["MASQ_MARK", "Config", "ServiceRules", "render_filter", "render_masquerade", "render_rejects",
           "render_restore", "render_service"]
NAT_BASE = ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")
FILTER_BASE = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS")
# (table, builtin chain, rule spec) jumps into our chains; ensured with iptables -C / -I.
JUMPS = (
    ("nat", "PREROUTING", ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("nat", "OUTPUT", ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("nat", "POSTROUTING", ["-m", "comment", "--comment", "kubernetes postrouting rules", "-j", "KUBE-POSTROUTING"]),
    ("filter", "INPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                         "kubernetes externally-visible service portals", "-j", "KUBE-EXTERNAL-SERVICES"]),
    ("filter", "FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"]),
    ("filter", "FORWARD", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                           "kubernetes service portals", "-j", "KUBE-SERVICES"]),
    ("filter", "FORWARD", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                           "kubernetes externally-visible service portals", "-j", "KUBE-EXTERNAL-SERVICES"]),
    ("filter", "OUTPUT", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment",
                          "kubernetes service portals", "-j", "KUBE-SERVICES"]),
)


def _hash(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def svc_chain(sp: ServicePort, prefix: str = "KUBE-SVC-") -> str:
    return prefix + _hash(sp.key + sp.proto)


def sep_chain(sp: ServicePort, ep: Endpoint) -> str:
    return "KUBE-SEP-" + _hash(sp.key + sp.proto + ep.addr)


@dataclass
class ServiceRules:
    """Everything one service port contributes: its own chains (whole) and lines it adds to the
    shared chains (KUBE-SERVICES, KUBE-NODEPORTS, filter chains)."""
    nat_chains: dict[str, list[str]] = field(default_factory=dict)
    nat_shared: list[str] = field(default_factory=list)
    nat_nodeports: list[str] = field(default_factory=list)
    filter_services: list[str] = field(default_factory=list)
    filter_external: list[str] = field(default_factory=list)


V6_MASK = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def host_match(ip: str) -> str:
    """One address as a match: /32, or /128 for IPv6."""
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _recent_mask(sp: ServicePort) -> str:
    return V6_MASK if sp.family == 6 else "255.255.255.255"


def _q(text: str) -> str:
    return '"' + text.replace('"', '\\"') + '"'


def _match(sp: ServicePort) -> str:
    return f"-m {sp.proto} -p {sp.proto}"


def _reject(sp: ServicePort) -> str:
    # A TCP client gets a RST at once; an ICMP error can be swallowed by the ICMP rate limit
    # (e.g. right after a redirect), leaving the client to time out.
    return "REJECT --reject-with tcp-reset" if sp.protocol == "TCP" else "REJECT"


def _entry(chain: str, note: str, match: str, target: str) -> str:
    """A rule of a shared chain (KUBE-SERVICES, KUBE-NODEPORTS, KUBE-EXTERNAL-SERVICES): traffic that
    matches `match` goes to `target`, commented with `note`."""
    return f"-A {chain} -m comment --comment {_q(note)} {match} -j {target}"


def _probability(n_left: int) -> str:
    return f"-m statistic --mode random --probability {1.0 / n_left:0.10f} "


def _endpoint_chain_jumps(sp: ServicePort, chain: str, eps: list[Endpoint]) -> list[str]:
    lines = []
    if sp.affinity_seconds:
        # Affinity first: a client recently sent to an endpoint goes there again.
        for ep in eps:
            sep = sep_chain(sp, ep)
            lines.append(f"-A {chain} -m comment --comment {_q(f'{sp.key} -> {ep.addr}')} "
                         f"-m recent --name {sep} --mask {_recent_mask(sp)} --rsource "
                         f"--rcheck --seconds {sp.affinity_seconds} --reap -j {sep}")
    for i, ep in enumerate(eps):
        stat = _probability(len(eps) - i) if i < len(eps) - 1 else ""
        lines.append(f"-A {chain} -m comment --comment {_q(f'{sp.key} -> {ep.addr}')} {stat}-j {sep_chain(sp, ep)}")
    return lines


def _sep_rules(sp: ServicePort, ep: Endpoint) -> list[str]:
    sep = sep_chain(sp, ep)
    recent = f"-m recent --name {sep} --mask {_recent_mask(sp)} --rsource --set " if sp.affinity_seconds else ""
    return [
        # hairpin: a pod reaching itself through the service must come back via the node
        f"-A {sep} -m comment --comment {_q(sp.key)} -s {host_match(ep.ip)} -j KUBE-MARK-MASQ",
        f"-A {sep} -m comment --comment {_q(sp.key)} {recent}{_match(sp)} -j DNAT --to-destination {ep.addr}",
    ]


def render_rejects(sp: ServicePort, cats: Categories) -> tuple[list[str], list[str]]:
    """The filter rules of a service port lacking endpoints for some traffic: KUBE-SERVICES lines
    (its cluster IPs) and KUBE-EXTERNAL-SERVICES lines (external/LB IPs, node port). Every mode
    that lets netfilter answer for services without endpoints uses these."""
    services: list[str] = []
    external: list[str] = []
    m = _match(sp)
    if cats.internal_verdict:
        target = "DROP" if cats.internal_verdict == DROP else _reject(sp)
        note = sp.key + (" has no local endpoints" if target == "DROP" else " has no endpoints")
        for cip in sp.cluster_ips:
            services.append(_entry("KUBE-SERVICES", note, f"{m} -d {host_match(cip)} --dport {sp.port}", target))
    if cats.external_verdict:
        target = "DROP" if cats.external_verdict == DROP else _reject(sp)
        note = sp.key + (" has no local endpoints" if target == "DROP" else " has no endpoints")
        for ip, _kind in sp.external_dsts:
            dst = f"{m} -d {host_match(ip)} --dport {sp.port}"
            external.append(_entry("KUBE-EXTERNAL-SERVICES", note, dst, target))
        if sp.node_port:
            external.append(_entry("KUBE-EXTERNAL-SERVICES", note,
                                   f"{_local_dst(sp.family)} {m} --dport {sp.node_port}", target))
    return services, external


def render_service(sp: ServicePort, cfg: Config) -> ServiceRules:
    out = ServiceRules()
    svc, svl, ext = svc_chain(sp), svc_chain(sp, "KUBE-SVL-"), svc_chain(sp, "KUBE-EXT-")
    cats = categorize(sp, cfg.node_name)
    cluster_eps, local_eps = list(cats.cluster), list(cats.local)
    internal_chain = svl if sp.internal_local else svc
    m = _match(sp)

    # Per-service chains.
    if cats.uses_cluster and cluster_eps:
        rules = []
        for cip in sp.cluster_ips:
            if cfg.masquerade_all:
                rules.append(f"-A {svc} -m comment --comment {_q(sp.key + ' cluster IP')} {m} -d {host_match(cip)} "
                             f"--dport {sp.port} -j KUBE-MARK-MASQ")
            elif cfg.cluster_cidr:
                rules.append(f"-A {svc} -m comment --comment {_q(sp.key + ' cluster IP')} {m} -d {host_match(cip)} "
                             f"--dport {sp.port} ! -s {cfg.cluster_cidr} -j KUBE-MARK-MASQ")
        out.nat_chains[svc] = rules + _endpoint_chain_jumps(sp, svc, cluster_eps)
    if cats.uses_local and local_eps:
        out.nat_chains[svl] = _endpoint_chain_jumps(sp, svl, local_eps)
    for ep in {*(cluster_eps if cats.uses_cluster else []), *(local_eps if cats.uses_local else [])}:
        out.nat_chains[sep_chain(sp, ep)] = _sep_rules(sp, ep)
    if sp.externally_accessible and cats.external:
        note = f"{sp.key} external destinations"
        if not masquerade_external(sp):
            lines = []
            if cfg.cluster_cidr:
                lines.append(f"-A {ext} -m comment --comment {_q('pod traffic for ' + note)} "
                             f"-s {cfg.cluster_cidr} -j {svc}")
            lines += [
                f"-A {ext} -m comment --comment {_q('masquerade LOCAL traffic for ' + note)} "
                f"-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                f"-A {ext} -m comment --comment {_q('route LOCAL traffic for ' + note)} "
                f"-m addrtype --src-type LOCAL -j {svc}",
                f"-A {ext} -j {svl}",
            ]
            if svc not in out.nat_chains:
                lines = [line for line in lines if not line.endswith(f"-j {svc}")]
            out.nat_chains[ext] = lines
        else:
            out.nat_chains[ext] = [f"-A {ext} -m comment --comment {_q('masquerade traffic for ' + note)} "
                                   f"-j KUBE-MARK-MASQ", f"-A {ext} -j {svc}"]

    # Entries in the shared chains: a jump to the service's chain, or a reject (drop) while it has no endpoints.
    if cats.internal:
        for cip in sp.cluster_ips:
            dst = f"{m} -d {host_match(cip)} --dport {sp.port}"
            out.nat_shared.append(_entry("KUBE-SERVICES", f"{sp.key} cluster IP", dst, internal_chain))
    if cats.external:
        for ip, kind in sp.external_dsts:
            dst = f"{m} -d {host_match(ip)} --dport {sp.port}"
            out.nat_shared.append(_entry("KUBE-SERVICES", f"{sp.key} {kind}", dst, ext))
        if sp.node_port:
            out.nat_nodeports.append(_entry("KUBE-NODEPORTS", sp.key, f"{m} --dport {sp.node_port}", ext))
    out.filter_services, out.filter_external = render_rejects(sp, cats)
    return out


def nat_static() -> list[str]:
    return [
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
    ]


def filter_static() -> list[str]:
    return [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} '
        "-j ACCEPT",
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ]


def _local_dst(family: int) -> str:
    """Node-port destinations: every local address (nodePortAddresses unset), but on IPv6 not
    ::1, as kube-proxy (localhost node ports never work there)."""
    return "-m addrtype --dst-type LOCAL" + (" ! -d ::1/128" if family == 6 else "")


def nodeports_last(family: int = 4) -> str:
    return ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
            f'last rule in this chain" {_local_dst(family)} -j KUBE-NODEPORTS')




def render_filter(rejects: list[tuple[list[str], list[str]]], stale: set[str] | frozenset[str] = frozenset(),
                  ) -> list[str]:
    """The filter table part of an iptables-restore input (every mode that lets netfilter reject
    for services without endpoints writes it): the base chains, whole, with `rejects` (per service
    port: its KUBE-SERVICES and KUBE-EXTERNAL-SERVICES lines, from render_rejects); `stale`
    chains are flushed and deleted."""
    lines = ["*filter", *[f":{c} - [0:0]" for c in FILTER_BASE], *[f":{c} - [0:0]" for c in sorted(stale)]]
    lines += filter_static()
    lines += [line for services, _ in rejects for line in services]
    lines += [line for _, external in rejects for line in external]
    return lines + [f"-X {c}" for c in sorted(stale)] + ["COMMIT"]


NAT_FIXED_RULES = len(nat_static()) + 1  # KUBE-POSTROUTING, KUBE-MARK-MASQ and the node-port rule


def render_masquerade() -> list[str]:
    """The nat table part that masquerades marked traffic (modes that DNAT without netfilter)."""
    return ["*nat", *[f":{c} - [0:0]" for c in ("KUBE-POSTROUTING", "KUBE-MARK-MASQ")], *nat_static(), "COMMIT"]


def render_restore(rendered: dict[str, ServiceRules], write: set[str] | None,
                   stale_nat: set[str], stale_filter: set[str] | frozenset[str] = frozenset(), family: int = 4) -> str:
    """iptables-restore --noflush input (ip6tables-restore for `family` 6). The shared chains are
    always rewritten whole; the per-service chains only for the service ports in `write` (None:
    all of them — a full sync), as kube-proxy's partial sync does. `stale_*` chains are flushed
    and deleted."""
    keys = sorted(rendered)
    write_keys = keys if write is None else [k for k in keys if k in write]
    nat_own = {c: r for k in write_keys for c, r in rendered[k].nat_chains.items()}
    lines = render_filter([(rendered[k].filter_services, rendered[k].filter_external) for k in keys], stale_filter)
    lines += ["*nat"]
    lines += [f":{c} - [0:0]" for c in NAT_BASE]
    lines += [f":{c} - [0:0]" for c in sorted(nat_own)]
    lines += [f":{c} - [0:0]" for c in sorted(stale_nat - set(nat_own))]
    lines += nat_static()
    for k in keys:
        lines += rendered[k].nat_shared
    for k in keys:
        lines += rendered[k].nat_nodeports
    lines.append(nodeports_last(family))
    for chain in sorted(nat_own):
        lines += nat_own[chain]
    lines += [f"-X {c}" for c in sorted(stale_nat - set(nat_own))]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_partial_restore(old: dict[str, ServiceRules], new: dict[str, ServiceRules],
                           rejects: list[tuple[list[str], list[str]]], stale: set[str]) -> str:
    """iptables-restore --noflush input for the service ports whose renderings went from `old` to
    `new` (absent: added or removed): their own chains rewritten, and in the shared nat chains
    (KUBE-SERVICES, KUBE-NODEPORTS) only their entries deleted (-D) and inserted at the top (-I 1,
    ahead of the node-port rule that must stay last) — the rest of those chains is not touched.
    kube-proxy rewrites the shared chains whole on every sync; with 10,000 services that is
    10,000 rules per change, which iptables-nft takes seconds to load. The filter chains (rejects
    for services without endpoints: `rejects`, every port's) are small and rewritten whole.
    An entry missing from the kernel makes -D fail the restore: the daemon then runs a full sync,
    which repairs it."""
    lines = render_filter(rejects)
    own = {c: r for sr in new.values() for c, r in sr.nat_chains.items()}
    lines += ["*nat", *[f":{c} - [0:0]" for c in sorted(own)], *[f":{c} - [0:0]" for c in sorted(stale - set(own))]]
    for part in ("nat_shared", "nat_nodeports"):
        before = [line for sr in old.values() for line in getattr(sr, part)]
        after = [line for sr in new.values() for line in getattr(sr, part)]
        kept = set(before) & set(after)
        lines += ["-D" + line[2:] for line in before if line not in kept]
        for line in after:
            if line not in kept:
                chain, _, spec = line[3:].partition(" ")
                lines.append(f"-I {chain} 1 {spec}")
    for chain in sorted(own):
        lines += own[chain]
    lines += [f"-X {c}" for c in sorted(stale - set(own))]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def chain_names(rendered: dict[str, ServiceRules]) -> set[str]:
    return {c for r in rendered.values() for c in r.nat_chains}
