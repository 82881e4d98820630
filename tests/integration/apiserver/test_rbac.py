"""RBAC enforced: Roles, ClusterRoles and bindings applied with kubectl grant a user exactly
their rules and deleting the binding takes them away; a denied request is 403 with
kube-apiserver's Status message; discovery for every authenticated user; nothing for
system:anonymous beyond health and version."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.integration.apiserver.conftest import JANE_TOKEN, KUBE_PROXY_TOKEN
from tests.integration.apiserver.test_client import raw

pytestmark = pytest.mark.integration

DEADLINE = 30.0  # a binding takes effect once the server's cache (its informers, for kube-apiserver) has it


def wait_for_code(server, path: str, want: int, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    deadline = time.monotonic() + DEADLINE
    while True:
        code, status = raw(server, path, method, JANE_TOKEN, body)
        if code == want or time.monotonic() > deadline:
            return code, status
        time.sleep(0.2)


def jane_kubeconfig(server) -> str:
    with open(server.kubeconfig) as f:
        cfg = json.load(f)
    cfg["users"][0]["user"]["token"] = JANE_TOKEN
    path = os.path.join(server.tmp, "jane.kubeconfig")
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def test_role_binding_grants_and_deleting_it_revokes(server, ns, kubectl):
    secrets = f"/api/v1/namespaces/{ns}/secrets"
    code, status = raw(server, secrets, token=JANE_TOKEN)
    assert code == 403 and status["reason"] == "Forbidden"
    assert status["message"] == (f'secrets is forbidden: User "jane" cannot list resource "secrets" in API group "" '
                                 f'in the namespace "{ns}"')
    manifest = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: secret-reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [allowed]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: jane-reads-secrets, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-reader}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: jane}}
"""
    out = kubectl("apply", "-f", "-", input=manifest).stdout
    assert "role.rbac.authorization.k8s.io/secret-reader created" in out
    assert "rolebinding.rbac.authorization.k8s.io/jane-reads-secrets created" in out
    assert wait_for_code(server, secrets, 200)[0] == 200
    got = kubectl("get", "roles,rolebindings", "-n", ns).stdout
    assert "secret-reader" in got and "Role/secret-reader" in got
    # Only what the Role says: reading, in this namespace, configmaps by name.
    code, status = raw(server, secrets, "POST", JANE_TOKEN, json.dumps(
        {"metadata": {"name": "s"}, "stringData": {"k": "v"}}).encode())
    assert code == 403 and 'cannot create resource "secrets"' in status["message"]
    assert raw(server, "/api/v1/namespaces/default/secrets", token=JANE_TOKEN)[0] == 403
    assert raw(server, f"/api/v1/namespaces/{ns}/configmaps/allowed", token=JANE_TOKEN)[0] == 404  # allowed; absent
    code, status = raw(server, f"/api/v1/namespaces/{ns}/configmaps/other", token=JANE_TOKEN)
    assert code == 403 and status["message"].startswith('configmaps "other" is forbidden: User "jane" cannot get')
    # kubectl as jane sees the same.
    proc = kubectl("get", "configmaps", "-n", ns, kubeconfig=jane_kubeconfig(server), check=False)
    assert proc.returncode != 0 and 'User "jane" cannot list resource "configmaps"' in proc.stderr
    assert kubectl("get", "secrets", "-n", ns, kubeconfig=jane_kubeconfig(server)).returncode == 0
    kubectl("delete", "rolebinding", "jane-reads-secrets", "-n", ns)
    assert wait_for_code(server, secrets, 403)[0] == 403


def test_cluster_role_binding_to_a_group_and_non_resource_urls(server, kubectl):
    # Discovery is for every authenticated user (system:discovery), not for anonymous ones.
    assert raw(server, "/apis", token=JANE_TOKEN)[0] == 200
    assert raw(server, "/api/v1", token=JANE_TOKEN)[0] == 200
    code, status = raw(server, "/apis")
    assert code == 403 and status["message"] == 'forbidden: User "system:anonymous" cannot get path "/apis"'
    assert raw(server, "/healthz")[0] == 200
    code, _ = raw(server, "/api/v1/nodes", token=JANE_TOKEN)
    assert code == 403
    manifest = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: t-node-reader}
rules:
- apiGroups: [""]
  resources: [nodes]
  verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: t-node-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: t-node-reader}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:authenticated"}
"""
    kubectl("apply", "-f", "-", input=manifest)
    try:
        assert wait_for_code(server, "/api/v1/nodes", 200)[0] == 200
        assert raw(server, "/api/v1/nodes/x", token=JANE_TOKEN)[0] == 403  # list, not get
        assert raw(server, "/api/v1/nodes")[0] == 403  # anonymous is not authenticated
    finally:
        kubectl("delete", "clusterrolebinding,clusterrole", "t-node-reader")
    assert wait_for_code(server, "/api/v1/nodes", 403)[0] == 403


def test_invalid_rbac_objects_are_422(server, ns):
    from tests.integration.apiserver.conftest import ADMIN_TOKEN
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    code, status = raw(server, f"{base}/rolebindings", "POST", ADMIN_TOKEN, json.dumps(
        {"metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Pod", "name": "x"},
         "subjects": [{"kind": "User", "name": "jane"}]}).encode())
    assert code == 422 and [c["field"] for c in status["details"]["causes"]] == ["roleRef.kind"]
    code, status = raw(server, f"{base}/roles", "POST", ADMIN_TOKEN, json.dumps(
        {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"]}]}).encode())
    assert code == 422 and [c["field"] for c in status["details"]["causes"]] == ["rules[0].verbs"]


def test_kube_proxy_gets_what_system_node_proxier_grants(server):
    """The bootstrap role kube-apiserver gives kube-proxy's user (kubeadm's system:kube-proxy):
    the Services, EndpointSlices, Nodes and ServiceCIDRs it watches, and nothing else."""
    for path in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices", "/api/v1/nodes",
                 "/apis/networking.k8s.io/v1/servicecidrs"):
        code, status = raw(server, path, token=KUBE_PROXY_TOKEN)
        assert code == 200, (path, status)
    code, status = raw(server, "/api/v1/secrets", token=KUBE_PROXY_TOKEN)
    assert code == 403 and status["message"] == ('secrets is forbidden: User "system:kube-proxy" cannot list '
                                                 'resource "secrets" in API group "" at the cluster scope')
    code, status = raw(server, "/api/v1/namespaces/default/pods", token=KUBE_PROXY_TOKEN)
    assert code == 403, status
