"""The compiler kept up to date event by event: a changed pod or namespace re-evaluates only the
NetworkPolicy rules whose peers it enters or leaves, and only the local pods those policies select.

    inc = IncrementalCompiler(InformerWorld(pods, namespaces, policies, node="node1"))
    inc.reset()                                    # once the informers have listed
    inc.pod_changed(old, new); inc.namespace_changed(old, new); inc.policy_changed(old, new)
    compiled = inc.compiled()                      # == compile_policies(<every object>, node)

It computes what `compiler.compile_policies` computes (the reference, and what the property tests
compare it with after every event), keeping in between:
- per rule peer, its member pods (key -> addresses). A pod event tests the pod against the peers
  that can contain it: those of policies in its namespace without a namespaceSelector, and those
  with one (their namespaceSelector tested against the pod's namespace labels). A namespace event
  tests its labels against the peers with a namespaceSelector and moves that namespace's pods
  (found through the pods' namespace index) in or out.
- per egress rule with named ports, the pods that have such a port (the pods' PORT_NAMES index):
  its per-destination clauses are rebuilt when one of them changes or the rule's peers do.
- per local pod its PodRules and the policies that select it, so a rule that changed rebuilds the
  PodRules of the pods its policy selects, and a changed local pod rebuilds its own.
A policy event rebuilds that policy (it reads every namespace name when it has namespaceSelector
peers) and the local pods of its namespace. Events are applied at once to the memberships; the
rules and pods they dirty are rebuilt once per `compiled()`.

Events may arrive after the informers' caches moved on (callbacks are queued): applying an event
again, or one whose objects the state already reflects, changes nothing, so a state rebuilt by
`reset()` from the caches and the events queued before it agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from knet.kube.indexes import NAMESPACE, NODE
from knet.kube.informer import Informer
from knet.kube.models import Namespace, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, Pod
from knet.kube.selectors import Selector
from netpolicy.compiler import PORT_NAMES, egress_clauses, eligible, resolve_ports
from netpolicy.model import (
    EGRESS,
    INGRESS,
    Clause,
    Compiled,
    Direction,
    PodRules,
    RuleAllow,
    block_minus_except,
    host_net,
    normalize,
)


class World(Protocol):
    """The lookups the compiler needs (the daemon's: the informers' caches and indexes)."""

    node: str | None

    def pod(self, key: str) -> Pod | None: ...
    def pods_in(self, namespace: str) -> list[Pod]: ...
    def pods_with_port(self, name: str) -> list[Pod]: ...
    def local_pods(self) -> list[Pod]: ...
    def namespace_labels(self, name: str) -> Mapping[str, str]: ...
    def namespace_names(self) -> set[str]: ...  # policy events and reset only
    def all_pods(self) -> list[Pod]: ...  # reset only
    def policies(self) -> list[NetworkPolicy]: ...  # reset only


@dataclass
class InformerWorld:
    pods: Informer[Pod]  # indexed by NAMESPACE, NODE, PORT_NAMES
    namespaces: Informer[Namespace]
    network_policies: Informer[NetworkPolicy]
    node: str | None

    def pod(self, key: str) -> Pod | None:
        return self.pods.get_by_key(key)

    def pods_in(self, namespace: str) -> list[Pod]:
        return self.pods.by_index(NAMESPACE, namespace)

    def pods_with_port(self, name: str) -> list[Pod]:
        return self.pods.by_index(PORT_NAMES, name)

    def local_pods(self) -> list[Pod]:
        return self.pods.by_index(NODE, self.node) if self.node is not None else self.pods.list()

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        ns = self.namespaces.get(name)
        return ns.labels if ns is not None else {}

    def namespace_names(self) -> set[str]:
        # A namespace counts when its object exists or pods are in it (as the full compiler sees it).
        return set(self.namespaces.keys()) | set(self.pods.index_values(NAMESPACE))

    def all_pods(self) -> list[Pod]:
        return self.pods.list()

    def policies(self) -> list[NetworkPolicy]:
        return self.network_policies.list()


@dataclass(eq=False)
class _Rule:
    policy: str
    which: str  # INGRESS | EGRESS
    index: int
    peers: list[_Peer]
    ports: list[NetworkPolicyPort]
    named: frozenset[str] = frozenset()  # egress: port names resolved per destination pod
    nets: tuple[str, ...] | None = None
    clauses: tuple[Clause, ...] = ()  # egress
    alive: bool = True

    def rebuild(self, world: World) -> bool:
        """Recompute nets (and egress clauses) from the peers; True when they changed."""
        before = (self.nets, self.clauses)
        self.nets = None if not self.peers else normalize([n for p in self.peers for n in p.networks()])
        if self.which == EGRESS:
            self.clauses = self._egress_clauses(world)
        return (self.nets, self.clauses) != before

    def _egress_clauses(self, world: World) -> tuple[Clause, ...]:
        # Destinations: only pods with one of the named ports can resolve one (every pod would
        # give the same clauses, at the cost of reading them all).
        pods = {p.key: p for name in self.named for p in world.pods_with_port(name) if eligible(p)}
        return egress_clauses((pods[k] for k in sorted(pods)), self.nets, self.ports)


@dataclass(eq=False)
class _Peer:
    rule: _Rule
    namespace: str  # the policy's
    ns_selector: Selector | None  # None: the policy's namespace only
    pod_selector: Selector | None  # None: every pod of the selected namespaces
    block: list | None = None  # an ipBlock's networks (then no pods)
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)  # pod key -> addresses

    def networks(self) -> list:
        if self.block is not None:
            return self.block
        return [host_net(ip) for ips in self.members.values() for ip in ips]

    def in_namespace(self, namespace: str, labels: Mapping[str, str]) -> bool:
        return self.ns_selector.matches(labels) if self.ns_selector is not None else namespace == self.namespace

    def takes(self, pod: Pod) -> bool:
        return eligible(pod) and (self.pod_selector is None or self.pod_selector.matches(pod.labels))

    def update(self, key: str, pod: Pod | None) -> bool:
        """Set `key`'s membership from `pod` (None or not taken: out); True when it changed."""
        now = tuple(pod.ips) if pod is not None and self.takes(pod) else None
        if self.members.get(key) == now:
            return False
        if now is None:
            del self.members[key]
        else:
            self.members[key] = now
        return True


@dataclass(eq=False)
class _Policy:
    obj: NetworkPolicy
    selector: Selector
    ingress: list[_Rule]
    egress: list[_Rule]

    @property
    def rules(self) -> list[_Rule]:
        return self.ingress + self.egress


class IncrementalCompiler:
    def __init__(self, world: World) -> None:
        self.world = world
        self.reset(read=False)

    # --- state ---------------------------------------------------------------------------------

    def reset(self, read: bool = True) -> None:
        """Forget everything; with `read`, rebuild from the world (the daemon: once synced)."""
        self.policies: dict[str, _Policy] = {}
        self.by_namespace: dict[str, dict[str, _Policy]] = {}
        self.peers_by_namespace: dict[str, set[_Peer]] = {}  # peers without namespaceSelector
        self.ns_peers: set[_Peer] = set()  # peers with a namespaceSelector
        self.named_rules: dict[str, set[_Rule]] = {}  # port name -> egress rules resolving it
        self.pods: dict[str, PodRules] = {}  # the local pods' rules
        self.pod_policies: dict[str, set[str]] = {}  # local pod -> policies selecting it
        self.selected: dict[str, set[str]] = {}  # policy -> local pods it selects
        self.ip_owners: dict[str, set[str]] = {}
        self.addresses: dict[str, str] = {}
        self.dirty_rules: set[_Rule] = set()
        self.dirty_pods: set[str] = set()
        if read:
            for policy in sorted(self.world.policies(), key=lambda p: p.key):
                self._add_policy(policy)
            for pod in self.world.all_pods():
                self._address(pod.key, None, pod)
            self.dirty_pods |= {pod.key for pod in self.world.local_pods()}

    # --- events --------------------------------------------------------------------------------

    def pod_changed(self, old: Pod | None, new: Pod | None) -> None:
        current = new if new is not None else old
        assert current is not None
        key, ns = current.key, current.namespace or ""
        self._address(key, old, new)
        labels = self.world.namespace_labels(ns)
        for peer in (*self.peers_by_namespace.get(ns, ()), *self.ns_peers):
            member = new if new is not None and peer.in_namespace(ns, labels) else None
            if peer.update(key, member):
                self.dirty_rules.add(peer.rule)
        for name in _port_names(old) | _port_names(new):
            self.dirty_rules |= self.named_rules.get(name, set())
        if self._is_local(old) or self._is_local(new) or key in self.pods:
            self.dirty_pods.add(key)

    def namespace_changed(self, old: Namespace | None, new: Namespace | None) -> None:
        name = (new if new is not None else old).name  # type: ignore[union-attr]
        before, after = (old.labels if old else {}), (new.labels if new else {})
        for peer in self.ns_peers:
            assert peer.ns_selector is not None
            now = peer.ns_selector.matches(after)
            if now == peer.ns_selector.matches(before):
                continue
            for pod in self.world.pods_in(name):
                if peer.update(pod.key, pod if now else None):
                    self.dirty_rules.add(peer.rule)

    def policy_changed(self, old: NetworkPolicy | None, new: NetworkPolicy | None) -> None:
        current = new if new is not None else old
        assert current is not None
        self._remove_policy(current.key)
        if new is not None:
            self._add_policy(new)
        ns = current.namespace or ""
        self.dirty_pods |= {p.key for p in self.world.local_pods() if (p.namespace or "") == ns}
        self.dirty_pods |= self.selected.get(current.key, set())

    # --- output --------------------------------------------------------------------------------

    def compiled(self) -> Compiled:
        """The compiled state now. `pods` is a copy; `addresses` a read-only view of the live map
        (read it where the events are applied)."""
        rules, self.dirty_rules = self.dirty_rules, set()
        for rule in rules:
            if rule.alive and rule.rebuild(self.world):
                self.dirty_pods |= self.selected.get(rule.policy, set())
        pods, self.dirty_pods = self.dirty_pods, set()
        for key in pods:
            self._rebuild_pod(key)
        return Compiled(pods=dict(self.pods), addresses=MappingProxyType(self.addresses),
                        policies=tuple(sorted(self.policies)))

    # --- internals -----------------------------------------------------------------------------

    def _is_local(self, pod: Pod | None) -> bool:
        return pod is not None and eligible(pod) and (self.world.node is None or pod.spec.node_name == self.world.node)

    def _address(self, key: str, old: Pod | None, new: Pod | None) -> None:
        """Every eligible pod's addresses -> its key (the highest key when two share one, as the
        full compiler's sorted pass leaves it)."""
        before = set(old.ips) if old is not None and eligible(old) else set()
        after = set(new.ips) if new is not None and eligible(new) else set()
        for ip in before - after:
            owners = self.ip_owners.get(ip, set())
            owners.discard(key)
            if owners:
                self.addresses[ip] = max(owners)
            else:
                self.ip_owners.pop(ip, None)
                self.addresses.pop(ip, None)
        for ip in after:
            owners = self.ip_owners.setdefault(ip, set())
            owners.add(key)
            self.addresses[ip] = max(owners)

    def _add_policy(self, pol: NetworkPolicy) -> None:
        ns = pol.namespace or ""
        types = pol.spec.effective_policy_types
        state = _Policy(pol, Selector.from_label_selector(pol.spec.pod_selector), [], [])
        if "Ingress" in types:
            state.ingress = [self._rule(pol, INGRESS, i, r.from_, r.ports) for i, r in enumerate(pol.spec.ingress)]
        if "Egress" in types:
            state.egress = [self._rule(pol, EGRESS, i, r.to, r.ports) for i, r in enumerate(pol.spec.egress)]
        self.policies[pol.key] = state
        self.by_namespace.setdefault(ns, {})[pol.key] = state

    def _rule(self, pol: NetworkPolicy, which: str, index: int, peers: list[NetworkPolicyPeer],
              ports: list[NetworkPolicyPort]) -> _Rule:
        named = frozenset(str(p.port) for p in ports if isinstance(p.port, str)) if which == EGRESS else frozenset()
        rule = _Rule(pol.key, which, index, [], list(ports), named)
        ns = pol.namespace or "default"
        names: set[str] | None = None
        for spec in peers:
            if spec.ip_block is not None:
                rule.peers.append(_Peer(rule, ns, None, None, block_minus_except(spec.ip_block.cidr,
                                                                                  spec.ip_block.except_)))
                continue
            ns_sel = Selector.from_label_selector(spec.namespace_selector) if spec.namespace_selector is not None \
                else None
            pod_sel = Selector.from_label_selector(spec.pod_selector) if spec.pod_selector is not None else None
            peer = _Peer(rule, ns, ns_sel, pod_sel)
            if ns_sel is None:
                chosen = [ns]
                self.peers_by_namespace.setdefault(ns, set()).add(peer)
            else:
                names = self.world.namespace_names() if names is None else names
                chosen = [n for n in names if ns_sel.matches(self.world.namespace_labels(n))]
                self.ns_peers.add(peer)
            for n in chosen:
                for pod in self.world.pods_in(n):
                    peer.update(pod.key, pod)
            rule.peers.append(peer)
        for name in rule.named:
            self.named_rules.setdefault(name, set()).add(rule)
        rule.rebuild(self.world)
        return rule

    def _remove_policy(self, key: str) -> None:
        state = self.policies.pop(key, None)
        if state is None:
            return
        self.by_namespace.get(state.obj.namespace or "", {}).pop(key, None)
        for rule in state.rules:
            rule.alive = False
            for peer in rule.peers:
                self.peers_by_namespace.get(peer.namespace, set()).discard(peer)
                self.ns_peers.discard(peer)
            for name in rule.named:
                self.named_rules.get(name, set()).discard(rule)

    def _rebuild_pod(self, key: str) -> None:
        for policy in self.pod_policies.pop(key, set()):
            self.selected.get(policy, set()).discard(key)
        pod = self.world.pod(key)
        if not self._is_local(pod):
            self.pods.pop(key, None)
            return
        assert pod is not None
        ing_pols, ing_rules, eg_pols, eg_rules = [], [], [], []
        chosen = set()
        policies = self.by_namespace.get(pod.namespace or "", {})
        for pkey in sorted(policies):
            state = policies[pkey]
            if not state.selector.matches(pod.labels):
                continue
            chosen.add(pkey)
            types = state.obj.spec.effective_policy_types
            if "Ingress" in types:
                ing_pols.append(pkey)
                for rule in state.ingress:
                    ports = resolve_ports(rule.ports, pod) if rule.ports else None
                    if ports == ():  # only names this pod does not have: the rule allows nothing
                        continue
                    ing_rules.append(RuleAllow(pkey, rule.index, (Clause(rule.nets, ports),)))
            if "Egress" in types:
                eg_pols.append(pkey)
                eg_rules += [RuleAllow(pkey, r.index, r.clauses) for r in state.egress if r.clauses]
        self.pod_policies[key] = chosen
        for pkey in chosen:
            self.selected.setdefault(pkey, set()).add(key)
        self.pods[key] = PodRules(key, tuple(pod.ips), pod.spec.node_name,
                                  Direction(tuple(ing_pols), tuple(ing_rules)),
                                  Direction(tuple(eg_pols), tuple(eg_rules)))


def _port_names(pod: Pod | None) -> set[str]:
    return {p.name for c in pod.spec.containers for p in c.ports if p.name} if pod is not None else set()
