"""The ingress controller in the lab: knet-ingress (with its own nginx) on node1, exposed as
the cluster would expose it — a LoadBalancer Service `knet-system/knet-ingress` (pool address +
node ports, routed by kproxy) whose hand-written Endpoints point at node1's 80/443 — plus the
IngressClass `knet`, marked default."""

from __future__ import annotations

import os
import sys
import time

from knet import netns
from lab import controlplane, topology

METRICS_PORT = 10254


class IngressError(RuntimeError):
    pass


def start(p: topology.Plan, kubeconfigs: dict[str, str], progress=print, wait: float = 30.0) -> dict:
    node = p.nodes[0]
    run_dir = os.path.join(p.state_dir, "knet-ingress")
    log = os.path.join(p.state_dir, "knet-ingress.log")
    proc = netns.spawn(node.netns, [
        os.path.join(os.path.dirname(sys.executable), "knet-ingress"), "--kubeconfig", kubeconfigs["ingress"],
        "--publish-service", "knet-system/knet-ingress", "--publish-address", node.ip, "--run-dir", run_dir,
        "--metrics-bind-address", f"{node.ip}:{METRICS_PORT}"], log_path=log, keep_mounts=True)
    _objects(p, node.ip)
    deadline = time.monotonic() + wait
    while True:
        if proc.poll() is not None:
            with open(log, errors="replace") as f:
                raise IngressError(f"knet-ingress exited with {proc.returncode}:\n{f.read()[-1200:]}")
        r = netns.run(node.netns, ["curl", "-s", "-m", "1", "-o", "/dev/null", "-w", "%{http_code}",
                                   f"http://{node.ip}/"])
        if r.stdout.strip() not in ("", "000"):
            break
        if time.monotonic() > deadline:
            raise IngressError(f"knet-ingress did not answer on {node.ip}:80 within {wait:.0f}s (see {log})")
        time.sleep(0.2)
    progress(f"ingress: knet-ingress on {node.short} ({node.ip}:80/443), Service knet-system/knet-ingress "
             "(LoadBalancer), IngressClass knet (default)")
    return {"pid": proc.pid, "log": log, "node": node.short}


def _objects(p: topology.Plan, node_ip: str) -> None:
    from knet.kube import client

    kubeconfig = controlplane.kubeconfig_path(p.name, os.path.dirname(p.state_dir))
    controlplane.loopback_only(kubeconfig)  # this process is in the root namespace
    api = client.new_api_client(kubeconfig)
    try:
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
