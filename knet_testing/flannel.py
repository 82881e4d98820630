"""A mini cluster for the flannel_py tests and bench/overlay.py, built with knet.netns/knet.links.

Deliberately independent of the lab package: it proves the daemon alone, with nothing else running.

    <p>-ul   : bridge br0 = the nodes' LAN (192.168.33.0/24, fd00:33::/64); no link to the root namespace
    <p>-ctl  : eth0 192.168.33.2, etcd on :2379 (as in the lab)
    <p>-nI   : eth0 192.168.33.(10+I) and fd00:33::(10+I) (unless added with ipv6=False), flannel-py,
               bridge cni0 (.1 of its subnet; ::1 of its IPv6 subnet on a dual-stack overlay)
    <p>-nI-p : a pod: eth0 = .10 of the node subnet (and ::a of the IPv6 one), default routes via cni0

Every namespace carries the prefix (tests: `ktf` + hex) and `cleanup()` removes all of them, killing
whatever runs inside (etcd, daemons), whether the tests passed or not.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from flannel_py import subnet_env
from knet import links, netns

BIN = os.path.dirname(sys.executable)
FLANNEL_PY = os.path.join(BIN, "flannel-py")
ETCD_IP = "192.168.33.2"
ETCD_URL = f"http://{ETCD_IP}:2379"
PREFIX = "/coreos.com/network"
UNDERLAY_V6 = "fd00:33::"


@dataclass
class Node:
    name: str
    ip: str
    subnet_file: str
    log: str
    proc: subprocess.Popen | None = None
    pod: str | None = None
    pod_ip: str | None = None
    ipv6: str | None = None      # the node's underlay IPv6 address
    pod_ip6: str | None = None   # its pod's IPv6 address (dual-stack overlay)

    def subnet(self) -> ipaddress.IPv4Network | None:
        return subnet_env.previous_subnet(self.subnet_file)

    def ipv6_subnet(self) -> ipaddress.IPv6Network | None:
        return subnet_env.previous_ipv6_subnet(self.subnet_file)

    def env(self) -> dict[str, str]:
        with open(self.subnet_file) as f:
            return subnet_env.parse(f.read())


class Topo:
    def __init__(self, tag: str = "", prefix: str | None = None) -> None:
        self.prefix = prefix or f"ktf{tag}{secrets.token_hex(3)}"
        self.tmp = tempfile.mkdtemp(prefix=f"{self.prefix}-")
        self.ul = f"{self.prefix}-ul"
        self.ctl = f"{self.prefix}-ctl"
        self.nodes: dict[int, Node] = {}
        self.etcd: subprocess.Popen | None = None
        self.etcd_dir = os.path.join(self.tmp, "etcd")
        netns.create(self.ul)
        with links.iproute(self.ul) as ipr:
            links.ensure_bridge(ipr, "br0")
        netns.create(self.ctl)
        self._attach(self.ctl, f"{ETCD_IP}/24", "ctl")

    def _attach(self, ns: str, cidr: str, port: str, cidr6: str | None = None) -> None:
        """veth: `port` on br0 in the underlay, eth0 with `cidr` (and `cidr6`) in ns."""
        fd = os.open(netns.path(ns), os.O_RDONLY)
        try:
            with links.iproute(self.ul) as ipr:
                links.make_veth(ipr, port, "eth0", peer_netns_fd=fd, master=links.index(ipr, "br0"))
        finally:
            os.close(fd)
        with links.iproute(ns) as ipr:
            links.add_address(ipr, "eth0", cidr)
            if cidr6:
                links.add_address(ipr, "eth0", cidr6, nodad=True)  # unique by construction
            links.set_up(ipr, "eth0")

    # --- etcd ------------------------------------------------------------------------------------

    def start_etcd(self) -> None:
        argv = ["etcd", "--name", "ctl", "--data-dir", self.etcd_dir,
                "--listen-client-urls", ETCD_URL, "--advertise-client-urls", ETCD_URL,
                "--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "ctl=http://127.0.0.1:2380", "--log-level", "error"]
        self.etcd = netns.spawn(self.ctl, argv, log_path=os.path.join(self.tmp, "etcd.log"))
        deadline = time.monotonic() + 20
        while self.etcdctl("endpoint", "health", check=False).returncode != 0:
            assert self.etcd.poll() is None, "etcd exited: " + self.read(os.path.join(self.tmp, "etcd.log"))
            assert time.monotonic() < deadline, "etcd did not become healthy"
            time.sleep(0.1)

    def stop_etcd(self) -> None:
        if self.etcd and self.etcd.poll() is None:
            self.etcd.terminate()
            self.etcd.wait(10)

    def etcdctl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        proc = netns.run(self.ctl, ["etcdctl", "--endpoints", ETCD_URL, "--dial-timeout", "2s", *args],
                         input=stdin, env={**os.environ, "ETCDCTL_API": "3"})
        if check and proc.returncode != 0:
            raise AssertionError(f"etcdctl {args}: {proc.stderr}")
        return proc

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, "--", value) if value.startswith("-") else self.etcdctl("put", key, value)

    def subnet_keys(self, prefix: str = PREFIX) -> dict[str, str]:
        out = self.etcdctl("get", "--prefix", f"{prefix}/subnets/").stdout.splitlines()
        return dict(zip(out[::2], out[1::2], strict=False))

    # --- nodes, pods, daemons --------------------------------------------------------------------

    def add_node(self, i: int, ipv6: bool = True) -> Node:
        name = f"{self.prefix}-n{i}"
        netns.create(name)
        ip = f"192.168.33.{10 + i}"
        ip6 = f"{UNDERLAY_V6}{10 + i}" if ipv6 else None
        self._attach(name, f"{ip}/24", f"n{i}", f"{ip6}/64" if ip6 else None)
        netns.run(name, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"], check=True)
        node = Node(name, ip, os.path.join(self.tmp, f"n{i}", "subnet.env"), os.path.join(self.tmp, f"n{i}.log"),
                    ipv6=ip6)
        self.nodes[i] = node
        return node

    def start_daemon(self, node: Node, *extra: str, prefix: str = PREFIX) -> subprocess.Popen:
        argv = [FLANNEL_PY, "--etcd-endpoints", ETCD_URL, "--etcd-prefix", prefix, "--iface", "eth0",
                "--subnet-file", node.subnet_file, "--resync", "2", *extra]
        node.proc = netns.spawn(node.name, argv, log_path=node.log)
        return node.proc

    def stop_daemon(self, node: Node, kill: bool = False) -> None:
        if node.proc and node.proc.poll() is None:
            (node.proc.kill if kill else node.proc.terminate)()
            node.proc.wait(10)

    def wait_subnet(self, node: Node, timeout: float = 15.0) -> ipaddress.IPv4Network:
        deadline = time.monotonic() + timeout
        while (subnet := node.subnet()) is None:
            assert node.proc is None or node.proc.poll() is None, f"daemon exited:\n{self.read(node.log)}"
            assert time.monotonic() < deadline, f"no subnet.env for {node.name}:\n{self.read(node.log)}"
            time.sleep(0.05)
        return subnet

    def add_pod(self, node: Node) -> str:
        """cni0 with the node subnet's .1 (from subnet.env) and one pod at .10 behind it."""
        subnet = node.subnet()
        assert subnet is not None
        gw = f"{subnet.network_address + 1}/{subnet.prefixlen}"
        pod_ip = str(subnet.network_address + 10)
        with links.iproute(node.name) as ipr:
            bridge = links.ensure_bridge(ipr, "cni0", mtu=int(node.env()["FLANNEL_MTU"]))
            links.add_address(ipr, "cni0", gw)
        pod = f"{node.name}-p"
        netns.create(pod)
        fd = os.open(netns.path(node.name), os.O_RDONLY)
        try:
            with links.iproute(pod) as ipr:
                links.make_veth(ipr, "eth0", "vpod", peer_netns_fd=fd, mtu=int(node.env()["FLANNEL_MTU"]))
                links.add_address(ipr, "eth0", f"{pod_ip}/{subnet.prefixlen}")
                links.add_route(ipr, "0.0.0.0/0", gateway=str(subnet.network_address + 1))
        finally:
            os.close(fd)
        with links.iproute(node.name) as ipr:
            ipr.link("set", index=links.index(ipr, "vpod"), master=bridge, state="up")
        node.pod, node.pod_ip = pod, pod_ip
        subnet6 = node.ipv6_subnet()
        if subnet6 is not None:  # a dual-stack overlay: the pod gets ::a, cni0 ::1 (no DAD: unique here)
            gw6 = str(subnet6.network_address + 1)
            with links.iproute(node.name) as ipr:
                links.add_address(ipr, "cni0", f"{gw6}/{subnet6.prefixlen}", nodad=True)
            node.pod_ip6 = str(subnet6.network_address + 10)
            with links.iproute(pod) as ipr:
                links.add_address(ipr, "eth0", f"{node.pod_ip6}/{subnet6.prefixlen}", nodad=True)
                links.add_route(ipr, "::/0", gateway=gw6)
        return pod

    @staticmethod
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read()[-6000:]
        except OSError:
            return "(no log)"

    def logs(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{self.read(n.log)}" for n in self.nodes.values())

    def cleanup(self) -> None:
        for node in self.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait(5)
        if self.etcd and self.etcd.poll() is None:
            self.etcd.kill()
            self.etcd.wait(5)
        for name in netns.list_names(self.prefix + "-"):
            netns.delete(name)
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
