"""The upstream kube-proxy launcher's pure part: the KubeProxyConfiguration a lab node gets, and
the refusal of configurations that would write the machine's (not the node's) sysctls."""

from __future__ import annotations

import pytest

from lab.bringup import kube_proxy
from lab.net import topology


def node() -> topology.Node:
    return topology.plan("kxunit", 2).nodes[1]


@pytest.mark.parametrize("mode,upstream", [("kube-proxy-iptables", "iptables"), ("kube-proxy-nftables", "nftables")])
def test_configuration_of_a_node(mode: str, upstream: str) -> None:
    c = kube_proxy.configuration(node(), mode, "/k/kube-proxy.kubeconfig")
    assert c["kind"] == "KubeProxyConfiguration" and c["mode"] == upstream
    assert c["hostnameOverride"] == "node2"
    assert c["clusterCIDR"] == topology.POD_CIDR
    assert c["metricsBindAddress"] == "192.168.33.12:10249" and c["healthzBindAddress"] == "192.168.33.12:10256"
    assert c["clientConnection"] == {"kubeconfig": "/k/kube-proxy.kubeconfig"}
    assert "featureGates" not in c  # client-go's streaming lists work against knet-apiserver
    kube_proxy.check_writes(c)  # the lab's own configuration passes


@pytest.mark.parametrize("conntrack", [{}, {"maxPerCore": 32768, "min": 0}, {"maxPerCore": 1}])
def test_machine_wide_conntrack_writes_are_refused(conntrack: dict) -> None:
    c = dict(kube_proxy.configuration(node(), "kube-proxy-iptables", "/k"), conntrack=conntrack)
    with pytest.raises(kube_proxy.KubeProxyError, match="nf_conntrack_max"):
        kube_proxy.check_writes(c)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(kube_proxy.KubeProxyError, match="kube-proxy-iptables, kube-proxy-nftables"):
        kube_proxy.configuration(node(), "ipvs", "/k")
