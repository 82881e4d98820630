"""Upstream flanneld in the lab beside flannel-py: `knet lab up --flannel real:N` runs
`.anchors/bin/flanneld` (scripts/install-anchors) on the LAST N nodes instead of flannel-py
(`real` alone: on every node; `py`, the default: on none). Both daemons share the lab's subnet
manager — the Nodes' podCIDRs with flannel's Node annotations (kube), or leases under
/coreos.com/network in the lab's etcd — so each programs the other's nodes, and pods talk across
the mix: the claim that flannel-py replaces flanneld node by node.

flanneld runs as flannel-py does (lab.bringup.overlay): in the node's network namespace, with the
same net-conf (kube) or network config (etcd), the underlay interface and address, --ip-masq,
its subnet.env where the node's CNI conflist reads it (`subnetFile`), its log in the node's
`flannel.log`, and (kube) the `flannel` identity's kubeconfig — the ServiceAccount deploy/rbac.yaml
gives flannel, whose role is all flanneld needs once it knows its node: kube-flannel's DaemonSet
sets NODE_NAME from the downward API, here the environment does (otherwise flanneld would read its
own Pod, which the role does not allow).

One difference in start-up: flanneld (kube) exits when its Node has no podCIDR yet ("node pod cidr
not assigned"), where kube-flannel's pod would be restarted until it has one; so the lab starts it
once the control plane reports every Node with a podCIDR, while flannel-py starts with the node
agents and waits by itself.
"""

from __future__ import annotations

import os
from collections.abc import Collection

from lab.errors import LabError
from lab.net import topology

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(REPO, ".anchors", "bin", "flanneld")
CHOICES = "py | real | real:N"


class FlanneldError(LabError):
    pass


def nodes(choice: str, p: topology.Plan, subnet_manager: str | None) -> list[str]:
    """The nodes (short names) that run flanneld for `--flannel choice`: none for "py", every one
    for "real", the last N for "real:N". Refuses a malformed choice, N outside 1..nodes, a lab
    without flannel (static overlay) and, when any node would run it, a flanneld not built."""
    kind, sep, count = choice.partition(":")
    if kind == "py" and not sep:
        return []
    if kind != "real" or (sep and not count.isdigit()):
        raise FlanneldError(f"--flannel must be {CHOICES}, got {choice!r}")
    n = int(count) if sep else len(p.nodes)
    if not 1 <= n <= len(p.nodes):
        raise FlanneldError(f"--flannel {choice}: N must be 1..{len(p.nodes)} (the lab's nodes), got {n}")
    if subnet_manager is None:
        raise FlanneldError(f"--flannel {choice}: the {p.overlay} overlay runs no flannel (use vxlan or host-gw)")
    check_built(f"--flannel {choice}")
    return [node.short for node in p.nodes[-n:]]


def check_built(what: str) -> None:
    if not os.access(BINARY, os.X_OK):
        raise FlanneldError(f"{what} needs flanneld: {BINARY} is not built (run scripts/install-anchors)")


def _common(n: topology.Node) -> list[str]:
    v6 = [f"--public-ipv6={n.ip6}"] if n.ip6 else []  # a dual-stack lab (--ip-family dual)
    return ["--iface=eth0", f"--public-ip={n.ip}", *v6, f"--subnet-file={n.subnet_file}", "--ip-masq"]


def etcd_argv(n: topology.Node) -> list[str]:
    """flanneld with the etcd subnet manager, on the lab's etcd and flannel's default prefix
    (/coreos.com/network, where lab.bringup.overlay puts the network config)."""
    return [BINARY, f"--etcd-endpoints={topology.ETCD_URL}", *_common(n)]


def kube_argv(n: topology.Node, kubeconfig: str, conf: str) -> list[str]:
    """flanneld with the kube subnet manager; `env` sets NODE_NAME (and execs, so the pid is
    flanneld's)."""
    return ["env", f"NODE_NAME={n.short}", BINARY, "--kube-subnet-mgr", f"--kubeconfig-file={kubeconfig}",
            f"--net-config-path={conf}", *_common(n)]


def describe(real: Collection[str]) -> str:
    """For messages: "flanneld on node2, node3" ("" without flanneld)."""
    return f"flanneld on {', '.join(sorted(real, key=lambda s: (len(s), s)))}" if real else ""
