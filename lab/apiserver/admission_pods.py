"""Defaults and validation of Pods and of the pod templates in Deployments, ReplicaSets and
ReplicationControllers: the fields the node agent, the controllers, kproxy (named ports) and
kdns (hostname/subdomain) read."""

from __future__ import annotations

import copy
from typing import Any

from knet.kube import selectors
from lab.apiserver.validation import Causes, get

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
CONTAINER_LISTS = ("initContainers", "containers")


# --- defaults -----------------------------------------------------------------------------------

def default_pod_spec(spec: dict) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
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
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
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


def default_pod(obj: dict) -> None:
    default_pod_spec(obj.setdefault("spec", {}))
    status = obj.setdefault("status", {})
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", "BestEffort")


def default_workload(obj: dict, kind: str) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    template = spec.get("template")
    if isinstance(template, dict):
        default_pod_spec(template.setdefault("spec", {}))
    if kind == "ReplicationController":
        # An RC without a selector selects its template's labels (and is labelled with them).
        tlabels = get(template, "metadata", "labels")
        if tlabels and not spec.get("selector"):
            spec["selector"] = dict(tlabels)
        if tlabels and not get(obj, "metadata", "labels"):
            obj.setdefault("metadata", {})["labels"] = dict(tlabels)
    if kind == "Deployment":
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            ru = strategy.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")
    status = obj.setdefault("status", {})
    if kind == "StatefulSet":
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        spec.setdefault("revisionHistoryLimit", 10)
    if kind in ("ReplicaSet", "ReplicationController", "StatefulSet"):
        status.setdefault("replicas", 0)  # not omitempty in Kubernetes: clients require it


# --- validation ---------------------------------------------------------------------------------

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
        names.add(name)
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
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
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


def validate_pod(c: Causes, obj: dict, old: dict | None) -> None:
    spec = obj.get("spec")
    validate_pod_spec(c, spec, "spec")
    if old is None or not isinstance(spec, dict):
        return
    old_spec = old.get("spec") or {}
    if old_spec.get("nodeName") and spec.get("nodeName") != old_spec.get("nodeName"):
        c.forbidden("spec.nodeName", "pod updates may not change the node a pod is bound to")
    # Pods are immutable but for images (and what the lab needs: binding by nodeName); compare the
    # rest of the container list the way kube-apiserver does.
    def shape(s: dict) -> list:
        out = []
        for key in CONTAINER_LISTS:
            for ctr in s.get(key) or []:
                ctr = {k: v for k, v in copy.deepcopy(ctr).items() if k != "image"} if isinstance(ctr, dict) else ctr
                out.append((key, ctr))
        return out
    if shape(spec) != shape(old_spec):
        c.forbidden("spec", "pod updates may not change fields other than `spec.containers[*].image`, "
                            "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
                            "(only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`")


def validate_workload(c: Causes, obj: dict, old: dict | None, kind: str) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        c.required("spec")
        return
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        c.invalid("spec.replicas", replicas, "must be greater than or equal to 0")
    template = spec.get("template")
    tlabels = get(template, "metadata", "labels", default={})
    if kind == "ReplicationController":
        sel = spec.get("selector")
        c.labels("spec.selector", sel)
        if not sel:
            c.required("spec.selector")
        elif template is not None and not selectors.map_selector_matches({k: str(v) for k, v in sel.items()},
                                                                          tlabels):
            c.invalid("spec.template.metadata.labels", tlabels, "`selector` does not match template `labels`")
    else:
        sel = spec.get("selector")
        if c.label_selector("spec.selector", sel, required=True):
            if not sel.get("matchLabels") and not sel.get("matchExpressions"):
                c.invalid("spec.selector", sel, "empty selector is invalid for deployment" if kind == "Deployment"
                          else "empty selector is not valid")
            else:
                try:
                    ok = selectors.Selector.from_object(sel).matches(tlabels)
                except selectors.SelectorError:
                    ok = True  # reported above
                if not ok:
                    c.invalid("spec.template.metadata.labels", tlabels, "`selector` does not match template `labels`")
        if old is not None and sel != get(old, "spec", "selector"):
            c.immutable("spec.selector", sel)
    if template is None:
        c.required("spec.template")
    else:
        c.labels("spec.template.metadata.labels", tlabels)
        validate_pod_spec(c, get(template, "spec"), "spec.template.spec")
        policy = get(template, "spec", "restartPolicy")
        if policy not in (None, "Always"):
            c.unsupported("spec.template.spec.restartPolicy", policy, ("Always",))
    if kind == "Deployment":
        strategy = spec.get("strategy") or {}
        if c.one_of("spec.strategy.type", strategy.get("type"), ("RollingUpdate", "Recreate")) and \
                strategy.get("type") == "Recreate" and strategy.get("rollingUpdate") is not None:
            c.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")
