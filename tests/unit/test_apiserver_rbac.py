"""RBAC, the pure parts: rule matching (verbs, API groups, resources and subresources,
resourceNames, nonResourceURLs, wildcards), system:masters, the Forbidden message, request
attributes from paths, binding subjects; and the lab's identities against deploy/'s
ServiceAccounts."""

from __future__ import annotations

import os

import pytest
import yaml

from lab.apiserver import auth, rbac, requestinfo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def res(verb: str, resource: str, group: str = "", sub: str = "", ns: str = "", name: str = "",
        user: str = "u", groups: tuple[str, ...] = ("system:authenticated",)) -> rbac.Attributes:
    return rbac.Attributes(user, groups, verb, group, resource, sub, ns, name, "/x")


def url(verb: str, path: str) -> rbac.Attributes:
    return rbac.Attributes("u", (), verb, path=path, resource_request=False)


R = rbac.Rule.parse
CASES = [
    # (rule, attributes, allowed)
    (R({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}), res("get", "pods"), True),
    (R({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}), res("list", "pods"), False),
    (R({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}), res("deletecollection", "pods"), True),
    (R({"apiGroups": ["apps"], "resources": ["pods"], "verbs": ["get"]}), res("get", "pods"), False),
    (R({"apiGroups": ["*"], "resources": ["deployments"], "verbs": ["get"]}), res("get", "deployments", "apps"), True),
    (R({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}), res("get", "secrets"), True),
    # a subresource is its own resource: pods does not give pods/log, pods/log does not give pods
    (R({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}), res("get", "pods", sub="log"), False),
    (R({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}), res("get", "pods", sub="log"), True),
    (R({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}), res("get", "pods"), False),
    (R({"apiGroups": [""], "resources": ["*/status"], "verbs": ["patch"]}),
     res("patch", "nodes", sub="status"), True),
    (R({"apiGroups": [""], "resources": ["*/status"], "verbs": ["patch"]}), res("patch", "nodes"), False),
    (R({"apiGroups": [""], "resources": ["*"], "verbs": ["create"]}), res("create", "pods", sub="exec"), True),
    # resourceNames: only those names; a list (no name) is not covered
    (R({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get"]}),
     res("get", "configmaps", name="a"), True),
    (R({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["get"]}),
     res("get", "configmaps", name="b"), False),
    (R({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"], "verbs": ["list"]}),
     res("list", "configmaps"), False),
    # nonResourceURLs: exact, prefix with a trailing *, or *; never for resource requests
    (R({"nonResourceURLs": ["/version"], "verbs": ["get"]}), url("get", "/version"), True),
    (R({"nonResourceURLs": ["/version"], "verbs": ["get"]}), url("get", "/versions"), False),
    (R({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]}), url("get", "/apis/apps/v1"), True),
    (R({"nonResourceURLs": ["/apis/*"], "verbs": ["get"]}), url("get", "/api"), False),
    (R({"nonResourceURLs": ["*"], "verbs": ["*"]}), url("post", "/anything"), True),
    (R({"nonResourceURLs": ["*"], "verbs": ["*"]}), res("get", "pods"), False),
    (R({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}), url("get", "/metrics"), False),
]


@pytest.mark.parametrize(("rule", "attrs", "allowed"), CASES)
def test_rule_matching(rule: rbac.Rule, attrs: rbac.Attributes, allowed: bool) -> None:
    assert rule.allows(attrs) is allowed


def grant(*rules: dict) -> rbac.Grant:
    return rbac.Grant("ClusterRoleBinding", "b", "ClusterRole", "r", 'User "u"', [R(r) for r in rules])


def test_decide_masters_grants_and_reasons() -> None:
    assert rbac.decide(res("delete", "secrets", groups=("system:masters",)), []).allowed
    assert rbac.decide(res("get", "pods"), []) == rbac.Decision(False)
    d = rbac.decide(res("get", "pods"), [grant({"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}),
                                         grant({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})])
    assert d.allowed and d.reason == 'RBAC: allowed by ClusterRoleBinding "b" of ClusterRole "r" to User "u"'


def test_forbidden_messages_as_kube_apiserver_words_them() -> None:
    sa = "system:serviceaccount:knet-system:knet-node"
    e = rbac.forbidden(res("list", "secrets", ns="default", user=sa))
    assert (e.code, e.reason) == (403, "Forbidden")
    assert e.message == (f'secrets is forbidden: User "{sa}" cannot list resource "secrets" in API group "" '
                         f'in the namespace "default"')
    assert e.status()["details"] == {"kind": "secrets"}
    e = rbac.forbidden(res("get", "deployments", "apps", name="web", user="jane"))
    assert e.message == ('deployments.apps "web" is forbidden: User "jane" cannot get resource "deployments" in '
                         'API group "apps" at the cluster scope')
    e = rbac.forbidden(res("create", "pods", sub="exec", ns="n", name="p", user="jane"))
    assert e.message.startswith('pods "p" is forbidden: User "jane" cannot create resource "pods/exec"')
    assert rbac.forbidden(url("get", "/metrics")).message == 'forbidden: User "u" cannot get path "/metrics"'


ATTRS = [
    ("GET", "/api/v1/namespaces/default/pods", {}, ("list", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "true"}, ("watch", "", "pods", "", "default", "")),
    ("GET", "/api/v1/watch/namespaces/default/pods", {}, ("watch", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods/p", {}, ("get", "", "pods", "", "default", "p")),
    ("GET", "/api/v1/namespaces/default/pods/p/log", {}, ("get", "", "pods", "log", "default", "p")),
    ("GET", "/api/v1/namespaces/default/pods/p/exec", {}, ("create", "", "pods", "exec", "default", "p")),
    ("POST", "/api/v1/namespaces/default/pods/p/portforward", {},
     ("create", "", "pods", "portforward", "default", "p")),
    ("PATCH", "/api/v1/nodes/n1/status", {}, ("patch", "", "nodes", "status", "", "n1")),
    ("DELETE", "/apis/apps/v1/namespaces/x/deployments", {}, ("deletecollection", "apps", "deployments", "", "x", "")),
    ("PUT", "/apis/apps/v1/namespaces/x/deployments/d/scale", {}, ("update", "apps", "deployments", "scale", "x", "d")),
    ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
    ("GET", "/api/v1/namespaces/kube-system", {}, ("get", "", "namespaces", "", "kube-system", "kube-system")),
    ("PUT", "/api/v1/namespaces/x/finalize", {}, ("update", "", "namespaces", "finalize", "x", "x")),
    ("GET", "/api/v1/services", {"fieldSelector": "metadata.name=kubernetes"},
     ("list", "", "services", "", "", "kubernetes")),
    ("GET", "/api/v1/services", {"fieldSelector": "metadata.name!=kubernetes"}, ("list", "", "services", "", "", "")),
    # what the node agents answer (kube-apiserver proxies them to the kubelet)
    ("GET", "/api/v1/nodes/n1/proxy/stats/summary", {}, ("get", "", "nodes", "proxy", "", "n1")),
    ("POST", "/api/v1/namespaces/d/pods/p/attach", {}, ("create", "", "pods", "attach", "d", "p")),
    ("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/d/pods", {}, ("list", "metrics.k8s.io", "pods", "", "d", "")),
]


@pytest.mark.parametrize(("method", "path", "query", "want"), ATTRS)
def test_request_attributes(method: str, path: str, query: dict, want: tuple) -> None:
    a = requestinfo.attributes(method, path, query, "u", ())
    assert a.resource_request
    assert (a.verb, a.api_group, a.resource, a.subresource, a.namespace, a.name) == want


@pytest.mark.parametrize(("path", "verb"), [("/api", "get"), ("/api/v1", "get"), ("/apis/apps", "get"),
                                            ("/apis/apps/v1", "get"), ("/version", "get"), ("/metrics", "get")])
def test_non_resource_requests(path: str, verb: str) -> None:
    a = requestinfo.attributes("GET", path, {}, "u", ())
    assert not a.resource_request and (a.verb, a.path) == (verb, path)


def test_binding_subjects_as_users_and_groups() -> None:
    binding = {"metadata": {"name": "b", "namespace": "team"}, "subjects": [
        {"kind": "ServiceAccount", "name": "kdns", "namespace": "kube-system"},
        {"kind": "ServiceAccount", "name": "builder"},  # the binding's namespace
        {"kind": "User", "name": "jane"}, {"kind": "Group", "name": "devs"}, {"kind": "Robot", "name": "x"}]}
    assert rbac.binding_subject_keys(binding) == [
        "User:system:serviceaccount:kube-system:kdns", "User:system:serviceaccount:team:builder",
        "User:jane", "Group:devs"]
    assert rbac.subject_keys("jane", ("devs",)) == ["User:jane", "Group:devs"]


def _service_accounts() -> dict[str, str]:
    """Deployment/DaemonSet name -> system:serviceaccount:<ns>:<serviceAccountName> in deploy/."""
    out = {}
    for f in ("node-daemonset.yaml", "kdns.yaml", "ingress.yaml"):
        with open(os.path.join(REPO, "deploy", f)) as fh:
            for doc in yaml.safe_load_all(fh):
                if isinstance(doc, dict) and doc.get("kind") in ("DaemonSet", "Deployment"):
                    sa = doc["spec"]["template"]["spec"]["serviceAccountName"]
                    out[doc["metadata"]["name"]] = f"system:serviceaccount:{doc['metadata']['namespace']}:{sa}"
    return out


def test_lab_identities_are_the_service_accounts_deploy_runs_components_as() -> None:
    accounts = _service_accounts()
    node = next(v for k, v in accounts.items() if "node" in k)
    assert {auth.LAB_IDENTITIES[k][0] for k in ("kproxy", "netpolicy", "flannel")} == {node}
    assert auth.LAB_IDENTITIES["kdns"][0] in accounts.values() and "kdns" in auth.LAB_IDENTITIES["kdns"][0]
    assert auth.LAB_IDENTITIES["ingress"][0] in accounts.values()
    for key in ("kproxy", "kdns", "ingress"):
        name, groups = auth.LAB_IDENTITIES[key]
        ns = name.split(":")[2]
        assert set(groups) == {"system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"}
        assert "system:masters" not in groups
    assert auth.LAB_IDENTITIES["admin"] == ("admin", ("system:masters",))


def test_tokens_file_round_trip(tmp_path) -> None:
    path = str(tmp_path / "tokens.csv")
    tokens = auth.ensure_tokens(path, ["admin", "kproxy", "someone"])
    users = auth.load_tokens(path)
    assert users[tokens["kproxy"]] == auth.User("system:serviceaccount:knet-system:knet-node", "kproxy", (
        "system:serviceaccounts", "system:serviceaccounts:knet-system", "system:authenticated"))
    assert users[tokens["admin"]].groups == ("system:masters", "system:authenticated")
    assert users[tokens["someone"]] == auth.User("someone", "someone", ("system:authenticated",))
    assert auth.ensure_tokens(path, ["admin", "kproxy"]) == tokens  # kept across restarts
    assert auth.authenticate(users, f"Bearer {tokens['admin']}").name == "admin"
    assert auth.authenticate(users, "Bearer nope") is None


def test_authorizer_reads_only_the_requesters_bindings() -> None:
    """Grants come from the subject index of the watch cache: with thousands of other users'
    bindings stored, a request sees exactly its own user's and groups' bindings."""
    from lab.apiserver.authorizer import RbacAuthorizer
    from lab.apiserver.cache import WatchCache
    from lab.apiserver.resources import RESOURCES, by_kind
    from lab.apiserver.storage import Store

    store = Store("http://127.0.0.1:1", "/registry")  # keys only: never contacted
    cache = WatchCache(store, RESOURCES)
    g = "rbac.authorization.k8s.io"

    def put(kind: str, plural: str, obj: dict, ns: str | None = None) -> None:
        cache.kind(by_kind(g, kind)).put(store.key(plural, ns, obj["metadata"]["name"]), obj)

    def binding(name: str, ns: str | None, role_kind: str, role: str, *subjects: dict) -> dict:
        meta = {"name": name, **({"namespace": ns} if ns else {})}
        return {"metadata": meta, "roleRef": {"apiGroup": g, "kind": role_kind, "name": role},
                "subjects": list(subjects)}
    put("ClusterRole", "clusterroles", {"metadata": {"name": "reader"},
                                        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    put("Role", "roles", {"metadata": {"name": "secrets", "namespace": "team"},
                          "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}, "team")
    for i in range(3000):
        put("ClusterRoleBinding", "clusterrolebindings",
            binding(f"other-{i}", None, "ClusterRole", "reader", {"kind": "User", "name": f"user-{i}"}))
        put("RoleBinding", "rolebindings",
            binding(f"other-{i}", "team", "Role", "secrets", {"kind": "User", "name": f"user-{i}"}), "team")
    put("RoleBinding", "rolebindings", binding("jane", "team", "Role", "secrets",
                                               {"kind": "User", "name": "jane"}), "team")
    put("ClusterRoleBinding", "clusterrolebindings", binding("devs", None, "ClusterRole", "reader",
                                                             {"kind": "Group", "name": "devs"}))
    authz = RbacAuthorizer(cache)
    grants = list(authz.grants("jane", ("devs",), "team"))
    assert [(x.binding_kind, x.binding, x.subject) for x in grants] == [
        ("ClusterRoleBinding", "devs", 'Group "devs"'), ("RoleBinding", "team/jane", 'User "jane"')]
    jane = ("jane", ("devs", "system:authenticated"))
    assert authz.authorize(rbac.Attributes(*jane, "get", "", "secrets", "", "team", "s")).allowed
    assert not authz.authorize(rbac.Attributes(*jane, "get", "", "secrets", "", "other", "s")).allowed
    assert authz.authorize(rbac.Attributes(*jane, "list", "", "pods")).reason.endswith('to Group "devs"')
    assert not authz.authorize(rbac.Attributes("nobody", (), "list", "", "pods")).allowed
