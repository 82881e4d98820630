"""EbpfBackend's sync logic over an in-memory datapath (no bcc, no kernel): partial syncs touch
only changed service ports, full syncs repair, programs attach after the maps are filled, and
a machine without bcc gets a clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from knet import netfilter
from kproxy.backend import sync_all
from kproxy.ebpf import backend as ebpf_backend
from kproxy.ebpf import loader, maps
from kproxy.model import Config, Endpoint, ServicePort


class FakeDatapath(loader.Datapath):
    def __init__(self, masq_mark: int = 0x4000) -> None:  # no bcc
        self.store: dict[str, dict] = {"services": {}, "slots": {}, "members": {}}
        self.log: list[tuple] = []

    def update(self, name, pairs):
        for k, v in pairs:
            self.store[name][k] = v
            self.log.append(("put", name, k))

    def delete(self, name, keys):
        for k in keys:
            self.store[name].pop(k, None)
            self.log.append(("del", name, k))

    def keys(self, name):
        return set(self.store[name])

    def lookup(self, name, key):
        return self.store[name].get(key)

    def predecessor_maps(self, cgroup, ifaces):
        return {}

    def carry_over(self, old, keep_newer=False):
        return 0

    def attach_cgroup(self, cgroup):
        self.log.append(("attach", cgroup))

    def attach_tc(self, ifname):
        self.log.append(("attach", ifname))

    def close(self):
        pass


@pytest.fixture
def cgroup(tmp_path):
    for f in ("cgroup.procs", "cgroup.controllers", "cgroup.type"):
        (tmp_path / f).write_text("")
    return str(tmp_path)


@pytest.fixture
def be(monkeypatch, cgroup):
    restores: list[str] = []

    def fake_run(argv, data=None, timeout=120):
        if argv[0].endswith("-restore"):
            restores.append(data)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(ebpf_backend, "Datapath", FakeDatapath)
    monkeypatch.setattr(netfilter, "run", fake_run)
    monkeypatch.setattr(ebpf_backend, "local_ipv4", lambda: ["192.168.1.1"])
    b = ebpf_backend.EbpfBackend(Config(node_name="n1"), cgroup=cgroup)
    b.restores = restores
    return b


def sp(name: str, eps: tuple[str, ...] = ("10.99.0.2",), **kw) -> ServicePort:
    return ServicePort("default", name, "", "TCP", 80, (f"10.96.0.{len(name)}",),
                       endpoints=tuple(Endpoint(ip, 8080, node_name="n1") for ip in eps), **kw)


def test_first_sync_is_full_and_attaches_after_the_maps_are_written(be):
    res = sync_all(be, [sp("a"), sp("bb")])
    assert res.full and res.services_written == 2
    first_attach = next(i for i, e in enumerate(be.dp.log) if e[0] == "attach")
    assert first_attach == len(be.dp.log) - 1 and first_attach > 0
    assert be.entries() == 2 * (2 + 2)


def test_partial_sync_writes_only_the_changed_service(be):
    sync_all(be, [sp("a"), sp("bb")], full=True)
    be.dp.log.clear()
    res = sync_all(be, [sp("a"), sp("bb", ("10.99.0.2", "10.99.0.3"))])
    assert not res.full and res.services_written == 1
    set_bb = be.ids.get(maps.owner(sp("bb"), "cluster"))
    touched = {k.set_id if hasattr(k, "set_id") else k.ip for _, _, k in be.dp.log}
    assert touched <= {set_bb, maps.ANY_SET, "10.96.0.2"}  # bb's set and bb's frontends only
    res = sync_all(be, [sp("a")])
    assert res.services_written == 1
    assert all(k.ip != "10.96.0.2" for k in be.dp.store["services"])
    assert all(k.set_id != set_bb for k in be.dp.store["slots"])


def test_full_sync_repairs_deleted_and_stray_entries(be):
    ports = [sp("a")]
    sync_all(be, ports, full=True)
    good = dict(be.dp.store["services"])
    victim = next(iter(good))
    del be.dp.store["services"][victim]
    stray = maps.FeKey("10.96.9.9", 80, 6, 0)
    be.dp.store["services"][stray] = maps.FeVal(1, 1, 0, 0)
    sync_all(be, ports)  # nothing changed from the daemon's view: a partial sync does not notice
    assert victim not in be.dp.store["services"]
    sync_all(be, ports, full=True)
    assert be.dp.store["services"] == good


def test_rejects_only_for_services_without_endpoints_and_restore_only_when_they_change(be):
    sync_all(be, [sp("a"), sp("empty", ())], full=True)
    (text,) = be.restores
    assert "default/empty has no endpoints" in text and "default/a" not in text
    assert "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000" in text
    sync_all(be, [sp("a", ("10.99.0.2", "10.99.0.3")), sp("empty", ())])
    assert len(be.restores) == 1  # same rejects: no iptables-restore on a partial sync
    sync_all(be, [sp("a"), sp("empty")])
    assert len(be.restores) == 2 and "has no endpoints" not in be.restores[-1]


def test_node_ips_are_read_on_full_syncs(be, monkeypatch):
    np = ServicePort("default", "np", "", "TCP", 80, ("10.96.0.9",), node_port=30080,
                     endpoints=(Endpoint("10.99.0.2", 8080, node_name="n1"),))
    sync_all(be, [np], full=True)
    assert maps.FeKey("192.168.1.1", 30080, 6, maps.SCOPE_EXT) in be.dp.store["services"]
    monkeypatch.setattr(ebpf_backend, "local_ipv4", lambda: ["192.168.1.7"])
    sync_all(be, [np], full=True)
    fes = be.dp.store["services"]
    assert maps.FeKey("192.168.1.7", 30080, 6, maps.SCOPE_EXT) in fes
    assert maps.FeKey("192.168.1.1", 30080, 6, maps.SCOPE_EXT) not in fes


def test_cgroup_must_be_a_non_root_cgroup2_directory(tmp_path, cgroup):
    with pytest.raises(ValueError, match="needs the cgroup"):
        ebpf_backend.EbpfBackend(Config(node_name="n1"), cgroup=None)
    with pytest.raises(ValueError, match="not a cgroup v2"):
        ebpf_backend.check_cgroup(str(tmp_path / "nope"))
    (tmp_path / "cgroup.type").unlink()
    with pytest.raises(ValueError, match="root"):
        ebpf_backend.check_cgroup(cgroup)


def test_missing_bcc_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bcc", None)
    with pytest.raises(loader.EbpfUnavailable, match="python3-bpfcc"):
        loader.Datapath()
