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
STUB_PORT = 5353  # the stub domain's own server (a second upstream in the client namespace)
STUB_ZONE = "corp.lab"
STUB_RECORDS = {"db.corp.lab": "192.168.33.101"}
METRICS_PORT = 9153
USER = "coredns"  # the lab's identity for kdns (lab.apiserver.auth): CoreDNS's ServiceAccount

# kubeadm's Corefile, with the lab's addresses, a stub domain and autopath: the lab runs kdns
# from a Corefile as a cluster does (the `coredns` ConfigMap), not from flags. `pods verified` +
# `autopath @kubernetes` (as CoreDNS documents them: a pod's external lookup takes one query
# instead of one per search domain) need the Pods: the lab's kdns runs as kube-system/coredns,
# which dns-rbac.yaml grants them (deploy/ keeps kubeadm's `pods insecure` and its RBAC).
COREFILE = """\
.:53 {{
    bind {ip}
    errors
    health {ip}:8080
    ready {ip}:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods verified
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
        kubeconfig {kubeconfig}
    }}
    autopath @kubernetes
    prometheus {ip}:{metrics}
    forward . {upstream}
    cache 30
    loop
    reload
    loadbalance
}}
{stub_zone}:53 {{
    bind {ip}
    errors
    cache 30
    forward . {stub}
}}
"""


class DnsError(LabError):
    pass


def dns_service_ip() -> str:
    return str(ipaddress.ip_network(topology.SERVICE_CIDR).network_address + 10)


def start(p: topology.Plan, kubeconfigs: dict[str, str], progress=print, wait: float = 30.0) -> dict:
    upstream = launch.spawn("upstream dns", p.client.netns, [
        sys.executable, "-m", "lab.bringup.upstream_dns", "--listen", f"{p.client.ip}:{UPSTREAM_PORT}",
    ], os.path.join(p.state_dir, "upstream-dns.log"), DnsError)
    stub = launch.spawn("stub domain dns", p.client.netns, [
        sys.executable, "-m", "lab.bringup.upstream_dns", "--listen", f"{p.client.ip}:{STUB_PORT}", "--only",
        *(f"--record={name}={ip}" for name, ip in STUB_RECORDS.items()),
    ], os.path.join(p.state_dir, "stub-dns.log"), DnsError)
    for n in p.nodes:  # replies from kdns to pods go back through the pods' node
        if n.pod_subnet:
            netns.run(p.ctl.netns, ["ip", "route", "replace", n.pod_subnet, "via", n.ip, "dev", "eth0"], check=True)
        _unmasqueraded(n.netns, p.ctl.ip)
    corefile = os.path.join(p.state_dir, "coredns", "Corefile")
    os.makedirs(os.path.dirname(corefile), exist_ok=True)
    with open(corefile, "w") as f:
        f.write(COREFILE.format(ip=p.ctl.ip, kubeconfig=kubeconfigs[USER], metrics=METRICS_PORT,
                                upstream=f"{p.client.ip}:{UPSTREAM_PORT}", stub_zone=STUB_ZONE,
                                stub=f"{p.client.ip}:{STUB_PORT}"))
    kdns = launch.spawn("kdns", p.ctl.netns, [launch.binary("kdns"), "-conf", corefile],
                        os.path.join(p.state_dir, "kdns.log"), DnsError, keep_mounts=True)
    _service(p)

    def answers() -> bool:
        r = netns.run(p.ctl.netns, ["dig", "+short", "+time=1", "+tries=1", f"@{p.ctl.ip}",
                                    "kubernetes.default.svc.cluster.local"])
        return r.returncode == 0 and bool(r.stdout.strip())

    if not launch.wait_until(answers, [kdns, upstream, stub], wait):
        raise DnsError(f"kdns did not answer within {wait:.0f}s (see {kdns.log})")
    progress(f"kdns: {p.ctl.ip}:53 in {p.ctl.netns} behind kube-system/kube-dns {dns_service_ip()}, from "
             f"{corefile}; upstream DNS {p.client.ip}:53, stub domain {STUB_ZONE} at {p.client.ip}:{STUB_PORT} "
             f"in {p.client.netns}")
    return {"kdns": {"pid": kdns.pid, "log": kdns.log, "corefile": corefile},
            "upstream": {"pid": upstream.pid, "log": upstream.log},
            "stub": {"pid": stub.pid, "log": stub.log}, "service_ip": dns_service_ip()}


def _unmasqueraded(node_netns: str, kdns_ip: str) -> None:
    """Pods' DNS traffic reaches kdns with the pod's address, as it reaches CoreDNS's pods in a
    cluster (pod to pod: flannel's --ip-masq leaves it alone). kdns runs outside the pod network
    here, where flannel would masquerade it as leaving the cluster; autopath (`pods verified`)
    must see the pod. First in POSTROUTING, before flannel's jump (which it only adds when
    missing), once per node."""
    for proto in ("udp", "tcp"):
        spec = ["-s", topology.POD_CIDR, "-d", f"{kdns_ip}/32", "-p", proto, "--dport", "53", "-m", "comment",
                "--comment", "knet lab: pods reach kdns with their own address", "-j", "RETURN"]
        if netns.run(node_netns, ["iptables", "-t", "nat", "-C", "POSTROUTING", *spec]).returncode != 0:
            netns.run(node_netns, ["iptables", "-t", "nat", "-I", "POSTROUTING", "1", *spec], check=True)


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
