"""Cluster DNS in the lab: kdns in the control namespace behind the kube-dns Service.

The Service (kube-system/kube-dns, ClusterIP = the tenth address of the service range) has no
selector: a hand-written Endpoints object points at kdns on 192.168.33.2, mirrored into an
EndpointSlice by the API server, so every node's kproxy routes 10.96.0.10:53 there — the same
path any selector-less service takes. Pods get it as their nameserver from the node agent.
The control namespace routes the pod subnets via their nodes, so kdns can answer pods directly.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from knet import netns
from lab.bringup import controlplane, launch
from lab.errors import LabError
from lab.net import topology

UPSTREAM_PORT = 53
METRICS_PORT = 9153


class DnsError(LabError):
    pass


def dns_service_ip() -> str:
    return str(ipaddress.ip_network(topology.SERVICE_CIDR).network_address + 10)


def start(p: topology.Plan, kubeconfigs: dict[str, str], progress=print, wait: float = 30.0) -> dict:
    upstream = launch.spawn("upstream dns", p.client.netns, [
        sys.executable, "-m", "lab.bringup.upstream_dns", "--listen", f"{p.client.ip}:{UPSTREAM_PORT}",
    ], os.path.join(p.state_dir, "upstream-dns.log"), DnsError)
    for n in p.nodes:  # replies from kdns to pods go back through the pods' node
        if n.pod_subnet:
            netns.run(p.ctl.netns, ["ip", "route", "replace", n.pod_subnet, "via", n.ip, "dev", "eth0"], check=True)
    kdns = launch.spawn("kdns", p.ctl.netns, [
        launch.binary("kdns"), "--kubeconfig", kubeconfigs["kdns"], "--listen", f"{p.ctl.ip}:53",
        "--upstream", f"{p.client.ip}:{UPSTREAM_PORT}", "--metrics-bind-address", f"{p.ctl.ip}:{METRICS_PORT}",
    ], os.path.join(p.state_dir, "kdns.log"), DnsError, keep_mounts=True)
    _service(p)

    def answers() -> bool:
        r = netns.run(p.ctl.netns, ["dig", "+short", "+time=1", "+tries=1", f"@{p.ctl.ip}",
                                    "kubernetes.default.svc.cluster.local"])
        return r.returncode == 0 and bool(r.stdout.strip())

    if not launch.wait_until(answers, [kdns, upstream], wait):
        raise DnsError(f"kdns did not answer within {wait:.0f}s (see {kdns.log})")
    progress(f"kdns: {p.ctl.ip}:53 in {p.ctl.netns} behind kube-system/kube-dns {dns_service_ip()}; "
             f"upstream DNS {p.client.ip}:53 in {p.client.netns}")
    return {"kdns": {"pid": kdns.pid, "log": kdns.log}, "upstream": {"pid": upstream.pid, "log": upstream.log},
            "service_ip": dns_service_ip()}


def _service(p: topology.Plan) -> None:
    from knet.kube import client  # ~1 s to import: `knet lab exec/status` (which import this module) never need it

    kubeconfig = controlplane.kubeconfig_path(p.name, os.path.dirname(p.state_dir))
    controlplane.loopback_only(kubeconfig)  # this process is in the root namespace
    api = client.new_api_client(kubeconfig)
    try:
        ports = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
        client.create(api, "Service", {
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": dns_service_ip(), "ports": [dict(x, targetPort=53) for x in ports]},
        }, "kube-system")
        client.create(api, "Endpoints", {
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns"}},
            "subsets": [{"addresses": [{"ip": p.ctl.ip}], "ports": ports}],
        }, "kube-system")
    finally:
        api.close()
