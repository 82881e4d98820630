"""kproxy.model.categorize: kube-proxy's CategorizeEndpoints and no-endpoint verdicts, decided once
for every mode (table of ready/serving/terminating x internal/external policy x local/remote)."""

from __future__ import annotations

import pytest

from kproxy.model import DROP, REJECT, Endpoint, ServicePort, categorize, masquerade_external

NODE = "node1"
STATES = {  # name -> (ready, serving, terminating)
    "ready": (True, True, False),
    "serving-terminating": (False, True, True),
    "terminating": (False, False, True),
    "unready": (False, False, False),
}


def ep(state: str, where: str, n: int = 1) -> Endpoint:
    ready, serving, terminating = STATES[state]
    return Endpoint(f"10.244.{1 if where == 'local' else 2}.{n}", 80, ready=ready, serving=serving,
                    terminating=terminating, node_name=NODE if where == "local" else "node2")


def sp(eps: tuple[Endpoint, ...], internal_local: bool = False, external_local: bool = False,
       node_port: int | None = 30080) -> ServicePort:
    return ServicePort("default", "web", "", "TCP", 80, ("10.96.0.9",), node_port=node_port, endpoints=eps,
                       internal_local=internal_local, external_local=external_local)


L, R = "local", "remote"
# (endpoints, internal_local, external_local) -> (cluster, local, internal verdict, external verdict)
CASES = [
    # ready endpoints are used; terminating ones only when no endpoint is ready (and only if serving)
    ((("ready", L), ("ready", R)), False, False, (2, 1, None, None)),
    ((("ready", R), ("serving-terminating", L)), False, False, (1, 1, None, None)),
    ((("serving-terminating", R), ("serving-terminating", L, 2)), False, False, (2, 1, None, None)),
    ((("terminating", R), ("unready", L)), False, False, (0, 0, REJECT, REJECT)),
    ((), False, False, (0, 0, REJECT, REJECT)),
    # Local policies: only this node's endpoints; none here but some elsewhere: drop, not reject
    ((("ready", R),), True, False, (1, 0, DROP, None)),
    ((("ready", R),), False, True, (1, 0, None, DROP)),
    ((("ready", R),), True, True, (1, 0, DROP, DROP)),
    ((("ready", R), ("ready", L)), True, True, (2, 1, None, None)),
    # the local fallback to serving-terminating is decided per node, not cluster-wide
    ((("ready", R), ("serving-terminating", L)), False, True, (1, 1, None, None)),
    ((("ready", R), ("terminating", L)), False, True, (1, 0, None, DROP)),
    ((("unready", R),), True, True, (0, 0, REJECT, REJECT)),
]


@pytest.mark.parametrize(("states", "internal_local", "external_local", "want"), CASES)
def test_categorize(states, internal_local, external_local, want):
    eps = tuple(ep(*s) for s in states)
    c = categorize(sp(eps, internal_local, external_local), NODE)
    assert (len(c.cluster), len(c.local), c.internal_verdict, c.external_verdict) == want
    assert c.internal == (c.local if internal_local else c.cluster)
    assert c.external == (c.local if external_local else c.cluster)
    assert all(e.node_name == NODE for e in c.local)
    assert c.has_endpoints == bool(c.cluster)


def test_which_endpoint_sets_are_in_use():
    eps = (ep("ready", L), ep("ready", R))
    # internal Cluster: the cluster set; no external destinations: no local set
    c = categorize(sp(eps, node_port=None), NODE)
    assert (c.uses_cluster, c.uses_local, len(c.reachable)) == (True, False, 2)
    # internal Local without external destinations: only local endpoints are reachable
    c = categorize(sp(eps, internal_local=True, node_port=None), NODE)
    assert (c.uses_cluster, c.uses_local, c.reachable) == (False, True, c.local)
    # external Local: outside clients use the local set, pods and the node still the cluster set
    c = categorize(sp(eps, external_local=True), NODE)
    assert (c.uses_cluster, c.uses_local, len(c.reachable)) == (True, True, 2)


def test_masquerade_external_only_under_cluster_policy():
    assert masquerade_external(sp(()))
    assert not masquerade_external(sp((), external_local=True))
