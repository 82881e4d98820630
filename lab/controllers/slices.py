"""Service x Pods -> EndpointSlices (and the legacy Endpoints object), pure.

As kube-controller-manager's endpointslice controller: every pod selected by the Service that has
an address and is not finished becomes an endpoint, with conditions ready (Ready and not
terminating; always true with publishNotReadyAddresses), serving (Ready) and terminating
(deletionTimestamp). Ports are resolved per pod (a named targetPort is that pod's containerPort
of that name; a pod without it lacks that port), so pods with different resolved ports land in
different slices. `hostname` is set for pods whose hostname + subdomain name this Service
(StatefulSet pods). At most MAX_ENDPOINTS per slice.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from knet.kube.ipfamily import first_of_family, service_families
from knet.kube.models import SERVICE_NAME_LABEL, EndpointSlice, Pod, Service
from knet.kube.selectors import map_selector_matches
from lab.controllers.common import MANAGED_BY, SLICE_CONTROLLER

MAX_ENDPOINTS = 100


def manages(service: Service) -> bool:
    """Services whose endpoints come from pods (selector-less ones have hand-written Endpoints,
    mirrored by the API server; ExternalName has none)."""
    return bool(service.spec.selector) and service.spec.type != "ExternalName"


def selected(service: Service, pods: Sequence[Pod]) -> list[Pod]:
    return [p for p in pods if p.namespace == service.namespace and map_selector_matches(service.spec.selector,
                                                                                         p.labels)]


def resolve_ports(service: Service, pod: Pod) -> tuple[tuple[str, int, str, str | None], ...]:
    """(name, port, protocol, appProtocol) of each service port this pod serves."""
    out = []
    for sp in service.spec.ports:
        target = sp.effective_target_port
        if isinstance(target, str):
            port = pod.spec.named_port(target, sp.protocol)
            if port is None:
                continue
        else:
            port = target
        out.append((sp.name, port, sp.protocol, sp.app_protocol))
    return tuple(out)


def endpoint(service: Service, pod: Pod, address: str) -> dict[str, Any]:
    terminating = pod.is_terminating
    serving = pod.is_ready
    ready = service.spec.publish_not_ready_addresses or (serving and not terminating)
    ep: dict[str, Any] = {"addresses": [address],
                          "conditions": {"ready": ready, "serving": serving or service.spec.publish_not_ready_addresses,
                                         "terminating": terminating}}
    if pod.spec.hostname and pod.spec.subdomain == service.name:
        ep["hostname"] = pod.spec.hostname
    if pod.spec.node_name:
        ep["nodeName"] = pod.spec.node_name
    ep["targetRef"] = {"kind": "Pod", "namespace": pod.namespace, "name": pod.name, "uid": pod.metadata.uid}
    return ep


def groups(service: Service, pods: Sequence[Pod]) -> dict[tuple, list[dict[str, Any]]]:
    """(addressType, resolved ports) -> endpoints, sorted by address: per family the Service
    has, the pod's first address of that family (status.podIPs)."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    families = service_families(service)
    for pod in selected(service, pods):
        if pod.status.phase in ("Succeeded", "Failed") or not pod.ips:
            continue
        ports = resolve_ports(service, pod)
        for fam in families:
            ip = first_of_family(pod.ips, fam)
            if ip is not None:
                out.setdefault((fam, ports), []).append(endpoint(service, pod, ip))
    for eps in out.values():
        eps.sort(key=lambda e: (ipaddress.ip_address(e["addresses"][0]).packed, e["targetRef"]["name"]))
    return out


def slice_ports(ports: tuple) -> list[dict[str, Any]]:
    out = []
    for name, port, protocol, app in ports:
        p: dict[str, Any] = {"name": name, "port": port, "protocol": protocol}
        if app:
            p["appProtocol"] = app
        out.append(p)
    return out


def desired(service: Service, pods: Sequence[Pod]) -> list[dict[str, Any]]:
    """The content of each slice the Service should have: addressType, endpoints, ports. Each of
    the Service's families without endpoints keeps one empty slice of its addressType, as
    Kubernetes' placeholder slice (its reconciler works per address type)."""
    out = []
    found = groups(service, pods)
    for fam in service_families(service):
        mine = sorted(((ports, eps) for (f, ports), eps in found.items() if f == fam), key=lambda kv: kv[0])
        for ports, eps in mine:
            for i in range(0, len(eps), MAX_ENDPOINTS):
                out.append({"addressType": fam, "endpoints": eps[i:i + MAX_ENDPOINTS], "ports": slice_ports(ports)})
        if not mine:
            out.append({"addressType": fam, "endpoints": [], "ports": []})
    return out


def labels_for(service: Service) -> dict[str, str]:
    labels = {k: v for k, v in service.labels.items() if k not in (SERVICE_NAME_LABEL, MANAGED_BY)}
    labels.update({SERVICE_NAME_LABEL: service.name, MANAGED_BY: SLICE_CONTROLLER})
    return labels


def content(s: EndpointSlice) -> dict[str, Any]:
    """An existing slice's content in the shape `desired` produces (to compare)."""
    d = s.to_dict()
    eps = []
    for e in d.get("endpoints") or []:
        ep = {k: e[k] for k in ("addresses", "conditions", "hostname", "nodeName", "targetRef") if k in e}
        ep["conditions"] = {k: ep.get("conditions", {}).get(k, False) for k in ("ready", "serving", "terminating")}
        if "targetRef" in ep:
            ep["targetRef"] = {k: ep["targetRef"].get(k) for k in ("kind", "namespace", "name", "uid")}
        eps.append(ep)
    ports = [{k: p[k] for k in ("name", "port", "protocol", "appProtocol") if k in p} for p in d.get("ports") or []]
    return {"addressType": d["addressType"], "endpoints": eps, "ports": ports}


def reconcile(want: list[dict[str, Any]], have: list[EndpointSlice], labels: dict[str, str],
              owner: dict[str, Any]) -> tuple[list[dict], list[tuple[str, dict]], list[str]]:
    """(slices to create, (name, slice) to replace, names to delete). An existing slice is reused
    for the wanted content closest to it (same addressType and ports), so a scale-up changes one
    slice instead of replacing all of them; an unchanged slice is not written at all."""
    creates: list[dict] = []
    updates: list[tuple[str, dict]] = []
    free = sorted(have, key=lambda s: s.name)
    pending = []
    for w in want:
        match = next((s for s in free if content(s) == w and s.metadata.labels == labels), None)
        if match is not None:
            free.remove(match)
        else:
            pending.append(w)
    for w in pending:
        match = next((s for s in free if s.address_type == w["addressType"]
                      and content(s)["ports"] == w["ports"]), None) or \
            next((s for s in free if s.address_type == w["addressType"]), None)
        if match is not None:
            free.remove(match)
            meta = {"name": match.name, "namespace": match.namespace, "labels": labels, "ownerReferences": [owner],
                    "resourceVersion": match.metadata.resource_version}
            updates.append((match.name, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                         "metadata": meta, **w}))
        else:
            creates.append(w)
    return creates, updates, [s.name for s in free]


def endpoints_object(service: Service, pods: Sequence[Pod]) -> dict[str, Any]:
    """The core/v1 Endpoints (what `kubectl get endpoints` / `describe service` show)."""
    by_ports: dict[tuple, dict[str, list[dict]]] = {}
    for (_fam, ports), eps in groups(service, pods).items():
        subset = by_ports.setdefault(ports, {"addresses": [], "notReadyAddresses": []})
        for e in eps:
            if e["conditions"]["terminating"] and not service.spec.publish_not_ready_addresses:
                continue
            addr = {"ip": e["addresses"][0], "targetRef": e["targetRef"]}
            if "hostname" in e:
                addr["hostname"] = e["hostname"]
            if "nodeName" in e:
                addr["nodeName"] = e["nodeName"]
            subset["addresses" if e["conditions"]["ready"] else "notReadyAddresses"].append(addr)
    subsets = []
    for ports, subset in sorted(by_ports.items()):
        if not ports or not (subset["addresses"] or subset["notReadyAddresses"]):
            continue
        s: dict[str, Any] = {k: v for k, v in subset.items() if v}
        s["ports"] = slice_ports(ports)
        subsets.append(s)
    meta = {"name": service.name, "namespace": service.namespace,
            "labels": {k: v for k, v in service.labels.items()}}
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": subsets}
