"""A reference evaluator of NetworkPolicy semantics: the truth table the tests compare against.

Written from the API documentation (networking.k8s.io/v1 reference and the "Network Policies"
concept page), deliberately independent of `netpolicy.compiler`: it judges one flow at a time,
straight from the objects, with no precomputed sets, merging or named-port resolution tables.
Only label matching is shared (`knet.kube.selectors`, the one implementation of selector
semantics in the project).

The rules as the documentation states them:
1. By default pods are non-isolated. A pod is isolated for ingress (egress) when any
   NetworkPolicy in its namespace selects it (podSelector; empty selects all) and has
   "Ingress" ("Egress") in policyTypes. policyTypes, when unset, is Ingress, plus Egress if the
   policy has any egress rule.
2. Policies are additive: a connection is allowed to an isolated pod if at least one rule of
   one selecting policy allows it. A connection between two pods needs both the source's egress
   and the destination's ingress to allow it. Replies of allowed connections are implicitly
   allowed (the harness only opens new connections).
3. A rule matches when its peer list is empty or one peer matches, and its port list is empty
   or one port matches. Peers: ipBlock (in cidr, not in any except); podSelector without
   namespaceSelector: pods of the policy's own namespace; namespaceSelector without
   podSelector: all pods in matching namespaces; both: matching pods in matching namespaces.
4. A port matches on its protocol (default TCP) and, if given, the number, the range
   port..endPort, or the name of a container port of the destination pod (same protocol).
5. A pod can always reach itself; traffic from and to the pod's own node is always allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from knet.kube.models import Namespace, NetworkPolicy, Pod
from knet.kube.selectors import label_selector_matches


class World:
    def __init__(self, policies: Iterable[NetworkPolicy], pods: Iterable[Pod], namespaces: Iterable[Namespace]):
        self.policies = list(policies)
        self.ns_labels = {ns.metadata.name: ns.metadata.labels for ns in namespaces}
        self.pod_at: dict[str, Pod] = {}
        for pod in pods:
            if pod.spec.host_network or pod.status.phase in ("Succeeded", "Failed"):
                continue
            for ip in [pod.status.pod_ip, *(p.ip for p in pod.status.pod_ips)]:
                if ip:
                    self.pod_at[ip] = pod

    # -- rule 1
    @staticmethod
    def _types(policy: NetworkPolicy) -> set[str]:
        if policy.spec.policy_types:
            return set(policy.spec.policy_types)
        return {"Ingress", "Egress"} if policy.spec.egress else {"Ingress"}

    def _selecting(self, pod: Pod, kind: str) -> list[NetworkPolicy]:
        return [pol for pol in self.policies
                if pol.metadata.namespace == pod.metadata.namespace
                and label_selector_matches(pol.spec.pod_selector, pod.metadata.labels)
                and kind in self._types(pol)]

    # -- rule 3
    def _peer_matches(self, peer, policy_ns: str, ip: str) -> bool:
        if peer.ip_block is not None:
            addr = ipaddress.ip_address(ip)
            inside = lambda c: addr.version == ipaddress.ip_network(c, strict=False).version and \
                addr in ipaddress.ip_network(c, strict=False)  # noqa: E731
            return inside(peer.ip_block.cidr) and not any(inside(c) for c in peer.ip_block.except_)
        pod = self.pod_at.get(ip)
        if pod is None:
            return False
        if peer.namespace_selector is not None:
            ns_ok = label_selector_matches(peer.namespace_selector, self.ns_labels.get(pod.metadata.namespace, {}))
        else:
            ns_ok = pod.metadata.namespace == policy_ns
        pod_ok = peer.pod_selector is None or label_selector_matches(peer.pod_selector, pod.metadata.labels)
        return ns_ok and pod_ok

    # -- rule 4
    def _port_matches(self, entry, dst_ip: str, protocol: str, port: int) -> bool:
        if (entry.protocol or "TCP") != protocol:
            return False
        if entry.port is None:
            return True
        if isinstance(entry.port, int):
            last = entry.end_port if entry.end_port is not None else entry.port
            return entry.port <= port <= last
        dst = self.pod_at.get(dst_ip)
        if dst is None:
            return False
        return any(cp.name == entry.port and cp.protocol == protocol and cp.container_port == port
                   for c in dst.spec.containers for cp in c.ports)

    def _rule_matches(self, peers, ports, policy_ns: str, peer_ip: str, dst_ip: str, protocol: str,
                      port: int) -> bool:
        peer_ok = not peers or any(self._peer_matches(p, policy_ns, peer_ip) for p in peers)
        port_ok = not ports or any(self._port_matches(e, dst_ip, protocol, port) for e in ports)
        return peer_ok and port_ok

    # -- rule 2
    def _side_allows(self, pod: Pod | None, kind: str, src_ip: str, dst_ip: str, protocol: str, port: int) -> bool:
        if pod is None:
            return True
        selecting = self._selecting(pod, kind)
        if not selecting:
            return True
        for pol in selecting:
            ns = pol.metadata.namespace or "default"
            rules = pol.spec.ingress if kind == "Ingress" else pol.spec.egress
            for rule in rules:
                peers = rule.from_ if kind == "Ingress" else rule.to
                peer_ip = src_ip if kind == "Ingress" else dst_ip
                if self._rule_matches(peers, rule.ports, ns, peer_ip, dst_ip, protocol, port):
                    return True
        return False

    def allowed(self, src_ip: str, dst_ip: str, protocol: str, port: int, node_ips: Iterable[str] = ()) -> bool:
        """May a new connection from src_ip to dst_ip:port/protocol be opened?"""
        if src_ip == dst_ip:  # rule 5
            return True
        if src_ip in set(node_ips) or dst_ip in set(node_ips):
            return True
        return (self._side_allows(self.pod_at.get(src_ip), "Egress", src_ip, dst_ip, protocol, port)
                and self._side_allows(self.pod_at.get(dst_ip), "Ingress", src_ip, dst_ip, protocol, port))
