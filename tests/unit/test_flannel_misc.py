"""subnet.env, iptables rule rendering, etcd endpoint parsing and watch-stream decoding."""

from __future__ import annotations

import json
from ipaddress import IPv4Network as N

import pytest

from flannel_py import masq, subnet_env
from flannel_py.registry import (
    Compacted,
    Created,
    EtcdUnavailable,
    Progress,
    WatchEvent,
    _watch_message,
    parse_endpoints,
)


def test_subnet_env_is_written_as_flanneld_writes_it(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    subnet_env.write(str(path), N("10.244.0.0/16"), N("10.244.3.0/24"), 1450, True)
    assert path.read_text() == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
                                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert subnet_env.previous_subnet(str(path)) == N("10.244.3.0/24")
    assert [p.name for p in path.parent.iterdir()] == ["subnet.env"]  # no temp file left


def test_dual_stack_subnet_env(tmp_path):
    from ipaddress import IPv6Network as N6

    path = tmp_path / "subnet.env"
    subnet_env.write(str(path), N("10.244.0.0/16"), N("10.244.3.0/24"), 1430, False,
                     N6("fd00:10:244::/56"), N6("fd00:10:244:3::/64"))
    assert path.read_text() == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
                                "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
                                "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n")
    assert subnet_env.previous_ipv6_subnet(str(path)) == N6("fd00:10:244:3::/64")
    assert subnet_env.previous_ipv6_subnet(str(tmp_path / "none")) is None
    rules = masq.masq_rules(N6("fd00:10:244::/56"), N6("fd00:10:244:3::/64"))
    assert rules[4].endswith('-s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" '
                             "-j MASQUERADE --random-fully")
    assert masq.binary(N6("fd00::/56")) == "ip6tables" and masq.binary(N("10.0.0.0/8")) == "iptables"


def test_previous_subnet_tolerates_missing_or_bad_files(tmp_path):
    assert subnet_env.previous_subnet(str(tmp_path / "none")) is None
    bad = tmp_path / "bad.env"
    bad.write_text("FLANNEL_SUBNET=banana\n")
    assert subnet_env.previous_subnet(str(bad)) is None


def test_masq_rules_never_masquerade_pod_to_pod():
    rules = masq.masq_rules(N("10.244.0.0/16"), N("10.244.3.0/24"))
    assert rules[0] == '-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN'
    assert rules[1] == ('-A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" '
                        '-j RETURN')
    assert rules[4].endswith("-s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" "
                             "-j MASQUERADE --random-fully")
    # every RETURN for cluster-internal traffic comes before the first MASQUERADE
    first_masq = next(i for i, r in enumerate(rules) if "MASQUERADE" in r)
    assert all("RETURN" in r for r in rules[:first_masq])
    text = masq.render_restore("nat", masq.MASQ_CHAIN, rules)
    assert text.startswith("*nat\n:FLANNEL-POSTRTG - [0:0]\n") and text.endswith("COMMIT\n")


def test_endpoints():
    assert parse_endpoints("http://192.168.33.2:2379, https://e2:2380,e3") == [
        ("http", "192.168.33.2", 2379), ("https", "e2", 2380), ("http", "e3", 2379)]
    for bad in ("", "ftp://x:1", ","):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def _msg(result: dict) -> bytes:
    return json.dumps({"result": {"header": {"revision": "9"}, **result}}).encode()


def test_watch_messages():
    assert list(_watch_message(_msg({"created": True}))) == [Created()]
    assert list(_watch_message(_msg({}))) == [Progress(9)]
    events = list(_watch_message(_msg({"events": [
        {"kv": {"key": "L2E=", "value": "eA==", "mod_revision": "7"}},
        {"type": "DELETE", "kv": {"key": "L2I=", "mod_revision": "8"}}]})))
    assert events == [WatchEvent("put", "/a", b"x", 7), WatchEvent("delete", "/b", b"", 8)]
    with pytest.raises(Compacted):
        list(_watch_message(_msg({"canceled": True, "compact_revision": "5"})))
    with pytest.raises(EtcdUnavailable):
        list(_watch_message(b'{"error": {"message": "boom"}}'))
