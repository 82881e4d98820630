"""Small pure helpers the controllers share: time stamps, owner references, pod states."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from knet.kube.models import KubeObject, Pod

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict[str, Any]) -> str:
    """A pod template's revision (the `controller-revision-hash` label's value): the same template
    gives the same hash in every process, any change gives another."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def owner_ref(owner: KubeObject, api_version: str, kind: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": owner.name, "uid": owner.metadata.uid or "",
            "controller": True, "blockOwnerDeletion": True}


def controlled_by(obj: KubeObject, owner: KubeObject) -> bool:
    ref = obj.metadata.controller_ref()
    return ref is not None and bool(owner.metadata.uid) and ref.uid == owner.metadata.uid


def is_active(pod: Pod) -> bool:
    """Counts toward a ReplicaSet's replicas: not terminating, not finished."""
    return not pod.is_terminating and pod.status.phase not in ("Succeeded", "Failed")


def is_available(pod: Pod, min_ready_seconds: int = 0, at: dt.datetime | None = None) -> bool:
    """Ready for at least minReadySeconds (Kubernetes' podutil.IsPodAvailable)."""
    if not pod.is_ready:
        return False
    if min_ready_seconds <= 0:
        return True
    cond = pod.status.condition("Ready")
    since = cond.last_transition_time if cond else None
    if since is None:
        return False
    at = at or dt.datetime.now(dt.UTC)
    return (at - since).total_seconds() >= min_ready_seconds


def condition(type_: str, status: bool, reason: str, message: str = "", old: list[Any] | None = None) -> dict:
    """A status condition; keeps the old lastTransitionTime when the status did not flip."""
    value = "True" if status else "False"
    since = now()
    for c in old or []:
        if c.type == type_ and c.status == value and c.last_transition_time is not None:
            since = c.last_transition_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": type_, "status": value, "reason": reason, "message": message,
            "lastUpdateTime": since, "lastTransitionTime": since}
