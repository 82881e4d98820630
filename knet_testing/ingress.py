"""Builders for the objects an ingress controller reads (tests, the benchmark, the lab demo):
short calls instead of pages of nested dicts, validated through the real models."""

from __future__ import annotations

import base64
from typing import Any

from knet.kube.models import EndpointSlice, Ingress, IngressClass, Secret, Service, parse

TS = "2024-01-01T00:00:00Z"


def backend(service: str, port: int | str = 80) -> dict[str, Any]:
    return {"service": {"name": service, "port": {"number" if isinstance(port, int) else "name": port}}}


def path(p: str | None, service: str, port: int | str = 80, kind: str = "Prefix") -> dict[str, Any]:
    entry: dict[str, Any] = {"pathType": kind, "backend": backend(service, port)}
    if p is not None:
        entry["path"] = p
    return entry


def rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host:
        r["host"] = host
    return r


def ingress(name: str, *rules: dict[str, Any], namespace: str = "default", cls: str | None = "knet",
            default: dict[str, Any] | None = None, tls: list[dict[str, Any]] | None = None,
            created: str = TS, annotations: dict[str, str] | None = None, status_ips: list[str] = ()) -> Ingress:
    spec: dict[str, Any] = {"rules": list(rules)}
    if cls:
        spec["ingressClassName"] = cls
    if default:
        spec["defaultBackend"] = default
    if tls:
        spec["tls"] = tls
    raw = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
           "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created,
                        "annotations": annotations or {}, "uid": f"uid-{namespace}-{name}"},
           "spec": spec, "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in status_ips]}}}
    obj = parse(Ingress, raw)
    assert obj is not None, raw
    return obj


def ingress_class(name: str = "knet", default: bool = False) -> IngressClass:
    ann = {"ingressclass.kubernetes.io/is-default-class": "true"} if default else {}
    obj = parse(IngressClass, {"metadata": {"name": name, "annotations": ann},
                               "spec": {"controller": "knet.io/ingress"}})
    assert obj is not None
    return obj


def service(name: str, *ports: tuple[str, int], namespace: str = "default", kind: str = "ClusterIP",
            lb_ips: list[str] = ()) -> Service:
    """ports: (name, port) pairs; default one unnamed port 80."""
    plist = [{"name": n, "port": p, "protocol": "TCP"} for n, p in (ports or (("", 80),))]
    spec: dict[str, Any] = {"type": kind, "ports": plist, "selector": {"app": name}}
    if kind == "ExternalName":
        spec = {"type": kind, "externalName": "example.org", "ports": plist}
    else:
        spec["clusterIP"] = "10.96.0.42"
    obj = parse(Service, {"metadata": {"name": name, "namespace": namespace}, "spec": spec,
                          "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb_ips]}}})
    assert obj is not None
    return obj


def endpoint_slice(svc: str, addresses: list[str], port: int = 80, port_name: str = "",
                   namespace: str = "default", not_ready: list[str] = (), terminating: list[str] = (),
                   suffix: str = "a") -> EndpointSlice:
    """One slice of one address family: IPv6 when its addresses are (the controller never mixes)."""
    every = [*addresses, *not_ready, *terminating]
    family = "IPv6" if every and ":" in every[0] else "IPv4"
    eps = [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]
    eps += [{"addresses": [a], "conditions": {"ready": False}} for a in not_ready]
    eps += [{"addresses": [a], "conditions": {"ready": False, "serving": True, "terminating": True}}
            for a in terminating]
    obj = parse(EndpointSlice, {
        "metadata": {"name": f"{svc}-{suffix}", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family, "ports": [{"name": port_name, "port": port, "protocol": "TCP"}], "endpoints": eps})
    assert obj is not None
    return obj


def tls_secret(name: str, cert_pem: bytes, key_pem: bytes, namespace: str = "default",
               kind: str = "kubernetes.io/tls") -> Secret:
    obj = parse(Secret, {"metadata": {"name": name, "namespace": namespace}, "type": kind,
                         "data": {"tls.crt": base64.b64encode(cert_pem).decode(),
                                  "tls.key": base64.b64encode(key_pem).decode()}})
    assert obj is not None
    return obj


# The Ingress spec's path-matching examples (kubernetes.io, "Examples" under "Path types"):
# (rule paths as (pathType, path), request path, index of the path that must win or None for the
# default backend). Used by the unit tests (reference semantics) and by the integration tests
# (the same table through nginx).
SPEC_PATH_TABLE: list[tuple[list[tuple[str, str]], str, int | None]] = [
    ([("Prefix", "/")], "/", 0),
    ([("Prefix", "/")], "/any/path", 0),
    ([("Exact", "/foo")], "/foo", 0),
    ([("Exact", "/foo")], "/bar", None),
    ([("Exact", "/foo")], "/foo/", None),
    ([("Exact", "/foo/")], "/foo", None),
    ([("Prefix", "/foo")], "/foo", 0),
    ([("Prefix", "/foo")], "/foo/", 0),
    ([("Prefix", "/foo/")], "/foo", 0),
    ([("Prefix", "/foo/")], "/foo/", 0),
    ([("Prefix", "/aaa/bb")], "/aaa/bbb", None),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbb", 0),
    ([("Prefix", "/aaa/bbb/")], "/aaa/bbb", 0),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbb/", 0),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbb/ccc", 0),
    ([("Prefix", "/aaa/bbb")], "/aaa/bbbxyz", None),
    ([("Prefix", "/"), ("Prefix", "/aaa")], "/aaa/ccc", 1),
    ([("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")], "/aaa/bbb", 2),
    ([("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")], "/ccc", 0),
    ([("Prefix", "/aaa")], "/ccc", None),
    ([("Prefix", "/foo"), ("Exact", "/foo")], "/foo", 1),
]
