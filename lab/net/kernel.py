"""The kernel side of the lab: turn a `topology.Plan` into namespaces and links, and tear down.

Safety: the root namespace is never touched. Every netlink socket is opened from a thread that
has entered a lab namespace (and we check that it really is not the root one), sysctls are
written from inside the namespace, and iptables runs through `ip netns exec`. The lab's
namespaces have no link to the root namespace at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from pyroute2 import IPRoute

from knet import cgroups, links, netns
from lab.errors import LabError
from lab.net import topology

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@contextlib.contextmanager
def ns_iproute(name: str) -> Iterator[IPRoute]:
    """A netlink socket bound to the lab namespace `name` (created from inside it)."""
    root = netns.inode()
    with netns.enter(name):
        if netns.inode() == root:  # never configure the namespace we run in by mistake
            raise RuntimeError(f"refusing to configure {name}: it is the caller's own namespace")
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def sysctl(name: str, key: str, value: str) -> None:
    """Write a net.* sysctl of the namespace: /proc/sys/net resolves against the writing
    thread's namespace, so the write happens while the thread is inside it."""
    root = netns.inode()
    with netns.enter(name):
        if netns.inode() == root:
            raise RuntimeError(f"refusing to set {key} in the caller's own namespace")
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def _ns_fd(name: str) -> int:
    return os.open(netns.path(name), os.O_RDONLY)


def build(p: topology.Plan, progress: Progress = _quiet) -> None:
    """Create every namespace and link of the plan. Raises on any failure (callers tear down)."""
    for name in p.netns_names:
        try:
            netns.create(name)
        except FileExistsError as e:  # made meanwhile by someone else (`up` checked before)
            raise LabError(str(e)) from None
    progress(f"namespaces: {', '.join(p.netns_names)}")

    with ns_iproute(p.underlay_netns) as ul:
        bridge = links.ensure_bridge(ul, topology.UNDERLAY_BRIDGE)
        for m in p.members:
            # One at a time, so the transient "eth0" peer name never collides in the underlay.
            fd = _ns_fd(m.netns)
            try:
                links.make_veth(ul, m.short, "eth0", peer_netns_fd=fd, master=bridge)
            finally:
                os.close(fd)
    progress(f"underlay {topology.UNDERLAY_CIDR}: bridge {topology.UNDERLAY_BRIDGE} in {p.underlay_netns}")

    for m in p.members:
        with ns_iproute(m.netns) as ipr:
            links.set_up(ipr, "eth0")
            links.add_address(ipr, "eth0", m.cidr)
            if m.ip6:  # dual-stack: the underlay's IPv6 address, unique by plan (no DAD wait)
                links.add_address(ipr, "eth0", m.cidr6, nodad=True)
            for r in m.routes:
                links.add_route(ipr, r.dst, gateway=r.via, ifname="eth0")
    for n in p.nodes:
        with ns_iproute(n.netns) as ipr:
            # A real node has a default route; lab nodes must not. Service addresses that no proxy
            # rule catches still have to be routed (out of the LAN, where nobody answers), so the
            # proxies' REJECT rules in FORWARD see them instead of an early "no route".
            links.add_route(ipr, topology.SERVICE_CIDR, ifname="eth0")
            if n.ip6:
                links.add_route(ipr, topology.SERVICE6_CIDR, ifname="eth0")
        sysctl(n.netns, "net.ipv4.ip_forward", "1")
        if n.ip6:
            sysctl(n.netns, "net.ipv6.conf.all.forwarding", "1")
        if p.overlay == "static":
            _no_masq_between_pods(n.netns)
        eth0 = f"{n.cidr} {n.cidr6}" if n.ip6 else n.cidr
        progress(f"{n.short}: {n.netns} eth0 {eth0}, pods {n.pod_subnet or 'leased by ' + p.overlay}, "
                 f"routes {', '.join(f'{r.dst} via {r.via}' for r in n.routes) or '-'}")
    nexthops = [arg for n in p.nodes for arg in ("nexthop", "via", n.ip, "dev", "eth0")]
    netns.run(p.client.netns, ["ip", "route", "add", topology.LB_ROUTE, *nexthops], check=True)
    progress(f"ctl: {p.ctl.netns} eth0 {p.ctl.cidr}; client: {p.client.netns} eth0 {p.client.cidr}, "
             f"load balancer addresses {topology.LB_ROUTE} via the nodes")


def _no_masq_between_pods(node_ns: str) -> None:
    """Pod-to-pod traffic keeps its source address across nodes.

    The conflist asks for ipMasq (pods reaching the outside world are masqueraded), and the
    plugin's per-pod chain masquerades everything outside the node's own /24. The overlay
    (flannel) exempts the whole cluster CIDR ahead of that, with this same rule; in host-gw mode
    the lab plays the overlay's part. Inserted first, so the plugins' appended jumps come later.
    """
    netns.run(node_ns, ["iptables", "-w", "5", "-t", "nat", "-I", "POSTROUTING", "1",
                        "-s", topology.POD_CIDR, "-d", topology.POD_CIDR,
                        "-m", "comment", "--comment", "knet-lab: no masquerade between pods",
                        "-j", "RETURN"], check=True)


def agent_binary() -> str:
    return os.path.join(os.path.dirname(sys.executable), "knet-cni-agent")


def start_agents(p: topology.Plan, progress: Progress = _quiet, wait: float = 5.0) -> dict[str, int]:
    """Start knet-cni-agent in every node; return node -> pid of those that came up.

    A missing agent is only a warning: knet-cni then runs the plugin in-process (slower, same
    behaviour)."""
    binary = agent_binary()
    if not os.access(binary, os.X_OK):
        progress(f"warning: {binary} not found; knet-cni will run without its agent")
        return {}
    procs = {}
    for n in p.nodes:
        os.makedirs(n.dir, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(n.agent_socket)
        procs[n.short] = (n, netns.spawn(n.netns, [binary, "--socket", n.agent_socket],
                                         log_path=n.agent_log))
    deadline = time.monotonic() + wait
    started: dict[str, int] = {}
    pending = dict(procs)
    while pending and time.monotonic() < deadline:
        for short, (n, proc) in list(pending.items()):
            if os.path.exists(n.agent_socket):
                started[short] = proc.pid
                del pending[short]
            elif proc.poll() is not None:
                progress(f"warning: cni agent on {short} exited with {proc.returncode} "
                         f"(see {n.agent_log}); knet-cni will run without it")
                del pending[short]
        if pending:
            time.sleep(0.02)
    for short, (n, proc) in pending.items():
        progress(f"warning: cni agent on {short} did not create {n.agent_socket} within {wait:.0f}s "
                 f"(see {n.agent_log}); knet-cni will run without it")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    if started:
        progress(f"cni agents: {', '.join(f'{k} pid {v}' for k, v in sorted(started.items()))}")
    return started


def lab_netns(lab: str) -> list[str]:
    """Every namespace of the lab, found by prefix (also those of a crashed run)."""
    topology.validate_name(lab)
    return netns.list_names(topology.prefix(lab))


def lab_cgroup(lab: str) -> str | None:
    """The lab's cgroup v2 directory (None where cgroup v2 is not mounted)."""
    return cgroups.path_for(f"knet-{lab}")


def node_cgroup(lab: str, short: str) -> str | None:
    """Where a node's pods (and node processes that use services) run: kproxy's eBPF socket hooks
    attach here, so they see exactly this node's pods and nothing of the host."""
    base = lab_cgroup(lab)
    return os.path.join(base, short) if base else None


def ensure_node_cgroups(p: topology.Plan) -> dict[str, str]:
    out = {}
    for n in p.nodes:
        path = node_cgroup(p.name, n.short)
        if path:
            out[n.short] = cgroups.ensure(path)
    return out


def teardown(lab: str, root: str = topology.STATE_ROOT, progress: Progress = _quiet) -> list[str]:
    """Kill every process in, and delete, every namespace named `<lab>-*`; remove the state dir
    and the lab's cgroups (removing a cgroup detaches the BPF programs attached to it).

    Pods go first so their processes and veths disappear before the nodes do."""
    names = lab_netns(lab)
    pods = [n for n in names if n.startswith(f"{lab}-pod-")]
    # In parallel: each namespace may wait out its processes' SIGTERM grace (the agents take up
    # to half a second), which adds up over a lab's worth of namespaces when done one by one.
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(netns.delete, pods))
        list(pool.map(netns.delete, [n for n in names if n not in pods]))
    left = lab_netns(lab)
    if left:
        # A namespace still mounted elsewhere: try the plain umount path once more.
        for name in left:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    cg = lab_cgroup(lab)
    if cg:
        cgroups.remove(cg)
    shutil.rmtree(topology.state_dir(lab, root), ignore_errors=True)
    if names:
        progress(f"removed {len(names)} namespaces of lab {lab}")
    return names
