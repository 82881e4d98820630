"""The lab's control plane end to end: kubectl and the kubernetes client against the lab API
server; the scheduler, Deployment/ReplicaSet, EndpointSlice and LoadBalancer controllers; node
agents that make pods, probe them and report their status; an agent restart that adopts pods."""

from __future__ import annotations

import json
import os
import time

import pytest

from knet import netns
from knet.kube import client
from lab.bringup import controlplane
from tests.integration.controlplane.cp_helpers import ControlPlaneLab, ready_ips, wait_for

pytestmark = pytest.mark.integration

# Deadlines for conditions, not speed targets: generous, as the machine is shared and noisy.
WAIT = 60.0
NODE_JS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: node-js}
spec:
  replicas: 3
  selector: {matchLabels: {name: node-js}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {name: node-js}}
    spec:
      containers:
      - name: node-js
        image: jonbaier/node-express-info:%s
        ports: [{containerPort: 80, name: www}]
        readinessProbe: {httpGet: {path: /, port: www}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: node-js, labels: {name: node-js}}
spec:
  selector: {name: node-js}
  ports: [{port: 80, targetPort: www}]
"""


def test_deployment_pods_get_ips_become_ready_and_fill_the_slice(cp: ControlPlaneLab) -> None:
    cp.kubectl("apply", "-f", "-", input=NODE_JS % "0.1")
    pods = wait_for(lambda: (p := cp.pods("name=node-js")) and len(ready_ips(p)) == 3 and p, WAIT, "3 ready pods")
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert nodes == {"node1", "node2"}, "the scheduler spreads pods over the nodes"
    ips = ready_ips(pods)
    wait_for(lambda: cp.ready_endpoints("node-js") == ips, WAIT, "the slice to list the ready pods")
    (slice_,) = cp.slices("node-js")
    assert slice_["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert slice_["ports"] == [{"name": "", "port": 80, "protocol": "TCP"}]  # named targetPort resolved per pod
    by_ip = {p["status"]["podIP"]: p for p in pods}
    for ep in slice_["endpoints"]:
        pod = by_ip[ep["addresses"][0]]
        assert ep["nodeName"] == pod["spec"]["nodeName"] and ep["targetRef"]["name"] == pod["metadata"]["name"]
        # the pod answers with its name and version, reached from the other node (no NAT, overlay)
        other = "node2" if pod["spec"]["nodeName"] == "node1" else "node1"
        assert cp.http(cp.lab.netns(other), f"http://{ep['addresses'][0]}/") == f"{pod['metadata']['name']} 0.1\n"
        assert pod["status"]["hostIP"] == cp.lab.node(pod["spec"]["nodeName"])["ip"]
    ep = client.get(cp.api, "Endpoints", "node-js", "default")
    assert {a["ip"] for s in ep["subsets"] for a in s.get("addresses", [])} == ips
    # pods see their DNS settings and the Services that existed when they started (seed S25)
    name = pods[0]["metadata"]["name"]
    podns = f"{cp.lab.name}-pod-default-{name}"
    resolv = netns.run(podns, ["cat", "/etc/resolv.conf"]).stdout
    assert "nameserver 10.96.0.10" in resolv and "search default.svc.cluster.local" in resolv
    assert "ndots:5" in resolv
    env = container_env(pods[0])
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["HOSTNAME"] == name


def container_env(pod: dict) -> dict[str, str]:
    """The environment of the pod's first container process, as the agent started it."""
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("knet://"))
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(kv.split("=", 1) for kv in f.read().decode().split("\0") if "=" in kv)


def test_scale_is_followed_by_pods_and_slice(cp: ControlPlaneLab) -> None:
    for replicas in (1, 2):
        cp.kubectl("scale", "deployment/node-js", f"--replicas={replicas}")
        pods = wait_for(lambda r=replicas: (p := cp.pods("name=node-js")) and len(p) == r and
                        len(ready_ips(p)) == r and p, 20, f"{replicas} ready pods")
        wait_for(lambda p=pods: cp.ready_endpoints("node-js") == ready_ips(p), 3, f"the slice at {replicas}")
    dep = client.get(cp.api, "Deployment", "node-js", "default")
    assert dep["status"]["replicas"] == 2 and dep["status"]["readyReplicas"] == 2
    assert dep["status"]["observedGeneration"] == dep["metadata"]["generation"]
    assert len(cp.slices("node-js")) == 1, "one slice, updated in place"
    # Seed S25: a pod started after the Service sees it in its environment (service and Docker
    # link variables), as the kubelet provides them.
    newest = max(pods, key=lambda p: p["metadata"]["creationTimestamp"])
    vip = client.get(cp.api, "Service", "node-js", "default")["spec"]["clusterIP"]
    env = container_env(newest)
    assert (env["NODE_JS_SERVICE_HOST"], env["NODE_JS_SERVICE_PORT"]) == (vip, "80")
    assert env["NODE_JS_PORT"] == f"tcp://{vip}:80" and env["NODE_JS_PORT_80_TCP_ADDR"] == vip
    assert (env["NODE_JS_PORT_80_TCP_PORT"], env["NODE_JS_PORT_80_TCP_PROTO"]) == ("80", "tcp")


def test_rolling_update_keeps_ready_endpoints(cp: ControlPlaneLab) -> None:
    before = ready_ips(cp.pods("name=node-js"))
    cp.kubectl("apply", "-f", "-", input=NODE_JS % "0.2")
    seen_empty = False
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        eps = cp.ready_endpoints("node-js")
        seen_empty |= not eps
        pods = cp.pods("name=node-js")
        versions = {p["spec"]["containers"][0]["image"] for p in pods}
        # apply sets replicas back to the manifest's 3 while it rolls
        if versions == {"jonbaier/node-express-info:0.2"} and len(ready_ips(pods)) == 3 and eps == ready_ips(pods):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"rollout did not finish: {cp.kubectl('get', 'pods,rs', '-o', 'wide').stdout}")
    assert not seen_empty, "maxUnavailable 0: there was always a ready endpoint"
    assert not (ready_ips(cp.pods("name=node-js")) & before)
    out = cp.kubectl("rollout", "status", "deployment/node-js", "--timeout=20s").stdout
    assert "successfully rolled out" in out
    ip = next(iter(cp.ready_endpoints("node-js")))
    assert cp.http(cp.lab.netns("node1"), f"http://{ip}/").endswith(" 0.2\n")


def test_readiness_probe_gates_the_endpoint(cp: ControlPlaneLab) -> None:
    flag = os.path.join(cp.lab.state_dir, "ready-flag")
    manifest = {
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gate", "labels": {"app": "gate"}},
             "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}],
                                      "readinessProbe": {"exec": {"command": ["test", "-f", flag]},
                                                         "periodSeconds": 1, "failureThreshold": 1}}]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "missing-status", "labels": {"app": "gate"}},
             "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}],
                                      "readinessProbe": {"httpGet": {"path": "/status/", "port": 80},
                                                         "periodSeconds": 1}}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gate"},
             "spec": {"selector": {"app": "gate"}, "ports": [{"port": 80}]}}]}
    cp.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    pods = wait_for(lambda: (p := cp.pods("app=gate")) and all(x["status"].get("phase") == "Running"
                                                               and x["status"].get("podIP") for x in p)
                    and len(p) == 2 and p, WAIT, "both pods running")
    ips = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    wait_for(lambda: {e["addresses"][0] for s in cp.slices("gate") for e in s.get("endpoints") or []}
             == set(ips.values()), WAIT, "both pods in the slice, as not ready")
    time.sleep(2)
    assert cp.ready_endpoints("gate") == set(), "failing readiness keeps pods out of the ready endpoints"
    open(flag, "w").close()
    wait_for(lambda: cp.ready_endpoints("gate") == {ips["gate"]}, WAIT, "the fixed pod to become a ready endpoint")
    os.unlink(flag)
    wait_for(lambda: cp.ready_endpoints("gate") == set(), WAIT, "the pod to leave again")
    gate = client.get(cp.api, "Pod", "gate", "default")
    assert gate["status"]["phase"] == "Running" and gate["status"]["containerStatuses"][0]["restartCount"] == 0
    cp.kubectl("delete", "-f", "-", input=json.dumps(manifest))


def test_loadbalancer_gets_a_pool_address_and_releases_it(cp: ControlPlaneLab) -> None:
    def svc(name: str, **spec) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                           "spec": {"type": "LoadBalancer", "selector": {"name": "node-js"},
                                    "ports": [{"port": 80, "targetPort": 80}], **spec}})

    def lb_ip(name: str) -> str | None:
        obj = client.get(cp.api, "Service", name, "default") or {}
        ingress = obj.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        return ingress[0].get("ip") if ingress else None

    cp.kubectl("apply", "-f", "-", input=svc("lb-auto"))
    cp.kubectl("apply", "-f", "-", input=svc("lb-fixed", loadBalancerIP="192.168.33.240"))
    auto = wait_for(lambda: lb_ip("lb-auto"), WAIT, "an address for lb-auto")
    assert auto.startswith("192.168.33.2") and 200 <= int(auto.rsplit(".", 1)[1]) <= 250
    assert wait_for(lambda: lb_ip("lb-fixed"), WAIT, "lb-fixed") == "192.168.33.240"
    assert "192.168.33.240" in cp.kubectl("get", "svc", "lb-fixed").stdout
    cp.kubectl("patch", "svc", "lb-auto", "-p", '{"spec": {"type": "NodePort"}}')
    wait_for(lambda: lb_ip("lb-auto") is None, WAIT, "the address released on a type change")
    cp.kubectl("delete", "svc", "lb-fixed")
    cp.kubectl("apply", "-f", "-", input=svc("lb-next", loadBalancerIP="192.168.33.240"))
    assert wait_for(lambda: lb_ip("lb-next"), WAIT, "the released address reused") == "192.168.33.240"
    cp.kubectl("delete", "svc", "lb-auto", "lb-next")


def test_kubectl_get_pods_wide_from_the_host(cp: ControlPlaneLab) -> None:
    out = cp.kubectl("get", "nodes,pods", "-o", "wide").stdout
    assert "node/node1" in out and "Ready" in out and "192.168.33.11" in out
    for p in cp.pods("name=node-js"):
        line = next(line for line in out.splitlines() if p["metadata"]["name"] in line)
        assert p["status"]["podIP"] in line and p["spec"]["nodeName"] in line and "Running" in line


def test_agent_restart_adopts_pods_without_disruption(cp: ControlPlaneLab) -> None:
    pods = cp.pods("name=node-js")
    mine = [p for p in pods if p["spec"]["nodeName"] == "node1"] or pods[:1]
    node = mine[0]["spec"]["nodeName"]
    before = {p["metadata"]["name"]: (p["status"]["podIP"], p["status"]["containerStatuses"][0]["containerID"])
              for p in mine}
    log = os.path.join(cp.lab.node(node)["dir"], "node-agent.log")

    def read_log() -> str:
        with open(log) as f:
            return f.read()

    adds_before = read_log().count(" ip ")
    controlplane.restart_agent(cp.lab.name, node)
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # readiness must not flap while the agent is away and back
        assert {ip for ip, _ in before.values()} <= cp.ready_endpoints("node-js")
        time.sleep(0.2)
    wait_for(lambda: "adopted sandbox" in read_log(), WAIT, "the new agent to adopt")
    after = {p["metadata"]["name"]: (p["status"]["podIP"], p["status"]["containerStatuses"][0]["containerID"])
             for p in cp.pods("name=node-js") if p["spec"]["nodeName"] == node}
    assert after == before, "same pods, addresses and processes"
    assert read_log().count(" ip ") == adds_before, "no second CNI ADD"
    # and the new agent still does its job: a deleted pod is cleaned up, its replacement made
    victim = next(iter(before))
    cp.kubectl("delete", "pod", victim)
    wait_for(lambda: not netns.exists(f"{cp.lab.name}-pod-default-{victim}"), WAIT, "the deleted pod's netns to go")
    wait_for(lambda: len(ready_ips(cp.pods("name=node-js"))) == 3, WAIT, "a replacement pod")


def test_dependent_of_a_deleted_owner_is_collected_at_once(cp: ControlPlaneLab) -> None:
    """A controller acting on a stale cache can create a ReplicaSet for a Deployment deleted a
    moment before: the garbage collector removes it (and so its pods) within seconds, not at its
    next periodic sweep."""
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {
        "name": "stale-rs", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "gone",
                                                 "uid": "00000000-0000-0000-0000-00000000dead", "controller": True}]},
          "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "stale"}},
                   "template": {"metadata": {"labels": {"app": "stale"}},
                                "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
    t0 = time.monotonic()
    client.create(cp.api, "ReplicaSet", rs, "default")
    wait_for(lambda: client.get(cp.api, "ReplicaSet", "stale-rs", "default") is None, WAIT,
             "the orphan ReplicaSet gone")
    wait_for(lambda: not cp.pods("app=stale"), WAIT, "its pods gone")
    assert time.monotonic() - t0 < 15


def test_graceful_deletion_drains_a_pod_then_removes_it(cp: ControlPlaneLab) -> None:
    """DELETE of a running pod: it stays, terminating (deletionTimestamp), its endpoint turns
    not-ready but still serving and terminating, the preStop hook runs while the pod keeps
    answering, then the agent stops it and deletes it for good; a grace-0 delete is immediate."""
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"drain-{i}", "labels": {"app": "drain"}},
         "spec": {"terminationGracePeriodSeconds": 20, "containers": [
             {"name": "web", "image": "nginx", "ports": [{"containerPort": 80}],
              "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1},
              "lifecycle": {"preStop": {"sleep": {"seconds": 3}}}}]}} for i in (1, 2)] + [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "drain"},
         "spec": {"selector": {"app": "drain"}, "ports": [{"port": 80}]}}]}
    cp.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    pods = wait_for(lambda: (p := cp.pods("app=drain")) and len(ready_ips(p)) == 2 and p, WAIT, "two ready pods")
    ip = {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}
    wait_for(lambda: cp.ready_endpoints("drain") == set(ip.values()), WAIT, "both ready endpoints")
    t0 = time.monotonic()
    client.delete(cp.api, "Pod", "drain-1", "default")
    pod = client.get(cp.api, "Pod", "drain-1", "default")
    assert pod is not None and pod["metadata"].get("deletionTimestamp"), "a running pod is not removed at once"
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 20

    def conditions() -> dict | None:
        eps = [e for s in cp.slices("drain") for e in s.get("endpoints") or [] if e["addresses"][0] == ip["drain-1"]]
        return eps[0]["conditions"] if eps else None

    assert wait_for(lambda: (c := conditions()) and c.get("terminating") and c, WAIT, "a terminating endpoint") == {
        "ready": False, "serving": True, "terminating": True}
    assert cp.ready_endpoints("drain") == {ip["drain-2"]}
    assert cp.http(cp.lab.netns("node1"), f"http://{ip['drain-1']}/").strip(), "it serves during preStop"
    wait_for(lambda: client.get(cp.api, "Pod", "drain-1", "default") is None, WAIT, "the pod to be deleted")
    took = time.monotonic() - t0
    assert 2.5 < took < 18, f"the pod went {took:.1f}s after the delete (preStop sleeps 3 s, grace is 20 s)"
    # The EndpointSlice controller sees the deletion after the pod is gone: wait for it, not a window.
    wait_for(lambda: conditions() is None, WAIT, "the deleted pod's endpoint to leave the slice")
    assert cp.http(cp.lab.netns("node1"), f"http://{ip['drain-1']}/").startswith("<curl")
    # Grace 0 (kubectl delete --grace-period=0 --force): gone at once, the agent cleans up after.
    client.delete(cp.api, "Pod", "drain-2", "default", grace_period_seconds=0)
    assert client.get(cp.api, "Pod", "drain-2", "default") is None
    wait_for(lambda: not [n for n in netns.list_names(f"{cp.lab.name}-pod-") if "drain" in n], 10,
             "the drained pods' namespaces removed")
    cp.kubectl("delete", "service", "drain")


def test_delete_removes_pods_and_their_namespaces(cp: ControlPlaneLab) -> None:
    cp.kubectl("delete", "-f", "-", input=NODE_JS % "0.2")
    wait_for(lambda: not cp.pods("name=node-js"), WAIT, "the pods to go with their deployment (drained first)")
    wait_for(lambda: not [n for n in netns.list_names(f"{cp.lab.name}-pod-")], WAIT, "pod namespaces removed")
    assert not cp.slices("node-js")
    assert not [k for k in cp.lab.pods()], "lab.json has no agent pods left"
