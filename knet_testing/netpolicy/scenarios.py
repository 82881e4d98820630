"""Policy scenarios for the reachability matrix (x, y, z x a, b, c; see `knet_testing.netpolicy.matrix`).

Sources: the examples of the Kubernetes "Network Policies" concept page (default deny/allow
ingress and egress, the `test-network-policy` example, AND vs OR of selectors, endPort, egress
to DNS only, namespace isolation, ipBlock with except); the upstream e2e tests reconstructed from
their descriptions (`e2e-*`); edge cases of the API reference (`edge-*`). A scenario has one or
more steps (an update: the policies, pod labels or namespace labels of the next step replace
those of the previous one), each checked against the reference evaluator on all 324 cells.
Builders take a `Ctx` (pod addresses and node subnets) for ipBlock cases.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from knet_testing.netpolicy import matrix

Raw = dict[str, Any]


@dataclass(frozen=True)
class Ctx:
    ips: dict[str, str]  # pod key -> IP

    def host(self, key: str) -> str:
        return f"{self.ips[key]}/32"

    def subnet(self, key: str, prefix: int = 24) -> str:
        return str(ipaddress.ip_network(f"{self.ips[key]}/{prefix}", strict=False))


@dataclass
class Step:
    policies: Callable[[Ctx], list[Raw]]
    pod_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> full label set
    ns_labels: dict[str, dict[str, str]] = field(default_factory=dict)  # ns -> extra labels


@dataclass
class Scenario:
    name: str
    steps: list[Step]


# --- builders ----------------------------------------------------------------------------------

def sel(labels: dict[str, str] | None = None) -> Raw:
    return {"matchLabels": dict(labels)} if labels else {}


def expr(key: str, op: str, *values: str) -> Raw:
    """A LabelSelector with one matchExpressions requirement."""
    return {"matchExpressions": [{"key": key, "operator": op, **({"values": list(values)} if values else {})}]}


NS_KEY = "kubernetes.io/metadata.name"


def pods(**labels: str) -> Raw:
    return {"podSelector": sel(labels)}


def nss(**labels: str) -> Raw:
    return {"namespaceSelector": sel(labels)}


def ns_name(name: str) -> Raw:
    return {"namespaceSelector": sel({NS_KEY: name})}


def both(ns: Raw, pod: Raw) -> Raw:
    return {"namespaceSelector": ns, "podSelector": pod}


def block(cidr: str, *excepts: str) -> Raw:
    return {"ipBlock": {"cidr": cidr, **({"except": list(excepts)} if excepts else {})}}


def port(p: int | str | None = None, proto: str | None = None, end: int | None = None) -> Raw:
    out: Raw = {}
    if p is not None:
        out["port"] = p
    if proto:
        out["protocol"] = proto
    if end is not None:
        out["endPort"] = end
    return out


def rule(peers: list[Raw] | None = None, ports: list[Raw] | None = None, egress: bool = False) -> Raw:
    out: Raw = {}
    if peers is not None:
        out["to" if egress else "from"] = peers
    if ports is not None:
        out["ports"] = ports
    return out


def np(name: str, ns: str = "x", select: Raw | None = None, ingress: list[Raw] | None = None,
       egress: list[Raw] | None = None, types: list[str] | None = None) -> Raw:
    spec: Raw = {"podSelector": select if select is not None else {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types is not None:
        spec["policyTypes"] = types
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def E(*rules_: Raw) -> list[Raw]:  # egress rules: rule() writes "from", E turns it into "to"
    return [dict(r, to=r.pop("from")) if "from" in r else r for r in (dict(x) for x in rules_)]


def one(*policies: Raw | Callable[[Ctx], Raw], **kw: Any) -> list[Step]:
    """A single-step scenario from policies (dicts or Ctx -> dict)."""
    return [Step(lambda c: [p(c) if callable(p) else p for p in policies], **kw)]


A = sel({"pod": "a"})
ING, EGR, BOTH = ["Ingress"], ["Egress"], ["Ingress", "Egress"]


def catalogue() -> list[Scenario]:
    s: list[Scenario] = []

    def add(name: str, steps: list[Step]) -> None:
        s.append(Scenario(name, steps))

    # --- the documentation's examples
    # --- seed S22 (namespaces don't isolate, policies do): default deny in x, then web -> db on
    # one port (the seed's 5432 is the matrix's 80): x/b (web) reaches x/a (db) on 80 only; other
    # pods of x, and every pod of y and z, are dropped
    add("seed-s22-web-to-db", [Step(lambda c: [
        np("default-deny", types=ING),
        np("web-to-db", select=sel({"app": "db"}), ingress=[rule([pods(app="web")], [port(80, "TCP")])])],
        pod_labels={"x/a": {"pod": "a", "app": "db"}, "x/b": {"pod": "b", "app": "web"}})])
    add("docs-default-deny-ingress", one(np("default-deny-ingress", types=ING)))
    add("docs-allow-all-ingress", one(np("allow-all-ingress", ingress=[{}], types=ING)))
    add("docs-default-deny-egress", one(np("default-deny-egress", types=EGR)))
    add("docs-allow-all-egress", one(np("allow-all-egress", egress=[{}], types=EGR)))
    add("docs-default-deny-all", one(np("default-deny-all", types=BOTH)))
    add("docs-test-network-policy", [Step(lambda c: [np(
        "test-network-policy", select=A, types=BOTH,
        ingress=[rule([block("10.244.0.0/16", c.subnet("y/a")), nss(project="myproject"), pods(role="frontend")],
                      [port(80, "TCP")])],
        egress=E(rule([block(c.subnet("x/a"))], [port(81, "TCP")])))],
        pod_labels={"x/b": {"pod": "b", "role": "frontend"}}, ns_labels={"z": {"project": "myproject"}})])
    add("docs-selectors-and", [Step(lambda c: [np("and", select=A, ingress=[
        rule([both(sel({"user": "alice"}), sel({"role": "client"}))])])],
        pod_labels={"y/b": {"pod": "b", "role": "client"}, "z/b": {"pod": "b", "role": "client"}},
        ns_labels={"y": {"user": "alice"}})])
    add("docs-selectors-or", [Step(lambda c: [np("or", select=A, ingress=[
        rule([nss(user="alice"), pods(role="client")])])],
        pod_labels={"x/c": {"pod": "c", "role": "client"}, "z/b": {"pod": "b", "role": "client"}},
        ns_labels={"y": {"user": "alice"}})])
    add("docs-endport-egress", one(np("multi-port-egress", select=A, types=EGR,
                                      egress=E(rule([block("10.244.0.0/16")], [port(80, "TCP", end=81)])))))
    add("docs-endport-partial", one(np("range", types=ING, ingress=[rule(None, [port(81, "UDP", end=90)])])))
    add("docs-egress-dns-only", [Step(lambda c: [
        np("default-deny-all-egress", types=EGR),
        np("allow-dns", types=EGR, egress=E(rule([both(sel(), sel({"k8s-app": "kube-dns"}))],
                                                 [port(81, "UDP"), port(81, "TCP")])))],
        pod_labels={"z/c": {"pod": "c", "k8s-app": "kube-dns"}})])
    add("docs-namespace-isolation", one(*[np("same-ns-only", ns=n, ingress=[rule([pods()])]) for n in "xyz"]))
    add("docs-ipblock-except", one(lambda c: np("except", select=A, ingress=[
        rule([block("10.244.0.0/16", c.subnet("y/a"))])])))

    # --- named ports
    add("named-ingress-one-port", one(np("allow-81", ingress=[rule(None, [port("serve-81-tcp")])])))
    add("named-ingress-from-ns", one(np("y-80", select=A, ingress=[rule([ns_name("y")], [port("serve-80-tcp")])])))
    add("named-egress-one-port", one(np("eg-80", types=EGR, egress=E(rule(None, [port("serve-80-tcp")])))))
    add("named-per-pod-ingress", one(np("web", ingress=[rule(None, [port("web")])])))
    add("named-per-pod-egress", one(np("web-out", select=A, types=EGR, egress=E(rule(None, [port("web")])))))
    add("named-udp", one(np("udp-81", ns="y", ingress=[rule([nss()], [port("serve-81-udp", "UDP")])])))
    add("named-wrong-protocol", one(np("tcp-named-udp", select=A, ingress=[rule(None, [port("serve-80-udp")])])))
    add("named-egress-to-ipblock", one(lambda c: np("named-cidr", select=A, types=EGR, egress=E(
        rule([block(c.subnet("y/a", 16))], [port("web"), port(81, "UDP")])))))

    # --- upstream e2e cases
    add("e2e-from-pod-b-in-server-ns", one(np("x-a-allows-x-b", select=A, ingress=[rule([pods(pod="b")])])))
    add("e2e-ingress-for-target", one(np("deny-all", types=ING),
                                      np("allow-all-to-a", select=A, ingress=[rule([both(sel(), sel())])])))
    add("e2e-from-all-namespaces", one(np("from-all-ns", select=A, ingress=[rule([nss()])])))
    add("e2e-only-other-namespace", one(np("from-y", select=A, ingress=[rule([ns_name("y")])])))
    add("e2e-pod-matchexpressions", one(np("pod-in", select=A, ingress=[
        rule([{"podSelector": expr("pod", "In", "b")}])])))
    add("e2e-ns-matchexpressions", one(np("ns-in", select=A, ingress=[
        rule([{"namespaceSelector": expr(NS_KEY, "In", "y")}])])))
    not_x = expr(NS_KEY, "NotIn", "x")
    add("e2e-pod-or-namespace", one(np("or", select=A, ingress=[rule([{"namespaceSelector": not_x}, pods(pod="b")])])))
    add("e2e-pod-and-namespace", one(np("and", select=A, ingress=[rule([both(not_x, sel({"pod": "b"}))])])))
    add("e2e-multi-pods-and-namespaces", one(np("and-in", select=A, ingress=[
        rule([both(not_x, expr("pod", "In", "b", "c"))])])))
    add("e2e-any-podselectors", one(np("b-or-c", select=A, ingress=[rule([pods(pod="b"), pods(pod="c")])])))
    add("e2e-pod-in-other-namespace", one(np("y-a", select=A, ingress=[rule([both(sel({NS_KEY: "y"}), A)])])))
    add("e2e-ports", one(np("y-81", select=A, ingress=[rule([ns_name("y")], [port(81, "TCP")])])))
    add("e2e-stacked-policies", [Step(lambda c: [np("y-81", select=A, ingress=[rule([ns_name("y")], [port(81)])])]),
                                 Step(lambda c: [np("y-81", select=A, ingress=[rule([ns_name("y")], [port(81)])]),
                                                 np("y-80", select=A, ingress=[rule([ns_name("y")], [port(80)])])])])
    add("e2e-updated-policy", [Step(lambda c: [np("mutate", ingress=[{}])]), Step(lambda c: [np("mutate", ingress=[],
                                                                                            types=ING)])])
    add("e2e-updated-namespace", [Step(lambda c: [np("ns2", select=A, ingress=[rule([nss(ns2="updated")])])]),
                                  Step(lambda c: [np("ns2", select=A, ingress=[rule([nss(ns2="updated")])])],
                                       ns_labels={"y": {"ns2": "updated"}})])
    upd = {"pod": "b", "pod2": "updated"}
    add("e2e-updated-pod", [Step(lambda c: [np("pod2", select=A, ingress=[rule([pods(**upd)])])]),
                            Step(lambda c: [np("pod2", select=A, ingress=[rule([pods(**upd)])])],
                                 pod_labels={"x/b": upd})])
    add("e2e-deny-other-namespaces", one(np("same-ns", ingress=[rule([pods()])])))
    iso = {"pod": "a", "target": "isolated"}
    add("e2e-deny-updated-pod", [Step(lambda c: [np("isolate", select=sel({"target": "isolated"}), types=ING)]),
                                 Step(lambda c: [np("isolate", select=sel({"target": "isolated"}), types=ING)],
                                      pod_labels={"x/a": iso})])
    add("e2e-deny-egress-pod", one(np("deny-egress-a", select=A, types=EGR)))
    add("e2e-deny-egress-namespace", one(np("deny-egress-x", egress=[], types=EGR)))
    add("e2e-ingress-egress-together", one(np("both", select=A, types=BOTH, ingress=[rule([pods(pod="b")])],
                                              egress=E(rule(None, [port(80)])))))
    add("e2e-egress-client-side", one(
        np("to-y-a", select=A, types=EGR, egress=E(rule([both(sel({NS_KEY: "y"}), A)]))),
        *[np(f"from-x-a-{p}", ns="y", select=sel({"pod": p}), ingress=[rule([both(sel({NS_KEY: "x"}), A)])])
          for p in "ab"]))
    add("e2e-egress-pod-in-other-ns", one(np("to-y-a", select=A, types=EGR,
                                             egress=E(rule([both(sel({NS_KEY: "y"}), A)])))))
    add("e2e-ingress-protocol-only", one(np("tcp-any", select=A, ingress=[rule(None, [port(None, "TCP")])])))
    add("e2e-ingress-allow-all-wins", [Step(lambda c: [np("p80", ingress=[rule(None, [port(80)])])]),
                                       Step(lambda c: [np("p80", ingress=[rule(None, [port(80)])]),
                                                       np("all", ingress=[{}])])])
    add("e2e-egress-allow-all-wins", [Step(lambda c: [np("p80", types=EGR, egress=E(rule(None, [port(80)])))]),
                                      Step(lambda c: [np("p80", types=EGR, egress=E(rule(None, [port(80)]))),
                                                      np("all", types=EGR, egress=[{}])])])
    add("e2e-stop-after-delete", [Step(lambda c: [np("deny-all", types=BOTH)]), Step(lambda c: [])])
    add("e2e-egress-cidr", one(lambda c: np("cidr", select=A, types=EGR, egress=E(rule([block(c.host("y/b"))])))))
    add("e2e-egress-cidr-except", one(lambda c: np("cidr-except", select=A, types=EGR, egress=E(
        rule([block(c.subnet("x/b", 16), c.host("x/b"))])))))
    add("e2e-cidr-overlaps-except", [
        Step(lambda c: [np("cidr", select=A, types=EGR, egress=E(rule([block(c.subnet("x/b", 16), c.host("x/b"))])))]),
        Step(lambda c: [np("cidr", select=A, types=EGR, egress=E(rule([block(c.host("x/b"))])))])])
    add("e2e-ingress-egress-independent", [
        Step(lambda c: [np("egress-a", select=A, types=EGR, egress=[{}])]),
        Step(lambda c: [np("egress-a", select=A, types=EGR, egress=[{}]), np("deny-in-a", select=A, types=ING)])])
    add("e2e-sctp-is-not-tcp", one(np("deny", types=ING), np("sctp-81", select=A,
                                                              ingress=[rule(None, [port(81, "SCTP")])])))
    add("e2e-sctp-isolates", one(np("sctp-80", select=A, ingress=[rule(None, [port(80, "SCTP")])])))
    add("e2e-udp-is-not-tcp", one(np("udp-81", select=A, ingress=[rule(None, [port(81, "UDP")])])))
    add("e2e-ns-default-label", one(np("ns-label", select=A, ingress=[rule([ns_name("y")])])))
    add("e2e-ns-default-label-egress", one(np("not-y", select=A, types=EGR, egress=E(
        rule([{"namespaceSelector": expr(NS_KEY, "NotIn", "y")}])))))
    add("e2e-udp-ports", one(np("y-81-udp", select=A, ingress=[rule([ns_name("y")], [port(81, "UDP")])])))

    # --- edge cases of the API reference
    add("edge-egress-type-ignores-ingress-rules", one(np("eg-only", types=EGR, ingress=[rule([pods(pod="b")])],
                                                         egress=E(rule([pods()])))))
    add("edge-selects-nothing", one(np("nobody", select=sel({"pod": "nonexistent"}), types=BOTH)))
    add("edge-rules-pair-peers-with-ports", one(np("pairs", select=A, ingress=[
        rule([ns_name("y")], [port(80, "TCP")]), rule([ns_name("z")], [port(81, "UDP")])])))
    add("edge-exists-doesnotexist", [Step(lambda c: [np("exists", ns="y", select=expr("tier", "DoesNotExist"),
                                                        ingress=[rule([both(sel(), expr("tier", "Exists"))])])],
        pod_labels={"x/c": {"pod": "c", "tier": "web"}, "y/b": {"pod": "b", "tier": "db"}})])
    add("edge-all-namespaces-pod-a", one(np("a-anywhere", ns="z", ingress=[rule([both(sel(), A)])])))
    add("edge-everything-but-pods", one(np("no-pods", select=A, ingress=[rule([block("0.0.0.0/0", "10.244.0.0/16")])])))
    add("edge-mixed-ports-and-range", one(np("mixed", ns="y", types=BOTH, ingress=[
        rule([nss()], [port(80, "UDP"), port(81, "TCP")])], egress=E(rule(None, [port(80, "TCP", end=81)])))))
    add("edge-both-sides-isolated", one(
        np("x-out", types=EGR, egress=E(rule([ns_name("y")]))),
        np("y-in", ns="y", ingress=[rule([pods(pod="a"), both(sel({NS_KEY: "x"}), sel({"pod": "b"}))])])))
    add("edge-except-several", one(lambda c: np("holes", ns="z", types=ING, ingress=[rule([
        block("10.244.0.0/16", c.host("x/a"), c.host("y/b"), c.host("z/c")), block(c.host("x/a"))])])))
    return s


def build(step: Step, ctx: Ctx, nodes: dict[str, str]) -> tuple[list, list, list]:
    """(policies, pods, namespaces) model objects of one step. nodes: pod key -> node name."""
    policies = [matrix.policy(raw) for raw in step.policies(ctx)]
    pods = []
    for key, ip in ctx.ips.items():
        ns, name = key.split("/")
        pods.append(matrix.make_pod(ns, name, ip, nodes[key], step.pod_labels.get(key)))
    namespaces = [matrix.make_namespace(n, step.ns_labels.get(n)) for n in matrix.NAMESPACES]
    return policies, pods, namespaces
