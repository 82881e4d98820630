"""kube-proxy's chain layout rendered for a small set of services (golden file + semantics)."""

from __future__ import annotations

import os

from kproxy.iptables.rules import render_partial_restore, render_restore, render_service, sep_chain, svc_chain
from kproxy.model import Config, Endpoint, ServicePort

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "kproxy_iptables_full.txt")
EP1 = Endpoint("10.244.1.2", 8080, node_name="node1")
EP2 = Endpoint("10.244.2.2", 8080, node_name="node2")
CFG = Config(node_name="node1", cluster_cidr="10.244.0.0/16")


def services() -> list[ServicePort]:
    return [
        ServicePort("default", "node-js", "", "TCP", 80, ("10.0.0.20",), node_port=30001, endpoints=(EP1, EP2)),
        ServicePort("default", "ab", "http", "TCP", 80, ("10.0.0.21",), affinity_seconds=10800,
                    endpoints=(EP1, EP2)),
        ServicePort("default", "local", "", "UDP", 53, ("10.0.0.22",), node_port=30002, external_local=True,
                    external_ips=("192.168.33.200",), endpoints=(EP2,)),
        ServicePort("default", "empty", "", "TCP", 80, ("10.0.0.23",), node_port=30003,
                    load_balancer_ips=("192.168.33.201",)),
    ]


def rendered(svcs=None):
    return {sp.key: render_service(sp, CFG) for sp in (svcs or services())}


def assert_golden(path: str, text: str) -> None:
    """`text` equals the golden file (KNET_UPDATE_GOLDEN=1 rewrites it instead)."""
    if os.environ.get("KNET_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()


def test_full_sync_matches_golden():
    assert_golden(GOLDEN, render_restore(rendered(), None, set()))


def test_chain_names_are_kube_proxy_hashes():
    sp = services()[0]
    # base32(sha256("default/node-js" + "tcp"))[:16], as kube-proxy names it
    assert svc_chain(sp) == "KUBE-SVC-" + svc_chain(sp)[9:] and len(svc_chain(sp)) == 25
    assert svc_chain(sp) == svc_chain(ServicePort("default", "node-js", "", "TCP", 81))
    assert svc_chain(sp) != svc_chain(ServicePort("default", "node-js", "", "UDP", 80))
    assert sep_chain(sp, EP1) != sep_chain(sp, EP2)


def test_even_split_probabilities():
    eps = tuple(Endpoint(f"10.244.1.{i}", 80) for i in range(2, 6))
    sp = ServicePort("default", "four", "", "TCP", 80, ("10.0.0.30",), endpoints=eps)
    lines = render_service(sp, CFG).nat_chains[svc_chain(sp)]
    probs = [line.split("--probability ")[1].split()[0] for line in lines if "--probability" in line]
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000"]
    assert "statistic" not in lines[-1]


def test_affinity_uses_recent_in_both_chains():
    sp = services()[1]
    r = render_service(sp, CFG)
    svc_lines = r.nat_chains[svc_chain(sp)]
    assert sum("--rcheck --seconds 10800 --reap" in line for line in svc_lines) == 2
    assert all("--set" in r.nat_chains[sep_chain(sp, ep)][1] for ep in (EP1, EP2))


def test_no_endpoints_rejects_and_has_no_nat_chains():
    sp = services()[3]
    r = render_service(sp, CFG)
    assert r.nat_chains == {} and r.nat_shared == [] and r.nat_nodeports == []
    assert len(r.filter_services) == 1 and r.filter_services[0].endswith("-j REJECT --reject-with tcp-reset")
    assert len(r.filter_external) == 2


def test_local_policy_without_local_endpoint_drops_external():
    sp = ServicePort("default", "loc", "", "TCP", 80, ("10.0.0.40",), node_port=30005, external_local=True,
                     endpoints=(EP2,))
    r = render_service(sp, CFG)  # EP2 lives on node2, we are node1
    assert r.nat_nodeports == []
    assert r.filter_external and r.filter_external[0].endswith("-j DROP")
    assert r.nat_shared  # the cluster IP still works cluster-wide


def test_local_policy_keeps_source_for_external_clients():
    sp = ServicePort("default", "loc", "", "TCP", 80, ("10.0.0.40",), node_port=30005, external_local=True,
                     endpoints=(EP1, EP2))
    r = render_service(sp, CFG)
    ext = r.nat_chains[svc_chain(sp, "KUBE-EXT-")]
    assert ext[-1] == f"-A {svc_chain(sp, 'KUBE-EXT-')} -j {svc_chain(sp, 'KUBE-SVL-')}"
    # only LOCAL-sourced traffic is masqueraded, external clients keep their address
    assert all("--src-type LOCAL" in line for line in ext if "KUBE-MARK-MASQ" in line)
    assert sep_chain(sp, EP1) in r.nat_chains[svc_chain(sp, "KUBE-SVL-")][0]
    assert all(sep_chain(sp, EP2) not in line for line in r.nat_chains[svc_chain(sp, "KUBE-SVL-")])


def test_internal_local_uses_only_local_endpoints():
    sp = ServicePort("default", "il", "", "TCP", 80, ("10.0.0.41",), internal_local=True, endpoints=(EP1, EP2))
    r = render_service(sp, CFG)
    assert r.nat_shared[0].endswith(svc_chain(sp, "KUBE-SVL-"))
    assert svc_chain(sp) not in r.nat_chains


def test_unready_endpoints_are_excluded_and_terminating_is_a_fallback():
    unready = Endpoint("10.244.1.9", 80, ready=False, serving=False)
    terminating = Endpoint("10.244.1.10", 80, ready=False, serving=True, terminating=True)
    sp = ServicePort("default", "r", "", "TCP", 80, ("10.0.0.42",), endpoints=(EP1, unready, terminating))
    text = "\n".join(render_service(sp, CFG).nat_chains[svc_chain(sp)])
    assert EP1.addr in text and unready.addr not in text and terminating.addr not in text
    sp2 = ServicePort("default", "r", "", "TCP", 80, ("10.0.0.42",), endpoints=(unready, terminating))
    text2 = "\n".join(render_service(sp2, CFG).nat_chains[svc_chain(sp2)])
    assert terminating.addr in text2 and unready.addr not in text2


def test_partial_sync_writes_only_changed_service_chains():
    all_rules = rendered()
    changed = services()[0].key
    text = render_restore(all_rules, {changed}, set())
    other = services()[1]
    assert f":{svc_chain(services()[0])} - [0:0]" in text
    assert f":{svc_chain(other)} " not in text  # untouched: not declared, so not flushed
    assert f"-j {svc_chain(other)}" in text  # but still referenced from KUBE-SERVICES


def test_partial_sync_edits_only_the_changed_entries_of_the_shared_chains():
    before = services()[0]
    after = ServicePort(before.namespace, before.name, "", "TCP", 80, ("10.0.0.20",), node_port=30009,
                        endpoints=(EP1,))
    old, new = render_service(before, CFG), render_service(after, CFG)
    stale = set(old.nat_chains) - set(new.nat_chains)
    text = render_partial_restore({before.key: old}, {after.key: new}, [], stale)
    nat = text[text.index("*nat"):]
    assert ":KUBE-SERVICES" not in nat and ":KUBE-NODEPORTS" not in nat  # not declared: not flushed
    assert "-A KUBE-SERVICES" not in nat and "ab" not in nat  # no other service's entry is written
    assert "-D KUBE-NODEPORTS -m comment --comment \"default/node-js\" -m tcp -p tcp --dport 30001" in nat
    assert "-I KUBE-NODEPORTS 1 -m comment --comment \"default/node-js\" -m tcp -p tcp --dport 30009" in nat
    assert "-D KUBE-SERVICES" not in nat  # the ClusterIP entry is the same: kept as it is
    assert f"-X {sep_chain(before, EP2)}" in nat and nat.index("-D KUBE-NODEPORTS") < nat.index("-X ")
    assert f":{svc_chain(after)} - [0:0]" in nat


def test_stale_chains_are_flushed_and_deleted():
    text = render_restore(rendered(), set(), {"KUBE-SVC-GONEGONEGONEGONE"})
    assert ":KUBE-SVC-GONEGONEGONEGONE - [0:0]" in text and "-X KUBE-SVC-GONEGONEGONEGONE" in text


def test_masquerade_all():
    sp = services()[0]
    r = render_service(sp, Config(node_name="node1", masquerade_all=True))
    assert r.nat_chains[svc_chain(sp)][0].endswith("--dport 80 -j KUBE-MARK-MASQ")


# --- IPv6: the same layout in ip6tables ---------------------------------------------------------
GOLDEN6 = os.path.join(os.path.dirname(__file__), "golden", "kproxy_ip6tables_full.txt")
EP6_1 = Endpoint("fd00:10:244:1::2", 8080, node_name="node1")
EP6_2 = Endpoint("fd00:10:244:2::2", 8080, node_name="node2")
CFG6 = Config(node_name="node1", cluster_cidr="fd00:10:244::/56", family=6)


def services6() -> list[ServicePort]:
    return [
        ServicePort("default", "node-js", "", "TCP", 80, ("fd00:10:96::20",), node_port=30001,
                    endpoints=(EP6_1, EP6_2), family=6),
        ServicePort("default", "ab", "http", "TCP", 80, ("fd00:10:96::21",), affinity_seconds=10800,
                    endpoints=(EP6_1, EP6_2), family=6),
        ServicePort("default", "local", "", "UDP", 53, ("fd00:10:96::22",), node_port=30002, external_local=True,
                    external_ips=("fd00:33::200",), endpoints=(EP6_2,), family=6),
        ServicePort("default", "empty", "", "TCP", 80, ("fd00:10:96::23",), node_port=30003,
                    load_balancer_ips=("fd00:33::201",), family=6),
    ]


def test_ipv6_full_sync_matches_golden():
    text = render_restore({sp.key: render_service(sp, CFG6) for sp in services6()}, None, set(), family=6)
    assert_golden(GOLDEN6, text)


def test_ipv6_rules_use_128_bit_addresses_brackets_and_no_localhost_node_ports():
    sp = services6()[1]
    r = render_service(sp, CFG6)
    lines = [line for chain in r.nat_chains.values() for line in chain] + r.nat_shared
    assert "-d fd00:10:96::21/128" in r.nat_shared[0] and "/32" not in "\n".join(lines)
    assert f"-s {EP6_1.ip}/128 -j KUBE-MARK-MASQ" in r.nat_chains[sep_chain(sp, EP6_1)][0]
    assert r.nat_chains[sep_chain(sp, EP6_1)][1].endswith("-j DNAT --to-destination [fd00:10:244:1::2]:8080")
    assert all("--mask ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in line for line in lines if "recent" in line)
    assert "! -s fd00:10:244::/56 -j KUBE-MARK-MASQ" in r.nat_chains[svc_chain(sp)][0]
    text = render_restore({sp.key: r}, None, set(), family=6)
    assert "-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS" in text
    # The chain names are the IPv4 table's (kube-proxy hashes the service port, not the address).
    assert svc_chain(sp) == svc_chain(services()[1])


def test_ipv6_service_without_endpoints_rejects_on_its_node_ports_too():
    r = render_service(services6()[3], CFG6)
    assert r.filter_services == ['-A KUBE-SERVICES -m comment --comment "default/empty has no endpoints" '
                                 "-m tcp -p tcp -d fd00:10:96::23/128 --dport 80 -j REJECT --reject-with tcp-reset"]
    assert r.filter_external[-1].endswith("-m addrtype --dst-type LOCAL ! -d ::1/128 -m tcp -p tcp --dport 30003 "
                                          "-j REJECT --reject-with tcp-reset")
