"""Lease acquisition against an in-memory stand-in for etcd: reuse, previous subnet, races."""

from __future__ import annotations

import json
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from flannel_py.config import parse_config
from flannel_py.lease import vxlan_attrs
from flannel_py.manager import acquire, renew_interval
from flannel_py.registry import KeyValue
from flannel_py.subnets import SubnetExhausted

PREFIX = "/coreos.com/network/subnets/"
CFG = parse_config(json.dumps({"Network": "10.244.0.0/16", "SubnetMax": "10.244.4.0"}))
ME = vxlan_attrs(A("192.168.33.11"), 1, "02:00:00:00:00:11")


class FakeEtcd:
    """The registry calls acquire() makes, with etcd's compare semantics."""

    def __init__(self) -> None:
        self.kv: dict[str, KeyValue] = {}
        self.revision = 1
        self.leases: set[int] = set()
        self.revoked: list[int] = []
        self.before_write = None  # hook: a competitor writes between our list and our txn

    def subnet_key(self, name: str) -> str:
        return PREFIX + name

    def list_subnets(self):
        return [kv for k, kv in sorted(self.kv.items()) if k.startswith(PREFIX)], self.revision

    def put(self, key: str, value: str, lease: int = 0) -> None:
        self.revision += 1
        self.kv[key] = KeyValue(key, value.encode(), self.revision, lease)

    def grant(self, ttl: int) -> int:
        lease = 1000 + len(self.leases)
        self.leases.add(lease)
        return lease

    def revoke(self, lease: int) -> None:
        self.revoked.append(lease)

    def create_if_absent(self, key: str, value: str, lease: int) -> bool:
        if self.before_write:
            hook, self.before_write = self.before_write, None
            hook()
        if key in self.kv:
            return False
        self.put(key, value, lease)
        return True

    def replace_if_unchanged(self, key: str, value: str, lease: int, mod_revision: int) -> bool:
        if key not in self.kv or self.kv[key].mod_revision != mod_revision:
            return False
        self.put(key, value, lease)
        return True


def other(ip: str, mac: str) -> str:
    return vxlan_attrs(A(ip), 1, mac).encode()


def test_new_node_gets_lowest_free_subnet():
    etcd = FakeEtcd()
    etcd.put(PREFIX + "10.244.1.0-24", other("192.168.33.12", "02:00:00:00:00:12"), 7)
    got = acquire(etcd, CFG, ME, ttl=60)
    assert (got.lease.subnet, got.how, got.key) == (N("10.244.2.0/24"), "new", PREFIX + "10.244.2.0-24")
    assert json.loads(etcd.kv[got.key].value) == json.loads(ME.encode())
    assert etcd.kv[got.key].lease == got.etcd_lease


def test_restart_reuses_the_lease_with_our_public_ip():
    etcd = FakeEtcd()
    etcd.put(PREFIX + "10.244.3.0-24", other("192.168.33.11", "02:00:00:00:00:99"), 55)
    got = acquire(etcd, CFG, ME, ttl=60)
    assert (got.lease.subnet, got.how) == (N("10.244.3.0/24"), "reused")
    # rewritten with our current VtepMAC, under a fresh etcd lease; the old one revoked
    assert json.loads(etcd.kv[got.key].value)["BackendData"]["VtepMAC"] == "02:00:00:00:00:11"
    assert etcd.kv[got.key].lease == got.etcd_lease != 55 and 55 in etcd.revoked


def test_previous_subnet_from_subnet_env_if_free():
    etcd = FakeEtcd()
    got = acquire(etcd, CFG, ME, ttl=60, previous=N("10.244.4.0/24"))
    assert (got.lease.subnet, got.how) == (N("10.244.4.0/24"), "previous")
    etcd2 = FakeEtcd()
    etcd2.put(PREFIX + "10.244.4.0-24", other("192.168.33.12", "02:00:00:00:00:12"))
    assert acquire(etcd2, CFG, ME, ttl=60, previous=N("10.244.4.0/24")).lease.subnet == N("10.244.1.0/24")


def test_losing_a_race_moves_on_to_another_subnet():
    etcd = FakeEtcd()
    etcd.before_write = lambda: etcd.put(PREFIX + "10.244.1.0-24", other("192.168.33.12", "02:00:00:00:00:12"))
    got = acquire(etcd, CFG, ME, ttl=60)
    assert got.lease.subnet == N("10.244.2.0/24")
    assert len(etcd.revoked) == 1  # the etcd lease granted for the lost attempt is not leaked


def test_corrupt_lease_still_counts_as_taken():
    etcd = FakeEtcd()
    etcd.put(PREFIX + "10.244.1.0-24", "{garbage")
    etcd.put(PREFIX + "not-a-key", "{}")
    assert acquire(etcd, CFG, ME, ttl=60).lease.subnet == N("10.244.2.0/24")


def test_exhaustion():
    etcd = FakeEtcd()
    for i in range(1, 5):
        etcd.put(PREFIX + f"10.244.{i}.0-24", other(f"192.168.33.{50 + i}", f"02:00:00:00:00:{50 + i}"))
    with pytest.raises(SubnetExhausted, match="all 4 /24 subnets"):
        acquire(etcd, CFG, ME, ttl=60)


def test_renew_interval_is_well_before_expiry():
    assert renew_interval(86400) == 3600
    assert renew_interval(3) == 1.0
    assert renew_interval(1) == 0.5


DUAL = parse_config(json.dumps({"Network": "10.244.0.0/16", "SubnetMax": "10.244.4.0", "EnableIPv6": True,
                                "IPv6Network": "fd00:10:244::/56"}))


def test_dual_stack_key_names_both_subnets_each_from_its_plan():
    from ipaddress import IPv6Network as N6

    etcd = FakeEtcd()
    etcd.put(PREFIX + "10.244.1.0-24&fd00:10:244:1::-64", other("192.168.33.12", "02:00:00:00:00:12"))
    got = acquire(etcd, DUAL, ME, ttl=60, previous_v6=N6("fd00:10:244:7::/64"))
    assert got.key == PREFIX + "10.244.2.0-24&fd00:10:244:7::-64"
    assert (got.lease.subnet, got.lease.ipv6_subnet) == (N("10.244.2.0/24"), N6("fd00:10:244:7::/64"))
    # a restart gets both back
    again = acquire(etcd, DUAL, ME, ttl=60)
    assert (again.how, again.key, again.lease.ipv6_subnet) == ("reused", got.key, N6("fd00:10:244:7::/64"))


def test_an_ipv4_only_lease_of_ours_is_not_reused_for_a_dual_stack_config():
    etcd = FakeEtcd()
    etcd.put(PREFIX + "10.244.1.0-24", other("192.168.33.11", "02:00:00:00:00:11"))
    got = acquire(etcd, DUAL, ME, ttl=60)
    assert got.how == "new" and got.key == PREFIX + "10.244.2.0-24&fd00:10:244:1::-64"
