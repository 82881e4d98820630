"""A small dual-stack testbed for netpolicy's kernel side in IPv6: one node, two pods, one outside
client, in namespaces of its own (the lab's `--ip-family dual` is not there yet; when it is, the
matrix lab can carry these cases too).

    ktp6-<pid>-cli   eth0: 192.168.33.10/24, fd00:33::10/64 (inside the tests' ipBlock),
        |                  fd00:33::8:2/64 (inside its except), fd00:34::10/64 (outside it)
        | veth
    ktp6-<pid>-node  eth1: 192.168.33.1/24, fd00:33::1/64, fd00:34::1/64; bridge cni0:
        |            10.244.1.1/24, fd00:10:244:1::1/64 (the node's pod /64); forwarding on
        +-- ktp6-<pid>-srv   eth0: 10.244.1.5, fd00:10:244:1::5   (the pod policies select)
        +-- ktp6-<pid>-peer  eth0: 10.244.1.6, fd00:10:244:1::6   (a pod on the same bridge)

IPv6 addresses are added with nodad: usable at once. Servers (TCP 8080 on every address of both
families, answering their own name on accept) are sockets of this process created inside their
namespace; so are the probes: the caller's namespace sends nothing. Leftovers of a crashed
session (its pid gone) are swept on the next start.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from knet import netns

PREFIX = "ktp6"
PORT = 8080
SRV = ("10.244.1.5", "fd00:10:244:1::5")
PEER = ("10.244.1.6", "fd00:10:244:1::6")
CLIENT_V4 = "192.168.33.10"
IN_BLOCK, IN_EXCEPT, OUTSIDE = "fd00:33::10", "fd00:33::8:2", "fd00:34::10"


@dataclass
class V6Bed:
    node: str
    srv: str
    peer: str
    cli: str

    def connect(self, ns: str, src: str, dst: str, timeout: float = 2.0) -> str | None:
        """The name the server at dst:PORT answers with, from a socket in `ns` bound to `src`;
        None when the connection is refused or times out (a policy dropped the SYN)."""
        family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        with netns.enter(ns):
            s = socket.socket(family, socket.SOCK_STREAM)
        with s:
            s.settimeout(timeout)
            try:
                s.bind((src, 0))
                s.connect((dst, PORT))
                return s.recv(64).decode().strip() or None
            except OSError:
                return None

    def reaches(self, ns: str, src: str, dst: str, deadline: float = 20.0) -> str | None:
        """`connect` retried until it answers or `deadline` seconds pass (a loaded machine)."""
        end = time.monotonic() + deadline
        while True:
            got = self.connect(ns, src, dst)
            if got is not None or time.monotonic() > end:
                return got
            time.sleep(0.2)


def _ip(ns: str, *args: str) -> None:
    r = netns.run(ns, ["ip", *args])
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} in {ns}: {r.stderr.strip()}")


def _sysctl(ns: str, key: str, value: str) -> None:
    r = netns.run(ns, ["sysctl", "-qw", f"{key}={value}"])
    if r.returncode != 0:
        raise RuntimeError(f"sysctl {key} in {ns}: {r.stderr.strip()}")


def _pod(node: str, pod: str, link: str, v4: str, v6: str) -> None:
    _ip(node, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", pod)
    _ip(node, "link", "set", link, "master", "cni0", "up")
    _ip(pod, "link", "set", "eth0", "up")
    _ip(pod, "addr", "add", f"{v4}/24", "dev", "eth0")
    _ip(pod, "-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
    _ip(pod, "route", "add", "default", "via", "10.244.1.1")
    _ip(pod, "-6", "route", "add", "default", "via", "fd00:10:244:1::1")


def sweep() -> None:
    """Namespaces of earlier sessions whose process is gone."""
    for name in netns.list_names(PREFIX + "-"):
        m = re.fullmatch(rf"{PREFIX}-(\d+)-\w+", name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            netns.delete(name)


class _Servers:
    """TCP PORT on [::] (both families) in each namespace, answering the namespace's role."""

    def __init__(self, roles: dict[str, str]) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        for role, ns in roles.items():
            with netns.enter(ns):
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", PORT))
            s.listen(64)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, role.encode() + b"\n")
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="v6bed-servers", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.2):
                with contextlib.suppress(OSError):
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    with conn:
                        conn.sendall(key.data)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()
        self.sel.close()


@contextlib.contextmanager
def v6bed() -> Iterator[V6Bed]:
    sweep()
    tag = f"{PREFIX}-{os.getpid()}"
    bed = V6Bed(f"{tag}-node", f"{tag}-srv", f"{tag}-peer", f"{tag}-cli")
    names = (bed.node, bed.srv, bed.peer, bed.cli)
    servers = None
    try:
        for n in names:
            netns.create(n)
        node = bed.node
        _sysctl(node, "net.ipv4.ip_forward", "1")
        _sysctl(node, "net.ipv6.conf.all.forwarding", "1")
        _ip(node, "link", "add", "cni0", "type", "bridge", "mcast_snooping", "0")
        _ip(node, "link", "set", "cni0", "up")
        _ip(node, "addr", "add", "10.244.1.1/24", "dev", "cni0")
        _ip(node, "-6", "addr", "add", "fd00:10:244:1::1/64", "dev", "cni0", "nodad")
        _pod(node, bed.srv, "veth-srv", *SRV)
        _pod(node, bed.peer, "veth-peer", *PEER)
        _ip(node, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", bed.cli)
        _ip(node, "link", "set", "eth1", "up")
        _ip(node, "addr", "add", "192.168.33.1/24", "dev", "eth1")
        for cidr in ("fd00:33::1/64", "fd00:34::1/64"):
            _ip(node, "-6", "addr", "add", cidr, "dev", "eth1", "nodad")
        _ip(bed.cli, "link", "set", "eth0", "up")
        _ip(bed.cli, "addr", "add", f"{CLIENT_V4}/24", "dev", "eth0")
        for addr in (IN_BLOCK, IN_EXCEPT, OUTSIDE):
            _ip(bed.cli, "-6", "addr", "add", f"{addr}/64", "dev", "eth0", "nodad")
        _ip(bed.cli, "route", "add", "default", "via", "192.168.33.1")
        _ip(bed.cli, "-6", "route", "add", "default", "via", "fd00:33::1")
        servers = _Servers({"srv": bed.srv, "peer": bed.peer, "cli": bed.cli})
        yield bed
    finally:
        if servers is not None:
            servers.close()
        for n in names:
            netns.delete(n)
