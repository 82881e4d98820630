"""Who may do what, from the RBAC objects in the watch cache: the bindings of a request's user and
groups come from the bindings' subject index (its namespace's RoleBindings and the
ClusterRoleBindings), their roles by name; `rbac.decide` does the rest. A request costs the
bindings of its own subjects, never a scan of all bindings. The cache lags etcd by the watch's
latency, as kube-apiserver's RBAC informers do: a new binding takes effect a moment after it is
written.

Modes (kube-apiserver's --authorization-mode): `AlwaysAllow` (every authenticated user may do
everything; kube-apiserver's default, the standalone server's too) and `RBAC` (the lab).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from lab.apiserver import rbac
from lab.apiserver.kinds.rbac import GROUP, SUBJECT_INDEX, subject_index_key
from lab.apiserver.resources import by_kind

if TYPE_CHECKING:
    from lab.apiserver.cache import WatchCache

MODES = ("AlwaysAllow", "RBAC")


class AlwaysAllow:
    def authorize(self, a: rbac.Attributes) -> rbac.Decision:
        return rbac.Decision(True, "AlwaysAllow")


class RbacAuthorizer:
    def __init__(self, cache: WatchCache) -> None:
        self.cache = cache
        self.roles = cache.kind(by_kind(GROUP, "Role"))
        self.cluster_roles = cache.kind(by_kind(GROUP, "ClusterRole"))
        self.bindings = cache.kind(by_kind(GROUP, "RoleBinding"))
        self.cluster_bindings = cache.kind(by_kind(GROUP, "ClusterRoleBinding"))
        self.index = f"custom:{SUBJECT_INDEX}"

    def authorize(self, a: rbac.Attributes) -> rbac.Decision:
        return rbac.decide(a, self.grants(a.user, a.groups, a.namespace if a.resource_request else ""))

    def grants(self, user: str, groups: tuple[str, ...], namespace: str) -> Iterator[rbac.Grant]:
        """The grants of `user`/`groups`: cluster-wide ones, then those of `namespace` (lazily:
        the first that allows ends the search)."""
        for key in rbac.subject_keys(user, groups):
            for b in self.cluster_bindings.by_index(self.index, subject_index_key(None, key)):
                yield self._grant(b, key, None)
        if namespace:
            for key in rbac.subject_keys(user, groups):
                for b in self.bindings.by_index(self.index, subject_index_key(namespace, key)):
                    yield self._grant(b, key, namespace)

    def _grant(self, binding: dict, key: str, namespace: str | None) -> rbac.Grant:
        ref = binding.get("roleRef") or {}
        kind, name = ref.get("kind", ""), ref.get("name", "")
        if kind == "Role" and namespace:
            role = self.roles.get(self.cache.store.key("roles", namespace, name))
        elif kind == "ClusterRole":
            role = self.cluster_roles.get(self.cache.store.key("clusterroles", None, name))
        else:
            role = None
        rules = tuple(rbac.Rule.parse(r) for r in (role or {}).get("rules") or [] if isinstance(r, dict))
        subject_kind, _, subject = key.partition(":")
        meta = binding.get("metadata") or {}
        where = f"{namespace}/{meta.get('name', '')}" if namespace else meta.get("name", "")
        return rbac.Grant("RoleBinding" if namespace else "ClusterRoleBinding", where, kind, name,
                          f'{subject_kind} "{subject}"', rules)
