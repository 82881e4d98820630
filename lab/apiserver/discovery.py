"""Discovery documents (/api, /apis, /apis/<group>[/<version>]), /version and /openapi/v2.

kubectl 1.20 downloads /openapi/v2 as protobuf for client-side validation and skips validation of
kinds the document has no schema for; an empty but valid document (swagger "2.0" and an info
block) therefore makes `kubectl create/apply` work without `--validate=false`, while the server's
own admission does the validating.
"""

from __future__ import annotations

import platform
import sys

from lab.apiserver import metricsapi
from lab.apiserver.resources import group_versions, resource_list

# Subresources answered by the node agents (nodeproxy.py), listed as kube-apiserver lists them.
AGENT_SUBRESOURCES = (
    ("pods/attach", True, "PodAttachOptions", ["create", "get"]),
    ("pods/exec", True, "PodExecOptions", ["create", "get"]),
    ("pods/log", True, "Pod", ["get"]),
    ("pods/portforward", True, "PodPortForwardOptions", ["create", "get"]),
    ("nodes/proxy", False, "NodeProxyOptions", ["create", "delete", "get", "patch", "update"]),
)

GIT_VERSION = "v1.27.0-knet"


def version() -> dict:
    major, minor = GIT_VERSION[1:].split(".")[:2]
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {"major": major, "minor": minor, "gitVersion": GIT_VERSION, "gitCommit": "", "gitTreeState": "clean",
            "buildDate": "1970-01-01T00:00:00Z", "goVersion": f"python{sys.version_info[0]}.{sys.version_info[1]}",
            "compiler": "cpython", "platform": f"linux/{arch}"}


def api_versions(server_address: str) -> dict:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group(name: str, versions: list[str]) -> dict:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_groups() -> dict:
    groups = [_group(g, vs) for g, vs in group_versions().items() if g]
    groups.append(metricsapi.api_group())  # as an aggregated API's group is listed
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(name: str) -> dict | None:
    if name == metricsapi.GROUP:
        return {"kind": "APIGroup", "apiVersion": "v1", **metricsapi.api_group()}
    versions = group_versions().get(name)
    if not name or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


def resources(group: str, version: str) -> dict | None:
    if (group, version) == (metricsapi.GROUP, metricsapi.VERSION):
        return metricsapi.resource_list()
    out = resource_list(group, version)
    if out is not None and (group, version) == ("", "v1"):
        out["resources"] += [{"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
                              "verbs": verbs} for name, namespaced, kind, verbs in AGENT_SUBRESOURCES]
    return out


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    out, n = bytearray([number << 3 | 2]), len(payload)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out) + payload


def openapi_protobuf() -> bytes:
    """gnostic openapi_v2.Document{swagger: "2.0", info: {title, version}} (no paths, no definitions)."""
    info = _field(1, b"Kubernetes") + _field(2, GIT_VERSION.encode())
    return _field(1, b"2.0") + _field(2, info)


def openapi_json() -> dict:
    return {"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": {}, "definitions": {}}
