"""The ingress controller in the lab: knet-ingress (with its own nginx) on node1, exposed as
the cluster would expose it — a LoadBalancer Service `knet-system/knet-ingress` (pool address +
node ports, routed by kproxy) whose hand-written Endpoints point at node1's 80/443 — plus the
IngressClass `knet`, marked default."""

from __future__ import annotations

import os

from knet import netns
from lab.bringup import controlplane, launch
from lab.errors import LabError
from lab.net import topology

METRICS_PORT = 10254


class IngressError(LabError):
    pass


def start(p: topology.Plan, kubeconfigs: dict[str, str], progress=print, wait: float = 30.0) -> dict:
    node = p.nodes[0]
    run_dir = os.path.join(p.state_dir, "knet-ingress")
    log = os.path.join(p.state_dir, "knet-ingress.log")
    daemon = launch.spawn("knet-ingress", node.netns, [
        launch.binary("knet-ingress"), "--kubeconfig", kubeconfigs["ingress"],
        "--publish-service", "knet-system/knet-ingress", "--publish-address", node.ip, "--run-dir", run_dir,
        "--metrics-bind-address", f"{node.ip}:{METRICS_PORT}"], log, IngressError, keep_mounts=True)
    _objects(p, node.ip)

    def answers() -> bool:
        r = netns.run(node.netns, ["curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"http://{node.ip}/"])
        return r.stdout.strip() not in ("", "000")

    if not launch.wait_until(answers, [daemon], wait):
        raise IngressError(f"knet-ingress did not answer on {node.ip}:80 within {wait:.0f}s (see {log})")
    progress(f"ingress: knet-ingress on {node.short} ({node.ip}:80/443), Service knet-system/knet-ingress "
             "(LoadBalancer), IngressClass knet (default)")
    return {"pid": daemon.pid, "log": log, "node": node.short}


def _objects(p: topology.Plan, node_ip: str) -> None:
    from knet.kube import client  # ~1 s to import: `knet lab exec/status` (which import this module) never need it

    kubeconfig = controlplane.kubeconfig_path(p.name, os.path.dirname(p.state_dir))
    controlplane.loopback_only(kubeconfig)  # this process is in the root namespace
    api = client.new_api_client(kubeconfig)
    try:
        if client.get(api, "Namespace", "knet-system") is None:  # the real control plane has deploy/'s
            client.create(api, "Namespace", {"metadata": {"name": "knet-system"}})
        client.create(api, "IngressClass", {
            "metadata": {"name": "knet", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
            "spec": {"controller": "knet.io/ingress"}})
        ports = [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443, "protocol": "TCP"}]
        client.create(api, "Service", {"metadata": {"name": "knet-ingress"},
                                       "spec": {"type": "LoadBalancer", "ports": [dict(x, targetPort=x["port"])
                                                                                  for x in ports]}}, "knet-system")
        client.create(api, "Endpoints", {"metadata": {"name": "knet-ingress"},
                                         "subsets": [{"addresses": [{"ip": node_ip}], "ports": ports}]}, "knet-system")
    finally:
        api.close()
