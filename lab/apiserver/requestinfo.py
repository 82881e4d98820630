"""A request's authorization attributes from its method, path and query, before routing (as
kube-apiserver's RequestInfoFactory): `/api/v1/...` and `/apis/<group>/<version>/...` are resource
requests, everything else (discovery, `/version`, `/metrics`, `/openapi/v2`) a non-resource one.

Verbs as RBAC asks them: GET is get, list (no name) or watch (`?watch=true` or the legacy
`/watch/` prefix); POST create; PUT update; PATCH patch; DELETE delete or deletecollection. A
namespace is its own namespace (`/api/v1/namespaces/x` is in namespace x). The streaming pod
subresources (exec, attach, portforward) are `create` for a WebSocket's GET too, as
kube-apiserver asks since 1.30.
"""

from __future__ import annotations

from collections.abc import Mapping

from lab.apiserver.rbac import Attributes

# Paths under /namespaces/<name>/ that are subresources of the namespace, not resources in it.
NAMESPACE_SUBRESOURCES = ("status", "finalize")
STREAMING_SUBRESOURCES = ("exec", "attach", "portforward")
_WRITE_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def attributes(method: str, path: str, query: Mapping[str, str], user: str, groups: tuple[str, ...]) -> Attributes:
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return Attributes(user, groups, _non_resource_verb(method), path=path or "/", resource_request=False)
    watch = rest[0] == "watch"
    if watch:
        rest = rest[1:]
    namespace = ""
    if rest and rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if method in ("GET", "HEAD"):
        if watch or query.get("watch", "").lower() in ("1", "true"):
            verb = "watch"
        elif name:
            verb = "get"
        else:
            verb = "list"
        if verb in ("list", "watch") and not name:
            name = _name_from_field_selector(query.get("fieldSelector", ""))
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _WRITE_VERBS.get(method, method.lower())
    if resource == "pods" and subresource in STREAMING_SUBRESOURCES:
        verb = "create"
    return Attributes(user, groups, verb, group, resource, subresource, namespace, name, path)


def _non_resource_verb(method: str) -> str:
    return {"GET": "get", "HEAD": "get", "POST": "post", "PUT": "put", "PATCH": "patch",
            "DELETE": "delete"}.get(method, method.lower())


def _name_from_field_selector(selector: str) -> str:
    """A list or watch of one object by `metadata.name=<n>` is authorized for that name."""
    for term in selector.split(","):
        key, op, value = term.partition("==") if "==" in term else term.partition("=")
        if op and key.strip() == "metadata.name" and not key.endswith("!"):
            return value.strip()
    return ""
