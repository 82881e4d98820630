"""Pure compiler: NetworkPolicies + Pods + Namespaces -> `Compiled` (per-pod allowed peers x ports).

Semantics implemented (networking.k8s.io/v1):
- A policy selects the pods of its own namespace that match `spec.podSelector` (`{}` = all).
  It isolates them for each of its `effective_policy_types` (Ingress always; Egress when listed,
  or, without policyTypes, when it has egress rules). Isolated pods accept/send only what some
  rule of some selecting policy allows (union); pods no policy selects are not affected.
- A rule with no peers matches every address; with peers, the union of its peers. A peer is an
  ipBlock (cidr minus excepts), or pods: podSelector alone = pods of the policy's namespace,
  namespaceSelector alone = every pod of the selected namespaces, both = the selected pods in the
  selected namespaces (AND).
- A rule with no ports matches every protocol and port. A port entry is a protocol (default TCP)
  and optionally a number, a number range (port..endPort) or a name. Names resolve against the
  destination pod's container ports (same name and protocol): for ingress that is the selected
  pod itself; for egress every known destination pod is resolved on its own, so one rule can
  mean port 80 on one pod and 8080 on another. A named port never matches a non-pod address.
- Only pods with an address, not on the host network and not finished take part (as selected
  pods or as peers): host-network pods share the node's address, which policies cannot scope.
"""

from __future__ import annotations

from collections.abc import Iterable

from knet.kube.models import Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, Pod
from knet.kube.selectors import Selector
from netpolicy.model import (
    EGRESS,
    INGRESS,
    Clause,
    Compiled,
    Direction,
    Network,
    PodRules,
    PortRange,
    RuleAllow,
    block_minus_except,
    host_net,
    in_nets,
    normalize,
)

ALL_PORTS = (0, 65535)
PORT_NAMES = "port-names"  # a Pod index: its containers' port names (the pods a named port can resolve on)


def container_port_names(pod: Pod) -> list[str]:
    return sorted({p.name for c in pod.spec.containers for p in c.ports if p.name})


def eligible(pod: Pod) -> bool:
    return (bool(pod.ips) and not pod.spec.host_network
            and pod.status.phase not in ("Succeeded", "Failed"))


class _World:
    """Pods indexed by namespace, and peer address sets cached by peer content (the same
    selector shows up in many policies)."""

    def __init__(self, pods: list[Pod], ns_labels: dict[str, dict[str, str]]) -> None:
        self.pods = pods
        self.ns_labels = ns_labels
        self.by_ns: dict[str, list[Pod]] = {}
        for p in pods:
            self.by_ns.setdefault(p.namespace or "", []).append(p)
        self.namespaces = sorted(set(self.by_ns) | set(ns_labels))
        self._peers: dict[tuple[str | None, str], list[Network]] = {}

    def peer_pods(self, peer: NetworkPolicyPeer, policy_ns: str) -> list[Pod]:
        if peer.namespace_selector is not None:
            ns_sel = Selector.from_label_selector(peer.namespace_selector)
            chosen = [ns for ns in self.namespaces if ns_sel.matches(self.ns_labels.get(ns, {}))]
        else:
            chosen = [policy_ns]
        pods = [p for ns in chosen for p in self.by_ns.get(ns, ())]
        if peer.pod_selector is not None:
            pod_sel = Selector.from_label_selector(peer.pod_selector)
            pods = [p for p in pods if pod_sel.matches(p.labels)]
        return pods

    def peer_nets(self, peer: NetworkPolicyPeer, policy_ns: str) -> list[Network]:
        # Only a peer without namespaceSelector depends on the policy's namespace.
        key = (None if peer.namespace_selector is not None or peer.ip_block else policy_ns, peer.model_dump_json())
        if key not in self._peers:
            if peer.ip_block is not None:
                self._peers[key] = block_minus_except(peer.ip_block.cidr, peer.ip_block.except_)
            else:
                self._peers[key] = [host_net(ip) for pod in self.peer_pods(peer, policy_ns) for ip in pod.ips]
        return self._peers[key]


def _peer_nets(world: _World, peers: list[NetworkPolicyPeer], policy_ns: str) -> tuple[str, ...] | None:
    """Addresses a rule's peers cover; None when the rule has no peers (= every address)."""
    if not peers:
        return None
    return normalize([n for peer in peers for n in world.peer_nets(peer, policy_ns)])


def _numeric(port: NetworkPolicyPort) -> PortRange | None:
    if port.port is None:
        return PortRange(port.protocol, *ALL_PORTS)
    if isinstance(port.port, int):
        return PortRange(port.protocol, port.port, port.end_port or port.port)
    return None  # a name


def resolve_ports(ports: list[NetworkPolicyPort], pod: Pod) -> tuple[PortRange, ...]:
    """Every port entry as numbers, names looked up in `pod`'s container ports."""
    out = []
    for p in ports:
        rng = _numeric(p)
        if rng is None:
            number = pod.spec.named_port(str(p.port), p.protocol)
            rng = PortRange(p.protocol, number, number) if number is not None else None
        if rng is not None:
            out.append(rng)
    return tuple(sorted(set(out)))


def egress_clauses(destinations: Iterable[Pod], nets: tuple[str, ...] | None, ports: list[NetworkPolicyPort],
                   ) -> tuple[Clause, ...]:
    """An egress rule's clauses: numeric ports for its peers' addresses, and per destination pod
    (eligible, in key order; only those with one of the named ports matter) the named ports as
    that pod numbers them."""
    if not ports:
        return (Clause(nets, None),)
    clauses = []
    numeric = tuple(sorted({r for r in map(_numeric, ports) if r is not None}))
    if numeric:
        clauses.append(Clause(nets, numeric))
    named = [p for p in ports if isinstance(p.port, str)]
    if named:
        # Per destination pod: the same name may be a different number (or absent) on each pod.
        for pod in destinations:
            ips = tuple(ip for ip in pod.ips if nets is None or in_nets(ip, nets))
            resolved = resolve_ports(named, pod) if ips else ()
            if resolved:
                clauses.append(Clause(normalize([host_net(ip) for ip in ips]), resolved))
    return tuple(clauses)


def compile_policies(policies: Iterable[NetworkPolicy], pods: Iterable[Pod], namespaces: Iterable[Namespace],
                     node: str | None = None) -> Compiled:
    """Compile for the eligible pods on `node` (every eligible pod when node is None)."""
    all_pods = sorted((p for p in pods if eligible(p)), key=lambda p: p.key)
    world = _World(all_pods, {ns.name: dict(ns.labels) for ns in namespaces})
    policies = sorted(policies, key=lambda p: p.key)
    local = [p for p in all_pods if node is None or p.spec.node_name == node]
    by_ns: dict[str, list[tuple[NetworkPolicy, Selector]]] = {}
    for pol in policies:
        by_ns.setdefault(pol.namespace or "", []).append((pol, Selector.from_label_selector(pol.spec.pod_selector)))

    # Peer sets depend only on the rule, not on the selected pod: computed once per rule.
    peer_cache: dict[tuple[str, str, int], tuple[str, ...] | None] = {}
    egress_cache: dict[tuple[str, int], tuple[Clause, ...]] = {}

    def nets_of(pol: NetworkPolicy, which: str, i: int, peers: list[NetworkPolicyPeer]) -> tuple[str, ...] | None:
        k = (pol.key, which, i)
        if k not in peer_cache:
            peer_cache[k] = _peer_nets(world, peers, pol.namespace or "default")
        return peer_cache[k]

    compiled = Compiled(addresses={ip: p.key for p in all_pods for ip in p.ips},
                        policies=tuple(p.key for p in policies))
    for pod in local:
        ing_pols, ing_rules, eg_pols, eg_rules = [], [], [], []
        for pol, selector in by_ns.get(pod.namespace or "", ()):
            if not selector.matches(pod.labels):
                continue
            types = pol.spec.effective_policy_types
            if "Ingress" in types:
                ing_pols.append(pol.key)
                for i, rule in enumerate(pol.spec.ingress):
                    nets = nets_of(pol, INGRESS, i, rule.from_)
                    ports = resolve_ports(rule.ports, pod) if rule.ports else None
                    if ports == ():  # only names this pod does not have: the rule allows nothing
                        continue
                    ing_rules.append(RuleAllow(pol.key, i, (Clause(nets, ports),)))
            if "Egress" in types:
                eg_pols.append(pol.key)
                for i, erule in enumerate(pol.spec.egress):
                    if (pol.key, i) not in egress_cache:
                        egress_cache[(pol.key, i)] = egress_clauses(world.pods, nets_of(pol, EGRESS, i, erule.to),
                                                                    erule.ports)
                    if egress_cache[(pol.key, i)]:
                        eg_rules.append(RuleAllow(pol.key, i, egress_cache[(pol.key, i)]))
        compiled.pods[pod.key] = PodRules(
            pod.key, tuple(pod.ips), pod.spec.node_name,
            Direction(tuple(ing_pols), tuple(ing_rules)), Direction(tuple(eg_pols), tuple(eg_rules)))
    return compiled
