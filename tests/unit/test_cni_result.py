from cni.masq import chain_name, families, jump_rules, parse_comment, render_setup, render_teardown
from cni.result import format_result, normalize_prev_result

RESULT = {
    "interfaces": [{"name": "cni0", "mac": "aa"}, {"name": "veth1", "mac": "bb"},
                   {"name": "eth0", "mac": "cc", "sandbox": "/run/netns/p"}],
    "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 2},
            {"address": "fd00::2/64", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
}


def test_1x_result_has_no_ip_version():
    out = format_result(RESULT, "1.0.0")
    assert out["cniVersion"] == "1.0.0" and out["dns"] == {}
    assert all("version" not in ip for ip in out["ips"])


def test_0x_result_has_ip_version():
    out = format_result(RESULT, "0.4.0")
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert normalize_prev_result(out)["ips"] == RESULT["ips"]


def test_chain_name_is_stable_and_short():
    name = chain_name("knet", "abc")
    assert name == chain_name("knet", "abc") != chain_name("knet", "abd")
    assert name.startswith("CNI-") and len(name) == 28


def test_masq_rules_golden():
    chain = chain_name("knet", "c1")
    assert render_setup("knet", "c1", ["10.1.0.2/24"]) == (
        "*nat\n"
        f":{chain} - [0:0]\n"
        f'-A {chain} -d 10.1.0.0/24 -m comment --comment "name: \\"knet\\" id: \\"c1\\"" -j ACCEPT\n'
        f'-A {chain} ! -d 224.0.0.0/4 -m comment --comment "name: \\"knet\\" id: \\"c1\\"" -j MASQUERADE\n'
        f'-A POSTROUTING -s 10.1.0.2/32 -m comment --comment "name: \\"knet\\" id: \\"c1\\"" -j {chain}\n'
        "COMMIT\n"
    )


def test_comment_round_trip_and_jump_rules():
    assert parse_comment('name: "knet" id: "c1"') == ("knet", "c1")
    assert parse_comment("something else") is None
    listing = ("-P POSTROUTING ACCEPT\n-A POSTROUTING -s 10.1.0.2/32 -j CNI-x\n-A POSTROUTING -j CNI-y\n"
               "-A CNI-x -j MASQUERADE\n")
    assert jump_rules(listing, {"CNI-x"}) == ["POSTROUTING -s 10.1.0.2/32 -j CNI-x"]
    assert jump_rules(listing, {"CNI-x", "CNI-y"}) == ["POSTROUTING -s 10.1.0.2/32 -j CNI-x", "POSTROUTING -j CNI-y"]


def test_masq_teardown_golden():
    """DEL's one restore: the chain is declared first (made if missing, emptied if present) so
    that -X works whatever state it is in; the jump rules go before the chain."""
    chain = chain_name("knet", "c1")
    jump = f'POSTROUTING -s 10.1.0.2/32 -m comment --comment "name: \\"knet\\" id: \\"c1\\"" -j {chain}'
    assert f"-A {jump}\n" in render_setup("knet", "c1", ["10.1.0.2/24", "fd00::2/64"])
    assert render_teardown([chain], [jump]) == f"*nat\n:{chain} - [0:0]\n-D {jump}\n-X {chain}\nCOMMIT\n"


def test_masq_rules_per_family_golden():
    """A dual-stack pod: its IPv4 address in iptables' input, its IPv6 one in ip6tables' (same
    chain name, IPv6 multicast spared); neither family's input names the other's address."""
    chain = chain_name("knet", "c1")
    note = '-m comment --comment "name: \\"knet\\" id: \\"c1\\""'
    both = ["10.1.0.2/24", "fd00:10:244:1::2/64"]
    assert render_setup("knet", "c1", both, 6) == (
        "*nat\n"
        f":{chain} - [0:0]\n"
        f"-A {chain} -d fd00:10:244:1::/64 {note} -j ACCEPT\n"
        f"-A {chain} ! -d ff00::/8 {note} -j MASQUERADE\n"
        f"-A POSTROUTING -s fd00:10:244:1::2/128 {note} -j {chain}\n"
        "COMMIT\n"
    )
    assert render_setup("knet", "c1", both, 4) == render_setup("knet", "c1", ["10.1.0.2/24"])
    assert families(both) == [4, 6] and families(["fd00::2"]) == [6] and families([]) == []
