"""Desired kernel state from a set of leases: vxlan route/neigh/fdb, host-gw routes, diffs."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N
from ipaddress import IPv6Address as A6
from ipaddress import IPv6Network as N6

import pytest

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


# --- dual-stack -----------------------------------------------------------------------------------

def vx6(i: int, vni: int = 1, v6: bool = True, v6_data: bool = True) -> Lease:
    """Node i: 10.244.i.0/24 + fd00:10:244:i::/64, underlay 192.168.33.1i + fd00:33::1i, VTEP MACs
    02:..:0i (IPv4) and 06:..:0i (IPv6)."""
    return Lease(N(f"10.244.{i}.0/24"),
                 vxlan_attrs(A(f"192.168.33.1{i}"), vni, f"02:00:00:00:00:0{i}",
                             A6(f"fd00:33::1{i}") if v6 else None, f"06:00:00:00:00:0{i}" if v6_data else None),
                 N6(f"fd00:10:244:{i}::/64") if v6 else None)


@pytest.mark.parametrize(("leases", "routes", "neighs", "fdb", "skipped"), [
    pytest.param([vx6(2), vx6(3)],
                 {Route("fd00:10:244:2::/64", "fd00:10:244:2::"), Route("fd00:10:244:3::/64", "fd00:10:244:3::")},
                 {Neigh("fd00:10:244:2::", "06:00:00:00:00:02"), Neigh("fd00:10:244:3::", "06:00:00:00:00:03")},
                 {Fdb("06:00:00:00:00:02", "fd00:33::12"), Fdb("06:00:00:00:00:03", "fd00:33::13")},
                 {}, id="every-dual-stack-node"),
    pytest.param([vx6(2, v6=False)], set(), set(), set(), {"10.244.2.0/24": "no IPv6 subnet"},
                 id="an-ipv4-only-node-gets-no-ipv6-entries"),
    pytest.param([vx6(2, v6_data=False)], set(), set(), set(), {"fd00:10:244:2::/64": "no BackendV6Data"},
                 id="no-ipv6-vtep"),
    pytest.param([vx6(2, vni=9)], set(), set(), set(), {"fd00:10:244:2::/64": "VNI 9"}, id="other-vni"),
    pytest.param([Lease(N("10.244.5.0/24"), vxlan_attrs(A("192.168.33.15"), 1, "02:00:00:00:00:05", A6("fd00:33::15"),
                                                        "06:00:00:00:00:05"), N6("fd00:10:244:1::/80"))],
                 set(), set(), set(), {"fd00:10:244:1::/80": "overlaps"}, id="overlapping-ipv6-subnet"),
])
def test_vxlan_ipv6_device_entries(leases, routes, neighs, fdb, skipped):
    own = vx6(1)
    d = desired_vxlan(own, [own, *leases], vni=1, family=6)
    assert (d.routes, d.neighs, d.fdb) == (routes, neighs, fdb)
    reasons = dict(d.skipped)
    for subnet, reason in skipped.items():
        assert reason in reasons[subnet]
    # and the IPv4 device's entries are the IPv4 members, whatever the IPv6 ones are
    assert {r.dst for r in desired_vxlan(own, [own, *leases], vni=1).routes} <= {str(x.subnet) for x in leases}


def test_an_ipv4_only_node_programs_no_ipv6_device():
    own = vx6(1, v6=False)
    assert desired_vxlan(own, [own, vx6(2)], vni=1, family=6) == desired_vxlan(own, [], vni=1, family=6)


def test_host_gw_routes_both_families_via_each_public_ip():
    def hg6(i: int, v6: bool = True) -> Lease:
        return Lease(N(f"10.244.{i}.0/24"), hostgw_attrs(A(f"192.168.33.1{i}"), A6(f"fd00:33::1{i}") if v6 else None),
                     N6(f"fd00:10:244:{i}::/64") if v6 else None)

    own = hg6(1)
    d = desired_hostgw(own, [own, hg6(2), hg6(3, v6=False)])
    assert d.routes == {Route("10.244.2.0/24", "192.168.33.12"), Route("fd00:10:244:2::/64", "fd00:33::12"),
                        Route("10.244.3.0/24", "192.168.33.13")}
    assert "no IPv6 subnet" in dict(d.skipped)["10.244.3.0/24"]
    # a lease with an IPv6 subnet but no PublicIPv6 cannot be routed to in IPv6
    odd = Lease(N("10.244.4.0/24"), hostgw_attrs(A("192.168.33.14")), N6("fd00:10:244:4::/64"))
    d = desired_hostgw(own, [own, odd])
    assert d.routes == {Route("10.244.4.0/24", "192.168.33.14")}
    assert "no PublicIPv6" in dict(d.skipped)["fd00:10:244:4::/64"]
