"""The backend contract: modes constructed by name only, and the nftables backend's sync logic
over a recorded `nft` (no kernel): the first sync is full, a partial sync writes only the changed
service port, a failed transaction leaves the element bookkeeping as the kernel has it."""

from __future__ import annotations

import pytest

from knet import netfilter
from kproxy import backend as backends
from kproxy.backend import sync_all
from kproxy.model import Config, Endpoint, ServicePort
from kproxy.nftables import backend as nft_backend

CFG = Config(node_name="n1", cluster_cidr="10.244.0.0/16")


def sp(name: str, eps: tuple[str, ...] = ("10.244.1.2",)) -> ServicePort:
    return ServicePort("default", name, "", "TCP", 80, (f"10.96.0.{len(name)}",),
                       endpoints=tuple(Endpoint(ip, 8080, node_name="n1") for ip in eps))


def test_modes_are_constructed_by_name_only():
    assert set(backends.MODES) == {"iptables", "nftables", "userspace", "ebpf"}
    assert backends.create("nftables", CFG).name == "nftables"
    # (The variant named: finding the node's own would run iptables-save in this test's namespace.)
    assert backends.create("iptables", CFG, backends.Options(iptables="iptables-nft")).name == "iptables"
    with pytest.raises(ValueError, match="unknown proxy mode"):
        backends.create("ipvs", CFG)
    with pytest.raises(ValueError, match="event loop"):
        backends.create("userspace", CFG)


@pytest.fixture
def nft(monkeypatch):
    scripts: list[str] = []
    state = {"fail": False}

    def apply(script: str) -> None:
        if state["fail"]:
            raise netfilter.NetfilterError("nft -f failed: boom")
        scripts.append(script)

    monkeypatch.setattr(netfilter, "nft", apply)
    # A unit test runs in the machine's own namespace: nothing may reach its kernel.
    monkeypatch.setattr(nft_backend.netlink.Netlink, "apply", lambda self, ops: pytest.fail("netlink in a unit test"))
    monkeypatch.setattr(nft_backend.NftablesBackend, "_kernel_objects", lambda self: (set(), {}))
    monkeypatch.setattr(nft_backend.conntrack, "apply", lambda flushes: len(flushes))
    return scripts, state


def test_nftables_first_sync_full_then_partial_only_what_changed(nft):
    scripts, _ = nft
    b = nft_backend.NftablesBackend(CFG, writer="nft")
    assert sync_all(b, [sp("a"), sp("bb")]).full
    assert "add table ip kube-proxy" in scripts[-1]
    res = sync_all(b, [sp("a"), sp("bb", ("10.244.1.2", "10.244.1.3"))])
    assert not res.full and res.services_written == 1
    assert "/bb/" in scripts[-1] and "/a/" not in scripts[-1] and "add table" not in scripts[-1]
    assert sync_all(b, [sp("a"), sp("bb", ("10.244.1.2", "10.244.1.3"))]).services_written == 0
    sync_all(b, [sp("a")])
    assert "delete element ip kube-proxy cluster-ips { 10.96.0.2 }" in scripts[-1]
    assert b.entries() > 0


def test_nftables_failed_transaction_keeps_bookkeeping(nft):
    scripts, state = nft
    b = nft_backend.NftablesBackend(CFG, writer="nft")
    sync_all(b, [sp("a")])
    state["fail"] = True
    with pytest.raises(netfilter.NetfilterError):
        sync_all(b, [sp("a"), sp("bb")])
    state["fail"] = False
    sync_all(b, [sp("a"), sp("bb")])  # the daemon's retry: the element is added again, not skipped
    assert "add element ip kube-proxy cluster-ips { 10.96.0.2 }" in scripts[-1]
