"""rbac.authorization.k8s.io/v1: Roles, ClusterRoles and their bindings (validation worded as
kube-apiserver's, `kubectl get` columns), and the subject index the authorizer reads: each
binding under the users and groups it names (`rbac.binding_subject_keys`), prefixed with its
namespace, so that a request finds the bindings of its user in its namespace without a scan."""

from __future__ import annotations

from typing import Any, ClassVar

from lab.apiserver import rbac, tables
from lab.apiserver.strategy import Config, Strategy
from lab.apiserver.tables import AGE, NAME, column, get
from lab.apiserver.validation import Causes

GROUP = "rbac.authorization.k8s.io"
SUBJECT_INDEX = "subject"


def subject_index_key(namespace: str | None, key: str) -> str:
    return f"{namespace or ''}/{key}"


def _validate_rules(c: Causes, obj: dict[str, Any], namespaced: bool) -> None:
    rules = obj.get("rules")
    if rules is None:
        return
    if not isinstance(rules, list):
        c.invalid("rules", rules, "must be a list of rules")
        return
    for i, rule in enumerate(rules):
        f = f"rules[{i}]"
        if not isinstance(rule, dict):
            c.invalid(f, rule, "must be a rule object")
            continue
        if not rule.get("verbs"):
            c.required(f"{f}.verbs", "verbs must contain at least one value")
        urls = rule.get("nonResourceURLs") or []
        if urls:
            if namespaced:
                c.invalid(f"{f}.nonResourceURLs", urls, "namespaced rules cannot apply to non-resource URLs")
            if rule.get("apiGroups") or rule.get("resources"):
                c.invalid(f"{f}.nonResourceURLs", urls,
                          "rules cannot apply to both regular resources and non-resource URLs")
            continue
        if not rule.get("resources"):
            c.required(f"{f}.resources", "resource rules must supply at least one resource")
        if not rule.get("apiGroups"):
            c.required(f"{f}.apiGroups", "resource rules must supply at least one api group")


def _validate_binding(c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cluster: bool) -> None:
    ref = obj.get("roleRef")
    if not isinstance(ref, dict):
        c.required("roleRef")
        return
    if ref.get("apiGroup") != GROUP:
        c.unsupported("roleRef.apiGroup", ref.get("apiGroup", ""), (GROUP,))
    kinds = ("ClusterRole",) if cluster else ("Role", "ClusterRole")
    c.one_of("roleRef.kind", ref.get("kind"), kinds)
    if not ref.get("name"):
        c.required("roleRef.name")
    if old is not None and old.get("roleRef") != ref:
        c.invalid("roleRef", ref, "cannot change roleRef")
    for i, s in enumerate(obj.get("subjects") or []):
        f = f"subjects[{i}]"
        if not isinstance(s, dict):
            c.invalid(f, s, "must be a subject object")
            continue
        if c.one_of(f"{f}.kind", s.get("kind"), ("ServiceAccount", "User", "Group")):
            if not s.get("name"):
                c.required(f"{f}.name")
            if s.get("kind") == "ServiceAccount" and cluster and not s.get("namespace"):
                c.required(f"{f}.namespace")


class _Roles(Strategy):
    name_rule = "path"
    columns = [NAME, column("Created At", "date")]
    namespaced_rules: ClassVar[bool] = True

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        _validate_rules(c, obj, self.namespaced_rules)

    def row(self, obj: dict[str, Any]) -> list[Any]:
        return [tables.name(obj), get(obj, "metadata", "creationTimestamp", default="")]


class Roles(_Roles):
    pass


class ClusterRoles(_Roles):
    namespaced_rules = False


class _Bindings(Strategy):
    name_rule = "path"
    columns = [NAME, column("Role"), AGE]
    custom_indexes = (SUBJECT_INDEX,)
    cluster: ClassVar[bool] = False

    def validate(self, c: Causes, obj: dict[str, Any], old: dict[str, Any] | None, cfg: Config) -> None:
        _validate_binding(c, obj, old, self.cluster)

    def index_values(self, name: str, obj: dict[str, Any]) -> list[str]:
        ns = (obj.get("metadata") or {}).get("namespace")
        return [subject_index_key(ns, k) for k in rbac.binding_subject_keys(obj)]

    def row(self, obj: dict[str, Any]) -> list[Any]:
        ref = obj.get("roleRef") or {}
        return [tables.name(obj), f"{ref.get('kind', '')}/{ref.get('name', '')}", tables.age(obj)]


class RoleBindings(_Bindings):
    pass


class ClusterRoleBindings(_Bindings):
    cluster = True
