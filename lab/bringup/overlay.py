"""The overlay in the lab: flannel_py on every node, leasing subnets from the lab's etcd.

`knet lab up` (default `--overlay vxlan`) writes flannel's network config, starts `flannel-py`
inside each node namespace exactly as a node would run it, and waits for every node's
subnet.env; the CNI plugin (flannel mode) reads that file, so pods get addresses from the leased
subnet with the overlay's MTU.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import time

from lab.bringup import etcd, launch
from lab.errors import LabError
from lab.net import topology

NETWORK_KEY = "/coreos.com/network/config"


class OverlayError(LabError):
    pass


def network_config(backend: str) -> dict:
    return {"Network": topology.POD_CIDR, "SubnetLen": 24, "Backend": {"Type": backend}}


def flannel_argv(n: topology.Node) -> list[str]:
    return [launch.binary("flannel-py"), "--etcd-endpoints", topology.ETCD_URL, "--iface", "eth0",
            "--public-ip", n.ip, "--subnet-file", n.subnet_file, "--ip-masq"]


def read_subnet_env(path: str) -> dict[str, str]:
    """The node's subnet.env ({} while flannel-py has not written it; flannel-py replaces it
    atomically, so it is never half written)."""
    out: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    out[key] = value
    except FileNotFoundError:
        pass
    return out


def leased(subnet_file: str) -> bool:
    return "FLANNEL_SUBNET" in read_subnet_env(subnet_file)


def start(p: topology.Plan, progress=print, wait: float = 20.0) -> dict[str, dict]:
    """Start flannel-py on every node; returns node -> {"pod_subnet", "mtu", "pid"}."""
    etcd.start(p, progress)
    etcd.put(p, NETWORK_KEY, json.dumps(network_config(p.overlay)))
    out: dict[str, dict] = {}
    deadline = time.monotonic() + wait
    # One node after the other: flannel hands out the lowest free subnet, so node<i> gets
    # 10.244.<i>.0/24 in a fresh lab — addresses a person can read. (Concurrent starts are
    # race-free too; flannel_py's own tests prove that.)
    for n in p.nodes:
        os.makedirs(n.dir, exist_ok=True)
        log = os.path.join(n.dir, "flannel.log")
        daemon = launch.spawn(f"flannel-py on {n.short}", n.netns, flannel_argv(n), log, OverlayError)
        if not launch.wait_until(functools.partial(leased, n.subnet_file), [daemon], deadline - time.monotonic(),
                                 interval=0.02):
            raise OverlayError(f"no subnet lease for {n.short} within {wait:.0f}s (see {log})")
        env = read_subnet_env(n.subnet_file)
        n.pod_subnet = str(ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network)
        out[n.short] = {"pod_subnet": n.pod_subnet, "mtu": int(env.get("FLANNEL_MTU", "1500")), "pid": daemon.pid}
    progress(f"overlay {p.overlay}: " + ", ".join(f"{k} {v['pod_subnet']} (mtu {v['mtu']})"
                                                  for k, v in sorted(out.items())))
    return out
