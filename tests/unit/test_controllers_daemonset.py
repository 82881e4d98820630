"""The DaemonSet controller's decisions (pure): which nodes run the pod (nodeSelector, required
node affinity, taints against the template's and the daemon tolerations), one pod per node,
rolling update within maxUnavailable, and the status counts kubectl reads."""

from __future__ import annotations

from knet.kube.models import DaemonSet, Node
from lab.controllers import daemonset as dsc
from tests.unit.test_controllers_replicas import pod

REV = "abc123"


def node(name: str, labels: dict | None = None, taints: list | None = None) -> Node:
    return Node.model_validate({"metadata": {"name": name, "labels": labels or {}},
                                "spec": {"taints": taints or []}})


def dpod(name: str, node_name: str, rev: str = REV, **kw) -> object:
    return pod(name, node=node_name, labels={"app": "d", dsc.REVISION_LABEL: rev}, **kw)


def test_daemon_tolerations_are_added_once() -> None:
    spec = {"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]}
    got = dsc.daemon_tolerations(spec)
    assert [(t["key"], t["effect"]) for t in got] == list(dsc.DAEMON_TOLERATIONS)
    host = dsc.daemon_tolerations({"hostNetwork": True})
    assert ("node.kubernetes.io/network-unavailable", "NoSchedule") in [(t["key"], t["effect"]) for t in host]


def test_node_selector_affinity_and_taints_decide() -> None:
    spec = {"nodeSelector": {"role": "edge"}, "tolerations": dsc.daemon_tolerations({})}
    assert dsc.node_should_run(spec, node("a", {"role": "edge"})) == (True, True)
    assert dsc.node_should_run(spec, node("b", {"role": "core"})) == (False, False)
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1", "z2"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["special"]}]}]}}}
    spec = {"affinity": affinity}
    assert dsc.node_should_run(spec, node("a", {"zone": "z2"}))[0]
    assert dsc.node_should_run(spec, node("special"))[0]
    assert not dsc.node_should_run(spec, node("other", {"zone": "z9"}))[0]
    gt = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]}}}}
    assert dsc.node_should_run(gt, node("big", {"cores": "8"}))[0]
    assert not dsc.node_should_run(gt, node("small", {"cores": "2"}))[0]
    # Not-ready nodes run daemon pods (the tolerations); a foreign NoSchedule taint keeps new
    # pods off but lets a running one stay; NoExecute evicts it.
    spec = {"tolerations": dsc.daemon_tolerations({})}
    not_ready = [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]
    assert dsc.node_should_run(spec, node("a", taints=not_ready)) == (True, True)
    assert dsc.node_should_run(spec, node("a", taints=[{"key": "gpu", "effect": "NoSchedule"}])) == (False, True)
    assert dsc.node_should_run(spec, node("a", taints=[{"key": "gpu", "effect": "NoExecute"}])) == (False, False)
    everything = {"tolerations": [{"operator": "Exists"}]}
    assert dsc.node_should_run(everything, node("a", taints=[{"key": "gpu", "effect": "NoExecute"}])) == (True, True)


def test_bind_to_node_replaces_the_node_affinity() -> None:
    spec = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}]}}}}
    dsc.bind_to_node(spec, "n2")
    assert spec["nodeName"] == "n2"
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}


def test_one_pod_per_matching_node() -> None:
    nodes = {"n1": (True, True), "n2": (True, True), "n3": (False, False)}
    got = dsc.plan(nodes, {"n3": [dpod("x", "n3")]}, REV, True, 1)
    assert got.create == ["n1", "n2"] and got.delete == ["x"]
    twins = {"n1": [dpod("young", "n1"), dpod("old", "n1", age=900)], "n2": [dpod("b", "n2")]}
    assert dsc.plan(nodes, twins, REV, True, 1) == dsc.Plan(delete=["young"])
    failed = {"n1": [dpod("f", "n1", phase="Failed")], "n2": [dpod("b", "n2")]}
    assert dsc.plan(nodes, failed, REV, True, 1) == dsc.Plan(delete=["f"]), "recreated once it is gone"
    going = {"n1": [dpod("t", "n1", deleting=True)], "n2": [dpod("b", "n2")]}
    assert dsc.plan(nodes, going, REV, True, 1) == dsc.Plan(), "waits for the terminating one"
    gone_node = {"n1": [dpod("a", "n1")], "n2": [dpod("b", "n2")], "n9": [dpod("z", "n9")]}
    assert dsc.plan(nodes, gone_node, REV, True, 1) == dsc.Plan(force_delete=["z"])


def test_rolling_update_within_max_unavailable() -> None:
    nodes = {f"n{i}": (True, True) for i in range(1, 4)}
    old = {f"n{i}": [dpod(f"p{i}", f"n{i}", rev="old")] for i in range(1, 4)}
    assert dsc.plan(nodes, old, REV, True, 1).delete == ["p1"]
    assert dsc.plan(nodes, old, REV, True, 2).delete == ["p1", "p2"]
    assert dsc.plan(nodes, old, REV, False, 1) == dsc.Plan(), "OnDelete leaves them"
    # p1 replaced but its new pod is not ready yet: nothing else goes
    rolling = dict(old, n1=[dpod("q1", "n1", ready=False)])
    assert dsc.plan(nodes, rolling, REV, True, 1) == dsc.Plan()
    rolling["n1"] = [dpod("q1", "n1")]
    assert dsc.plan(nodes, rolling, REV, True, 1).delete == ["p2"]
    # an old pod that is not available anyway is replaced at once, outside the budget
    broken = dict(old, n3=[dpod("p3", "n3", rev="old", ready=False)])
    assert dsc.plan(nodes, broken, REV, True, 1).delete == ["p3"]


def test_max_unavailable_scaling() -> None:
    assert dsc.max_unavailable(1, 3) == 1
    assert dsc.max_unavailable("50%", 3) == 2
    assert dsc.max_unavailable("10%", 3) == 1 and dsc.max_unavailable("0%", 3) == 1
    assert dsc.max_unavailable(2, 0) == 2


def test_status_counts() -> None:
    ds = DaemonSet.model_validate({"metadata": {"name": "d", "generation": 4},
                                   "spec": {"selector": {"matchLabels": {"app": "d"}}}})
    nodes = {"n1": (True, True), "n2": (True, True), "n3": (True, True), "n4": (False, False)}
    pods = {"n1": [dpod("a", "n1")], "n2": [dpod("b", "n2", rev="old", ready=False)], "n4": [dpod("c", "n4")]}
    assert dsc.ds_status(ds, nodes, pods, REV) == {
        "desiredNumberScheduled": 3, "currentNumberScheduled": 2, "numberMisscheduled": 1, "numberReady": 1,
        "updatedNumberScheduled": 1, "numberAvailable": 1, "numberUnavailable": 2, "observedGeneration": 4}
