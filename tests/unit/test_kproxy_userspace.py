"""The userspace mode's portal rules (pure): a full sync rewrites the portal chains, a partial one
deletes and inserts only the changed ports' lines; a destination without endpoints gets no portal."""

from __future__ import annotations

from kproxy.model import ServicePort
from kproxy.userspace.backend import portal_lines, render_portals

WEB = ServicePort("default", "web", "", "TCP", 80, ("10.96.0.9",), external_ips=("192.168.33.50",))


def test_portals_redirect_each_destination_that_has_endpoints():
    lines = portal_lines(WEB, 41000, internal=True, external=False)
    assert lines == [f'-A {chain} -m comment --comment "default/web" -m tcp -p tcp -d 10.96.0.9/32 --dport 80 '
                     f"-j REDIRECT --to-ports 41000" for chain in ("KUBE-PORTALS-CONTAINER", "KUBE-PORTALS-HOST")]
    assert len(portal_lines(WEB, 41000, internal=True, external=True)) == 4
    assert portal_lines(WEB, 0, internal=True, external=True) == []  # no listener (SCTP): no portal


def test_full_rewrites_the_chains_and_partial_edits_only_the_changed_lines():
    old = portal_lines(WEB, 41000, True, False)
    new = portal_lines(WEB, 41000, True, True)
    other = portal_lines(ServicePort("default", "db", "", "TCP", 5432, ("10.96.0.10",)), 42000, True, False)
    full = render_portals({"default/web": new, "default/db": other}, {})
    assert ":KUBE-PORTALS-HOST - [0:0]" in full and all(line in full for line in new + other)
    partial = render_portals({"default/web": new, "default/db": other}, {}, {"default/web": (old, new)})
    nat = partial[partial.index("*nat"):]
    assert ":KUBE-PORTALS" not in nat and "db" not in nat  # not declared (not flushed), others untouched
    assert nat.count("-I KUBE-PORTALS-") == 2 and "-d 192.168.33.50/32" in nat and "-D " not in nat
    gone = render_portals({"default/db": other}, {}, {"default/web": (new, [])})
    assert gone[gone.index("*nat"):].count("-D KUBE-PORTALS-") == 4


def test_ipv6_portals_match_128_bit_addresses():
    sp = ServicePort("default", "web", "", "TCP", 80, ("fd00:10:96::20",), external_ips=("fd00:33::9",), family=6)
    assert portal_lines(sp, 41000, internal=True, external=True)[0] == (
        '-A KUBE-PORTALS-CONTAINER -m comment --comment "default/web" -m tcp -p tcp -d fd00:10:96::20/128 '
        "--dport 80 -j REDIRECT --to-ports 41000")


def test_stale_udp_entries_of_an_ipv6_service_are_flushed_in_the_ipv6_table():
    from kproxy.conntrack import stale_flushes
    from kproxy.model import Endpoint
    old = ServicePort("default", "dns", "", "UDP", 53, ("fd00:10:96::a",), node_port=30053, family=6,
                      endpoints=(Endpoint("fd00:10:244:1::5", 53), Endpoint("fd00:10:244:1::6", 53)))
    new = ServicePort("default", "dns", "", "UDP", 53, ("fd00:10:96::a",), node_port=30053, family=6,
                      endpoints=(Endpoint("fd00:10:244:1::6", 53),))
    assert [f.argv() for f in stale_flushes(old, new)] == [
        ["conntrack", "-D", "-f", "ipv6", "-p", "udp", "--orig-dst", "fd00:10:96::a", "--dst-nat", "fd00:10:244:1::5"],
        ["conntrack", "-D", "-f", "ipv6", "-p", "udp", "--orig-port-dst", "30053", "--dst-nat", "fd00:10:244:1::5"]]
