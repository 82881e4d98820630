"""flannel's testbed (underlay bridge, node namespaces, pods) with an API server instead of etcd
leases: flannel-py --kube-subnet-mgr in each node namespace, Nodes created by the test with the
podCIDR it chooses (standing in for kube-controller-manager's node IPAM).

etcd and knet-apiserver run in the root namespace on loopback ports (tests/integration/
apiserver_env.py); the API server also listens inside the testbed's control namespace on
192.168.33.2, which is what the node namespaces' kubeconfig points at.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from knet import netns
from knet.kube import client as kc
from knet_testing.apiserver_env import ApiServerProcess, Etcd, start_apiserver, start_etcd, stop
from knet_testing.flannel import FLANNEL_PY, Node, Topo

ANNOTATION = "flannel.alpha.coreos.com/"
NETWORK = "10.246.0.0/16"
NET_CONF = {"Network": NETWORK, "Backend": {"Type": "vxlan", "VNI": 7, "Port": 4789}}


class KubeTopo(Topo):
    def __init__(self, tag: str = "k") -> None:
        super().__init__(tag)
        self.api_etcd: Etcd | None = None
        self.apiserver: ApiServerProcess | None = None
        self.node_kubeconfig = os.path.join(self.tmp, "node.kubeconfig")
        self.net_conf = os.path.join(self.tmp, "net-conf.json")
        self.api: Any = None
        self.node_names: dict[int, str] = {}

    def start_control_plane(self, net_conf: dict = NET_CONF) -> None:
        from lab.apiserver import auth

        with open(self.net_conf, "w") as f:
            json.dump(net_conf, f)
        self.api_etcd = start_etcd(self.tmp)
        admin, flannel = uuid.uuid4().hex, uuid.uuid4().hex
        self.apiserver = start_apiserver(os.path.join(self.tmp, "api"), self.api_etcd.url, "/registry",
                                         f"{admin},admin,admin\n{flannel},flannel,flannel\n",
                                         "--listen-netns", f"{self.ctl}=192.168.33.2:0", tls=False)
        root_url, ctl_url = self.apiserver.urls[:2]
        admin_kc = auth.write_kubeconfig(os.path.join(self.tmp, "admin.kubeconfig"), root_url, "admin", admin)
        auth.write_kubeconfig(self.node_kubeconfig, ctl_url, "flannel", flannel)
        self.api = kc.new_api_client(admin_kc)

    def create_node(self, i: int, pod_cidr: str | None, ipv6_cidr: str | None = None) -> str:
        """The Node object of node i (named node<i>), with a podCIDR or none yet (and the IPv6
        entry of podCIDRs of a dual-stack node)."""
        name = f"node{i}"
        spec = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr] + ([ipv6_cidr] if ipv6_cidr else [])} if pod_cidr else {}
        kc.create(self.api, "Node", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec})
        self.node_names[i] = name
        return name

    def node_object(self, i: int) -> dict | None:
        return kc.get(self.api, "Node", self.node_names[i])

    def annotations(self, i: int) -> dict[str, str]:
        obj = self.node_object(i) or {}
        return {k[len(ANNOTATION):]: v for k, v in obj.get("metadata", {}).get("annotations", {}).items()
                if k.startswith(ANNOTATION)}

    def start_kube_daemon(self, node: Node, i: int, *extra: str) -> None:
        argv = [FLANNEL_PY, "--kube-subnet-mgr", "--kubeconfig-file", self.node_kubeconfig,
                "--net-config-path", self.net_conf, "--iface", "eth0", "--subnet-file", node.subnet_file,
                "--resync", "2", *extra]
        env = {**os.environ, "NODE_NAME": self.node_names[i]}  # as the DaemonSet's downward API sets it
        node.proc = netns.spawn(node.name, argv, log_path=node.log, env=env)

    def etcd_keys(self) -> list[str]:
        assert self.api_etcd is not None
        return self.api_etcd.keys("/")

    def cleanup(self) -> None:
        try:
            for node in self.nodes.values():  # daemons first: they talk to the API server
                self.stop_daemon(node, kill=True)
            if self.api is not None:
                self.api.close()
            stop(self.apiserver.proc if self.apiserver else None)
            stop(self.api_etcd.proc if self.api_etcd else None)
        finally:
            super().cleanup()
