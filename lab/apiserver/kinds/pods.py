"""Pods: defaults and validation of the pod spec (the fields the node agent, the controllers,
kproxy's named ports and kdns's hostname/subdomain read), the Table, graceful deletion. The pod
spec checks are shared with the workloads' templates (`kinds/workloads.py`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lab.apiserver import tables
from lab.apiserver.strategy import Config, Deletion, Strategy
from lab.apiserver.tables import AGE, NAME, NONE, column, get
from lab.apiserver.validation import Causes

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
CONTAINER_LISTS = ("initContainers", "containers")
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
DEFAULT_GRACE = 30


# --- the pod spec (pods and templates) ----------------------------------------------------------

def default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for key in CONTAINER_LISTS:
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            image = str(c.get("image", ""))
            latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
            c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            for p in c.get("ports") or []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")
            for probe in PROBES:
                _default_probe(c.get(probe))


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                       ("failureThreshold", 3)):
        probe.setdefault(key, value)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")


def validate_pod_spec(c: Causes, spec: Any, path: str) -> None:
    if not isinstance(spec, dict):
        c.required(path)
        return
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        c.required(f"{path}.containers")
    names: set[str] = set()
    port_names: set[str] = set()
    for key in CONTAINER_LISTS:
        for i, ctr in enumerate(spec.get(key) or []):
            _validate_container(c, ctr, f"{path}.{key}[{i}]", names, port_names)
    c.one_of(f"{path}.restartPolicy", spec.get("restartPolicy"), RESTART_POLICIES)
    c.one_of(f"{path}.dnsPolicy", spec.get("dnsPolicy"), DNS_POLICIES)
    if spec.get("nodeName"):
        c.dns_subdomain(f"{path}.nodeName", spec["nodeName"])
    for key in ("hostname", "subdomain"):
        if spec.get(key):
            c.dns_label(f"{path}.{key}", spec[key])
    c.labels(f"{path}.nodeSelector", spec.get("nodeSelector"))
    seen_vols: set[str] = set()
    for i, vol in enumerate(spec.get("volumes") or []):
        name = vol.get("name") if isinstance(vol, dict) else None
        if c.dns_label(f"{path}.volumes[{i}].name", name) and name in seen_vols:
            c.duplicate(f"{path}.volumes[{i}].name", name)
        seen_vols.add(str(name))


def _validate_container(c: Causes, ctr: Any, path: str, names: set[str], port_names: set[str]) -> None:
    if not isinstance(ctr, dict):
        c.invalid(path, ctr, "must be a container object")
        return
    name = ctr.get("name")
    if c.dns_label(f"{path}.name", name):
        if name in names:
            c.duplicate(f"{path}.name", name)
        names.add(str(name))
    if not ctr.get("image"):
        c.required(f"{path}.image")
    c.one_of(f"{path}.imagePullPolicy", ctr.get("imagePullPolicy"), PULL_POLICIES, required=False)
    for j, p in enumerate(ctr.get("ports") or []):
        pp = f"{path}.ports[{j}]"
        if not isinstance(p, dict):
            c.invalid(pp, p, "must be a container port object")
            continue
        c.port(f"{pp}.containerPort", p.get("containerPort"))
        if p.get("hostPort") not in (None, 0):
            c.port(f"{pp}.hostPort", p.get("hostPort"))
        c.protocol(f"{pp}.protocol", p.get("protocol", "TCP"))
        if p.get("name") is not None and c.port_name(f"{pp}.name", p["name"]):
            if p["name"] in port_names:
                c.duplicate(f"{pp}.name", p["name"])
            port_names.add(p["name"])
    for j, env in enumerate(ctr.get("env") or []):
        if not isinstance(env, dict) or not env.get("name"):
            c.required(f"{path}.env[{j}].name")
    for probe in PROBES:
        _validate_probe(c, ctr.get(probe), f"{path}.{probe}")
    for key in ("command", "args"):
        value = ctr.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(a, str) for a in value)):
            c.invalid(f"{path}.{key}", value, "must be a list of strings")


def _validate_probe(c: Causes, probe: Any, path: str) -> None:
    if probe is None:
        return
    if not isinstance(probe, dict):
        c.invalid(path, probe, "must be a probe object")
        return
    handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(h) is not None]
    if not handlers:
        c.required(path, "must specify a handler type")
    elif len(handlers) > 1:
        c.forbidden(f"{path}.{handlers[1]}", "may not specify more than 1 handler type")
    if isinstance(probe.get("httpGet"), dict):
        c.int_or_port_name(f"{path}.httpGet.port", probe["httpGet"].get("port"))
    if isinstance(probe.get("tcpSocket"), dict):
        c.int_or_port_name(f"{path}.tcpSocket.port", probe["tcpSocket"].get("port"))
    if isinstance(probe.get("exec"), dict) and not probe["exec"].get("command"):
        c.required(f"{path}.exec.command")
    for key in ("initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"):
        v = probe.get(key)
        if v is not None and (not isinstance(v, int) or v < 0):
            c.invalid(f"{path}.{key}", v, "must be greater than or equal to 0")


def _container_shape(spec: dict) -> list:
    """The containers but for their images: what a pod update may not change."""
    out = []
    for key in CONTAINER_LISTS:
        for ctr in spec.get(key) or []:
            ctr = {k: v for k, v in copy.deepcopy(ctr).items() if k != "image"} if isinstance(ctr, dict) else ctr
            out.append((key, ctr))
    return out


# --- the Table ----------------------------------------------------------------------------------

def _status_text(obj: dict) -> str:
    """kubectl's STATUS: a waiting/terminated reason over the phase; Terminating when marked."""
    reason = get(obj, "status", "reason") or get(obj, "status", "phase", default="Unknown")
    for s in get(obj, "status", "containerStatuses", default=[]):
        state = s.get("state") or {}
        waiting, term = state.get("waiting") or {}, state.get("terminated") or {}
        if waiting.get("reason") and waiting["reason"] != "ContainerCreating":
            reason = waiting["reason"]
        elif term.get("reason"):
            reason = term["reason"]
    return "Terminating" if get(obj, "metadata", "deletionTimestamp") else reason


# --- the strategy -------------------------------------------------------------------------------

class Pods(Strategy):
    status_from_controllers = True
    generation = True
    cascades = False  # nothing is owned by a pod here
    indexed_fields = ("spec.nodeName",)
    columns = [NAME, column("Ready"), column("Status"), column("Restarts", "integer"), AGE,
               column("IP", priority=1), column("Node", priority=1), column("Nominated Node", priority=1),
               column("Readiness Gates", priority=1)]

    def default(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        default_pod_spec(obj.setdefault("spec", {}))
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", "BestEffort")

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        spec = obj.get("spec")
        validate_pod_spec(c, spec, "spec")
        if old is None or not isinstance(spec, dict):
            return
        old_spec = old.get("spec") or {}
        if old_spec.get("nodeName") and spec.get("nodeName") != old_spec.get("nodeName"):
            c.forbidden("spec.nodeName", "pod updates may not change the node a pod is bound to")
        # Pods are immutable but for images (and what the lab needs: binding by nodeName); compare
        # the rest of the container list the way kube-apiserver does.
        if _container_shape(spec) != _container_shape(old_spec):
            c.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, "
                                "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
                                "(only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`")

    def deletion(self, obj: dict[str, Any], options: Mapping[str, Any]) -> Deletion:
        """Seconds a deleted pod gets to stop: DeleteOptions.gracePeriodSeconds, else the pod's
        terminationGracePeriodSeconds (default 30). 0 -- deleted at once -- for a pod no node runs
        (unscheduled) or that has finished, as kube-apiserver does."""
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return Deletion()
        grace = options.get("gracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds")
        if grace is None:
            grace = DEFAULT_GRACE
        return Deletion(grace=max(0, int(grace)))

    def row(self, obj: dict[str, Any]) -> list[Any]:
        statuses = get(obj, "status", "containerStatuses", default=[])
        total = len(get(obj, "spec", "containers", default=[]))
        ready = sum(1 for s in statuses if s.get("ready"))
        restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
        gates = get(obj, "spec", "readinessGates", default=[])
        return [tables.name(obj), f"{ready}/{total}", _status_text(obj), restarts, tables.age(obj),
                get(obj, "status", "podIP", default=NONE), get(obj, "spec", "nodeName", default=NONE),
                get(obj, "status", "nominatedNodeName", default=NONE), f"0/{len(gates)}" if gates else NONE]


class Bindings(Strategy):
    """The legacy way to bind a pod: POST a Binding named like the pod (pods/binding is the
    other); create only, served by the lifecycle's `bind`, never stored."""
