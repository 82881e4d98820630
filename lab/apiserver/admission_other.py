"""Defaults and validation of the remaining kinds: Namespace, Node, Secret, ConfigMap (kdns
config), NetworkPolicy (netpolicy), Ingress / IngressClass (the ingress controller)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from lab.apiserver.validation import CONFIG_KEY, WILDCARD_DNS, Causes, get


def default_namespace(obj: dict) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj.setdefault("status", {}).setdefault("phase", "Active")
    # kube-apiserver labels every namespace with its name (namespaceSelector matches on it).
    obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"].get("name")


def default_secret(obj: dict) -> None:
    obj.setdefault("type", "Opaque")
    # stringData is write-only: merged into data, base64-encoded, as kube-apiserver does.
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()


def validate_data_map(c: Causes, obj: dict, key: str, b64: bool) -> None:
    data = obj.get(key)
    if data is None:
        return
    if not isinstance(data, dict):
        c.invalid(key, data, "must be a map")
        return
    for k, v in data.items():
        if not CONFIG_KEY.match(k) or len(k) > 253:
            c.invalid(f"{key}[{k}]", k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'")
        if b64:
            try:
                base64.b64decode(str(v), validate=True)
            except (binascii.Error, ValueError):
                c.invalid(f"{key}[{k}]", "<secret contents redacted>", "illegal base64 data")
        elif not isinstance(v, str):
            c.invalid(f"{key}[{k}]", v, "must be a string")


def validate_secret(c: Causes, obj: dict) -> None:
    validate_data_map(c, obj, "data", b64=True)
    if obj.get("type") == "kubernetes.io/tls":
        for k in ("tls.crt", "tls.key"):
            if k not in (obj.get("data") or {}):
                c.required(f"data[{k}]")


def validate_configmap(c: Causes, obj: dict) -> None:
    validate_data_map(c, obj, "data", b64=False)
    validate_data_map(c, obj, "binaryData", b64=True)


def validate_node(c: Causes, obj: dict) -> None:
    for i, a in enumerate(get(obj, "status", "addresses", default=[])):
        if not isinstance(a, dict) or not a.get("type"):
            c.required(f"status.addresses[{i}].type")
    cidr = get(obj, "spec", "podCIDR")
    if cidr:
        c.cidr("spec.podCIDR", cidr)


# --- NetworkPolicy ------------------------------------------------------------------------------

def default_networkpolicy(obj: dict) -> None:
    spec = obj.setdefault("spec", {})
    if spec.get("podSelector") is None:
        spec["podSelector"] = {}  # an empty selector: every pod of the namespace
    if "policyTypes" not in spec or not spec["policyTypes"]:
        types = ["Ingress"]
        if spec.get("egress"):
            types.append("Egress")
        spec["policyTypes"] = types
    for rules in (spec.get("ingress") or [], spec.get("egress") or []):
        for rule in rules:
            for p in (rule.get("ports") or []) if isinstance(rule, dict) else []:
                if isinstance(p, dict):
                    p.setdefault("protocol", "TCP")


def validate_networkpolicy(c: Causes, obj: dict) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        c.required("spec")
        return
    c.label_selector("spec.podSelector", spec.get("podSelector") or {})
    for i, t in enumerate(spec.get("policyTypes") or []):
        c.one_of(f"spec.policyTypes[{i}]", t, ("Ingress", "Egress"))
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            f = f"spec.{direction}[{i}]"
            if not isinstance(rule, dict):
                c.invalid(f, rule, "must be a rule object")
                continue
            for j, p in enumerate(rule.get("ports") or []):
                _validate_policy_port(c, p, f"{f}.ports[{j}]")
            for j, peer in enumerate(rule.get(peers_key) or []):
                _validate_peer(c, peer, f"{f}.{peers_key}[{j}]")


def _validate_policy_port(c: Causes, p: Any, f: str) -> None:
    if not isinstance(p, dict):
        c.invalid(f, p, "must be a port object")
        return
    c.protocol(f"{f}.protocol", p.get("protocol", "TCP"))
    port = p.get("port")
    if port is not None:
        c.int_or_port_name(f"{f}.port", port)
    end = p.get("endPort")
    if end is not None:
        if not isinstance(port, int):
            c.required(f"{f}.port", "must be specified when endPort is specified")
        elif not isinstance(end, int) or end < port:
            c.invalid(f"{f}.endPort", end, "must be greater than or equal to `port`")


def _validate_peer(c: Causes, peer: Any, f: str) -> None:
    if not isinstance(peer, dict):
        c.invalid(f, peer, "must be a peer object")
        return
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if peer.get(k) is not None]
    if not present:
        c.required(f, "must specify a peer")
    if "ipBlock" in present and len(present) > 1:
        c.forbidden(f, "may not specify more than 1 peer type when ipBlock is specified")
    for k in ("podSelector", "namespaceSelector"):
        if peer.get(k) is not None:
            c.label_selector(f"{f}.{k}", peer[k])
    block = peer.get("ipBlock")
    if block is not None:
        net = c.cidr(f"{f}.ipBlock.cidr", (block or {}).get("cidr"))
        for i, ex in enumerate((block or {}).get("except") or []):
            exnet = c.cidr(f"{f}.ipBlock.except[{i}]", ex)
            if net and exnet and (exnet.version != net.version or not exnet.subnet_of(net)):  # type: ignore[arg-type]
                c.invalid(f"{f}.ipBlock.except[{i}]", ex, "must be a strict subset of `cidr`")


# --- Ingress ------------------------------------------------------------------------------------

def validate_ingress(c: Causes, obj: dict) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        c.required("spec")
        return
    if spec.get("defaultBackend") is not None:
        _validate_backend(c, spec["defaultBackend"], "spec.defaultBackend")
    elif not spec.get("rules"):
        c.invalid("spec", spec, "either `defaultBackend` or `rules` must be specified")
    for i, rule in enumerate(spec.get("rules") or []):
        f = f"spec.rules[{i}]"
        host = rule.get("host") if isinstance(rule, dict) else None
        if host and not WILDCARD_DNS.match(host):
            c.dns_subdomain(f"{f}.host", host)
        http = (rule or {}).get("http")
        if http is None:
            continue
        paths = http.get("paths") if isinstance(http, dict) else None
        if not paths:
            c.required(f"{f}.http.paths")
        for j, p in enumerate(paths or []):
            pf = f"{f}.http.paths[{j}]"
            ptype = p.get("pathType") if isinstance(p, dict) else None
            if c.one_of(f"{pf}.pathType", ptype, ("Exact", "Prefix", "ImplementationSpecific")) and \
                    ptype in ("Exact", "Prefix") and not str(p.get("path", "")).startswith("/"):
                c.invalid(f"{pf}.path", p.get("path"), "must be an absolute path")
            _validate_backend(c, (p or {}).get("backend"), f"{pf}.backend")
    for i, tls in enumerate(spec.get("tls") or []):
        for j, host in enumerate((tls or {}).get("hosts") or []):
            if not WILDCARD_DNS.match(str(host)):
                c.dns_subdomain(f"spec.tls[{i}].hosts[{j}]", host)


def _validate_backend(c: Causes, backend: Any, f: str) -> None:
    if not isinstance(backend, dict):
        c.required(f)
        return
    svc, res = backend.get("service"), backend.get("resource")
    if (svc is None) == (res is None):
        c.invalid(f, backend, "cannot set both service and resource backends" if svc else
                  "one backend (service or resource) must be specified")
        return
    if svc is not None:
        if not svc.get("name"):
            c.required(f"{f}.service.name")
        port = svc.get("port") or {}
        if ("number" in port) == ("name" in port):
            c.invalid(f"{f}.service.port", port, "exactly one of `name` or `number` must be specified")
        elif "number" in port:
            c.port(f"{f}.service.port.number", port["number"])
        else:
            c.port_name(f"{f}.service.port.name", port["name"])


def validate_ingressclass(c: Causes, obj: dict) -> None:
    controller = get(obj, "spec", "controller")
    if not controller:
        c.required("spec.controller")
