"""RBAC's decision, pure: what a request asks (`Attributes`, kube-apiserver's
authorizer.Attributes) against the rules of the roles its user is bound to -> allowed or not,
with the reason (kube-apiserver's `pkg/registry/rbac/validation` rule matching and the
Forbidden message of its responsewriters). Which rules apply to a user is the authorizer's
business (`authorizer.py`: bindings indexed by subject); nothing here reads storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lab.apiserver.errors import ApiError

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Attributes:
    """What one request asks to do. A resource request names verb, API group, resource (and
    subresource), namespace ("" cluster-wide) and name ("" for a collection); a non-resource
    request (`/version`, `/api`, `/healthz`) names its path and verb."""
    user: str
    groups: tuple[str, ...]
    verb: str
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True

    @property
    def resource_path(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


@dataclass(frozen=True)
class Rule:
    """One PolicyRule of a Role or ClusterRole."""
    verbs: tuple[str, ...] = ()
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def parse(cls, rule: Mapping[str, Any]) -> Rule:
        def strings(key: str) -> tuple[str, ...]:
            v = rule.get(key) or ()
            return tuple(s for s in v if isinstance(s, str)) if isinstance(v, list) else ()
        return cls(strings("verbs"), strings("apiGroups"), strings("resources"), strings("resourceNames"),
                   strings("nonResourceURLs"))

    def allows(self, a: Attributes) -> bool:
        if not ("*" in self.verbs or a.verb in self.verbs):
            return False
        if not a.resource_request:
            return any(u == "*" or u == a.path or (u.endswith("*") and a.path.startswith(u[:-1]))
                       for u in self.non_resource_urls)
        return ("*" in self.api_groups or a.api_group in self.api_groups) and self._resource_matches(a) and (
            not self.resource_names or a.name in self.resource_names)

    def _resource_matches(self, a: Attributes) -> bool:
        combined, any_of_sub = a.resource_path, f"*/{a.subresource}" if a.subresource else None
        return any(r in ("*", combined) or r == any_of_sub for r in self.resources)


@dataclass(frozen=True)
class Grant:
    """The rules one binding gives, and where they come from (the allow reason)."""
    binding_kind: str  # RoleBinding | ClusterRoleBinding
    binding: str  # namespace/name for a RoleBinding
    role_kind: str
    role: str
    subject: str  # how the binding names the subject that matched: `User "x"`, `Group "y"`
    rules: Sequence[Rule] = field(default_factory=tuple)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


def decide(a: Attributes, grants: Iterable[Grant]) -> Decision:
    """system:masters may do everything (kube-apiserver's privileged-group authorizer, before
    RBAC); otherwise the first grant whose rules allow the request. No grant: denied, no reason
    (RBAC has no opinion, and no other authorizer follows)."""
    if MASTERS in a.groups:
        return Decision(True, f'allowed: member of group "{MASTERS}"')
    for g in grants:
        if any(r.allows(a) for r in g.rules):
            return Decision(True, f'RBAC: allowed by {g.binding_kind} "{g.binding}" of {g.role_kind} '
                                  f'"{g.role}" to {g.subject}')
    return Decision(False)


def forbidden(a: Attributes, reason: str = "") -> ApiError:
    """The 403 kube-apiserver answers: `<resource>[.<group>] ["<name>"] is forbidden: User "<u>"
    cannot <verb> resource "<r>" in API group "<g>" in the namespace "<ns>"` (or `at the cluster
    scope`; `forbidden: User "<u>" cannot <verb> path "<p>"` for a non-resource request)."""
    if not a.resource_request:
        msg = f'User "{a.user}" cannot {a.verb} path "{a.path}"'
    elif a.namespace:
        msg = (f'User "{a.user}" cannot {a.verb} resource "{a.resource_path}" in API group "{a.api_group}" '
               f'in the namespace "{a.namespace}"')
    else:
        msg = f'User "{a.user}" cannot {a.verb} resource "{a.resource_path}" in API group "{a.api_group}" ' \
              f"at the cluster scope"
    if reason:
        msg = f"{msg}: {reason}"
    if not a.resource_request or not a.resource:
        return ApiError(403, f"forbidden: {msg}", "Forbidden")
    qualified = f"{a.resource}.{a.api_group}" if a.api_group else a.resource
    what = f'{qualified} "{a.name}"' if a.name else qualified
    return ApiError(403, f"{what} is forbidden: {msg}", "Forbidden", name=a.name or None, kind=a.resource,
                    group=a.api_group)


def subject_keys(user: str, groups: Iterable[str]) -> list[str]:
    """The index keys a user's bindings are found under (see `binding_subject_keys`)."""
    return [f"User:{user}", *(f"Group:{g}" for g in groups)]


def binding_subject_keys(binding: Mapping[str, Any]) -> list[str]:
    """The subjects of a (Cluster)RoleBinding as index keys: a ServiceAccount subject is the user
    `system:serviceaccount:<ns>:<name>` (its namespace defaulting to the binding's)."""
    out = []
    binding_ns = (binding.get("metadata") or {}).get("namespace") or ""
    for s in binding.get("subjects") or []:
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            continue
        kind = s.get("kind")
        if kind == "ServiceAccount":
            out.append(f"User:{SERVICE_ACCOUNT_PREFIX}{s.get('namespace') or binding_ns}:{s['name']}")
        elif kind in ("User", "Group"):
            out.append(f"{kind}:{s['name']}")
    return out


def service_account_user(namespace: str, name: str) -> tuple[str, tuple[str, ...]]:
    """A ServiceAccount's user name and groups, as its tokens authenticate."""
    return (f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED))
