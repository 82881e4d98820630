"""DaemonSet: one pod per node that should run it, as kube-controller-manager's daemon controller.

- A node should run the daemon pod when it matches the template's nodeSelector and required node
  affinity, and the pod tolerates the node's NoSchedule/NoExecute taints. The pod gets the
  tolerations the daemon controller adds (not-ready and unreachable NoExecute; disk, memory and
  pid pressure and unschedulable NoSchedule; network-unavailable with hostNetwork), so it starts
  on a node that is not Ready yet — the network plugin is what makes it Ready.
- Each pod is created on its node: `spec.nodeName` set (no scheduler round trip) and, as
  upstream, a required node affinity on `metadata.name` in place of any the template had; it is
  labelled `controller-revision-hash` (the template's hash) and owned by the DaemonSet, so the
  garbage collector deletes it with the set.
- A node that should not run it (a label removed, a NoExecute taint it does not tolerate) loses
  its pod; a Failed pod is deleted and made again; a second pod on a node is deleted; the pod of
  a node that is gone is deleted at once (grace 0: no agent is left to finish it; upstream's pod
  GC does that).
- RollingUpdate (maxSurge 0): an old-revision pod that is not available is deleted at once; an
  available one only while fewer than maxUnavailable nodes lack an available pod, so the next
  node goes only when the new pod of the previous one is ready. OnDelete: only pods deleted by
  someone else come back new.
- Status: desired/current/misscheduled/ready/updated/available/unavailable, observedGeneration.
No ControllerRevision objects: the revision is the template's hash, recomputed from the set.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient

from knet.kube import Informer, client
from knet.kube.models import DaemonSet, Node, Pod
from knet.kube.recorder import NORMAL
from knet.kube.selectors import Selector, SelectorError
from lab.controllers import indexes
from lab.controllers.common import controlled_by, is_available, owner_ref, template_hash
from lab.controllers.replicas import pod_from_template, status_differs
from lab.controllers.scheduler import tolerates
from lab.controllers.workqueue import Controller, Expectations

log = logging.getLogger("lab.controllers.daemonset")

REVISION_LABEL = "controller-revision-hash"
# pkg/controller/daemon/util: the tolerations every daemon pod gets (key, effect).
DAEMON_TOLERATIONS = (
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
)
HOST_NETWORK_TOLERATIONS = (("node.kubernetes.io/network-unavailable", "NoSchedule"),)


# --- pure --------------------------------------------------------------------------------------

def daemon_tolerations(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The template's tolerations plus the daemon controller's (each added once)."""
    out = [dict(t) for t in spec.get("tolerations") or []]
    extra = DAEMON_TOLERATIONS + (HOST_NETWORK_TOLERATIONS if spec.get("hostNetwork") else ())
    for key, effect in extra:
        if not any(t.get("key") == key and t.get("effect") == effect and t.get("operator") == "Exists" for t in out):
            out.append({"key": key, "operator": "Exists", "effect": effect})
    return out


def _term_matches(term: Mapping[str, Any], node: Node) -> bool:
    """One nodeSelectorTerm: every matchExpressions requirement on the labels and every matchFields
    one on `metadata.name` (the only field upstream supports)."""
    exprs, fields = term.get("matchExpressions") or [], term.get("matchFields") or []
    if not exprs and not fields:
        return False  # an empty term matches nothing
    try:
        if exprs and not Selector.from_object({"matchExpressions": _node_ops(exprs)}).matches(node.metadata.labels):
            return False
        if fields and not Selector.from_object({"matchExpressions": _node_ops(fields)}).matches(
                {"metadata.name": node.name}):
            return False
    except SelectorError:
        return False
    return all(_numeric_ok(r, node.metadata.labels) for r in exprs)


def _node_ops(reqs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Node selector requirements as label selector ones (Gt/Lt are checked by `_numeric_ok`)."""
    out = []
    for r in reqs:
        if r.get("operator") in ("Gt", "Lt"):
            out.append({"key": r.get("key"), "operator": "Exists"})
        else:
            out.append(dict(r))
    return out


def _numeric_ok(req: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    op = req.get("operator")
    if op not in ("Gt", "Lt"):
        return True
    try:
        have, want = int(labels[req["key"]]), int((req.get("values") or [""])[0])
    except (KeyError, ValueError):
        return False
    return have > want if op == "Gt" else have < want


def node_should_run(spec: Mapping[str, Any], node: Node) -> tuple[bool, bool]:
    """(should run, should continue running) of a daemon pod with pod spec `spec` (the template's,
    with the daemon tolerations) on `node`: an untolerated NoSchedule taint keeps a new pod off but
    leaves a running one; an untolerated NoExecute taint does neither."""
    labels = node.metadata.labels
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False, False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms")
    if terms is not None and not any(_term_matches(t, node) for t in terms):
        return False, False
    probe = Pod.model_validate({"metadata": {"name": "probe"}, "spec": {"tolerations": spec.get("tolerations") or []}})
    run = keep = True
    for taint in node.spec.taints:
        if taint.effect not in ("NoSchedule", "NoExecute") or tolerates(probe, taint.key, taint.value, taint.effect):
            continue
        run = False
        if taint.effect == "NoExecute":
            keep = False
    return run, keep


def bind_to_node(spec: dict[str, Any], node: str) -> None:
    """Upstream's ReplaceDaemonSetPodNodeNameNodeAffinity (the pod may run on `node` only) plus
    the binding itself (spec.nodeName), in place."""
    affinity = spec.setdefault("affinity", {})
    node_affinity = affinity.setdefault("nodeAffinity", {})
    node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}
    spec["nodeName"] = node


def max_unavailable(value: Any, desired: int) -> int:
    """maxUnavailable as a number of nodes (a percentage of the desired ones, rounded up as
    upstream's GetScaledValueFromIntOrPercent does for it); at least 1 when desired > 0, because
    with maxSurge 0 a rollout could not move otherwise."""
    if isinstance(value, str) and value.endswith("%"):
        n = math.ceil(int(value[:-1] or 0) * desired / 100)
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        n = 1
    return max(n, 1) if desired else n


@dataclass
class Plan:
    create: list[str] = field(default_factory=list)  # node names
    delete: list[str] = field(default_factory=list)  # pod names
    # Pods of nodes that are gone: nobody is left to finish a graceful deletion, so they go at
    # once (what kube-controller-manager's pod GC does with pods bound to missing nodes).
    force_delete: list[str] = field(default_factory=list)


def plan(nodes: Mapping[str, tuple[bool, bool]], pods_by_node: Mapping[str, Sequence[Pod]], rev: str,
         rolling: bool, budget: int, min_ready_seconds: int = 0) -> Plan:
    """What to do next. `nodes`: every node -> node_should_run; `pods_by_node`: the set's pods
    (terminating ones included) by node."""
    out = Plan()
    unavailable = 0
    old_available: list[Pod] = []
    for node, (run, keep) in sorted(nodes.items()):
        pods = [p for p in pods_by_node.get(node, ()) if not p.is_terminating]
        terminating = len(pods) < len(pods_by_node.get(node, ()))
        failed = [p for p in pods if p.status.phase == "Failed"]
        out.delete += [p.name for p in failed]
        pods = [p for p in pods if p.status.phase != "Failed"]
        if not (run or (keep and pods)):
            out.delete += [p.name for p in pods]
            continue
        if not pods:
            if not terminating and not failed and run:
                out.create.append(node)
            unavailable += 1
            continue
        pods.sort(key=lambda p: (p.metadata.creation_timestamp is None, p.metadata.creation_timestamp, p.name))
        out.delete += [p.name for p in pods[1:]]  # one pod per node: the oldest stays
        pod = pods[0]
        available = is_available(pod, min_ready_seconds)
        if not available:
            unavailable += 1
        if rolling and pod.metadata.labels.get(REVISION_LABEL) != rev:
            if available:
                old_available.append(pod)
            else:
                out.delete.append(pod.name)  # not serving anyway: replace it at once
    for pod in old_available:
        if unavailable >= budget:
            break
        out.delete.append(pod.name)
        unavailable += 1
    out.force_delete += [p.name for node, ps in sorted(pods_by_node.items()) if node not in nodes for p in ps]
    return out


def ds_status(ds: DaemonSet, nodes: Mapping[str, tuple[bool, bool]], pods_by_node: Mapping[str, Sequence[Pod]],
              rev: str) -> dict[str, Any]:
    desired = current = misscheduled = ready = updated = available = 0
    for node, ps in pods_by_node.items():
        live = [p for p in ps if not p.is_terminating and p.status.phase != "Failed"]
        run, _ = nodes.get(node, (False, False))
        if not live:
            continue
        if not run:
            misscheduled += 1
            continue
        current += 1
        pod = live[0]
        ready += pod.is_ready
        updated += pod.metadata.labels.get(REVISION_LABEL) == rev
        available += is_available(pod, ds.spec.min_ready_seconds)
    desired = sum(1 for run, _ in nodes.values() if run)
    status: dict[str, Any] = {
        "desiredNumberScheduled": desired, "currentNumberScheduled": current, "numberMisscheduled": misscheduled,
        "numberReady": ready, "updatedNumberScheduled": updated, "numberAvailable": available,
        "numberUnavailable": max(desired - available, 0),
    }
    if ds.metadata.generation is not None:
        status["observedGeneration"] = ds.metadata.generation
    return status


# --- the controller ----------------------------------------------------------------------------

class DaemonSetController(Controller):
    name = "daemonset"
    source = "daemonset-controller"
    resync = 30.0

    def __init__(self, api: ApiClient, pods: Informer[Pod], nodes: Informer[Node], sets: Informer[DaemonSet]) -> None:
        super().__init__()
        self.api, self.pods, self.nodes, self.sets = api, pods, nodes, sets
        self.expectations = Expectations()
        sets.add_handler(on_add=lambda o: self.enqueue(o.key), on_update=lambda _o, n: self.enqueue(n.key),
                         on_delete=self._on_set_deleted)
        pods.add_handler(on_add=self._on_pod, on_update=lambda _o, n: self._on_pod(n), on_delete=self._on_pod)
        # A node's labels, taints or existence decide which sets run there: every set looks again
        # (what upstream's nodeAdd/nodeUpdate do); a status-only update (heartbeats) changes nothing.
        nodes.add_handler(on_add=lambda _n: self._all(), on_update=self._on_node_update,
                          on_delete=lambda _n: self._all())

    def _on_set_deleted(self, ds: DaemonSet) -> None:
        self.expectations.forget(ds.key)

    def _on_pod(self, pod: Pod) -> None:
        ref = pod.metadata.controller_ref()
        if ref is not None and ref.kind == "DaemonSet":
            self.enqueue(f"{pod.namespace}/{ref.name}")

    def _on_node_update(self, old: Node, new: Node) -> None:
        if old.metadata.labels != new.metadata.labels or old.spec.taints != new.spec.taints:
            self._all()

    def _all(self) -> None:
        self.queue.add_all(self.all_keys())

    def all_keys(self) -> list[str]:
        return [s.key for s in self.sets.list()]

    def sync(self, key: str) -> None:
        ds = self.sets.get_by_key(key)
        if ds is None or ds.is_terminating:
            return  # its pods go with it (ownerReferences)
        ns = ds.namespace or "default"
        owned = [p for p in indexes.owned(self.pods, ds) if controlled_by(p, ds)]
        if not self.expectations.satisfied(key, lambda name: self.pods.get(name, ns) is not None):
            return  # a pod event will come (or the expectation times out and a resync looks again)
        template = ds.spec.template.to_dict()
        rev = template_hash(template)
        spec = copy.deepcopy(template.get("spec") or {})
        spec["tolerations"] = daemon_tolerations(spec)
        nodes = {n.name: node_should_run(spec, n) for n in self.nodes.list()}
        by_node: dict[str, list[Pod]] = {}
        for p in owned:
            by_node.setdefault(p.spec.node_name or "", []).append(p)
        strategy = ds.spec.update_strategy
        rolling = strategy.type == "RollingUpdate"
        ru = strategy.rolling_update
        budget = max_unavailable(ru.max_unavailable if ru and ru.max_unavailable is not None else 1,
                                 sum(1 for run, _ in nodes.values() if run))
        todo = plan(nodes, by_node, rev, rolling, budget, ds.spec.min_ready_seconds)
        template["spec"] = spec
        made = [self._create(ds, ns, template, rev, node) for node in todo.create]
        if made:
            self.expectations.expect(key, adds=[m for m in made if m])
        deleted = []
        force = set(todo.force_delete)
        for name in dict.fromkeys(todo.delete + todo.force_delete):
            if client.delete(self.api, "Pod", name, ns, grace_period_seconds=0 if name in force else None) is None:
                continue  # already gone
            deleted.append(name)
            log.info("DaemonSet %s: deleted pod %s", key, name)
            self.event(ds, NORMAL, "SuccessfulDelete", f"Deleted pod: {name}", "DaemonSet", "apps/v1")
        if deleted:
            self.expectations.expect(key, deletes=deleted)
        want = ds_status(ds, nodes, by_node, rev)
        if status_differs(ds.status.to_dict(), want):
            client.patch_status(self.api, "DaemonSet", ds.name, want, ns)

    def _create(self, ds: DaemonSet, ns: str, template: dict[str, Any], rev: str, node: str) -> str:
        body = pod_from_template(template, owner_ref(ds, "apps/v1", "DaemonSet"), ds.name, ns)
        body["metadata"]["labels"][REVISION_LABEL] = rev
        bind_to_node(body["spec"], node)
        name = str((client.create(self.api, "Pod", body, ns).get("metadata") or {}).get("name", ""))
        log.info("DaemonSet %s/%s: created pod %s on %s", ns, ds.name, name, node)
        self.event(ds, NORMAL, "SuccessfulCreate", f"Created pod: {name}", "DaemonSet", "apps/v1")
        return name
