"""StatefulSet: pods with stable names `<set>-<ordinal>` and DNS identities
(`hostname` = the pod's name, `subdomain` = spec.serviceName, so a headless Service of that name
gives `<set>-<i>.<service>.<ns>.svc.<zone>`), made in ordinal order and removed from the top.

- OrderedReady (default): ordinal i is created only when 0..i-1 are Running and Ready; scaling
  down removes the highest ordinal first, one at a time, each fully gone before the next.
  Parallel: all missing pods at once, all extra pods at once.
- A pod that failed, or was deleted, is made again under the same name once the old one is gone
  (a terminating pod keeps its name until its node agent has stopped it).
- RollingUpdate: pods whose template revision (`controller-revision-hash`, a hash of the
  template) is not the current one are deleted from the highest ordinal down, one at a time and
  only while every other pod is Ready; each comes back with the new template. OnDelete: only
  pods deleted by someone else get the new template.
- Status: replicas, readyReplicas, availableReplicas, currentReplicas, updatedReplicas,
  currentRevision / updateRevision, observedGeneration.
No PersistentVolumeClaims (the lab has no storage) and no ControllerRevision objects: the
revision is the template's hash, recomputed from the StatefulSet itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient

from knet.kube import Informer, client
from knet.kube.models import Pod, StatefulSet
from knet.kube.recorder import NORMAL
from lab.controllers import indexes
from lab.controllers.common import controlled_by, is_available, owner_ref, template_hash
from lab.controllers.replicas import pod_from_template, status_differs
from lab.controllers.workqueue import Controller

log = logging.getLogger("lab.controllers.statefulset")

REVISION_LABEL = "controller-revision-hash"
POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"


# --- pure --------------------------------------------------------------------------------------

def revision(sts_name: str, template: dict[str, Any]) -> str:
    return f"{sts_name}-{template_hash(template)}"


def ordinal(sts_name: str, pod_name: str) -> int | None:
    m = re.fullmatch(re.escape(sts_name) + r"-(\d+)", pod_name)
    return int(m.group(1)) if m else None


def _ready(p: Pod) -> bool:
    return p.status.phase == "Running" and p.is_ready and not p.is_terminating


@dataclass
class Plan:
    create: list[int] = field(default_factory=list)  # ordinals to make
    delete: list[str] = field(default_factory=list)  # pod names to delete


def plan(replicas: int, parallel: bool, pods: dict[int, Pod], rev: str, rolling: bool) -> Plan:
    """What to do next, from the pods the set owns by ordinal."""
    out = Plan()
    # Failed pods are replaced (deleted here, made again once gone).
    for _, p in sorted(pods.items()):
        if p.status.phase == "Failed" and not p.is_terminating:
            out.delete.append(p.name)
    if out.delete:
        return out
    for i in range(replicas):
        if i in pods:
            if not parallel and not _ready(pods[i]):
                return out  # OrderedReady: wait for this one before anything above it
            continue
        out.create.append(i)
        if not parallel:
            return out
    extra = sorted((i for i in pods if i >= replicas), reverse=True)
    if extra:
        if any(pods[i].is_terminating for i in extra) and not parallel:
            return out  # one at a time: wait until the one going is gone
        out.delete += [pods[i].name for i in (extra if parallel else extra[:1]) if not pods[i].is_terminating]
        return out
    if rolling and not out.create and all(_ready(pods[i]) for i in range(replicas) if i in pods):
        stale = [i for i in sorted(pods, reverse=True) if pods[i].labels.get(REVISION_LABEL) != rev]
        if stale:
            out.delete.append(pods[stale[0]].name)
    return out


def sts_status(sts: StatefulSet, pods: Sequence[Pod], rev: str) -> dict[str, Any]:
    live = [p for p in pods if not p.is_terminating]
    updated = sum(1 for p in live if p.labels.get(REVISION_LABEL) == rev)
    status: dict[str, Any] = {
        "replicas": len(live),
        "readyReplicas": sum(1 for p in live if p.is_ready),
        "availableReplicas": sum(1 for p in live if is_available(p, sts.spec.min_ready_seconds)),
        "currentReplicas": updated if updated == len(live) else len(live) - updated,
        "updatedReplicas": updated,
        "updateRevision": rev,
        "currentRevision": rev if updated == len(live) else (sts.status.current_revision or rev),
    }
    if sts.metadata.generation is not None:
        status["observedGeneration"] = sts.metadata.generation
    return status


# --- the controller ----------------------------------------------------------------------------

class StatefulSetController(Controller):
    name = "statefulset"
    source = "statefulset-controller"
    resync = 30.0

    def __init__(self, api: ApiClient, pods: Informer[Pod], sets: Informer[StatefulSet]) -> None:
        super().__init__()
        self.api, self.pods, self.sets = api, pods, sets
        sets.add_handler(on_add=lambda o: self.enqueue(o.key), on_update=lambda _o, n: self.enqueue(n.key),
                         on_delete=lambda o: self.enqueue(o.key))
        pods.add_handler(on_add=self._on_pod, on_update=lambda _o, n: self._on_pod(n), on_delete=self._on_pod)

    def _on_pod(self, pod: Pod) -> None:
        ref = pod.metadata.controller_ref()
        if ref is not None and ref.kind == "StatefulSet":
            self.enqueue(f"{pod.namespace}/{ref.name}")

    def all_keys(self) -> list[str]:
        return [s.key for s in self.sets.list()]

    def sync(self, key: str) -> None:
        sts = self.sets.get_by_key(key)
        if sts is None or sts.is_terminating:
            return  # its pods go with it (ownerReferences)
        ns = sts.namespace or "default"
        template = sts.spec.template.to_dict()
        rev = revision(sts.name, template)
        owned = [p for p in indexes.owned(self.pods, sts) if controlled_by(p, sts)]
        by_ordinal = {i: p for p in owned if (i := ordinal(sts.name, p.name)) is not None}
        todo = plan(sts.spec.replicas, sts.spec.pod_management_policy == "Parallel", by_ordinal, rev,
                    sts.spec.update_strategy.type == "RollingUpdate")
        for i in todo.create:
            self._create(sts, ns, template, rev, i)
        for name in todo.delete:
            client.delete(self.api, "Pod", name, ns)
            log.info("StatefulSet %s: deleted pod %s", key, name)
            self.event(sts, NORMAL, "SuccessfulDelete", f"delete Pod {name} in StatefulSet {sts.name} successful",
                       "StatefulSet", "apps/v1")
        want = sts_status(sts, owned, rev)
        if status_differs(sts.status.to_dict(), want):
            client.patch_status(self.api, "StatefulSet", sts.name, want, ns)

    def _create(self, sts: StatefulSet, ns: str, template: dict[str, Any], rev: str, i: int) -> None:
        name = f"{sts.name}-{i}"
        body = pod_from_template(template, owner_ref(sts, "apps/v1", "StatefulSet"), sts.name, ns)
        meta = body["metadata"]
        del meta["generateName"]
        meta["name"] = name
        meta["labels"].update({REVISION_LABEL: rev, POD_NAME_LABEL: name})
        body["spec"]["hostname"] = name
        if sts.spec.service_name:
            body["spec"]["subdomain"] = sts.spec.service_name
        try:
            client.create(self.api, "Pod", body, ns)
        except client.ApiException as e:
            if e.status != 409:  # 409: the previous pod of that name is still terminating
                raise
            return
        log.info("StatefulSet %s/%s: created pod %s", ns, sts.name, name)
        self.event(sts, NORMAL, "SuccessfulCreate", f"create Pod {name} in StatefulSet {sts.name} successful",
                   "StatefulSet", "apps/v1")
