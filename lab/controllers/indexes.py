"""The informer indexes the controllers find objects by (knet.kube's named indexes, client-go's
Indexers), so that handling one change reads the objects it concerns and never a whole cache:
a pod event finds the Services selecting it by their selector terms, a sync finds a Service's
pods by their labels and its slices by the standard SERVICE index, an owner finds what it owns by
uid, the scheduler counts a node's pods from that node's entry.

Values are namespace-qualified where the lookup is per namespace ("ns/key=value"), so one
index serves every namespace. `knet.kube.indexes` has the standard NAMESPACE, SERVICE and NODE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from knet.kube import Informer
from knet.kube.indexes import NAMESPACE, STANDARD, IndexFunc
from knet.kube.models import KubeObject, Pod, Service
from knet.kube.selectors import Selector

M = TypeVar("M", bound=KubeObject)

OWNER = "owner-uid"                # any object, by the uid of each of its owners
LABEL = "label"                    # pods, by "ns/key=value" for each label
SELECTOR = "selector-term"         # Services with a selector, by "ns/key=value" for each term of it
ORPHAN = "orphan"                  # live pods without a controller, by namespace (to adopt)
PENDING = "pending"                # pods waiting for a node, under "" (to schedule)
ACTIVE_ON = "active-on-node"       # pods that count toward a node's load, by node
LOADBALANCER = "loadbalancer"      # Services that want or hold a LoadBalancer address, under ""


def by_owner(obj: KubeObject) -> tuple[str, ...]:
    return tuple(r.uid for r in obj.metadata.owner_references if r.uid)


def _terms(ns: str | None, labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{ns}/{k}={v}" for k, v in labels.items())


def by_label(obj: KubeObject) -> tuple[str, ...]:
    return _terms(obj.metadata.namespace, obj.metadata.labels)


def by_selector(svc: Service) -> tuple[str, ...]:
    return _terms(svc.metadata.namespace, svc.spec.selector or {})


def by_orphan(pod: Pod) -> tuple[str, ...]:
    live = not pod.is_terminating and pod.status.phase not in ("Succeeded", "Failed")
    return (pod.metadata.namespace or "",) if live and pod.metadata.controller_ref() is None else ()


def by_pending(pod: Pod) -> tuple[str, ...]:
    return ("",) if not pod.spec.node_name and not pod.is_terminating else ()


def by_active_node(pod: Pod) -> tuple[str, ...]:
    node = pod.spec.node_name
    return (node,) if node and pod.status.phase not in ("Succeeded", "Failed") else ()


def by_loadbalancer(svc: Service) -> tuple[str, ...]:
    wants = svc.spec.type == "LoadBalancer" and not svc.spec.load_balancer_class
    return ("",) if wants or svc.status.load_balancer.ingress else ()


POD_INDEXES: dict[str, IndexFunc] = {NAMESPACE: STANDARD[NAMESPACE], OWNER: by_owner, LABEL: by_label,
                                     ORPHAN: by_orphan, PENDING: by_pending, ACTIVE_ON: by_active_node}
SERVICE_INDEXES: dict[str, IndexFunc] = {NAMESPACE: STANDARD[NAMESPACE], SELECTOR: by_selector,
                                         LOADBALANCER: by_loadbalancer}
OWNED_INDEXES: dict[str, IndexFunc] = {NAMESPACE: STANDARD[NAMESPACE], OWNER: by_owner}


def owned(informer: Informer[M], owner: KubeObject) -> list[M]:
    """What `owner` owns (any ownerReference to its uid), from the OWNER index."""
    return informer.by_index(OWNER, owner.metadata.uid) if owner.metadata.uid else []


def selected(informer: Informer[M], namespace: str | None, selector: Selector) -> list[M]:
    """The objects of `namespace` (LABEL-indexed) that `selector` matches: read from the
    smallest entry among its single-value terms (`key=value`, `key in (value)`), else from the
    namespace's entry (a selector of only `in`/`notin`/exists terms)."""
    if selector.is_nothing:
        return []
    terms = [f"{namespace}/{r.key}={r.values[0]}" for r in selector.requirements
             if r.op in ("=", "in") and len(r.values) == 1]
    if terms:
        keys = min((informer.index_keys(LABEL, t) for t in terms), key=len)
        candidates: Iterable[Any] = (informer.get_by_key(k) for k in keys)
    else:
        candidates = informer.by_index(NAMESPACE, namespace or "")
    return [o for o in candidates if o is not None and selector.matches(o.metadata.labels)]


def selecting(services: Informer[Service], pod: KubeObject) -> list[Service]:
    """The Services whose selector matches `pod`'s labels, from the SELECTOR index: a
    Service is filed under each of its terms, so it is found under any label it selects on."""
    found: dict[str, Service] = {}
    for term in by_label(pod):
        for svc in services.by_index(SELECTOR, term):
            found.setdefault(svc.key, svc)
    labels = pod.metadata.labels
    return [s for s in found.values() if all(labels.get(k) == v for k, v in (s.spec.selector or {}).items())]
