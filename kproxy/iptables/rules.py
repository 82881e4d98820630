"""Render kube-proxy's iptables chain layout for a set of service ports (pure).

nat:    KUBE-SERVICES -> KUBE-SVC-* (cluster policy) / KUBE-SVL-* (local policy) -> KUBE-SEP-*;
        KUBE-NODEPORTS and external/LB IPs -> KUBE-EXT-*; KUBE-MARK-MASQ sets the mark that
        KUBE-POSTROUTING masquerades.
filter: KUBE-SERVICES / KUBE-EXTERNAL-SERVICES reject traffic to services with no endpoints
        (and drop external traffic to Local services without local endpoints); KUBE-FORWARD
        accepts marked and established forwarded traffic.
Chain names are hashes of the service port (and endpoint), as kube-proxy computes them, so they
are stable across restarts and a rendered service can be compared with the kernel's.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

from kproxy.model import Endpoint, ServicePort, cluster_endpoints, local_endpoints

MASQ_MARK = "0x4000"
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
class Config:
    node_name: str
    cluster_cidr: str | None = None  # pod network: off-cluster traffic to a ClusterIP is masqueraded
    masquerade_all: bool = False


@dataclass
class ServiceRules:
    """Everything one service port contributes: its own chains (whole) and lines it adds to the
    shared chains (KUBE-SERVICES, KUBE-NODEPORTS, filter chains)."""
    nat_chains: dict[str, list[str]] = field(default_factory=dict)
    nat_shared: list[str] = field(default_factory=list)
    nat_nodeports: list[str] = field(default_factory=list)
    filter_services: list[str] = field(default_factory=list)
    filter_external: list[str] = field(default_factory=list)


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
                         f"-m recent --name {sep} --mask 255.255.255.255 --rsource "
                         f"--rcheck --seconds {sp.affinity_seconds} --reap -j {sep}")
    for i, ep in enumerate(eps):
        stat = _probability(len(eps) - i) if i < len(eps) - 1 else ""
        lines.append(f"-A {chain} -m comment --comment {_q(f'{sp.key} -> {ep.addr}')} {stat}-j {sep_chain(sp, ep)}")
    return lines


def _sep_rules(sp: ServicePort, ep: Endpoint) -> list[str]:
    sep = sep_chain(sp, ep)
    recent = f"-m recent --name {sep} --mask 255.255.255.255 --rsource --set " if sp.affinity_seconds else ""
    return [
        # hairpin: a pod reaching itself through the service must come back via the node
        f"-A {sep} -m comment --comment {_q(sp.key)} -s {ep.ip}/32 -j KUBE-MARK-MASQ",
        f"-A {sep} -m comment --comment {_q(sp.key)} {recent}{_match(sp)} -j DNAT --to-destination {ep.addr}",
    ]


def render_service(sp: ServicePort, cfg: Config) -> ServiceRules:
    out = ServiceRules()
    svc, svl, ext = svc_chain(sp), svc_chain(sp, "KUBE-SVL-"), svc_chain(sp, "KUBE-EXT-")
    cluster_eps = cluster_endpoints(sp)
    local_eps = local_endpoints(sp, cfg.node_name)
    internal_eps = local_eps if sp.internal_local else cluster_eps
    external_eps = local_eps if sp.external_local else cluster_eps
    internal_chain = svl if sp.internal_local else svc
    # The cluster-wide chain also serves external traffic (and, under a Local external policy,
    # pods and the node itself reaching an external address, which kube-proxy sends cluster-wide).
    needs_svc = (not sp.internal_local) or sp.externally_accessible
    needs_svl = sp.internal_local or (sp.externally_accessible and sp.external_local)
    m = _match(sp)

    # Per-service chains.
    if needs_svc and cluster_eps:
        rules = []
        for cip in sp.cluster_ips:
            if cfg.masquerade_all:
                rules.append(f"-A {svc} -m comment --comment {_q(sp.key + ' cluster IP')} {m} -d {cip}/32 "
                             f"--dport {sp.port} -j KUBE-MARK-MASQ")
            elif cfg.cluster_cidr:
                rules.append(f"-A {svc} -m comment --comment {_q(sp.key + ' cluster IP')} {m} -d {cip}/32 "
                             f"--dport {sp.port} ! -s {cfg.cluster_cidr} -j KUBE-MARK-MASQ")
        out.nat_chains[svc] = rules + _endpoint_chain_jumps(sp, svc, cluster_eps)
    if needs_svl and local_eps:
        out.nat_chains[svl] = _endpoint_chain_jumps(sp, svl, local_eps)
    for ep in {*(cluster_eps if needs_svc else []), *(local_eps if needs_svl else [])}:
        out.nat_chains[sep_chain(sp, ep)] = _sep_rules(sp, ep)
    if sp.externally_accessible and external_eps:
        note = f"{sp.key} external destinations"
        if sp.external_local:
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
    for cip in sp.cluster_ips:
        dst = f"{m} -d {cip}/32 --dport {sp.port}"
        if internal_eps:
            out.nat_shared.append(_entry("KUBE-SERVICES", f"{sp.key} cluster IP", dst, internal_chain))
        else:
            out.filter_services.append(_entry("KUBE-SERVICES", f"{sp.key} has no endpoints", dst, _reject(sp)))
    external_dsts = [(ip, "external IP") for ip in sp.external_ips] + \
                    [(ip, "loadbalancer IP") for ip in sp.load_balancer_ips]
    no_eps_target = "DROP" if (sp.external_local and cluster_eps) else _reject(sp)
    no_eps_note = sp.key + (" has no local endpoints" if no_eps_target == "DROP" else " has no endpoints")
    for ip, kind in external_dsts:
        dst = f"{m} -d {ip}/32 --dport {sp.port}"
        if external_eps:
            out.nat_shared.append(_entry("KUBE-SERVICES", f"{sp.key} {kind}", dst, ext))
        else:
            out.filter_external.append(_entry("KUBE-EXTERNAL-SERVICES", no_eps_note, dst, no_eps_target))
    if sp.node_port:
        if external_eps:
            out.nat_nodeports.append(_entry("KUBE-NODEPORTS", sp.key, f"{m} --dport {sp.node_port}", ext))
        else:
            out.filter_external.append(_entry("KUBE-EXTERNAL-SERVICES", no_eps_note,
                                              f"-m addrtype --dst-type LOCAL {m} --dport {sp.node_port}",
                                              no_eps_target))
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


NODEPORTS_LAST = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                  'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')


def render_restore(rendered: dict[str, ServiceRules], write: set[str] | None,
                   stale_nat: set[str], stale_filter: set[str] | frozenset[str] = frozenset()) -> str:
    """iptables-restore --noflush input. The shared chains are always rewritten whole; the
    per-service chains only for the service ports in `write` (None: all of them — a full sync),
    as kube-proxy's partial sync does. `stale_*` chains are flushed and deleted."""
    keys = sorted(rendered)
    write_keys = keys if write is None else [k for k in keys if k in write]
    nat_own = {c: r for k in write_keys for c, r in rendered[k].nat_chains.items()}
    lines = ["*filter"]
    lines += [f":{c} - [0:0]" for c in FILTER_BASE]
    lines += [f":{c} - [0:0]" for c in sorted(stale_filter)]
    lines += filter_static()
    for k in keys:
        lines += rendered[k].filter_services
    for k in keys:
        lines += rendered[k].filter_external
    lines += [f"-X {c}" for c in sorted(stale_filter)]
    lines += ["COMMIT", "*nat"]
    lines += [f":{c} - [0:0]" for c in NAT_BASE]
    lines += [f":{c} - [0:0]" for c in sorted(nat_own)]
    lines += [f":{c} - [0:0]" for c in sorted(stale_nat - set(nat_own))]
    lines += nat_static()
    for k in keys:
        lines += rendered[k].nat_shared
    for k in keys:
        lines += rendered[k].nat_nodeports
    lines.append(NODEPORTS_LAST)
    for chain in sorted(nat_own):
        lines += nat_own[chain]
    lines += [f"-X {c}" for c in sorted(stale_nat - set(nat_own))]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def chain_names(rendered: dict[str, ServiceRules]) -> set[str]:
    return {c for r in rendered.values() for c in r.nat_chains}
