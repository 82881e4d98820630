"""kube-proxy's nftables layout rendered for a small set of services (golden file + semantics),
and the partial-sync transaction: only what changed, deletions after what referred to them."""

from __future__ import annotations

import os

from kproxy.model import ServicePort
from kproxy.nftables.rules import Elements, chain_base, endpoint_base, render_full, render_partial, render_service
from tests.unit.test_kproxy_iptables import CFG, EP1, EP2, assert_golden
from tests.unit.test_kproxy_iptables import services as iptables_services

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kproxy_nftables_full.txt")


def services() -> list[ServicePort]:
    """The iptables golden's services, plus internalTrafficPolicy Local."""
    return [*iptables_services(),
            ServicePort("default", "il", "", "TCP", 80, ("10.0.0.24",), internal_local=True, endpoints=(EP1, EP2))]


def rendered(svcs=None, cfg=CFG):
    return {sp.key: render_service(sp, cfg) for sp in (svcs or services())}


def elements(r):
    e = Elements()
    e.replace((k, None, sr) for k, sr in r.items())
    return e


def test_full_sync_matches_golden():
    r = rendered()
    assert_golden(GOLDEN, render_full(r, elements(r), set(), {}))


def test_names_are_kube_proxy_hashes():
    sp = services()[0]
    # base32(sha256("default/node-js/tcp/"))[:8] + "-" + the readable name
    assert chain_base(sp).endswith("-default/node-js/tcp/") and len(chain_base(sp)) == 8 + 1 + 20
    assert endpoint_base(sp, EP1).endswith("-default/node-js/tcp/__10.244.1.2/8080")
    assert chain_base(sp) != chain_base(ServicePort("default", "node-js", "", "UDP", 80))


def test_cluster_ip_dispatch_masquerade_and_even_pick():
    sp = services()[0]
    r = render_service(sp, CFG)
    chain = r.chains[f"service-{chain_base(sp)}"]
    assert chain[0] == "ip daddr 10.0.0.20 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade"
    assert chain[1:] == [f"numgen random mod 2 0 goto endpoint-{endpoint_base(sp, EP1)}",
                         f"goto endpoint-{endpoint_base(sp, EP2)}"]
    assert r.elements[("service-ips", "10.0.0.20 . tcp . 80")] == f" : goto service-{chain_base(sp)}"
    assert r.elements[("service-nodeports", "tcp . 30001")] == f" : goto external-{chain_base(sp)}"
    assert r.chains[f"endpoint-{endpoint_base(sp, EP1)}"] == [
        "ip saddr 10.244.1.2 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.244.1.2:8080"]


def test_affinity_sets_checked_first_and_updated_in_the_endpoint_chain():
    sp = services()[1]
    r = render_service(sp, CFG)
    aff = f"affinity-{endpoint_base(sp, EP1)}"
    assert r.affinity == {aff: 10800, f"affinity-{endpoint_base(sp, EP2)}": 10800}
    assert r.chains[f"service-{chain_base(sp)}"][1] == f"ip saddr @{aff} goto endpoint-{endpoint_base(sp, EP1)}"
    assert f"update @{aff} {{ ip saddr }}" in r.chains[f"endpoint-{endpoint_base(sp, EP1)}"]


def test_no_endpoints_reject_and_local_policy_drops():
    r = render_service(services()[3], CFG)
    assert r.chains == {}
    assert r.elements[("no-endpoint-services", "10.0.0.23 . tcp . 80")].endswith(": goto reject-chain")
    assert r.elements[("no-endpoint-services", "192.168.33.201 . tcp . 80")].endswith(": goto reject-chain")
    assert r.elements[("no-endpoint-nodeports", "tcp . 30003")].endswith(": goto reject-chain")
    assert ("cluster-ips", "10.0.0.23") in r.elements
    local = services()[2]  # external Local, its only endpoint on node2: outside clients dropped here
    r = render_service(local, CFG)
    assert r.elements[("no-endpoint-nodeports", "udp . 30002")] == ' comment "default/local" : drop'
    ext = r.chains[f"external-{chain_base(local)}"]
    assert ext[0].startswith("ip saddr 10.244.0.0/16 goto service-")  # pods still reach it
    assert not any(rule.startswith("goto local-") for rule in ext)
    il = services()[4]  # internal Local: only node1's endpoint
    r = render_service(il, CFG)
    assert r.elements[("service-ips", "10.0.0.24 . tcp . 80")] == f" : goto local-{chain_base(il)}"
    assert r.chains[f"local-{chain_base(il)}"][-1] == f"goto endpoint-{endpoint_base(il, EP1)}"


def test_partial_sync_touches_only_the_changed_service_and_deletes_last():
    old = rendered()
    e = elements(old)
    sp = services()[0]
    moved = ServicePort(sp.namespace, sp.name, sp.port_name, sp.protocol, sp.port, sp.cluster_ips,
                        node_port=sp.node_port, endpoints=(EP1,))
    new = dict(old)
    new[sp.key] = render_service(moved, CFG)
    del new[services()[3].key]
    changed = {sp.key, services()[3].key}
    deletes, adds = e.replace((k, old.get(k), new.get(k)) for k in changed)
    text = render_partial(old, new, changed, deletes, adds, e)
    lines = text.splitlines()
    gone = f"endpoint-{endpoint_base(sp, EP2)}"
    assert lines.index(f"flush chain ip kube-proxy {gone}") < lines.index(f"delete chain ip kube-proxy {gone}")
    assert lines[-1] == f"delete chain ip kube-proxy {gone}"
    assert not any("ab/" in line or "local/" in line for line in lines), "untouched services are not written"
    assert any(line.startswith("delete element ip kube-proxy no-endpoint-services { 10.0.0.23 . tcp . 80") or
               ("10.0.0.23 . tcp . 80" in line and line.startswith("delete element")) for line in lines)
    assert "add element" not in text  # the service-ips element of node-js still points at its chain
    assert e.value(("cluster-ips", "10.0.0.23")) is None and e.value(("cluster-ips", "10.0.0.20")) == ""


def test_shared_elements_stay_while_an_owner_is_left():
    a = ServicePort("default", "multi", "a", "TCP", 80, ("10.0.0.30",), endpoints=(EP1,))
    b = ServicePort("default", "multi", "b", "TCP", 81, ("10.0.0.30",), endpoints=(EP1,))
    r = rendered([a, b])
    e = elements(r)
    deletes, adds = e.replace([(a.key, r[a.key], None)])
    assert ("cluster-ips", "10.0.0.30") not in deletes | adds
    deletes, _ = e.replace([(b.key, r[b.key], None)])
    assert ("cluster-ips", "10.0.0.30") in deletes


def test_full_sync_removes_what_nobody_owns_and_keeps_affinity_sets():
    r = rendered()
    stale_chain = "service-AAAAAAAA-gone/svc/tcp/"
    stale_set = "affinity-AAAAAAAA-gone/svc/tcp/__10.0.0.1/80"
    kept = next(iter(r[services()[1].key].affinity))
    text = render_full(r, elements(r), {stale_chain, "services"}, {stale_set: 60, kept: 10800})
    lines = text.splitlines()
    assert lines[-2:] == [f"delete chain ip kube-proxy {stale_chain}", f"delete set ip kube-proxy {stale_set}"]
    assert f"delete set ip kube-proxy {kept}" not in lines  # same timeout: its clients stay
    text = render_full(r, elements(r), set(), {kept: 60})
    assert f"delete set ip kube-proxy {kept}" in text.splitlines()  # timeout changed: made anew


# --- IPv6: the `ip6 kube-proxy` table -------------------------------------------------------------
GOLDEN6 = os.path.join(os.path.dirname(__file__), "golden", "kproxy_nftables6_full.txt")


def test_ipv6_full_sync_matches_golden():
    from tests.unit.test_kproxy_iptables import CFG6, services6
    r = rendered(services6(), CFG6)
    assert_golden(GOLDEN6, render_full(r, elements(r), set(), {}, family=6))


def test_ipv6_table_matches_ip6_and_never_serves_node_ports_on_localhost():
    from tests.unit.test_kproxy_iptables import CFG6, EP6_1, services6
    text = render_full(rendered(services6(), CFG6), elements(rendered(services6(), CFG6)), set(), {}, family=6)
    assert "table ip kube-proxy" not in text and "add table ip6 kube-proxy" in text
    assert "type ipv6_addr . inet_proto . inet_service : verdict" in text and "ipv4_addr" not in text
    assert "fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @service-nodeports" in text
    sp = services6()[1]  # affinity
    r = render_service(sp, CFG6)
    ep_chain = r.chains[f"endpoint-{endpoint_base(sp, EP6_1)}"]
    assert ep_chain == [f"ip6 saddr {EP6_1.ip} jump mark-for-masquerade",
                        f"update @affinity-{endpoint_base(sp, EP6_1)} {{ ip6 saddr }}",
                        "meta l4proto tcp dnat to [fd00:10:244:1::2]:8080"]
    assert r.chains[f"service-{chain_base(sp)}"][0] == \
        "ip6 daddr fd00:10:96::21 tcp dport 80 ip6 saddr != fd00:10:244::/56 jump mark-for-masquerade"
    assert ("service-ips", "fd00:10:96::21 . tcp . 80") in r.elements
    # Partial transactions write the same family's table.
    e = Elements()
    deletes, adds = e.replace([(sp.key, None, r)])
    partial = render_partial({}, {sp.key: r}, [sp.key], deletes, adds, e, family=6)
    assert all(" ip6 kube-proxy " in line for line in partial.splitlines())
    assert "type ipv6_addr; flags dynamic,timeout; timeout 10800s;" in partial
