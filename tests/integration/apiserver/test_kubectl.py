"""kubectl 1.20 (Debian's kubernetes-client) against knet-apiserver, unchanged and with client-side
validation on: the seeds' node-js Deployment + Service through create/apply/scale/delete, wide
tables, describe, and the server's 422/401/404 answers as kubectl prints them."""

from __future__ import annotations

import json
import os

import pytest

from lab.apiserver import auth
from tests.integration.apiserver.conftest import stored_keys

pytestmark = pytest.mark.integration

NODE_JS = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: node-js
  labels: {name: node-js}
spec:
  replicas: 3
  selector:
    matchLabels: {name: node-js}
  template:
    metadata:
      labels: {name: node-js}
    spec:
      containers:
      - name: node-js
        image: jonbaier/node-express-info:latest
        ports:
        - {containerPort: 80, name: www}
        readinessProbe:
          httpGet: {path: /, port: 80}
---
apiVersion: v1
kind: Service
metadata:
  name: node-js
  labels: {name: node-js}
spec:
  type: NodePort
  ports:
  - {port: 80, targetPort: www, nodePort: 30001}
  selector: {name: node-js}
"""

NODE = {"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node1", "labels": {"kubernetes.io/hostname": "node1"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.33.11"}],
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "nodeInfo": {"kubeletVersion": "v1.27.0-knet", "osImage": "Debian", "kernelVersion": "6.1",
                                "containerRuntimeVersion": "knet://0.1", "architecture": "amd64",
                                "bootID": "", "kubeProxyVersion": "", "machineID": "", "operatingSystem": "linux",
                                "systemUUID": ""}}}


def test_get_nodes_pods_wide(kubectl, ns):
    kubectl("apply", "-f", "-", input=json.dumps(NODE))
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": ns},
           "spec": {"nodeName": "node1", "containers": [{"name": "web", "image": "nginx"}]}}
    kubectl("create", "-f", "-", input=json.dumps(pod))
    out = kubectl("get", "nodes,pods", "-o", "wide", "-n", ns).stdout
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP"]
    assert any(line.startswith("node/node1") and "Ready" in line and "192.168.33.11" in line for line in lines)
    pod_header = next(line for line in lines if line.startswith("NAME") and "READY" in line)
    assert "NOMINATED NODE" in pod_header and "IP" in pod_header
    assert any(line.startswith("pod/web") and "Pending" in line and "node1" in line for line in lines)
    # the object comes back as JSON / jsonpath, and label columns work from the table's metadata
    assert kubectl("get", "pod", "web", "-n", ns, "-o", "jsonpath={.spec.nodeName}").stdout == "node1"
    assert "web" in kubectl("get", "pods", "-n", ns, "--show-labels").stdout
    kubectl("delete", "node", "node1")


def test_node_js_create_apply_scale_delete(kubectl, ns, tmp_path):
    manifest = tmp_path / "node-js.yaml"
    manifest.write_text(NODE_JS)
    out = kubectl("create", "-n", ns, "-f", str(manifest)).stdout
    assert "deployment.apps/node-js created" in out and "service/node-js created" in out
    got = json.loads(kubectl("get", "svc", "node-js", "-n", ns, "-o", "json").stdout)
    assert got["spec"]["ports"][0]["nodePort"] == 30001 and got["spec"]["clusterIP"].startswith("10.")
    assert got["spec"]["sessionAffinity"] == "None"
    # apply twice: the first records last-applied, the second carries a change (replicas 3 -> 2)
    kubectl("apply", "-n", ns, "-f", str(manifest))
    manifest.write_text(NODE_JS.replace("replicas: 3", "replicas: 2"))
    out = kubectl("apply", "-n", ns, "-f", str(manifest)).stdout
    assert "deployment.apps/node-js configured" in out and "service/node-js unchanged" in out
    dep = json.loads(kubectl("get", "deploy", "node-js", "-n", ns, "-o", "json").stdout)
    assert dep["spec"]["replicas"] == 2 and "kubectl.kubernetes.io/last-applied-configuration" in \
        dep["metadata"]["annotations"]
    assert kubectl("apply", "-n", ns, "-f", str(manifest)).stdout.count("unchanged") == 2
    out = kubectl("scale", "-n", ns, "deployment", "node-js", "--replicas=5").stdout
    assert "scaled" in out
    assert kubectl("get", "deploy", "node-js", "-n", ns, "-o", "jsonpath={.spec.replicas}").stdout == "5"
    wide = kubectl("get", "deploy,svc", "-n", ns, "-o", "wide").stdout
    assert "jonbaier/node-express-info:latest" in wide and "80:30001/TCP" in wide and "name=node-js" in wide
    described = kubectl("describe", "svc", "node-js", "-n", ns).stdout
    assert "NodePort:" in described and "30001/TCP" in described and "Selector:" in described
    out = kubectl("delete", "-n", ns, "-f", str(manifest)).stdout
    assert 'deployment.apps "node-js" deleted' in out and 'service "node-js" deleted' in out
    assert "No resources found" in kubectl("get", "deploy,svc", "-n", ns).stderr


def test_replication_controller_scale(kubectl, ns):
    rc = {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "node-js-scale"},
          "spec": {"replicas": 1, "template": {"metadata": {"labels": {"name": "node-js-scale"}},
                                               "spec": {"containers": [{"name": "n", "image": "node"}]}}}}
    kubectl("create", "-n", ns, "-f", "-", input=json.dumps(rc))
    kubectl("scale", "-n", ns, "rc", "node-js-scale", "--replicas=3")
    got = json.loads(kubectl("get", "rc", "node-js-scale", "-n", ns, "-o", "json").stdout)
    assert got["spec"]["replicas"] == 3 and got["spec"]["selector"] == {"name": "node-js-scale"}


def test_statefulset_apply_scale_get(kubectl, ns):
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "whaleset"},
           "spec": {"replicas": 1, "serviceName": "sayhey-svc", "selector": {"matchLabels": {"app": "whale"}},
                    "template": {"metadata": {"labels": {"app": "whale"}},
                                 "spec": {"containers": [{"name": "w", "image": "whale"}]}}}}
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(sts))
    kubectl("scale", "-n", ns, "statefulset", "whaleset", "--replicas=3")
    got = json.loads(kubectl("get", "sts", "whaleset", "-n", ns, "-o", "json").stdout)
    assert got["spec"]["replicas"] == 3 and got["spec"]["podManagementPolicy"] == "OrderedReady"
    assert "whaleset" in kubectl("get", "statefulsets", "-n", ns).stdout
    bad = dict(sts, metadata={"name": "bad"}, spec=dict(sts["spec"], selector={"matchLabels": {"app": "other"}}))
    out = kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "selector" in out.stderr


def test_daemonset_get_restart_and_rollout_status(kubectl, ns, server, api):
    from kubernetes import client
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "node-agent"},
          "spec": {"selector": {"matchLabels": {"app": "agent"}},
                   "template": {"metadata": {"labels": {"app": "agent"}},
                                "spec": {"nodeSelector": {"role": "edge"},
                                         "containers": [{"name": "a", "image": "knet"}]}}}}
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(ds))
    got = json.loads(kubectl("get", "ds", "node-agent", "-n", ns, "-o", "json").stdout)
    assert got["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                             "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert got["spec"]["revisionHistoryLimit"] == 10 and got["metadata"]["generation"] == 1
    header, row = kubectl("get", "daemonsets", "-n", ns).stdout.splitlines()[:2]
    assert header.split() == ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE", "SELECTOR",
                              "AGE"]
    assert row.split()[:7] == ["node-agent", "0", "0", "0", "0", "0", "role=edge"]
    assert "restarted" in kubectl("rollout", "restart", "-n", ns, "ds/node-agent").stdout
    got = json.loads(kubectl("get", "ds", "node-agent", "-n", ns, "-o", "json").stdout)
    assert got["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/restartedAt" in got["spec"]["template"]["metadata"]["annotations"]
    if server.flavour == "lab":  # no controllers here: write the status a DaemonSet controller would
        client.AppsV1Api(api).patch_namespaced_daemon_set_status("node-agent", ns, {"status": {
            "observedGeneration": 2, "desiredNumberScheduled": 0, "updatedNumberScheduled": 0,
            "numberAvailable": 0}})
    out = kubectl("rollout", "status", "-n", ns, "ds/node-agent", "--timeout=60s").stdout
    assert 'daemon set "node-agent" successfully rolled out' in out
    bad = dict(ds, metadata={"name": "bad"}, spec=dict(ds["spec"], selector={"matchLabels": {"app": "other"}}))
    out = kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bad), check=False)
    assert out.returncode != 0 and "`selector` does not match template `labels`" in out.stderr
    moved = dict(ds, spec=dict(ds["spec"], selector={"matchLabels": {"app": "agent", "tier": "x"}}))
    moved["spec"]["template"] = {**ds["spec"]["template"], "metadata": {"labels": {"app": "agent", "tier": "x"}}}
    out = kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(moved), check=False)
    assert out.returncode != 0 and "spec.selector" in out.stderr and "field is immutable" in out.stderr


def test_validation_errors_reach_kubectl(kubectl, ns, server, etcd):
    kubectl("create", "-n", ns, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "fixed"},
         "spec": {"clusterIP": "10.100.125.105", "ports": [{"port": 80}]}}))
    before = stored_keys(etcd, server, ns)
    dup = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dup"},
           "spec": {"clusterIP": "10.100.125.105", "ports": [{"port": 80}]}}
    proc = kubectl("create", "-n", ns, "-f", "-", input=json.dumps(dup), check=False)
    assert proc.returncode != 0
    if server.flavour == "lab":
        assert 'Service "dup" is invalid: spec.clusterIP: Invalid value: "10.100.125.105": provided IP is already ' \
               "allocated" in proc.stderr
    else:  # kube-apiserver names the plural field and says what failed
        assert 'Service "dup" is invalid: spec.clusterIPs: Invalid value: ["10.100.125.105"]: failed to allocate IP ' \
               "10.100.125.105: provided IP is already allocated" in proc.stderr
    far = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "far"},
           "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 40000}]}}
    proc = kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(far), check=False)
    assert proc.returncode != 0
    assert "spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the valid range" in proc.stderr
    assert stored_keys(etcd, server, ns) == before


def test_unknown_resource_and_unauthorized(kubectl, server):
    proc = kubectl("get", "foos", check=False)
    assert proc.returncode != 0 and 'the server doesn\'t have a resource type "foos"' in proc.stderr
    proc = kubectl("get", "--raw", "/api/v1/namespaces/default/foos", check=False)
    assert proc.returncode != 0 and "NotFound" in proc.stderr
    bad = os.path.join(server.tmp, "bad.kubeconfig")
    with open(server.ca, "rb") as f:
        auth.write_kubeconfig(bad, server.url, "nobody", "not-a-token", "test", f.read())
    proc = kubectl("get", "pods", check=False, kubeconfig=bad)
    assert proc.returncode != 0 and "Unauthorized" in proc.stderr
