"""The scheduler: a pod without `spec.nodeName` is bound to a Ready node that fits it (its
`nodeSelector`, including `kubernetes.io/hostname`; no untolerated NoSchedule/NoExecute taint; not
cordoned), the one running the fewest pods, through the `pods/binding` subresource as
kube-scheduler does. Pods that fit nowhere get `PodScheduled=False` (Unschedulable) and wait for
a node change."""

from __future__ import annotations

import logging
import threading
from collections.abc import Container, Mapping, Sequence
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from knet.kube import Informer, client
from knet.kube.models import Node, Pod
from knet.kube.recorder import NORMAL, WARNING
from lab.controllers import indexes
from lab.controllers.common import now
from lab.controllers.workqueue import Controller

log = logging.getLogger("lab.controllers.scheduler")


# --- pure --------------------------------------------------------------------------------------

def tolerates(pod: Pod, taint_key: str, taint_value: str | None, effect: str) -> bool:
    for t in pod.spec.tolerations:
        if t.get("effect") and t["effect"] != effect:
            continue
        op = t.get("operator", "Equal")
        if op == "Exists" and (not t.get("key") or t["key"] == taint_key):
            return True
        if op == "Equal" and t.get("key") == taint_key and (t.get("value") or None) == (taint_value or None):
            return True
    return False


def fits(pod: Pod, node: Node) -> str | None:
    """None when the pod may run on the node, else why not (for the Unschedulable message)."""
    if not node.is_ready:
        return "node(s) were not ready"
    if node.spec.unschedulable:
        return "node(s) were unschedulable"
    labels = node.metadata.labels
    if any(labels.get(k) != v for k, v in pod.spec.node_selector.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    for taint in node.spec.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not tolerates(pod, taint.key, taint.value, taint.effect):
            return "node(s) had untolerated taint"
    return None


def choose_node(pod: Pod, nodes: Sequence[Node], load: Mapping[str, int]) -> tuple[str | None, str]:
    """(node name, "") or (None, reason). Least loaded first; ties go to the lower name, which
    together with counting assumed bindings spreads a burst of pods round-robin."""
    reasons: dict[str, int] = {}
    ok = []
    for node in nodes:
        why = fits(pod, node)
        if why is None:
            ok.append(node.name)
        else:
            reasons[why] = reasons.get(why, 0) + 1
    if not ok:
        detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        return None, f"0/{len(nodes)} nodes are available" + (f": {detail}." if detail else ".")
    return min(ok, key=lambda name: (load.get(name, 0), name)), ""


def node_load(active: Mapping[str, int], assumed: Mapping[str, str], bound: Container[str]) -> dict[str, int]:
    """Pods per node: `active` (node -> pods the cache shows there, not finished), plus the
    bindings made (`assumed`: pod key -> node) that the cache does not show yet (`bound`: the
    assumed pods it already shows on their node)."""
    load = dict(active)
    for key, node in assumed.items():
        if key not in bound:
            load[node] = load.get(node, 0) + 1
    return load


# --- the controller ----------------------------------------------------------------------------

class Scheduler(Controller):
    name = "scheduler"
    source = "default-scheduler"
    resync = 10.0

    def __init__(self, api: ApiClient, pods: Informer[Pod], nodes: Informer[Node]) -> None:
        super().__init__()
        self.api, self.pods, self.nodes = api, pods, nodes
        self._assumed: dict[str, str] = {}
        self._lock = threading.Lock()
        pods.add_handler(on_add=self._on_pod, on_update=lambda _o, n: self._on_pod(n), on_delete=self._forget)
        # A node becoming Ready (or a new one) may make waiting pods schedulable.
        nodes.add_handler(on_add=lambda _n: self._requeue_pending(), on_update=self._on_node_update)

    def _on_pod(self, pod: Pod) -> None:
        if not pod.spec.node_name and not pod.is_terminating:
            self.enqueue(pod.key)
        else:
            self._forget(pod)

    def _forget(self, pod: Pod) -> None:
        with self._lock:
            self._assumed.pop(pod.key, None)

    def _on_node_update(self, old: Node, new: Node) -> None:
        if (old.is_ready, old.spec.unschedulable, old.metadata.labels) != \
                (new.is_ready, new.spec.unschedulable, new.metadata.labels):
            self._requeue_pending()

    def _requeue_pending(self) -> None:
        self.queue.add_all(self.all_keys())

    def all_keys(self) -> list[str]:
        return self.pods.index_keys(indexes.PENDING, "")

    def sync(self, key: str) -> None:
        pod = self.pods.get_by_key(key)
        if pod is None or pod.spec.node_name or pod.is_terminating:
            return
        with self._lock:
            if key in self._assumed:
                return  # bound already; the cache has not caught up
            assumed = dict(self._assumed)
        # Every node is weighed (a placement decision is over nodes); pods are only counted, per
        # node, from the index: nothing here reads every pod.
        nodes = self.nodes.list()
        active = {n.name: len(self.pods.index_keys(indexes.ACTIVE_ON, n.name)) for n in nodes}
        bound = {k for k in assumed if (p := self.pods.get_by_key(k)) is not None and p.spec.node_name}
        node, reason = choose_node(pod, nodes, node_load(active, assumed, bound))
        ns = pod.namespace or "default"
        if node is None:
            self._unschedulable(pod, reason)
            return
        body: Any = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod.name, "namespace": ns},
                     "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            resp: Any = CoreV1Api(self.api).create_namespaced_pod_binding(
                pod.name, ns, body, _preload_content=False, _request_timeout=client.REQUEST_TIMEOUT)
            resp.release_conn()
        except ApiException as e:
            if e.status in (404, 409):  # gone, or bound by someone else meanwhile
                log.info("pod %s not bound: %s", key, e.reason)
                return
            raise
        with self._lock:
            self._assumed[key] = node
        log.info("bound pod %s to %s", key, node)
        self.event(pod, NORMAL, "Scheduled", f"Successfully assigned {ns}/{pod.name} to {node}", "Pod", "v1")

    def _unschedulable(self, pod: Pod, reason: str) -> None:
        cond = pod.status.condition("PodScheduled")
        if cond is not None and cond.status == "False" and cond.message == reason:
            return
        status: dict[str, Any] = {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                  "message": reason, "lastTransitionTime": now()}]}
        client.patch_status(self.api, "Pod", pod.name, status, pod.namespace)
        log.info("pod %s unschedulable: %s", pod.key, reason)
        self.event(pod, WARNING, "FailedScheduling", reason, "Pod", "v1")
