"""DaemonSets in the lab end to end: the controller keeps one pod per matching node as nodes gain
and lose the label, appear and go; `kubectl rollout restart` replaces every pod within
maxUnavailable and `kubectl rollout status` sees it finish; deleting the set deletes its pods.
And what daemon pods need of the node agent: host network, init containers, volumes, env."""

from __future__ import annotations

import json
import os
import secrets

import pytest

from knet import netns
from knet.kube import client
from tests.integration.controlplane.cp_helpers import ControlPlaneLab, wait_for

pytestmark = pytest.mark.integration

LABEL = "ds.knet.test/run"


def daemonset(name: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"ds": name}},
                     "template": {"metadata": {"labels": {"ds": name}},
                                  "spec": {"nodeSelector": {LABEL: "yes"},
                                           "containers": [{"name": "p", "image": "registry.k8s.io/pause:3.9"}]}}}}


def placed(cp: ControlPlaneLab, name: str) -> dict[str, dict]:
    """node -> the set's live pod there."""
    return {p["spec"]["nodeName"]: p for p in cp.pods(f"ds={name}") if not p["metadata"].get("deletionTimestamp")}


def running_on(cp: ControlPlaneLab, name: str, nodes: set[str]) -> dict[str, dict]:
    def ok():
        got = placed(cp, name)
        ready = {n for n, p in got.items() if any(c["type"] == "Ready" and c["status"] == "True"
                                                  for c in p.get("status", {}).get("conditions", []))}
        return got if set(got) == nodes and ready >= nodes & {"node1", "node2"} else None
    return wait_for(ok, 60, f"daemon pods on exactly {sorted(nodes)}")


def test_one_pod_per_matching_node_follows_labels_and_nodes(cp: ControlPlaneLab) -> None:
    name = "agentd"
    try:
        cp.kubectl("label", "node", "node1", f"{LABEL}=yes")
        cp.kubectl("apply", "-f", "-", input=json.dumps(daemonset(name)))
        pods = running_on(cp, name, {"node1"})
        pod = pods["node1"]
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
        assert pod["metadata"]["labels"]["controller-revision-hash"]
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"] == [{"matchFields": [{"key": "metadata.name", "operator": "In",
                                                                 "values": ["node1"]}]}]
        tolerated = {(t["key"], t["effect"]) for t in pod["spec"]["tolerations"]}
        assert ("node.kubernetes.io/not-ready", "NoExecute") in tolerated
        cp.kubectl("label", "node", "node2", f"{LABEL}=yes")
        running_on(cp, name, {"node1", "node2"})
        cp.kubectl("label", "node", "node1", f"{LABEL}-")
        running_on(cp, name, {"node2"})
        # A node that joins (no agent behind it: its pod stays Pending there) and leaves.
        client.create(cp.api, "Node", {"metadata": {"name": "ghost", "labels": {LABEL: "yes"}}})
        running_on(cp, name, {"node2", "ghost"})
        client.delete(cp.api, "Node", "ghost")
        running_on(cp, name, {"node2"})
        ds = wait_for(lambda: (d := client.get(cp.api, "DaemonSet", name, "default"))["status"].get(
            "numberReady") == 1 and d["status"].get("desiredNumberScheduled") == 1 and d, 30, "the set's status")
        assert ds["status"]["observedGeneration"] == ds["metadata"]["generation"]
        row = cp.kubectl("get", "ds", name).stdout.splitlines()[1].split()
        assert row[:7] == [name, "1", "1", "1", "1", "1", f"{LABEL}=yes"]
    finally:
        cp.kubectl("delete", "ds", name, "--ignore-not-found")
        client.delete(cp.api, "Node", "ghost")
        for node in ("node1", "node2"):
            cp.kubectl("label", "node", node, f"{LABEL}-", check=False)
    wait_for(lambda: not cp.pods(f"ds={name}"), 60, "the set's pods to go with it")


def test_rollout_restart_replaces_every_pod(cp: ControlPlaneLab) -> None:
    name = "rolld"
    try:
        for node in ("node1", "node2"):
            cp.kubectl("label", "node", node, f"{LABEL}=yes")
        cp.kubectl("apply", "-f", "-", input=json.dumps(daemonset(name)))
        before = running_on(cp, name, {"node1", "node2"})
        cp.kubectl("rollout", "status", f"ds/{name}", "--timeout=90s")
        cp.kubectl("rollout", "restart", f"ds/{name}")
        out = cp.kubectl("rollout", "status", f"ds/{name}", "--timeout=120s").stdout
        assert f'daemon set "{name}" successfully rolled out' in out
        after = running_on(cp, name, {"node1", "node2"})
        old_names = {p["metadata"]["name"] for p in before.values()}
        assert not old_names & {p["metadata"]["name"] for p in after.values()}, "every pod replaced"
        hashes = {p["metadata"]["labels"]["controller-revision-hash"] for p in after.values()}
        assert len(hashes) == 1 and hashes != {p["metadata"]["labels"]["controller-revision-hash"]
                                               for p in before.values()}
    finally:
        cp.kubectl("delete", "ds", name, "--ignore-not-found")
        for node in ("node1", "node2"):
            cp.kubectl("label", "node", node, f"{LABEL}-", check=False)
    wait_for(lambda: not cp.pods(f"ds={name}"), 60, "the set's pods to go with it")


def test_host_network_pod_with_init_container_configmap_volume_and_env(cp: ControlPlaneLab) -> None:
    """A hostNetwork pod of the `knet` image serves, on its node's address, a file its init
    container made from a ConfigMap volume; its port comes from the ConfigMap through env and
    $(VAR) in its command. Removing it leaves the node's namespace alone."""
    port = str(18000 + secrets.randbelow(1000))
    client.create(cp.api, "ConfigMap", {"metadata": {"name": "greeting"},
                                        "data": {"message": "hello from a configmap\n", "port": port}}, "default")
    pod = {"metadata": {"name": "hostweb"}, "spec": {
        "nodeName": "node1", "hostNetwork": True,
        "volumes": [{"name": "config", "configMap": {"name": "greeting"}}, {"name": "work", "emptyDir": {}}],
        "initContainers": [{"name": "prepare", "image": "busybox",
                            "command": ["sh", "-c", "cp /mnt/message /srv/index.html && echo init >> /srv/index.html"],
                            "volumeMounts": [{"name": "config", "mountPath": "/mnt", "readOnly": True},
                                             {"name": "work", "mountPath": "/srv"}]}],
        "containers": [{"name": "web", "image": "ghcr.io/knet-project/knet:latest",
                        "command": ["python3", "-m", "http.server", "$(PORT)", "--bind", "$(NODE_IP)",
                                    "--directory", "/srv"],
                        "env": [{"name": "PORT", "valueFrom": {"configMapKeyRef": {"name": "greeting", "key": "port"}}},
                                {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
                        "readinessProbe": {"tcpSocket": {"port": int(port)}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "work", "mountPath": "/srv", "readOnly": True}]}]}}
    node1 = cp.lab.node("node1")
    try:
        client.create(cp.api, "Pod", pod, "default")
        got = wait_for(lambda: (p := client.get(cp.api, "Pod", "hostweb", "default")) and any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])) and p,
            60, "the hostNetwork pod to be ready")
        assert got["status"]["podIP"] == node1["ip"] == got["status"]["hostIP"]
        (init,) = got["status"]["initContainerStatuses"]
        assert init["state"]["terminated"]["exitCode"] == 0 and init["state"]["terminated"]["reason"] == "Completed"
        body = cp.http(cp.lab.netns("node2"), f"http://{node1['ip']}:{port}/index.html")
        assert body == "hello from a configmap\ninit\n"
        assert not os.path.exists("/srv/index.html"), "the volume is the pod's, not the machine's"
    finally:
        client.delete(cp.api, "Pod", "hostweb", "default")
        client.delete(cp.api, "ConfigMap", "greeting", "default")
    wait_for(lambda: client.get(cp.api, "Pod", "hostweb", "default") is None, 60, "the pod to go")
    assert node1["ip"] in netns.run(cp.lab.netns("node1"), ["ip", "-4", "-o", "addr"]).stdout, \
        "the node's namespace and address survive the pod"


def test_killed_daemon_container_is_restarted_by_its_node_agent(cp: ControlPlaneLab) -> None:
    """A DaemonSet of the `knet` image on the host network (a /healthz server), as deploy/'s
    node DaemonSet runs knet: SIGKILL of one pod's process brings it back, restartCount 1, healthy."""
    name, port = "healthd", 19000 + secrets.randbelow(1000)
    ds = daemonset(name)
    ds["spec"]["template"]["spec"] = {
        "hostNetwork": True, "nodeSelector": {LABEL: "yes"},
        "containers": [{"name": "server", "image": "knet", "command": ["python3", "-m", "lab.workloads", "http"],
                        "args": ["--port", "$(PORT)"], "env": [{"name": "PORT", "value": str(port)}],
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 2},
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 1}}]}
    try:
        for node in ("node1", "node2"):
            cp.kubectl("label", "node", node, f"{LABEL}=yes")
        cp.kubectl("apply", "-f", "-", input=json.dumps(ds))
        pods = running_on(cp, name, {"node1", "node2"})
        victim = pods["node1"]
        pid = int(victim["status"]["containerStatuses"][0]["containerID"].removeprefix("knet://"))
        node1_ip = cp.lab.node("node1")["ip"]
        assert cp.http(cp.lab.netns("node2"), f"http://{node1_ip}:{port}/healthz") == "ok\n"
        os.kill(pid, 9)

        def back() -> dict | None:
            p = client.get(cp.api, "Pod", victim["metadata"]["name"], "default")
            st = (p or {}).get("status", {}).get("containerStatuses") or [{}]
            return p if st[0].get("restartCount") == 1 and st[0].get("ready") else None
        again = wait_for(back, 60, "the killed container restarted and ready")
        assert again["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137
        assert again["metadata"]["uid"] == victim["metadata"]["uid"], "the same pod, its container restarted"
        assert cp.http(cp.lab.netns("node2"), f"http://{node1_ip}:{port}/healthz") == "ok\n"
    finally:
        cp.kubectl("delete", "ds", name, "--ignore-not-found")
        for node in ("node1", "node2"):
            cp.kubectl("label", "node", node, f"{LABEL}-", check=False)
    wait_for(lambda: not cp.pods(f"ds={name}"), 60, "the set's pods to go with it")
