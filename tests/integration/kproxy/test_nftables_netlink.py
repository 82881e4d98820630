"""kproxy's nftables partial syncs written as netlink messages (kproxy.nftables.netlink) leave the
kernel exactly as `nft -f` of the same transaction does: two scratch namespaces get the same full
table from nft, then the same changes (endpoints added and removed, affinity timeouts changed,
services gone and new, every rule form the renderer has), one through each writer, and
`nft list table` must read the same. A refused transaction changes nothing."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest

from knet import netns
from kproxy.model import Config, Endpoint, ServicePort
from kproxy.nftables.netlink import KernelError, Netlink
from kproxy.nftables.rules import Elements, ops_text, partial_ops, render_full, render_service

pytestmark = pytest.mark.integration
CFGS = [Config(node_name="node1", cluster_cidr="10.244.0.0/16"),
        Config(node_name="node1", cluster_cidr="10.240.0.0/12"),
        Config(node_name="node1", masquerade_all=True),
        Config(node_name="node1", cluster_cidr="fd00:10:244::/56", family=6),
        Config(node_name="node1", cluster_cidr="fd00:10:240::/44", family=6)]
LOCAL, REMOTE = Endpoint("10.244.1.2", 8080, node_name="node1"), Endpoint("10.244.2.3", 8080, node_name="node2")
V6 = {"10.244.1.2": "fd00:10:244:1::2", "10.244.2.3": "fd00:10:244:2::3", "10.244.1.9": "fd00:10:244:1::9",
      "192.168.33.200": "fd00:33::200", "192.168.33.50": "fd00:33::50"}


def v6(sp: ServicePort) -> ServicePort:
    """The same service port in the IPv6 family (services fd00:10:96::/112, pods fd00:10:244::/56)."""
    def addr(ip: str) -> str:
        return V6.get(ip) or "fd00:10:96::" + ip.rsplit(".", 1)[1]
    return replace(sp, family=6, cluster_ips=tuple(map(addr, sp.cluster_ips)),
                   external_ips=tuple(map(addr, sp.external_ips)),
                   load_balancer_ips=tuple(map(addr, sp.load_balancer_ips)),
                   endpoints=tuple(replace(e, ip=addr(e.ip)) for e in sp.endpoints))


def ports(version: int, family: int = 4) -> list[ServicePort]:
    """Every shape the renderer knows, and a second version of each that differs."""
    if family == 6:
        return [v6(sp) for sp in ports(version)]
    v = version
    eps = (LOCAL, REMOTE) if v == 0 else (REMOTE, Endpoint("10.244.1.9", 9090, node_name="node1"))
    return [
        ServicePort("default", "plain", "", "TCP", 80, ("10.96.0.10",), endpoints=eps),
        ServicePort("default", "dns", "dns", "UDP", 53, ("10.96.0.11",), endpoints=eps[:1 + v]),
        ServicePort("default", "sticky", "", "TCP", 80, ("10.96.0.12",), affinity_seconds=60 + v, endpoints=eps),
        ServicePort("default", "np", "", "TCP", 80, ("10.96.0.13",), node_port=30080 + v, endpoints=eps),
        ServicePort("default", "lb", "http", "TCP", 80, ("10.96.0.14",), node_port=30090, load_balancer_ips=(
            "192.168.33.200",), external_ips=("192.168.33.50",), external_local=True, endpoints=eps),
        ServicePort("default", "itp", "", "SCTP", 80, ("10.96.0.15",), internal_local=True, endpoints=eps),
        ServicePort("default", "empty", "", "TCP", 80, ("10.96.0.16",), node_port=30100, endpoints=() if v else eps),
        ServicePort("default", f"only-in-{v}", "", "TCP", 80, (f"10.96.0.{20 + v}",), endpoints=eps),
    ]


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    names = ("kt" + secrets.token_hex(4), "kt" + secrets.token_hex(4))
    try:
        for n in names:
            netns.create(n)
        yield names
    finally:
        for n in names:
            netns.delete(n)


def listing(ns: str, family: int = 4) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip6" if family == 6 else "ip",
                           "kube-proxy"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("cfg", CFGS, ids=["cidr16", "cidr12", "masquerade-all", "ipv6-cidr56", "ipv6-cidr44"])
def test_netlink_and_nft_leave_the_same_table(namespaces: tuple[str, str], cfg: Config) -> None:
    by_nft, by_netlink = namespaces
    fam = cfg.family
    old = {sp.key: render_service(sp, cfg) for sp in ports(0, fam)}
    new = {sp.key: render_service(sp, cfg) for sp in ports(1, fam)}
    elements = Elements()
    elements.replace((k, None, r) for k, r in old.items())
    full = render_full(old, elements, set(), {}, fam)
    changed = old.keys() | new.keys()
    deletes, adds = elements.replace((k, old.get(k), new.get(k)) for k in changed)
    ops = partial_ops(old, new, changed, deletes, adds, elements)
    assert {op[0] for op in ops} >= {"add_chain", "flush_chain", "delete_chain", "add_set", "delete_set", "add_rule",
                                     "add_elements", "delete_elements"}
    for ns in namespaces:
        netns.run(ns, ["nft", "-f", "-"], input=full, text=True, check=True)
    netns.run(by_nft, ["nft", "-f", "-"], input=ops_text(ops, fam), text=True, check=True)
    with netns.enter(by_netlink):
        writer = Netlink(fam)
        try:
            writer.apply(ops)
        finally:
            writer.close()
    got = listing(by_netlink, fam)
    assert got == listing(by_nft, fam)
    assert ("fd00:10:244:1::9" if fam == 6 else "10.244.1.9") in got
    assert "only-in-1" in got and "only-in-0" not in got


def test_a_refused_transaction_changes_nothing(namespaces: tuple[str, str]) -> None:
    ns = namespaces[0]
    cfg = CFGS[0]
    old = {sp.key: render_service(sp, cfg) for sp in ports(0)}
    elements = Elements()
    elements.replace((k, None, r) for k, r in old.items())
    netns.run(ns, ["nft", "-f", "-"], input=render_full(old, elements, set(), {}), text=True, check=True)
    before = listing(ns)
    with netns.enter(ns):
        writer = Netlink()
        try:
            with pytest.raises(KernelError, match="no-such-chain"):
                writer.apply([("add_chain", "new-chain"), ("add_rule", "new-chain", "goto no-such-chain")])
        finally:
            writer.close()
    assert listing(ns) == before


def test_uninstall_removes_the_table(namespaces: tuple[str, str]) -> None:
    """`knet uninstall-node`'s kproxy step: the nftables mode's table goes, the other namespace's stays."""
    from kproxy import uninstall

    ns, other = namespaces
    old = {sp.key: render_service(sp, CFGS[0]) for sp in ports(0)}
    elements = Elements()
    elements.replace((k, None, r) for k, r in old.items())
    for n in namespaces:
        netns.run(n, ["nft", "-f", "-"], input=render_full(old, elements, set(), {}), text=True, check=True)
    with netns.enter(ns):
        six = {sp.key: render_service(sp, CFGS[3]) for sp in ports(0, 6)}
        elements6 = Elements()
        elements6.replace((k, None, r) for k, r in six.items())
        netns.run(ns, ["nft", "-f", "-"], input=render_full(six, elements6, set(), {}, 6), text=True, check=True)
        steps = [s for s in uninstall.uninstall_steps() if s.label.startswith("nft")]
        assert [s.lines for s in steps] == [("nft table ip kube-proxy",), ("nft table ip6 kube-proxy",)]
        for s in steps:
            s.run()
        assert [s for s in uninstall.uninstall_steps() if s.label.startswith("nft")] == []
    gone = netns.run(ns, ["nft", "list", "table", "ip", "kube-proxy"], capture_output=True, text=True)
    assert gone.returncode != 0 and "10.244.1.2" in listing(other)
