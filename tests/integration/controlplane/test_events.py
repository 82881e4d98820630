"""Events as the material watches them (issue 21): `kubectl get events [--watch]` and `kubectl
describe` after a rollout and a LoadBalancer assignment show what the scheduler, the Deployment
and ReplicaSet controllers, the Service controller and the node agents recorded; repeated
events count up instead of piling up."""

from __future__ import annotations

import json
import select
import subprocess
from collections.abc import Iterator

import pytest

from knet.kube import client
from tests.integration.controlplane.cp_helpers import ControlPlaneLab, wait_for

pytestmark = pytest.mark.integration
NS = "default"

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: ev-web}
spec:
  replicas: 2
  selector: {matchLabels: {app: ev-web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: ev-web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: web, image: "nginx:1.25", ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ev-lb}
spec:
  type: LoadBalancer
  selector: {app: ev-web}
  ports: [{port: 80}]
"""


def events(cp: ControlPlaneLab, **selector: str) -> list[dict]:
    fields = ",".join(f"involvedObject.{k}={v}" for k, v in selector.items())
    return client.list_objects(cp.api, "Event", NS, field_selector=fields or None)["items"]


def reasons(cp: ControlPlaneLab, **selector: str) -> set[str]:
    return {e["reason"] for e in events(cp, **selector)}


@pytest.fixture(scope="module")
def rolled_out(cp: ControlPlaneLab) -> Iterator[None]:
    """ev-web rolled out from nginx:1.25 to 1.26, ev-lb with its LoadBalancer address and then
    turned into a NodePort Service."""
    cp.kubectl("apply", "-f", "-", input=DEPLOYMENT)
    try:
        cp.kubectl("rollout", "status", "deployment/ev-web", "--timeout=90s")
        cp.kubectl("set", "image", "deployment/ev-web", "web=nginx:1.26")
        cp.kubectl("rollout", "status", "deployment/ev-web", "--timeout=90s")
        wait_for(lambda: (client.get(cp.api, "Service", "ev-lb", NS) or {}).get("status", {})
                 .get("loadBalancer", {}).get("ingress"), 30, "a LoadBalancer address for ev-lb")
        wait_for(lambda: "EnsuredLoadBalancer" in reasons(cp, name="ev-lb"), 30, "EnsuredLoadBalancer")
        cp.kubectl("patch", "svc", "ev-lb", "-p", '{"spec": {"type": "NodePort"}}')
        yield
    finally:
        cp.kubectl("delete", "-f", "-", "--ignore-not-found", input=DEPLOYMENT, check=False)


def test_get_events_after_a_rollout_and_a_load_balancer(cp: ControlPlaneLab, rolled_out: None) -> None:
    deployment = wait_for(lambda: [e for e in events(cp, kind="Deployment", name="ev-web")
                                   if e["reason"] == "ScalingReplicaSet"], 30, "ScalingReplicaSet events")
    messages = [e["message"] for e in deployment]
    assert any(m.startswith("Scaled up replica set ev-web-") and m.endswith("from 0 to 2") for m in messages), messages
    assert any(m.startswith("Scaled down replica set ev-web-") for m in messages), messages
    assert {e["source"]["component"] for e in deployment} == {"deployment-controller"}
    rs_reasons = {e["reason"] for e in events(cp, kind="ReplicaSet")}
    assert {"SuccessfulCreate", "SuccessfulDelete"} <= rs_reasons, rs_reasons
    lb = wait_for(lambda: (r := reasons(cp, name="ev-lb")) >= {"EnsuringLoadBalancer", "EnsuredLoadBalancer", "Type",
                                                               "DeletedLoadBalancer"} and r, 30, "the Service's events")
    assert "Type" in lb
    assert any(e["message"] == "LoadBalancer -> NodePort" for e in events(cp, name="ev-lb"))
    pod = client.list_objects(cp.api, "Pod", NS, label_selector="app=ev-web")["items"][0]
    meta = pod["metadata"]  # the fields kubectl describe selects a pod's events by
    wait_for(lambda: reasons(cp, kind="Pod", name=meta["name"], namespace=NS, uid=meta["uid"])
             >= {"Scheduled", "Pulled", "Created", "Started"}, 30, "the pod's events")
    # what the user reads: kubectl's table (server-side columns) and kubectl describe
    table = cp.kubectl("get", "events").stdout
    for want in ("ScalingReplicaSet", "SuccessfulCreate", "Scheduled", "Started", "EnsuredLoadBalancer",
                 "deployment/ev-web", "service/ev-lb"):
        assert want in table, (want, table)
    assert "<unknown>" not in "\n".join(line for line in table.splitlines() if "ev-" in line)
    described = cp.kubectl("describe", "deployment", "ev-web").stdout
    assert "ScalingReplicaSet" in described and "deployment-controller" in described
    described = cp.kubectl("describe", "svc", "ev-lb").stdout
    assert "EnsuredLoadBalancer" in described and "LoadBalancer -> NodePort" in described
    described = cp.kubectl("describe", "pod", pod["metadata"]["name"]).stdout
    assert "Successfully assigned default/" in described and "default-scheduler" in described


def test_get_events_watch_sees_new_events(cp: ControlPlaneLab, rolled_out: None) -> None:
    proc = subprocess.Popen([cp.kubectl_path or "kubectl", "--kubeconfig", cp.kubeconfig, "get", "events",
                             "--watch"], stdout=subprocess.PIPE, text=True)

    def line(what: str) -> str:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and proc.stdout is not None, f"nothing from kubectl get events --watch within 60 s ({what})"
        return proc.stdout.readline()
    try:
        # the table's header comes with the initial list; the watch goes on from that list
        while "LAST SEEN" not in line("the initial list"):
            pass
        cp.kubectl("scale", "deployment/ev-web", "--replicas=3")
        while not ("ScalingReplicaSet" in (row := line("ev-web's ScalingReplicaSet row")) and "deployment/ev-web" in row
                   and row.rstrip().endswith("to 3")):
            pass
    finally:
        proc.terminate()
        proc.wait(10)


def test_repeated_events_are_counted(cp: ControlPlaneLab) -> None:
    """A readiness probe that keeps failing: one Unhealthy event whose count goes up."""
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ev-unready"}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "web", "image": "nginx:1.25", "ports": [{"containerPort": 80}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 81}, "periodSeconds": 1}}]}}
    cp.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    try:
        unhealthy = wait_for(lambda: [e for e in events(cp, name="ev-unready") if e["reason"] == "Unhealthy"
                                      and e.get("count", 0) >= 3], 60, "an Unhealthy event counted 3 times")
        assert len([e for e in events(cp, name="ev-unready") if e["reason"] == "Unhealthy"]) == 1
        assert unhealthy[0]["type"] == "Warning" and unhealthy[0]["message"].startswith("Readiness probe failed:")
        assert unhealthy[0]["lastTimestamp"] >= unhealthy[0]["firstTimestamp"]
        assert "(x" in cp.kubectl("describe", "pod", "ev-unready").stdout
    finally:
        cp.kubectl("delete", "pod", "ev-unready", "--grace-period=0", "--force", check=False)
