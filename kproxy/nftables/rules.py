"""Render kube-proxy's nftables proxier layout for a set of service ports (pure).

One table per IP family, as kube-proxy's per-family proxiers: `ip kube-proxy` and `ip6 kube-proxy`
(Config.family picks; the IPv6 table matches `ip6 saddr/daddr`, keys `ipv6_addr`, never serves
node ports on ::1, DNATs to "[addr]:port"; `reject` answers with ICMPv6 there). The layout:
  base chains   filter-{prerouting,input,forward,output} (priority dstnat-10: before DNAT, so the
                filter checks see service addresses), filter-output-post-dnat (dstnat+10),
                nat-{prerouting,output} (dstnat) and nat-postrouting (srcnat);
  dispatch      `services`: `ip daddr . meta l4proto . th dport vmap @service-ips` (ClusterIPs,
                external IPs, LB IPs) and, for local destinations, `vmap @service-nodeports`;
  no endpoints  `service-endpoints-check` / `nodeport-endpoints-check`: vmaps
                @no-endpoint-services / @no-endpoint-nodeports to `goto reject-chain` or `drop`;
                `cluster-ips-check` rejects ClusterIP ports that are not service ports (@cluster-ips);
  per service   `service-<hash>-ns/name/proto/port` (Cluster policy endpoints), `local-...` (Local),
                `external-...` (node ports, external and LB IPs): a `numgen random` pick (see
                _dispatch) of `endpoint-<hash>-ns/name/proto/port__ip/port` chains, which mark hairpin
                traffic for masquerade and DNAT; ClientIP affinity: per-endpoint sets
                `affinity-...` of client addresses with the affinity timeout, checked first;
  masquerade    `mark-for-masquerade` sets 0x4000, `masquerading` (postrouting) masquerades it.
Chain names are kube-proxy's (base32 sha256 hash + readable name), stable across restarts.

A service port renders into its own chains, its affinity sets and its elements of the shared
maps and sets; `Elements` keeps which service port owns which element, so that a partial sync's
transaction (render_partial) adds and deletes exactly the elements that changed, and a full sync's
(render_full) rewrites everything and deletes what nobody owns.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from kproxy.model import DROP, MASQ_MARK, Config, Endpoint, ServicePort, categorize, masquerade_external


@dataclass(frozen=True)
class FamilySpec:
    """What differs between the two families' tables."""
    table: str  # "<nft family> <name>"
    ip: str  # the payload expression prefix: ip / ip6
    addr_type: str  # nft's address datatype
    localhost: str  # node ports are not served on these destinations (kube-proxy's noLocalhost)


SPECS = {4: FamilySpec("ip kube-proxy", "ip", "ipv4_addr", "127.0.0.0/8"),
         6: FamilySpec("ip6 kube-proxy", "ip6", "ipv6_addr", "::1")}
TABLE = SPECS[4].table
NAME_MAX = 256 - 16  # nftables' name limit less the longest prefix, as kube-proxy truncates
# (name, type, hook, priority): the filter chains run before DNAT (dstnat - 10 = -110) so they see
# service addresses; filter-output-post-dnat after it (dstnat + 10 = -90), to see what DNAT left.
# Numbers, not nft's symbolic "dstnat"/"srcnat", which nft 1.0.6 refuses on some hooks.
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", "-110"),
    ("filter-input", "filter", "input", "-110"),
    ("filter-forward", "filter", "forward", "-110"),
    ("filter-output", "filter", "output", "-110"),
    ("filter-output-post-dnat", "filter", "output", "-90"),
    ("nat-prerouting", "nat", "prerouting", "-100"),
    ("nat-output", "nat", "output", "-100"),
    ("nat-postrouting", "nat", "postrouting", "100"),
)
# (base chain, rule): the jumps into the top-level chains.
JUMPS = (
    ("filter-input", "ct state new jump nodeport-endpoints-check"),
    ("filter-input", "ct state new jump service-endpoints-check"),
    ("filter-forward", "ct state new jump service-endpoints-check"),
    ("filter-output", "ct state new jump service-endpoints-check"),
    ("filter-prerouting", "ct state new jump firewall-check"),
    ("filter-output", "ct state new jump firewall-check"),
    ("nat-output", "jump services"),
    ("nat-prerouting", "jump services"),
    ("nat-postrouting", "jump masquerading"),
    ("filter-forward", "ct state new jump cluster-ips-check"),
    ("filter-output-post-dnat", "ct state new jump cluster-ips-check"),
)


def static_chains(family: int = 4) -> dict[str, list[str]]:
    """The top-level chains' rules, in `family`'s table."""
    f = SPECS[family]
    local_dst = f"fib daddr type local {f.ip} daddr != {f.localhost}"  # node ports: every local address
    return {
        "services": [f"{f.ip} daddr . meta l4proto . th dport vmap @service-ips",
                     f"{local_dst} meta l4proto . th dport vmap @service-nodeports"],
        "service-endpoints-check": [f"{f.ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"],
        "nodeport-endpoints-check": [f"{local_dst} meta l4proto . th dport vmap @no-endpoint-nodeports"],
        "firewall-check": [f"{f.ip} daddr . meta l4proto . th dport vmap @firewall-ips"],
        "cluster-ips-check": [f"{f.ip} daddr @cluster-ips reject "
                              'comment "Reject traffic to invalid ports of ClusterIPs"'],
        # A TCP client gets a reset at once (kube-proxy's plain `reject` sends ICMP, which the ICMP
        # rate limit can swallow, leaving the client to time out); everything else an ICMP error.
        "reject-chain": ["meta l4proto tcp reject with tcp reset", "reject"],
        "mark-for-masquerade": [f"mark set mark or {MASQ_MARK}"],
        "masquerading": [f"mark and {MASQ_MARK} == 0 return", f"mark set mark xor {MASQ_MARK}",
                         "masquerade fully-random"],
    }


NODEPORT_KEY = "inet_proto . inet_service"


def maps_of(family: int = 4) -> dict[str, tuple[str, str, str]]:
    """name -> (set or map, type, comment) in `family`'s table."""
    service_key = f"{SPECS[family].addr_type} . inet_proto . inet_service"
    return {
        "cluster-ips": ("set", SPECS[family].addr_type, "Active ClusterIPs"),
        "service-ips": ("map", f"{service_key} : verdict", "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
        "service-nodeports": ("map", f"{NODEPORT_KEY} : verdict", "NodePort traffic"),
        "no-endpoint-services": ("map", f"{service_key} : verdict",
                                 "vmap to drop or reject packets to services with no endpoints"),
        "no-endpoint-nodeports": ("map", f"{NODEPORT_KEY} : verdict",
                                  "vmap to drop or reject packets to service nodeports with no endpoints"),
        "firewall-ips": ("map", f"{service_key} : verdict",
                         "destinations that are subject to LoadBalancerSourceRanges"),
    }


SERVICE_CHAIN_PREFIXES = ("service-", "local-", "external-", "endpoint-", "firewall-")
AFFINITY_PREFIX = "affinity-"

ElementKey = tuple[str, str]  # (map or set name, element key as nft writes it)


def _hash_and_truncate(name: str) -> str:
    name = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8] + "-" + name
    return name if len(name) <= NAME_MAX else name[:NAME_MAX - 3] + "..."


def chain_base(sp: ServicePort) -> str:
    """kube-proxy's "HASH-namespace/name/protocol/portName" (e.g. "ULMVA6XW-ns1/svc1/tcp/p80")."""
    return _hash_and_truncate(f"{sp.namespace}/{sp.name}/{sp.proto}/{sp.port_name}")


def endpoint_base(sp: ServicePort, ep: Endpoint) -> str:
    """"HASH-namespace/name/protocol/portName__ip/port" of one endpoint of the service port (an IPv6
    address with "." for ":", which nft names cannot hold: "fd00.10.244..2/8080", as kube-proxy)."""
    address = ep.ip.replace(":", ".")
    return _hash_and_truncate(f"{sp.namespace}/{sp.name}/{sp.proto}/{sp.port_name}__{address}/{ep.port}")


def is_service_chain(name: str) -> bool:
    """Per-service chains (ours to delete when nobody owns them): only they contain a "/"."""
    return "/" in name


@dataclass
class ServiceNft:
    """Everything one service port contributes: its chains (rules without the "add rule" part),
    its affinity sets (name -> timeout seconds) and its elements of the shared maps/sets
    ((map, key) -> the text after the key: " : goto chain", ' comment "x" : drop', "" in a set)."""
    chains: dict[str, list[str]] = field(default_factory=dict)
    affinity: dict[str, int] = field(default_factory=dict)
    elements: dict[ElementKey, str] = field(default_factory=dict)


def _verdict(verdict: str) -> str:
    return "drop" if verdict == DROP else "goto reject-chain"


def _dispatch(sp: ServicePort, chain: list[str], eps: Iterable[Endpoint], ip: str = "ip") -> None:
    """Rules choosing an endpoint: affinity hits first, then a random pick. The pick is a walk of
    `numgen random mod N-i 0 goto endpoint-i` rules (a fresh number each, so every endpoint gets
    1/N, as iptables' statistic chain), not kube-proxy's single `numgen random mod N vmap { ... }`:
    every such rule makes an anonymous set, and the kernel names a new anonymous set by scanning
    all the table's sets, so a full sync of 10,000 services spent minutes of kernel time in that
    scan (measured here: 4,000 services 29 s, against ~1 s for 10,000 with this form)."""
    eps = list(eps)
    if sp.affinity_seconds:
        for ep in eps:
            base = endpoint_base(sp, ep)
            chain.append(f"{ip} saddr @{AFFINITY_PREFIX}{base} goto endpoint-{base}")
    for i, ep in enumerate(eps):
        left = len(eps) - i
        pick = f"numgen random mod {left} 0 " if left > 1 else ""
        chain.append(f"{pick}goto endpoint-{endpoint_base(sp, ep)}")


def render_service(sp: ServicePort, cfg: Config) -> ServiceNft:
    out = ServiceNft()
    cats = categorize(sp, cfg.node_name)
    base = chain_base(sp)
    cluster_chain, local_chain, ext_chain = f"service-{base}", f"local-{base}", f"external-{base}"
    internal_chain = local_chain if sp.internal_local else cluster_chain
    external_policy_chain = local_chain if sp.external_local else cluster_chain
    uses_cluster_chain = bool(cats.cluster) and cats.uses_cluster
    uses_local_chain = bool(cats.local) and cats.uses_local
    uses_ext_chain = cats.has_endpoints and sp.externally_accessible
    note = f' comment "{sp.key}"'
    port_key = f"{sp.proto} . {sp.port}"
    l3 = SPECS[cfg.family].ip  # "ip" / "ip6" in matches

    if uses_cluster_chain:
        out.chains[cluster_chain] = []
    if uses_local_chain:
        out.chains[local_chain] = []
    if uses_ext_chain:
        out.chains[ext_chain] = []

    # ClusterIPs: dispatch (masquerading off-cluster clients) or the no-endpoint verdict.
    for cip in sp.cluster_ips:
        out.elements[("cluster-ips", cip)] = ""
        key = f"{cip} . {port_key}"
        if cats.internal_verdict is None:
            out.elements[("service-ips", key)] = f" : goto {internal_chain}"
            match = f"{l3} daddr {cip} {sp.proto} dport {sp.port}"
            if cfg.masquerade_all:
                out.chains[internal_chain].append(f"{match} jump mark-for-masquerade")
            elif cfg.cluster_cidr:
                out.chains[internal_chain].append(f"{match} {l3} saddr != {cfg.cluster_cidr} jump mark-for-masquerade")
        else:
            out.elements[("no-endpoint-services", key)] = f"{note} : {_verdict(cats.internal_verdict)}"

    # External destinations: the external chain while the service has endpoints anywhere (it
    # short-circuits pods and the node even when a Local policy leaves outside clients none).
    for ip, _kind in sp.external_dsts:
        key = f"{ip} . {port_key}"
        if uses_ext_chain:
            out.elements[("service-ips", key)] = f" : goto {ext_chain}"
        if cats.external_verdict:
            out.elements[("no-endpoint-services", key)] = f"{note} : {_verdict(cats.external_verdict)}"
    if sp.node_port:
        key = f"{sp.proto} . {sp.node_port}"
        if uses_ext_chain:
            out.elements[("service-nodeports", key)] = f" : goto {ext_chain}"
        if cats.external_verdict:
            out.elements[("no-endpoint-nodeports", key)] = f"{note} : {_verdict(cats.external_verdict)}"

    if uses_ext_chain:
        rules = out.chains[ext_chain]
        if masquerade_external(sp):
            rules.append("jump mark-for-masquerade")  # the endpoint may be on another node
        else:
            if cfg.cluster_cidr:
                rules.append(f'{l3} saddr {cfg.cluster_cidr} goto {cluster_chain} comment "short-circuit pod traffic"')
            rules.append('fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
            rules.append(f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
        if cats.external_verdict is None:
            rules.append(f"goto {external_policy_chain}")

    if uses_cluster_chain:
        _dispatch(sp, out.chains[cluster_chain], cats.cluster, l3)
    if uses_local_chain:
        _dispatch(sp, out.chains[local_chain], cats.local, l3)
    for ep in cats.reachable:
        ep_base = endpoint_base(sp, ep)
        rules = [f"{l3} saddr {ep.ip} jump mark-for-masquerade"]  # hairpin: a pod reaching itself
        if sp.affinity_seconds:
            out.affinity[f"{AFFINITY_PREFIX}{ep_base}"] = sp.affinity_seconds
            rules.append(f"update @{AFFINITY_PREFIX}{ep_base} {{ {l3} saddr }}")
        rules.append(f"meta l4proto {sp.proto} dnat to {ep.addr}")
        out.chains[f"endpoint-{ep_base}"] = rules
    return out


class Elements:
    """Which service ports own which map/set element (a ClusterIP in @cluster-ips is shared by
    the ports of a multi-port service); the kernel holds an element while anyone owns it, with
    the value of its first owner."""

    def __init__(self) -> None:
        self.owners: dict[ElementKey, dict[str, str]] = {}

    def value(self, ek: ElementKey) -> str | None:
        owners = self.owners.get(ek)
        return owners[min(owners)] if owners else None

    def replace(self, changes: Iterable[tuple[str, ServiceNft | None, ServiceNft | None]]
                ) -> tuple[set[ElementKey], set[ElementKey]]:
        """Swap the elements of each (owner, old, new); returns the elements to delete from and to
        add to the kernel (a changed value is a delete and an add)."""
        changes = list(changes)
        keys = {ek for _, old, new in changes for sr in (old, new) if sr for ek in sr.elements}
        before = {ek: self.value(ek) for ek in keys}
        for owner, old, _new in changes:
            for ek in old.elements if old else ():
                self.owners[ek].pop(owner, None)
                if not self.owners[ek]:
                    del self.owners[ek]
        for owner, _old, new in changes:
            for ek, v in (new.elements if new else {}).items():
                self.owners.setdefault(ek, {})[owner] = v
        deletes, adds = set(), set()
        for ek in keys:
            after = self.value(ek)
            if after != before[ek]:
                if before[ek] is not None:
                    deletes.add(ek)
                if after is not None:
                    adds.add(ek)
        return deletes, adds

    def all(self) -> set[ElementKey]:
        return set(self.owners)


def _element(ek: ElementKey, value: str | None = None) -> str:
    return f"{ek[1]}{value}" if value is not None else ek[1]


def _elements(verb: str, eks: Iterable[ElementKey], values: Elements | None, table: str = TABLE) -> list[str]:
    """One `add/delete element` command per map, elements sorted (stable output)."""
    by_map: dict[str, list[str]] = {}
    for ek in sorted(eks):
        by_map.setdefault(ek[0], []).append(_element(ek, values.value(ek) if values else None))
    return [f"{verb} element {table} {m} {{ {', '.join(items)} }}" for m, items in sorted(by_map.items())]


def _add_set(name: str, timeout: int, family: int = 4) -> str:
    f = SPECS[family]
    return f"add set {f.table} {name} {{ type {f.addr_type}; flags dynamic,timeout; timeout {timeout}s; }}"


def _rules(chains: dict[str, list[str]], table: str = TABLE) -> list[str]:
    return [f"add rule {table} {c} {r}" for c in sorted(chains) for r in chains[c]]


def static_objects(family: int = 4) -> list[str]:
    """The table, base chains (with their jumps), top-level chains and maps, each declared and
    flushed (maps are refilled by the caller): what a full sync rewrites besides the services."""
    table = SPECS[family].table
    chains = static_chains(family)
    lines = [f'add table {table} {{ comment "rules for kube-proxy"; }}']
    for name, kind, hook, prio in BASE_CHAINS:
        lines += [f"add chain {table} {name} {{ type {kind} hook {hook} priority {prio}; }}",
                  f"flush chain {table} {name}"]
    for name in chains:
        lines += [f"add chain {table} {name}", f"flush chain {table} {name}"]
    for name, (kind, typ, comment) in maps_of(family).items():
        lines += [f'add {kind} {table} {name} {{ type {typ}; comment "{comment}"; }}', f"flush {kind} {table} {name}"]
    lines += [f"add rule {table} {chain} {rule}" for chain, rule in JUMPS]
    lines += [f"add rule {table} {c} {r}" for c, rules in chains.items() for r in rules]
    return lines


def render_full(rendered: dict[str, ServiceNft], elements: Elements, kernel_chains: set[str],
                kernel_sets: dict[str, int | None], family: int = 4) -> str:
    """One transaction rewriting the whole table: every object declared and flushed, every rule and
    element written again; service chains and affinity sets nobody owns (left by a predecessor,
    or by hand) deleted at the end, after everything that referred to them is gone. Affinity sets
    are kept (established affinities survive a restart) unless their timeout changed.
    `kernel_sets`: affinity set name -> its timeout in the kernel. `family`: whose table."""
    table = SPECS[family].table
    chains = {c: r for sr in rendered.values() for c, r in sr.chains.items()}
    sets = {s: t for sr in rendered.values() for s, t in sr.affinity.items()}
    stale_chains = sorted(c for c in kernel_chains if is_service_chain(c) and c not in chains)
    stale_sets = sorted(s for s in kernel_sets if s.startswith(AFFINITY_PREFIX) and s not in sets)
    lines = static_objects(family)
    # A chain the kernel has is flushed, one it lacks is added: both lines for each would be a
    # third of the script at 10,000 services, and nft's parsing is most of a full sync's cost.
    lines += [f"flush chain {table} {c}" if c in kernel_chains else f"add chain {table} {c}" for c in sorted(chains)]
    lines += [f"flush chain {table} {c}" for c in stale_chains]
    retimed = sorted(s for s, t in sets.items() if s in kernel_sets and kernel_sets[s] != t)
    lines += [f"delete set {table} {s}" for s in retimed]
    lines += [_add_set(s, sets[s], family) for s in sorted(sets)]
    lines += _rules(chains, table)
    lines += _elements("add", elements.all(), elements, table)
    lines += [f"delete chain {table} {c}" for c in stale_chains]
    lines += [f"delete set {table} {s}" for s in stale_sets]
    return "\n".join(lines) + "\n"


# One command of a partial sync's transaction. Two writers take the same list: `ops_text` (an
# `nft -f` script) and kproxy.nftables.netlink (the nf_tables netlink messages themselves).
Op = tuple  # ("add_chain"|"flush_chain"|"delete_chain"|"delete_set", name) | ("add_set", name, timeout)
#             | ("add_rule", chain, rule) | ("delete_elements", map, [key]) | ("add_elements", map, [(key, value)])


def partial_ops(old: dict[str, ServiceNft], new: dict[str, ServiceNft], changed: Iterable[str],
                deletes: set[ElementKey], adds: set[ElementKey], elements: Elements) -> list[Op]:
    """One transaction for the service ports in `changed` (old and new renderings): their chains
    declared and rewritten, the elements that changed deleted and added, and their chains and
    sets that are no longer wanted deleted last (once no element or rule jumps to them)."""
    changed = sorted(changed)
    old_chains = {c for k in changed if k in old for c in old[k].chains}
    new_chains = {c: r for k in changed if k in new for c, r in new[k].chains.items()}
    old_sets = {s: t for k in changed if k in old for s, t in old[k].affinity.items()}
    new_sets = {s: t for k in changed if k in new for s, t in new[k].affinity.items()}
    ops: list[Op] = []
    for c in sorted(new_chains):
        ops.append(("add_chain", c))
        if c in old_chains:
            ops.append(("flush_chain", c))
    gone_chains = sorted(old_chains - new_chains.keys())
    ops += [("flush_chain", c) for c in gone_chains]  # drop their references first
    retimed = sorted(s for s, t in new_sets.items() if s in old_sets and old_sets[s] != t)
    ops += [("delete_set", s) for s in retimed]
    ops += [("add_set", s, t) for s, t in sorted(new_sets.items()) if s not in old_sets or s in retimed]
    ops += [("add_rule", c, r) for c in sorted(new_chains) for r in new_chains[c]]
    for m, keys in _by_map(deletes).items():
        ops.append(("delete_elements", m, keys))
    for m, keys in _by_map(adds).items():
        ops.append(("add_elements", m, [(k, elements.value((m, k)) or "") for k in keys]))
    ops += [("delete_chain", c) for c in gone_chains]
    ops += [("delete_set", s) for s in sorted(old_sets.keys() - new_sets.keys())]
    return ops


def _by_map(eks: Iterable[ElementKey]) -> dict[str, list[str]]:
    by_map: dict[str, list[str]] = {}
    for m, k in sorted(eks):
        by_map.setdefault(m, []).append(k)
    return dict(sorted(by_map.items()))


_OP_TEXT = {"add_chain": "add chain {t} {0}", "flush_chain": "flush chain {t} {0}",
            "delete_chain": "delete chain {t} {0}", "delete_set": "delete set {t} {0}",
            "add_rule": "add rule {t} {0} {1}"}


def ops_text(ops: list[Op], family: int = 4) -> str:
    """The transaction as an `nft -f` script (in `family`'s table)."""
    table = SPECS[family].table
    lines = []
    for kind, *args in ops:
        if kind in _OP_TEXT:
            lines.append(_OP_TEXT[kind].format(*args, t=table))
        elif kind == "add_set":
            lines.append(_add_set(args[0], args[1], family))
        elif kind == "delete_elements":
            lines.append(f"delete element {table} {args[0]} {{ {', '.join(args[1])} }}")
        elif kind == "add_elements":
            lines.append(f"add element {table} {args[0]} {{ {', '.join(k + v for k, v in args[1])} }}")
        else:
            raise ValueError(f"unknown nftables operation {kind!r}")
    return "\n".join(lines) + "\n"


def render_partial(old: dict[str, ServiceNft], new: dict[str, ServiceNft], changed: Iterable[str],
                   deletes: set[ElementKey], adds: set[ElementKey], elements: Elements, family: int = 4) -> str:
    """`partial_ops` as an `nft -f` script."""
    return ops_text(partial_ops(old, new, changed, deletes, adds, elements), family)
