"""Deployments: one ReplicaSet per pod template (named `<deployment>-<pod-template-hash>`), rolled
as kube-controller-manager rolls them.

RollingUpdate: the new ReplicaSet grows while the total stays within replicas + maxSurge; old
ReplicaSets shrink only while available pods stay at or above replicas - maxUnavailable, so new
pods are Ready before old ones go. Recreate: old ReplicaSets go to zero, and the new one grows only
once their pods are gone. The arithmetic is pure (`rolling_plan`, `recreate_plan`) and unit-tested;
the controller feeds it the ReplicaSets and the availability of their pods from the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient

from knet.kube import Informer, client
from knet.kube.models import Deployment, Pod, ReplicaSet
from knet.kube.recorder import NORMAL
from lab.controllers import indexes
from lab.controllers.common import condition, controlled_by, is_active, is_available, owner_ref
from lab.controllers.replicas import owned_pods
from lab.controllers.workqueue import Controller, Expectations

log = logging.getLogger("lab.controllers.deployment")

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# --- pure --------------------------------------------------------------------------------------

def template_hash(template: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(template, sort_keys=True, separators=(",", ":")).encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:10])


def scaled_value(value: int | str | None, total: int, round_up: bool, default: str = "25%") -> int:
    """An IntOrString of maxSurge/maxUnavailable against `total` replicas."""
    value = default if value is None else value
    if isinstance(value, int):
        return max(value, 0)
    text = value.strip()
    if text.endswith("%"):
        pct = float(text[:-1]) * total / 100
        return max(math.ceil(pct) if round_up else math.floor(pct), 0)
    return max(int(text), 0)


def surge_and_unavailable(max_surge: int | str | None, max_unavailable: int | str | None,
                          replicas: int) -> tuple[int, int]:
    surge = scaled_value(max_surge, replicas, round_up=True)
    unavailable = scaled_value(max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # as Kubernetes: a rollout must be able to make progress
    return surge, unavailable


@dataclass
class RS:
    name: str
    replicas: int    # spec.replicas
    available: int   # available pods now
    pods: int = 0    # active pods now (for Recreate)


def rolling_plan(desired: int, surge: int, unavailable: int, new: RS, olds: list[RS]) -> dict[str, int]:
    """New spec.replicas per ReplicaSet for one step (only those that change). `olds` oldest
    first. Mirrors reconcileNewReplicaSet, then (if that did nothing) reconcileOldReplicaSets."""
    if new.replicas > desired:
        return {new.name: desired}
    if new.replicas < desired:
        total = new.replicas + sum(o.replicas for o in olds)
        room = desired + surge - total
        if room > 0:
            return {new.name: new.replicas + min(room, desired - new.replicas)}
    if sum(o.replicas for o in olds) == 0:
        return {}
    all_pods = new.replicas + sum(o.replicas for o in olds)
    min_available = desired - unavailable
    new_unavailable = max(new.replicas - new.available, 0)
    max_scale_down = all_pods - min_available - new_unavailable
    if max_scale_down <= 0:
        return {}
    out: dict[str, int] = {}
    spec = {o.name: o.replicas for o in olds}
    # Unhealthy old replicas go first: losing them costs no availability.
    cleaned = 0
    for o in olds:
        if cleaned >= max_scale_down:
            break
        unhealthy = max(spec[o.name] - o.available, 0)
        if unhealthy == 0:
            continue
        step = min(max_scale_down - cleaned, unhealthy)
        spec[o.name] -= step
        cleaned += step
        out[o.name] = spec[o.name]
    # Then healthy ones, as far as availability allows.
    available = new.available + sum(min(o.available, spec[o.name]) for o in olds)
    budget = min(available - min_available, max_scale_down - cleaned)
    for o in olds:
        if budget <= 0:
            break
        if spec[o.name] == 0:
            continue
        step = min(spec[o.name], budget)
        spec[o.name] -= step
        budget -= step
        out[o.name] = spec[o.name]
    return out


def recreate_plan(desired: int, new: RS, olds: list[RS]) -> dict[str, int]:
    out = {o.name: 0 for o in olds if o.replicas > 0}
    if out or any(o.pods for o in olds):
        return out  # the new pods wait until every old one is gone
    return {new.name: desired} if new.replicas != desired else {}


# --- the controller ----------------------------------------------------------------------------

def _revision(rs: ReplicaSet) -> int:
    try:
        return int(rs.metadata.annotations.get(REVISION, "0"))
    except ValueError:
        return 0


class DeploymentController(Controller):
    name = "deployment"
    source = "deployment-controller"
    resync = 30.0

    def __init__(self, api: ApiClient, pods: Informer[Pod], replicasets: Informer[ReplicaSet],
                 deployments: Informer[Deployment]) -> None:
        super().__init__()
        self.api, self.pods, self.rses, self.deployments = api, pods, replicasets, deployments
        self.expectations = Expectations()
        deployments.add_handler(on_add=lambda d: self.enqueue(d.key), on_update=lambda _o, d: self.enqueue(d.key),
                                on_delete=lambda d: self.enqueue(d.key))
        replicasets.add_handler(on_add=self._on_rs, on_update=lambda _o, n: self._on_rs(n), on_delete=self._on_rs)
        pods.add_handler(on_add=self._on_pod, on_update=lambda _o, n: self._on_pod(n), on_delete=self._on_pod)

    def _on_rs(self, rs: ReplicaSet) -> None:
        ref = rs.metadata.controller_ref()
        if ref is not None and ref.kind == "Deployment":
            self.enqueue(f"{rs.namespace}/{ref.name}")

    def _on_pod(self, pod: Pod) -> None:
        # Readiness of a pod moves a rollout on: pod -> its ReplicaSet -> its Deployment.
        ref = pod.metadata.controller_ref()
        if ref is not None and ref.kind == "ReplicaSet":
            rs = self.rses.get(ref.name, pod.namespace)
            if rs is not None:
                self._on_rs(rs)

    def all_keys(self) -> list[str]:
        return [d.key for d in self.deployments.list()]

    def sync(self, key: str) -> None:
        dep = self.deployments.get_by_key(key)
        if dep is None or dep.is_terminating:
            self.expectations.forget(key)
            return
        ns = dep.namespace or "default"
        if not self.expectations.satisfied(key, lambda name: self.rses.get(name, ns) is not None):
            self.queue.add_after(key, 0.5)
            return
        rses = sorted((r for r in indexes.owned(self.rses, dep) if controlled_by(r, dep)),
                      key=lambda r: (r.metadata.creation_timestamp.timestamp() if r.metadata.creation_timestamp
                                     else 0.0, r.name))
        template = dep.spec.template.model_dump(by_alias=True, exclude_defaults=True, mode="json")
        h = template_hash(template)
        new = next((r for r in rses if r.metadata.labels.get(HASH_LABEL) == h), None)
        olds = [r for r in rses if r is not new]
        pods = {r.name: [p for p in owned_pods(r, self.pods) if is_active(p)] for r in rses}
        mrs = dep.spec.min_ready_seconds

        def state(r: ReplicaSet) -> RS:
            return RS(r.name, r.spec.replicas, sum(1 for p in pods[r.name] if is_available(p, mrs)),
                      len(pods[r.name]))

        desired = dep.spec.replicas
        if not dep.spec.paused:
            strategy = dep.spec.strategy
            ru = strategy.rolling_update
            surge, unavailable = surge_and_unavailable(ru.max_surge if ru else None,
                                                       ru.max_unavailable if ru else None, desired)
            new_state = state(new) if new is not None else RS(f"{dep.name}-{h}", 0, 0)
            old_states = [state(r) for r in olds]
            if strategy.type == "Recreate":
                plan = recreate_plan(desired, new_state, old_states)
            else:
                plan = rolling_plan(desired, surge, unavailable, new_state, old_states)
            if new is None:
                revision = max([_revision(r) for r in rses] + [0]) + 1
                self._create_rs(dep, h, plan.pop(new_state.name, 0), revision)
                return  # the next sync (on the ReplicaSet's event) goes on from the cache
            for name, replicas in plan.items():
                client.patch(self.api, "ReplicaSet", name, {"spec": {"replicas": replicas}}, ns)
                log.info("deployment %s: scaled %s to %d", key, name, replicas)
                was = next((r.spec.replicas for r in rses if r.name == name), 0)
                self._scaled(dep, name, was, replicas)
            self._bump_revision(dep, new, olds)
            self._cleanup(dep, olds, pods)
        self._status(dep, new, rses, pods, surge_and_unavailable(
            *((dep.spec.strategy.rolling_update.max_surge, dep.spec.strategy.rolling_update.max_unavailable)
              if dep.spec.strategy.rolling_update else (None, None)), desired)[1])

    def _create_rs(self, dep: Deployment, h: str, replicas: int, revision: int) -> None:
        ns = dep.namespace or "default"
        template = dep.spec.template.to_dict()
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**tmeta.get("labels", {}), HASH_LABEL: h}
        selector = dep.spec.selector.to_dict()
        selector["matchLabels"] = {**selector.get("matchLabels", {}), HASH_LABEL: h}
        meta = {"name": f"{dep.name}-{h}", "namespace": ns, "labels": dict(tmeta["labels"]),
                "annotations": {REVISION: str(revision)}, "ownerReferences": [owner_ref(dep, "apps/v1", "Deployment")]}
        body: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta, "spec": {
            "replicas": replicas, "minReadySeconds": dep.spec.min_ready_seconds, "selector": selector,
            "template": template}}
        try:
            client.create(self.api, "ReplicaSet", body, ns)
        except client.ApiException as e:
            if e.status != 409:
                raise
            self.queue.add_after(dep.key, 0.5)  # exists but not in our cache yet
            return
        self.expectations.expect(dep.key, adds=[body["metadata"]["name"]])
        log.info("deployment %s: created replicaset %s (revision %d, %d replicas)", dep.key,
                 body["metadata"]["name"], revision, replicas)
        if replicas:
            self._scaled(dep, body["metadata"]["name"], 0, replicas)

    def _scaled(self, dep: Deployment, rs: str, was: int, now: int) -> None:
        direction = "up" if now > was else "down"
        self.event(dep, NORMAL, "ScalingReplicaSet", f"Scaled {direction} replica set {rs} from {was} to {now}",
                   "Deployment", "apps/v1")

    def _bump_revision(self, dep: Deployment, new: ReplicaSet, olds: list[ReplicaSet]) -> None:
        """A rollback to an old template makes that ReplicaSet the newest revision again."""
        top = max([_revision(r) for r in olds] + [0])
        rev = _revision(new)
        if rev <= top:
            rev = top + 1
            client.patch(self.api, "ReplicaSet", new.name, {"metadata": {"annotations": {REVISION: str(rev)}}},
                         new.namespace)
        if dep.metadata.annotations.get(REVISION) != str(rev):
            client.patch(self.api, "Deployment", dep.name, {"metadata": {"annotations": {REVISION: str(rev)}}},
                         dep.namespace)

    def _cleanup(self, dep: Deployment, olds: list[ReplicaSet], pods: dict[str, list[Pod]]) -> None:
        """revisionHistoryLimit: scaled-down old ReplicaSets beyond it are deleted, oldest first."""
        limit = dep.spec.revision_history_limit if dep.spec.revision_history_limit is not None else 10
        idle = [r for r in olds if r.spec.replicas == 0 and not pods[r.name] and not r.status.replicas]
        for r in idle[:max(len(idle) - limit, 0)]:
            client.delete(self.api, "ReplicaSet", r.name, r.namespace)

    def _status(self, dep: Deployment, new: ReplicaSet | None, rses: list[ReplicaSet],
                pods: dict[str, list[Pod]], unavailable: int) -> None:
        mrs = dep.spec.min_ready_seconds
        every = [p for r in rses for p in pods[r.name]]
        available = sum(1 for p in every if is_available(p, mrs))
        updated = len(pods[new.name]) if new is not None else 0
        desired = dep.spec.replicas
        complete = new is not None and updated == desired and len(every) == desired and available >= desired
        old = dep.status.conditions
        want: dict[str, Any] = {
            "observedGeneration": dep.metadata.generation or 0,
            "replicas": len(every), "updatedReplicas": updated,
            "readyReplicas": sum(1 for p in every if p.is_ready), "availableReplicas": available,
            "unavailableReplicas": max(desired - available, 0),
            "conditions": [
                condition("Available", available >= desired - unavailable,
                          "MinimumReplicasAvailable" if available >= desired - unavailable
                          else "MinimumReplicasUnavailable",
                          "Deployment has minimum availability." if available >= desired - unavailable
                          else "Deployment does not have minimum availability.", old),
                condition("Progressing", True, "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                          f'ReplicaSet "{new.name if new else ""}" '
                          + ("has successfully progressed." if complete else "is progressing."), old),
            ],
        }
        cur = dep.status.to_dict()
        same = all((cur.get(k) or 0) == v for k, v in want.items() if k != "conditions") and \
            [(c["type"], c["status"], c["reason"]) for c in want["conditions"]] == \
            [(c.type, c.status, c.reason) for c in old]
        if not same:
            client.patch_status(self.api, "Deployment", dep.name, want, dep.namespace)
        if mrs and available < sum(1 for p in every if p.is_ready):
            self.queue.add_after(dep.key, 1.0)
