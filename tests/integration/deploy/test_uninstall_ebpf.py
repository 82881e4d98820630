"""`knet-uninstall-node` removes kproxy's ebpf attachments (its steps from `kproxy/uninstall.py`):
the tc filters on a node link and the cgroup socket hooks, found by name and id with no daemon
running, while another agent's program on the same hook of another cgroup stays. The deploy test
covers the rest (it runs kproxy in iptables mode)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest

from knet import cgroups, links, netns
from kproxy import uninstall as kproxy_uninstall
from kproxy.ebpf import loader

pytestmark = pytest.mark.integration
TOOL = os.path.join(os.path.dirname(sys.executable), "knet-uninstall-node")
CGROUP2 = "/sys/fs/cgroup/unified"
# Another agent's program for the connect4 hook: allows everything.
FOREIGN = r"""
int other_agent(struct bpf_sock_addr *ctx) { return 1; }
"""


@pytest.fixture
def node() -> Iterator[tuple[str, str, str]]:
    """(namespace with a link eth0, the node's pod cgroup, another agent's cgroup): cgroup v2
    directories of their own, all removed afterwards."""
    if not os.path.isdir(CGROUP2):
        pytest.skip(f"no cgroup v2 at {CGROUP2}")
    name = "kt" + secrets.token_hex(2)
    ns, cg, other = f"{name}-node", os.path.join(CGROUP2, f"knet-{name}"), os.path.join(CGROUP2, f"knet-{name}-o")
    try:
        netns.create(ns)
        netns.run(ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], check=True)
        netns.run(ns, ["ip", "link", "set", "eth0", "up"], check=True)
        yield ns, cgroups.ensure(cg), cgroups.ensure(other)
    finally:
        netns.delete(ns)
        cgroups.remove(cg)
        cgroups.remove(other)


def run_tool(ns: str, cgs: list[str], root: str, *args: str) -> subprocess.CompletedProcess:
    # nsenter (network namespace only): `ip netns exec` would hide /sys/fs/cgroup behind its own /sys.
    return subprocess.run(["nsenter", f"--net={netns.path(ns)}", "--", TOOL, f"--root={root}",
                           *(f"--cgroup={cg}" for cg in cgs), *args],
                          env=dict(os.environ, KNET_UNINSTALL_NETNS=ns), capture_output=True, text=True, timeout=120)


def test_uninstall_removes_kproxys_tc_and_cgroup_programs_only(node: tuple[str, str, str]):
    ns, cg, other = node
    bcc = pytest.importorskip("bcc")
    try:
        dp = loader.Datapath()
    except loader.EbpfUnavailable as e:
        pytest.skip(str(e))
    connect4 = kproxy_uninstall.ATTACH_TYPES["CGROUP_INET4_CONNECT"]
    hooks = kproxy_uninstall.ATTACH_TYPES.values()
    foreign = bcc.BPF(text=FOREIGN.encode())
    with contextlib.ExitStack() as stack:
        stack.callback(dp.close)
        stack.callback(foreign.cleanup)
        dp.attach_cgroup(cg)
        fd = os.open(other, os.O_RDONLY | os.O_DIRECTORY)
        try:
            bcc.BPF.attach_func(foreign.load_func(b"other_agent", bcc.BPF.CGROUP_SOCK_ADDR, attach_type=connect4),
                                fd, connect4)
        finally:
            os.close(fd)
        with netns.enter(ns):
            dp.attach_tc("eth0")
        assert all(loader.cgroup_prog_ids(cg, at) for at in hooks)
        assert [loader.prog_name(i) for i in loader.cgroup_prog_ids(other, connect4)] == ["other_agent"]

        with tempfile.TemporaryDirectory() as root:
            dry = run_tool(ns, [cg, other], root, "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert dry.stdout.count("would remove tc filter on eth0") == 2, dry.stdout
            assert dry.stdout.count("would remove bpf cgroup program sock_") == len(loader.CGROUP_PROGRAMS) == 8, \
                dry.stdout
            assert "other_agent" not in dry.stdout and f"on {other}" not in dry.stdout
            with links.iproute(ns) as ipr:
                assert len(loader.tc_filters(ipr, "eth0")) == 2  # a dry run changes nothing

            real = run_tool(ns, [cg, other], root, "--yes")
            assert real.returncode == 0, real.stdout + real.stderr

        with links.iproute(ns) as ipr:
            assert loader.tc_filters(ipr, "eth0") == []
        assert not any(loader.cgroup_prog_ids(cg, at) for at in hooks)
        assert [loader.prog_name(i) for i in loader.cgroup_prog_ids(other, connect4)] == ["other_agent"]
