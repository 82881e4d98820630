"""start_in_lab(): the server in a lab's ctl namespace, kubectl on the host through the loopback
listener of the root namespace, a component inside a node namespace through the lab LAN."""

from __future__ import annotations

import json
import os
import secrets
import sys

import pytest

from knet import netns
from lab import api
from lab.apiserver import auth
from lab.apiserver.main import start_in_lab
from lab.bringup import etcd
from lab.net import topology

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab_server(request: pytest.FixtureRequest):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces)")
    name = "kt" + secrets.token_hex(2)
    request.addfinalizer(lambda: api.down(name))  # registered first: whatever happens, the lab goes
    lab = api.up(name, nodes=1, overlay="static", agents=False)
    plan = topology.plan(name, 1, "knet-cni", topology.STATE_ROOT, "static")
    etcd.start(plan, lambda _msg: None)
    srv = start_in_lab(name, "http://127.0.0.1:2379", state_dir=plan.state_dir)
    request.addfinalizer(srv.stop)
    return lab, plan, srv


def _server_of(path: str) -> str:
    with open(path) as f:
        return json.load(f)["clusters"][0]["cluster"]["server"]


def test_lab_listeners_and_kubeconfigs(lab_server, kubectl):
    lab, plan, srv = lab_server
    # The host's kubeconfigs point at the root namespace's loopback listener, never at the lab LAN
    # (checked before anything connects: from the root namespace that address is off-limits).
    assert srv.host_url.startswith("https://127.0.0.1:") and _server_of(srv.kubeconfig) == srv.host_url
    assert _server_of(os.path.join(plan.state_dir, "kubeconfig")) == srv.host_url
    assert all(_server_of(p) == "https://192.168.33.2:6443" for p in srv.kubeconfigs.values())
    assert oct(os.stat(srv.tokens_file).st_mode & 0o777) == "0o600"
    # the process lives in the ctl namespace
    assert srv.pid in netns.pids(plan.ctl.netns)
    out = kubectl("get", "svc,endpoints", "-n", "default", "-o", "wide", kubeconfig=srv.kubeconfig).stdout
    assert "10.96.0.1" in out and "192.168.33.2:6443" in out
    code = ("from kubernetes import client, config\n"
            f"api = config.new_client_from_config(config_file={srv.kubeconfigs['kproxy']!r})\n"
            "svc = client.CoreV1Api(api).list_namespaced_service('default',\n"
            "                                                    field_selector='metadata.name=kubernetes')\n"
            "print(svc.items[0].spec.cluster_ip)\n")
    proc = lab.exec("node1", [sys.executable, "-c", code])
    assert proc.returncode == 0 and proc.stdout.strip() == "10.96.0.1", proc.stderr
    with open(os.path.join(plan.state_dir, "apiserver", "apiserver.log")) as f:
        log = f.read()
    assert "user=system:serviceaccount:knet-system:knet-node" in log and "user=admin" in log
    assert not any(token in log for token in auth.load_tokens(srv.tokens_file))  # tokens never logged


SECRETS_PROBE = """
import json, sys
from kubernetes import client, config
from kubernetes.client.rest import ApiException
core = client.CoreV1Api(config.new_client_from_config(config_file=sys.argv[1]))
out = {}
for verb, call in (("list", lambda: core.list_namespaced_secret("default")),
                   ("create", lambda: core.create_namespaced_secret("default", {"metadata": {"name": "probe"}}))):
    try:
        call()
        out[verb] = [200, ""]
    except ApiException as e:
        out[verb] = [e.status, json.loads(e.body)["message"]]
print(json.dumps(out))
"""


def test_component_identities_cannot_touch_secrets_the_admin_can(lab_server, kubectl):
    """deploy/rbac.yaml, enforced: kproxy (the knet-node ServiceAccount) and kdns (its own) may
    list and watch Services and EndpointSlices, nothing about Secrets; the admin may."""
    lab, _, srv = lab_server
    for component, user in (("kproxy", "system:serviceaccount:knet-system:knet-node"),
                            ("kdns", "system:serviceaccount:kube-system:kdns")):
        proc = lab.exec("node1", [sys.executable, "-c", SECRETS_PROBE, srv.kubeconfigs[component]])
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        assert got["list"] == [403, f'secrets is forbidden: User "{user}" cannot list resource "secrets" in API '
                                    f'group "" in the namespace "default"'], got
        assert got["create"] == [403, f'secrets is forbidden: User "{user}" cannot create resource "secrets" in API '
                                      f'group "" in the namespace "default"'], got
    kubectl("create", "secret", "generic", "admin-made", "--from-literal=k=v", "-n", "default",
            kubeconfig=srv.kubeconfig)
    assert "admin-made" in kubectl("get", "secrets", "-n", "default", kubeconfig=srv.kubeconfig).stdout
    # The policy the lab's server was given is deploy/rbac.yaml itself.
    assert "knet:kproxy" in kubectl("get", "clusterrolebindings", kubeconfig=srv.kubeconfig).stdout
