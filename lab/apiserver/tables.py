"""meta.k8s.io Table rendering: what `kubectl get` asks for (`Accept: ...;as=Table`) so that it
prints the same columns as against a real cluster (priority-1 columns appear with `-o wide`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from lab.apiserver import objects
from lab.apiserver.resources import ResourceType

Row = Callable[[dict], list[Any]]
NONE = "<none>"


def table_version(accept: str) -> str | None:
    """meta.k8s.io version of the first `as=Table` media type the client accepts, if any."""
    for media in accept.split(","):
        params = dict(p.strip().split("=", 1) for p in media.split(";")[1:] if "=" in p)
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") in ("v1", "v1beta1"):
            return params["v"]
    return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery duration.HumanDuration (the AGE column)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    m, h, d = s // 60, s // 3600, s // 86400
    if s < 120:
        return f"{s}s"
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if h < 192:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if h < 24 * 365 * 2:
        return f"{d}d"
    if h < 24 * 365 * 8:
        return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"
    return f"{d // 365}y"


def age(obj: dict) -> str:
    t = objects.parse_time(objects.get_path(obj, "metadata", "creationTimestamp"))
    return human_duration((dt.datetime.now(dt.UTC) - t).total_seconds()) if t else "<unknown>"


def _g(obj: dict, *path: str, default: Any = None) -> Any:
    v = objects.get_path(obj, *path)
    return default if v is None else v


def _join(items: list[str], limit: int = 3) -> str:
    if not items:
        return NONE
    shown = ",".join(items[:limit])
    return shown + (f" + {len(items) - limit} more..." if len(items) > limit else "")


def _labels(sel: dict | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((sel or {}).items())) or NONE


def _label_selector(sel: dict | None) -> str:
    if not sel:
        return NONE
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op = e.get("operator")
        if op in ("In", "NotIn"):
            parts.append(f"{e.get('key')} {op.lower()} ({','.join(e.get('values') or [])})")
        else:
            parts.append(e.get("key", "") if op == "Exists" else f"!{e.get('key')}")
    return ",".join(parts) or NONE


def _containers(obj: dict, field: str) -> str:
    return ",".join(c.get(field, "") for c in _g(obj, "spec", "template", "spec", "containers", default=[])) or NONE


def _pod(obj: dict) -> list[Any]:
    statuses = _g(obj, "status", "containerStatuses", default=[])
    total = len(_g(obj, "spec", "containers", default=[]))
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    reason = _g(obj, "status", "reason") or _g(obj, "status", "phase", default="Unknown")
    for s in statuses:
        state = s.get("state") or {}
        waiting, term = state.get("waiting") or {}, state.get("terminated") or {}
        if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
            reason = waiting["reason"]
        elif term.get("reason"):
            reason = term["reason"]
    if _g(obj, "metadata", "deletionTimestamp"):
        reason = "Terminating"
    gates = _g(obj, "spec", "readinessGates", default=[])
    return [_name(obj), f"{ready}/{total}", reason, restarts, age(obj), _g(obj, "status", "podIP", default=NONE),
            _g(obj, "spec", "nodeName", default=NONE), _g(obj, "status", "nominatedNodeName", default=NONE),
            f"0/{len(gates)}" if gates else NONE]


def _service(obj: dict) -> list[Any]:
    spec = obj.get("spec") or {}
    stype = spec.get("type", "ClusterIP")
    ips = list(spec.get("externalIPs") or [])
    if stype == "LoadBalancer":
        lb = [i.get("ip") or i.get("hostname", "") for i in _g(obj, "status", "loadBalancer", "ingress", default=[])]
        ips = lb + ips or ["<pending>"]
    external = spec.get("externalName") if stype == "ExternalName" else (",".join(ips) or NONE)
    ports = ",".join(f"{p.get('port')}" + (f":{p['nodePort']}" if p.get("nodePort") else "") +
                     f"/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []) or NONE
    cluster_ip = spec.get("clusterIP") or NONE
    return [_name(obj), stype, cluster_ip, external, ports, age(obj), _labels(spec.get("selector"))]


def _node(obj: dict) -> list[Any]:
    ready = next((c for c in _g(obj, "status", "conditions", default=[]) if c.get("type") == "Ready"), None)
    status = "Ready" if ready and ready.get("status") == "True" else ("NotReady" if ready else "Unknown")
    if _g(obj, "spec", "unschedulable"):
        status += ",SchedulingDisabled"
    roles = sorted(k.split("/", 1)[1] for k in _g(obj, "metadata", "labels", default={})
                   if k.startswith("node-role.kubernetes.io/"))
    addrs = _g(obj, "status", "addresses", default=[])
    def addr(kind: str) -> str:
        return next((a.get("address") for a in addrs if a.get("type") == kind), NONE)
    info = _g(obj, "status", "nodeInfo", default={})
    return [_name(obj), status, ",".join(roles) or NONE, age(obj), info.get("kubeletVersion", ""),
            addr("InternalIP"), addr("ExternalIP"), info.get("osImage", "<unknown>"),
            info.get("kernelVersion", "<unknown>"), info.get("containerRuntimeVersion", "<unknown>")]


def _replicas(obj: dict, deployment: bool = False) -> list[Any]:
    desired = _g(obj, "spec", "replicas", default=0)
    status = obj.get("status") or {}
    sel = _g(obj, "spec", "selector")
    selector = _labels(sel) if obj.get("kind") == "ReplicationController" else _label_selector(sel)
    tail = [age(obj), _containers(obj, "name"), _containers(obj, "image"), selector]
    if deployment:
        return [_name(obj), f"{status.get('readyReplicas', 0)}/{desired}", status.get("updatedReplicas", 0),
                status.get("availableReplicas", 0), *tail]
    return [_name(obj), desired, status.get("replicas", 0), status.get("readyReplicas", 0), *tail]


def _endpoints(obj: dict) -> list[Any]:
    eps = []
    for s in obj.get("subsets") or []:
        for a in s.get("addresses") or []:
            eps += [f"{a.get('ip')}:{p.get('port')}" for p in s.get("ports") or []] or [a.get("ip", "")]
    return [_name(obj), _join(eps), age(obj)]


def _slice(obj: dict) -> list[Any]:
    ports = ",".join(str(p.get("port")) for p in obj.get("ports") or [] if p.get("port") is not None) or "<unset>"
    addrs = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
    return [_name(obj), obj.get("addressType", ""), ports, _join(addrs) if addrs else "<unset>", age(obj)]


def _ingress(obj: dict) -> list[Any]:
    spec = obj.get("spec") or {}
    hosts = [r.get("host") for r in spec.get("rules") or [] if r.get("host")]
    lb = [i.get("ip") or i.get("hostname", "") for i in _g(obj, "status", "loadBalancer", "ingress", default=[])]
    return [_name(obj), spec.get("ingressClassName") or NONE, ",".join(hosts) or "*", ",".join(lb),
            "80, 443" if spec.get("tls") else "80", age(obj)]


def _event(obj: dict) -> list[Any]:
    last = objects.parse_time(obj.get("lastTimestamp") or obj.get("eventTime")
                              or _g(obj, "metadata", "creationTimestamp"))
    seen = human_duration((dt.datetime.now(dt.UTC) - last).total_seconds()) if last else "<unknown>"
    io = obj.get("involvedObject") or {}
    return [seen, obj.get("type", ""), obj.get("reason", ""), f"{str(io.get('kind', '')).lower()}/{io.get('name', '')}",
            obj.get("message", "")]


def _name(obj: dict) -> str:
    return _g(obj, "metadata", "name", default="")


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "") -> dict:
    return {"name": name, "type": kind, "format": fmt, "description": "", "priority": priority}


NAME, AGE = _col("Name", fmt="name"), _col("Age")
_WORKLOAD_TAIL = [AGE, _col("Containers", priority=1), _col("Images", priority=1), _col("Selector", priority=1)]
PRINTERS: dict[str, tuple[list[dict], Row]] = {
    "Pod": ([NAME, _col("Ready"), _col("Status"), _col("Restarts", "integer"), AGE, _col("IP", priority=1),
             _col("Node", priority=1), _col("Nominated Node", priority=1), _col("Readiness Gates", priority=1)], _pod),
    "Service": ([NAME, _col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"), AGE,
                 _col("Selector", priority=1)], _service),
    "Node": ([NAME, _col("Status"), _col("Roles"), AGE, _col("Version"), _col("Internal-IP", priority=1),
              _col("External-IP", priority=1), _col("OS-Image", priority=1), _col("Kernel-Version", priority=1),
              _col("Container-Runtime", priority=1)], _node),
    "Namespace": ([NAME, _col("Status"), AGE], lambda o: [_name(o), _g(o, "status", "phase", default=""), age(o)]),
    "Deployment": ([NAME, _col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer"),
                    *_WORKLOAD_TAIL], lambda o: _replicas(o, deployment=True)),
    "ReplicaSet": ([NAME, _col("Desired", "integer"), _col("Current", "integer"), _col("Ready", "integer"),
                    *_WORKLOAD_TAIL], _replicas),
    "Endpoints": ([NAME, _col("Endpoints"), AGE], _endpoints),
    "EndpointSlice": ([NAME, _col("AddressType"), _col("Ports"), _col("Endpoints"), AGE], _slice),
    "NetworkPolicy": ([NAME, _col("Pod-Selector"), AGE],
                      lambda o: [_name(o), _label_selector(_g(o, "spec", "podSelector")), age(o)]),
    "Ingress": ([NAME, _col("Class"), _col("Hosts"), _col("Address"), _col("Ports"), AGE], _ingress),
    "IngressClass": ([NAME, _col("Controller"), _col("Parameters"), AGE],
                     lambda o: [_name(o), _g(o, "spec", "controller", default=""), NONE, age(o)]),
    "Secret": ([NAME, _col("Type"), _col("Data", "integer"), AGE],
               lambda o: [_name(o), o.get("type", ""), len(o.get("data") or {}), age(o)]),
    "ConfigMap": ([NAME, _col("Data", "integer"), AGE],
                  lambda o: [_name(o), len(o.get("data") or {}) + len(o.get("binaryData") or {}), age(o)]),
    "Event": ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")], _event),
}
PRINTERS["ReplicationController"] = PRINTERS["ReplicaSet"]
PRINTERS["StatefulSet"] = ([NAME, _col("Ready"), AGE, _col("Containers", priority=1), _col("Images", priority=1)],
                           lambda o: [_name(o), f"{_g(o, 'status', 'readyReplicas', default=0)}/"
                                      f"{_g(o, 'spec', 'replicas', default=0)}", age(o),
                                      *_replicas(o)[-3:-1]])


def table(rt: ResourceType, items: list[dict], list_meta: dict, include: str = "Metadata",
          version: str = "v1", with_columns: bool = True) -> dict:
    columns, row = PRINTERS.get(rt.kind, ([NAME, AGE], lambda o: [_name(o), age(o)]))
    rows = []
    for obj in items:
        r: dict[str, Any] = {"cells": row(obj)}
        if include == "Object":
            r["object"] = obj
        elif include != "None":
            r["object"] = {"kind": "PartialObjectMetadata", "apiVersion": f"meta.k8s.io/{version}",
                           "metadata": obj.get("metadata", {})}
        rows.append(r)
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": list_meta,
            "columnDefinitions": columns if with_columns else [], "rows": rows}
