"""ReplicaSet/RC pure logic: how many pods to make, which to delete, the pod made from a template,
status; the scheduler's choice."""

from __future__ import annotations

import datetime as dt

from knet.kube.models import Node, Pod
from lab.controllers import replicas, scheduler


def pod(name: str, node: str | None = "n1", ready: bool = True, phase: str = "Running", age: int = 100,
        labels: dict | None = None, deleting: bool = False) -> Pod:
    created = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) - dt.timedelta(seconds=age)
    meta = {"name": name, "namespace": "default", "uid": f"u-{name}", "labels": labels or {"app": "a"},
            "creationTimestamp": created.isoformat()}
    if deleting:
        meta["deletionTimestamp"] = created.isoformat()
    return Pod.model_validate({
        "metadata": meta, "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def test_plan_creates_the_missing_pods() -> None:
    assert replicas.replica_plan(3, [pod("a")]) == (2, [])
    assert replicas.replica_plan(1, [pod("a")]) == (0, [])


def test_plan_deletes_the_cheapest_pods_first() -> None:
    active = [pod("old-ready", age=500), pod("new-ready", age=10), pod("not-ready", ready=False),
              pod("unscheduled", node=None, phase="Pending", ready=False), pod("pending", phase="Pending", ready=False)]
    n, victims = replicas.replica_plan(2, active)
    assert n == 0
    assert [p.name for p in victims] == ["unscheduled", "pending", "not-ready"]
    _, victims = replicas.replica_plan(1, active)
    assert [p.name for p in victims][-1] == "new-ready"  # among ready pods the newest goes first


def test_pod_from_template_carries_labels_owner_and_spec() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u1", "controller": True}
    tmpl = {"metadata": {"labels": {"app": "web"}, "annotations": {"x": "y"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    body = replicas.pod_from_template(tmpl, owner, "web-1", "prod")
    assert body["metadata"]["generateName"] == "web-1-"
    assert body["metadata"]["namespace"] == "prod"
    assert body["metadata"]["labels"] == {"app": "web"} and body["metadata"]["annotations"] == {"x": "y"}
    assert body["metadata"]["ownerReferences"] == [owner]
    assert body["spec"] == tmpl["spec"] and body["spec"] is not tmpl["spec"]


def test_status_counts_active_ready_available() -> None:
    pods = [pod("a"), pod("b", ready=False), pod("c", phase="Succeeded"), pod("d", deleting=True),
            pod("e", labels={"other": "x"})]
    st = replicas.replica_status(4, pods, {"app": "a"})
    assert st == {"replicas": 3, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                  "observedGeneration": 4}
    assert not replicas.status_differs({"replicas": 3, "fullyLabeledReplicas": 2, "readyReplicas": 2,
                                        "availableReplicas": 2, "observedGeneration": 4}, st)
    assert replicas.status_differs({}, st)


def node(name: str, ready: bool = True, labels: dict | None = None, unschedulable: bool = False,
         taints: list | None = None) -> Node:
    return Node.model_validate({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})


def test_scheduler_spreads_by_pod_count_and_honours_node_selector() -> None:
    nodes = [node("node1"), node("node2"), node("node3", ready=False)]
    p = pod("x", node=None)
    assert scheduler.choose_node(p, nodes, {"node1": 2, "node2": 1}) == ("node2", "")
    assert scheduler.choose_node(p, nodes, {}) == ("node1", "")  # a tie: the lower name
    pinned = p.model_copy(update={"spec": p.spec.model_copy(update={"node_selector":
                                                                     {"kubernetes.io/hostname": "node3"}})})
    name, why = scheduler.choose_node(pinned, nodes, {})
    assert name is None and why.startswith("0/3 nodes are available")


def test_scheduler_skips_cordoned_and_tainted_nodes_unless_tolerated() -> None:
    taint = [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]
    nodes = [node("a", unschedulable=True), node("b", taints=taint)]
    p = pod("x", node=None)
    assert scheduler.choose_node(p, nodes, {})[0] is None
    tol = p.model_copy(update={"spec": p.spec.model_copy(update={"tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]})})
    assert scheduler.choose_node(tol, nodes, {})[0] == "b"


def test_node_load_counts_assumed_bindings_once() -> None:
    # default/a is bound in the cache already (counted in `active`); default/z is not yet
    assert scheduler.node_load({"n1": 1}, {"default/a": "n1", "default/z": "n2"}, {"default/a"}) == \
        {"n1": 1, "n2": 1}
