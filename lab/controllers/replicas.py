"""ReplicaSet and ReplicationController: keep `spec.replicas` active pods made from the template,
owned through a controller ownerReference, and report status (replicas, fullyLabeledReplicas,
readyReplicas, availableReplicas, observedGeneration).

Deleting the owner deletes its pods: the lab API server's garbage collection cascades over
ownerReferences (propagationPolicy Background, or Orphan to keep them); `lab.controllers.gc`
covers dependents left behind if that was interrupted."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes.client import ApiClient

from knet.kube import Informer, client
from knet.kube.indexes import NAMESPACE
from knet.kube.models import KubeObject, Pod, ReplicaSet, ReplicationController
from knet.kube.recorder import NORMAL, WARNING
from knet.kube.selectors import Selector
from lab.controllers import indexes
from lab.controllers.common import controlled_by, is_active, is_available, owner_ref
from lab.controllers.workqueue import Controller, Expectations

log = logging.getLogger("lab.controllers.replicas")

BURST = 100  # most pods made or removed in one sync (kube-controller-manager's burstReplicas)
KINDS = {"rs": ("ReplicaSet", "apps/v1"), "rc": ("ReplicationController", "v1")}
SOURCES = {"ReplicaSet": "replicaset-controller", "ReplicationController": "replication-controller"}


# --- pure --------------------------------------------------------------------------------------

def deletion_rank(pod: Pod) -> tuple:
    """Sort key: first the pods that cost least to lose (Kubernetes' ActivePods ordering):
    unscheduled, then pending, then not ready, then the newest."""
    created = pod.metadata.creation_timestamp
    return (bool(pod.spec.node_name), pod.status.phase == "Running", pod.is_ready,
            -(created.timestamp() if created else 0.0), pod.name)


def replica_plan(replicas: int, active: Sequence[Pod]) -> tuple[int, list[Pod]]:
    """(pods to create, pods to delete) to get from `active` to `replicas`."""
    diff = len(active) - replicas
    if diff < 0:
        return min(-diff, BURST), []
    return 0, sorted(active, key=deletion_rank)[:min(diff, BURST)]


def pod_from_template(template: dict[str, Any], owner: dict[str, Any], owner_name: str,
                      namespace: str) -> dict[str, Any]:
    meta = template.get("metadata") or {}
    pod_meta: dict[str, Any] = {"generateName": f"{owner_name}-", "namespace": namespace,
                                "labels": dict(meta.get("labels") or {}), "ownerReferences": [owner]}
    if meta.get("annotations"):
        pod_meta["annotations"] = dict(meta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": copy.deepcopy(template.get("spec") or {})}


def replica_status(generation: int | None, pods: Sequence[Pod], template_labels: dict[str, str],
                   min_ready_seconds: int = 0) -> dict[str, Any]:
    active = [p for p in pods if is_active(p)]
    status: dict[str, Any] = {
        "replicas": len(active),
        "fullyLabeledReplicas": sum(1 for p in active
                                    if all(p.metadata.labels.get(k) == v for k, v in template_labels.items())),
        "readyReplicas": sum(1 for p in active if p.is_ready),
        "availableReplicas": sum(1 for p in active if is_available(p, min_ready_seconds)),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def status_differs(current: dict[str, Any], want: dict[str, Any]) -> bool:
    return any((current.get(k) or 0) != v for k, v in want.items())


# --- the controller ----------------------------------------------------------------------------

def _selector(owner: KubeObject) -> Selector:
    if isinstance(owner, ReplicationController):
        return Selector.from_map(owner.spec.effective_selector)
    return Selector.from_label_selector(owner.spec.selector)  # type: ignore[attr-defined]


def owned_pods(owner: KubeObject, pods: Informer[Pod]) -> list[Pod]:
    return [p for p in indexes.owned(pods, owner) if controlled_by(p, owner)]


class ReplicaController(Controller):
    """Both kinds: keys are "rs/<ns>/<name>" and "rc/<ns>/<name>"."""

    name = "replicaset"
    source = "replicaset-controller"
    resync = 30.0

    def __init__(self, api: ApiClient, pods: Informer[Pod], replicasets: Informer[ReplicaSet],
                 rcs: Informer[ReplicationController]) -> None:
        super().__init__()
        self.api, self.pods = api, pods
        self.owners: dict[str, Informer[Any]] = {"rs": replicasets, "rc": rcs}
        self.expectations = Expectations()
        for prefix, inf in self.owners.items():
            enqueue = self._owner_handler(prefix)
            inf.add_handler(on_add=enqueue, on_update=self._updated(enqueue), on_delete=enqueue)
        pods.add_handler(on_add=self._on_pod, on_update=self._on_pod_update, on_delete=self._on_pod)

    def _owner_handler(self, prefix: str) -> Callable[[KubeObject], None]:
        def enqueue(owner: KubeObject) -> None:
            self.enqueue(f"{prefix}/{owner.key}")
        return enqueue

    @staticmethod
    def _updated(handle: Callable[[KubeObject], None]) -> Callable[[KubeObject, KubeObject], None]:
        return lambda _old, new: handle(new)

    def _owner_key(self, pod: Pod) -> str | None:
        ref = pod.metadata.controller_ref()
        if ref is None:
            return None
        for prefix, (kind, _) in KINDS.items():
            if ref.kind == kind:
                return f"{prefix}/{pod.namespace}/{ref.name}"
        return None

    def _on_pod(self, pod: Pod) -> None:
        key = self._owner_key(pod)
        if key:
            self.enqueue(key)
        elif pod.metadata.deletion_timestamp is None:
            # An orphan: an owner of its namespace whose selector matches may adopt it.
            for prefix, inf in self.owners.items():
                for owner in inf.by_index(NAMESPACE, pod.namespace or ""):
                    if _selector(owner).matches(pod.labels):
                        self.enqueue(f"{prefix}/{owner.key}")

    def _on_pod_update(self, old: Pod, new: Pod) -> None:
        if self._owner_key(old) != self._owner_key(new):
            self._on_pod(old)
        self._on_pod(new)

    def all_keys(self) -> list[str]:
        return [f"{p}/{o.key}" for p, inf in self.owners.items() for o in inf.list()]

    def sync(self, key: str) -> None:
        prefix, _, okey = key.partition("/")
        owner = self.owners[prefix].get_by_key(okey)
        if owner is None:
            self.expectations.forget(key)
            return
        ns = owner.namespace or "default"
        pods = owned_pods(owner, self.pods)
        if not self.expectations.satisfied(key, lambda name: self.pods.get(name, ns) is not None):
            self.queue.add_after(key, 1.0)  # our own writes are not in the cache yet
            return
        kind, api_version = KINDS[prefix]
        pods += self._adopt(owner, kind, api_version)
        active = [p for p in pods if is_active(p)]
        template = owner.spec.template
        if owner.is_terminating or template is None:
            n_create, to_delete = 0, list[Pod]()
        else:
            n_create, to_delete = replica_plan(owner.spec.replicas, active)
        if n_create:
            ref = owner_ref(owner, api_version, kind)
            body = pod_from_template(template.to_dict(), ref, owner.name, ns)
            made = []
            try:
                for _ in range(n_create):
                    made.append(client.create(self.api, "Pod", body, ns)["metadata"]["name"])
                    self.event(owner, NORMAL, "SuccessfulCreate", f"Created pod: {made[-1]}", kind, api_version,
                               SOURCES[kind])
            except client.ApiException as e:
                self.event(owner, WARNING, "FailedCreate", f"Error creating: {e.reason}", kind, api_version,
                           SOURCES[kind])
                raise
            finally:
                self.expectations.expect(key, adds=made)
            log.info("%s %s: created %d pod(s): %s", kind, okey, len(made), ", ".join(made))
        if to_delete:
            names = [p.name for p in to_delete]
            self.expectations.expect(key, deletes=names)
            for name in names:
                client.delete(self.api, "Pod", name, ns)
                self.event(owner, NORMAL, "SuccessfulDelete", f"Deleted pod: {name}", kind, api_version,
                           SOURCES[kind])
            log.info("%s %s: deleted %d pod(s): %s", kind, okey, len(names), ", ".join(names))
        labels = dict(template.metadata.labels) if template else {}
        want = replica_status(owner.metadata.generation, pods, labels, owner.spec.min_ready_seconds)
        if status_differs(owner.status.to_dict(), want):
            client.patch_status(self.api, kind, owner.name, want, ns)
        # minReadySeconds: availability changes with time alone, without an event.
        if owner.spec.min_ready_seconds and want["availableReplicas"] < want["readyReplicas"]:
            self.queue.add_after(key, 1.0)

    def _adopt(self, owner: KubeObject, kind: str, api_version: str) -> list[Pod]:
        """Orphans matching the selector get this owner (as Kubernetes' controllers adopt them)."""
        if owner.is_terminating:
            return []
        selector, adopted = _selector(owner), []
        for pod in self.pods.by_index(indexes.ORPHAN, owner.namespace or ""):
            if pod.metadata.controller_ref() is None and is_active(pod) and selector.matches(pod.labels):
                refs = [r.to_dict() for r in pod.metadata.owner_references]
                patch = {"metadata": {"ownerReferences": [*refs, owner_ref(owner, api_version, kind)],
                                      "resourceVersion": pod.metadata.resource_version}}
                try:
                    client.patch(self.api, "Pod", pod.name, patch, pod.namespace)
                except client.ApiException as e:
                    if e.status in (404, 409):
                        continue
                    raise
                log.info("%s %s adopted pod %s", kind, owner.key, pod.key)
                adopted.append(pod)
        return adopted
