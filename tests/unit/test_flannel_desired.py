"""Desired kernel state from a set of leases: vxlan route/neigh/fdb, host-gw routes, diffs."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

from flannel_py.desired import Fdb, Neigh, Route, desired_hostgw, desired_vxlan, diff
from flannel_py.lease import Lease, hostgw_attrs, vxlan_attrs


def vx(subnet: str, ip: str, mac: str, vni: int = 1) -> Lease:
    return Lease(N(subnet), vxlan_attrs(A(ip), vni, mac))


def hg(subnet: str, ip: str) -> Lease:
    return Lease(N(subnet), hostgw_attrs(A(ip)))


OWN = vx("10.244.1.0/24", "192.168.33.11", "02:00:00:00:00:01")


def test_vxlan_entries_for_every_other_node():
    leases = [OWN, vx("10.244.2.0/24", "192.168.33.12", "02:00:00:00:00:02"),
              vx("10.244.3.0/24", "192.168.33.13", "02:00:00:00:00:03")]
    d = desired_vxlan(OWN, leases, vni=1)
    assert d.routes == {Route("10.244.2.0/24", "10.244.2.0"), Route("10.244.3.0/24", "10.244.3.0")}
    assert d.neighs == {Neigh("10.244.2.0", "02:00:00:00:00:02"), Neigh("10.244.3.0", "02:00:00:00:00:03")}
    assert d.fdb == {Fdb("02:00:00:00:00:02", "192.168.33.12"), Fdb("02:00:00:00:00:03", "192.168.33.13")}
    assert d.skipped == ()


def test_vxlan_alone_needs_nothing():
    d = desired_vxlan(OWN, [OWN], vni=1)
    assert not d.routes and not d.neighs and not d.fdb


def test_vxlan_skips_other_backends_vnis_and_overlaps():
    leases = [OWN,
              hg("10.244.4.0/24", "192.168.33.14"),
              vx("10.244.5.0/24", "192.168.33.15", "02:00:00:00:00:05", vni=9),
              vx("10.244.1.0/25", "192.168.33.16", "02:00:00:00:00:06"),
              vx("10.244.7.0/24", "192.168.33.17", "02:00:00:00:00:07")]
    d = desired_vxlan(OWN, leases, vni=1)
    assert d.routes == {Route("10.244.7.0/24", "10.244.7.0")}
    reasons = dict(d.skipped)
    assert "backend host-gw" in reasons["10.244.4.0/24"]
    assert "VNI 9" in reasons["10.244.5.0/24"]
    assert "overlaps" in reasons["10.244.1.0/25"]


def test_vxlan_duplicate_mac_keeps_one_fdb_destination():
    leases = [vx("10.244.2.0/24", "192.168.33.12", "02:00:00:00:00:02"),
              vx("10.244.3.0/24", "192.168.33.99", "02:00:00:00:00:02")]
    d = desired_vxlan(OWN, leases, vni=1)
    assert d.fdb == {Fdb("02:00:00:00:00:02", "192.168.33.12")}
    assert len(d.routes) == 1 and "already used" in dict(d.skipped)["10.244.3.0/24"]


def test_host_gw_routes_via_public_ip():
    own = hg("10.244.1.0/24", "192.168.33.11")
    leases = [own, hg("10.244.2.0/24", "192.168.33.12"), vx("10.244.3.0/24", "192.168.33.13", "02:00:00:00:00:03")]
    d = desired_hostgw(own, leases)
    assert d.routes == {Route("10.244.2.0/24", "192.168.33.12")}
    assert not d.neighs and not d.fdb


def test_diff_applies_only_the_difference():
    have = {Route("10.244.2.0/24", "10.244.2.0"), Route("10.244.9.0/24", "10.244.9.0")}
    want = {Route("10.244.2.0/24", "10.244.2.0"), Route("10.244.3.0/24", "10.244.3.0")}
    d = diff(want, have)
    assert d.add == {Route("10.244.3.0/24", "10.244.3.0")}
    assert d.remove == {Route("10.244.9.0/24", "10.244.9.0")}


def test_changed_vtep_mac_replaces_neigh_and_fdb():
    before = desired_vxlan(OWN, [vx("10.244.2.0/24", "192.168.33.12", "02:00:00:00:00:02")], vni=1)
    after = desired_vxlan(OWN, [vx("10.244.2.0/24", "192.168.33.12", "02:00:00:00:00:22")], vni=1)
    d = diff(after.fdb, before.fdb)
    assert d.remove == {Fdb("02:00:00:00:00:02", "192.168.33.12")}
    assert d.add == {Fdb("02:00:00:00:00:22", "192.168.33.12")}
    assert diff(after.routes, before.routes).add == frozenset()
