"""The incremental compiler against the full one: after every event (pods, namespaces, policies
added, changed, deleted, relabelled, finished, moved between nodes) its output equals
`compile_policies` over every object; and one pod or namespace change re-evaluates only the
policies concerned, without scanning any informer."""

from __future__ import annotations

import random

import pytest

from knet.kube.indexes import NAMESPACE, NODE, by_namespace, by_node
from knet.kube.informer import Informer
from knet.kube.models import Namespace, NetworkPolicy, Pod
from knet_testing.netpolicy import matrix
from knet_testing.netpolicy.randomized import random_policies
from knet_testing.netpolicy.scenarios import NS_KEY, Ctx, np, pods, port, rule, sel
from netpolicy.compiler import PORT_NAMES, compile_policies, container_port_names
from netpolicy.incremental import IncrementalCompiler, InformerWorld
from tests.informer_feed import feed, remove, scans

NODE_NAME = "node1"
IPS = [f"10.244.{n}.{h}" for n in (1, 2) for h in range(2, 6)]
CTX = Ctx({f"{ns}/{p}": IPS[i % len(IPS)] for i, (ns, p) in enumerate((n, q) for n in "xyz" for q in "abc")})


def informers():
    pod_inf = Informer(None, Pod, indexers={NAMESPACE: by_namespace, NODE: by_node,  # type: ignore[arg-type]
                                            PORT_NAMES: container_port_names})
    return pod_inf, Informer(None, Namespace), Informer(None, NetworkPolicy)  # type: ignore[arg-type]


def connect(inc: IncrementalCompiler, pod_inf, ns_inf, pol_inf) -> None:
    """The informers' events straight into the compiler (the daemon hops onto its loop first)."""
    for inf, fn in ((pod_inf, inc.pod_changed), (ns_inf, inc.namespace_changed), (pol_inf, inc.policy_changed)):
        inf.add_handler(on_add=lambda new, fn=fn: fn(None, new), on_update=fn,
                        on_delete=lambda old, fn=fn: fn(old, None))


def random_pod(rng: random.Random) -> Pod:
    ns, name = rng.choice("xyz"), rng.choice("abcd")
    roll = rng.random()
    status: dict = {"phase": "Succeeded" if roll < 0.08 else "Running"}
    if roll > 0.1:  # else: no address yet
        ip = rng.choice(IPS)
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    labels = {"pod": rng.choice("abc")}
    if rng.random() < 0.3:
        labels["extra"] = "yes"
    spec: dict = {"containers": matrix.container_ports(rng.choice("abc"))}
    if rng.random() < 0.9:
        spec["nodeName"] = rng.choice(["node1", "node1", "node2"])
    if rng.random() < 0.05:
        spec["hostNetwork"] = True
    return Pod.model_validate({"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec,
                               "status": status})


def random_namespace(rng: random.Random) -> Namespace:
    name = rng.choice("xyz")
    return matrix.make_namespace(name, {"ns": rng.choice("xyz")} if rng.random() < 0.4 else None)


def random_policy(rng: random.Random) -> NetworkPolicy:
    raw = rng.choice(random_policies(rng.randrange(10**6), CTX))
    raw["metadata"] = {"name": f"p{rng.randrange(4)}", "namespace": rng.choice("xyz")}
    return matrix.policy(raw)


@pytest.mark.parametrize("seed", range(25))
def test_incremental_equals_full_compile_after_every_event(seed):
    rng = random.Random(seed)
    pod_inf, ns_inf, pol_inf = informers()
    inc = IncrementalCompiler(InformerWorld(pod_inf, ns_inf, pol_inf, NODE_NAME))
    connect(inc, pod_inf, ns_inf, pol_inf)
    for ns in "xyz":
        feed(ns_inf, matrix.make_namespace(ns))
    for step in range(80):
        op = rng.choice(["pod", "pod", "pod", "pod-delete", "namespace", "namespace-delete", "policy", "policy",
                         "policy-delete"])
        if op == "pod":
            feed(pod_inf, random_pod(rng))
        elif op == "namespace":
            feed(ns_inf, random_namespace(rng))
        elif op == "policy":
            feed(pol_inf, random_policy(rng))
        else:
            inf = {"pod-delete": pod_inf, "namespace-delete": ns_inf, "policy-delete": pol_inf}[op]
            keys = sorted(inf._store.objects)
            if keys:
                remove(inf, inf.get_by_key(rng.choice(keys)))
        want = compile_policies(pol_inf.list(), pod_inf.list(), ns_inf.list(), node=NODE_NAME)
        got = inc.compiled()
        assert got.pods == want.pods, (step, op)
        assert dict(got.addresses) == want.addresses and got.policies == want.policies, (step, op)
    fresh = IncrementalCompiler(InformerWorld(pod_inf, ns_inf, pol_inf, NODE_NAME))
    fresh.reset()
    assert fresh.compiled().pods == inc.compiled().pods


def test_events_applied_twice_or_late_change_nothing():
    pod_inf, ns_inf, pol_inf = informers()
    inc = IncrementalCompiler(InformerWorld(pod_inf, ns_inf, pol_inf, NODE_NAME))
    for ns in "xy":
        feed(ns_inf, matrix.make_namespace(ns))
    a = matrix.make_pod("x", "a", "10.244.1.2", NODE_NAME)
    b = matrix.make_pod("y", "b", "10.244.2.2", "node2")
    feed(pod_inf, a)
    feed(pod_inf, b)
    feed(pol_inf, matrix.policy(np("p", select=sel({"pod": "a"}), ingress=[rule([{"namespaceSelector": {}}])])))
    inc.reset()  # built from the caches; the same events arrive afterwards (queued callbacks)
    first = inc.compiled()
    inc.pod_changed(None, a)
    inc.pod_changed(None, b)
    inc.namespace_changed(None, ns_inf.get("y"))
    inc.policy_changed(None, pol_inf.get("p", "x"))
    assert inc.compiled() == first


def test_one_pod_or_namespace_change_touches_only_what_selects_it():
    pod_inf, ns_inf, pol_inf = informers()
    inc = IncrementalCompiler(InformerWorld(pod_inf, ns_inf, pol_inf, NODE_NAME))
    connect(inc, pod_inf, ns_inf, pol_inf)
    for ns in "xyz":
        feed(ns_inf, matrix.make_namespace(ns))
    for i, ns in enumerate("xyz"):
        for j, name in enumerate("abc"):
            feed(pod_inf, matrix.make_pod(ns, name, f"10.244.{j + 1}.{i + 2}", "node1" if j != 1 else "node2"))
    # p-x: pods of x reach x/a; p-y: pods of namespaces labelled ns=z reach y/a on the "web" port.
    feed(pol_inf, matrix.policy(np("p-x", "x", select=sel({"pod": "a"}), ingress=[rule([pods()])])))
    feed(pol_inf, matrix.policy(np("p-y", "y", select=sel({"pod": "a"}),
                                   ingress=[rule([{"namespaceSelector": sel({"ns": "z"})}], [port("web")])])))
    inc.compiled()
    before = scans((pod_inf, ns_inf, pol_inf))
    rebuilt: list[str] = []
    rebuild_pod = inc._rebuild_pod
    inc._rebuild_pod = lambda key: rebuilt.append(key) or rebuild_pod(key)  # type: ignore[method-assign]

    feed(pod_inf, matrix.make_pod("x", "c", "10.244.1.9", "node1", {"pod": "c"}))  # x/c moves: a peer of p-x
    c = inc.compiled()
    assert "10.244.1.9/32" in c.pods["x/a"].ingress.rules[0].clauses[0].nets
    assert sorted(rebuilt) == ["x/a", "x/c"]  # the pod p-x selects, and x/c itself (a local pod)
    rebuilt.clear()

    feed(pod_inf, matrix.make_pod("y", "b", "10.244.2.9", "node2"))  # a remote pod no rule refers to
    inc.compiled()
    assert rebuilt == []

    feed(ns_inf, matrix.make_namespace("x", {"ns": "z"}))  # x now counts as "ns=z" for p-y
    c = inc.compiled()
    assert rebuilt == ["y/a"]
    assert "10.244.1.2/32" in c.pods["y/a"].ingress.rules[0].clauses[0].nets
    assert scans((pod_inf, ns_inf, pol_inf)) == before

    want = compile_policies(pol_inf.list(), pod_inf.list(), ns_inf.list(), node=NODE_NAME)
    assert c.pods == want.pods


def test_namespace_label_selector_sees_the_namespace_name_label():
    pod_inf, ns_inf, pol_inf = informers()
    inc = IncrementalCompiler(InformerWorld(pod_inf, ns_inf, pol_inf, NODE_NAME))
    connect(inc, pod_inf, ns_inf, pol_inf)
    feed(pod_inf, matrix.make_pod("x", "a", "10.244.1.2", NODE_NAME))
    feed(pod_inf, matrix.make_pod("y", "a", "10.244.1.3", NODE_NAME))
    feed(pol_inf, matrix.policy(np("p", "x", ingress=[rule([{"namespaceSelector": sel({NS_KEY: "y"})}])])))
    assert inc.compiled().pods["x/a"].ingress.rules[0].clauses[0].nets == ()  # no Namespace objects yet
    feed(ns_inf, matrix.make_namespace("y"))
    assert inc.compiled().pods["x/a"].ingress.rules[0].clauses[0].nets == ("10.244.1.3/32",)
