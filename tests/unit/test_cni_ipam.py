import ipaddress
import threading

import pytest

from cni import errors
from cni.errors import CniError
from cni.ipam import host_local_add, host_local_del, host_local_gc, host_local_has_free, iter_candidates
from cni.ipam_config import parse_host_local
from cni.ipam_store import Store


def ip(s: str):
    return ipaddress.ip_address(s)


def test_legacy_subnet_defaults():
    cfg = parse_host_local({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]})
    (r,), = cfg.range_sets
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")
    assert cfg.routes[0].to_json() == {"dst": "0.0.0.0/0"}
    assert cfg.data_dir == "/var/lib/cni/networks"


@pytest.mark.parametrize("ipam", [
    {},
    {"subnet": "10.1.0.0/33"},
    {"subnet": "not-a-cidr"},
    {"subnet": "10.1.0.0/31"},
    {"ranges": []},
    {"ranges": [[]]},
    {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.5"}]]},
    {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.5"}]]},
    {"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.9.0.1"}]]},
    {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]},
    {"subnet": "10.1.0.0/24", "routes": [{"gw": "10.1.0.1"}]},
    {"subnet": "10.1.0.0/24", "dataDir": "relative/dir"},
    # IPv6: not a subnet (an address with host bits, a prefix past 128, no prefix room), overlapping
    {"ranges": [[{"subnet": "fd00:10:244:1::5/64"}]]},
    {"ranges": [[{"subnet": "fd00:10:244:1::/129"}]]},
    {"ranges": [[{"subnet": "fd00:10:244:1::/127"}]]},
    {"ranges": [[{"subnet": "fd00:10:244:1:::/64"}]]},
    {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:10:244::/56"}], [{"subnet": "fd00:10:244:1::/64"}]]},
    {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]},
    {"ranges": [[{"subnet": "fd00::/64", "gateway": "10.1.0.1"}]]},
    {"subnet": "10.1.0.5/24"},
])
def test_invalid_ipam(ipam):
    with pytest.raises(CniError) as e:
        parse_host_local(ipam)
    assert e.value.code == errors.INVALID_CONFIG and e.value.msg.startswith("ipam: ")


def test_round_robin_starts_after_last_reserved():
    cfg = parse_host_local({"ranges": [[{"subnet": "10.1.0.0/29"}]]})
    ranges = cfg.range_sets[0]
    order = [str(a) for a, _ in iter_candidates(ranges, "10.1.0.4")]
    assert order == ["10.1.0.5", "10.1.0.6", "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"]
    assert next(str(a) for a, _ in iter_candidates(ranges, None)) == "10.1.0.1"


def test_multiple_ranges_in_a_set():
    cfg = parse_host_local({"ranges": [[{"subnet": "10.1.0.0/30"}, {"subnet": "10.2.0.0/30"}]]})
    assert [str(a) for a, _ in iter_candidates(cfg.range_sets[0], "10.1.0.2")] == ["10.2.0.1", "10.2.0.2",
                                                                                   "10.1.0.1", "10.1.0.2"]


def store_for(tmp_path) -> Store:
    return Store(str(tmp_path), "net")


def test_allocate_release_and_no_immediate_reuse(tmp_path):
    cfg = parse_host_local({"subnet": "10.1.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]})
    st = store_for(tmp_path)
    a = host_local_add(cfg, st, "a", "eth0", [])
    b = host_local_add(cfg, st, "b", "eth0", [])
    assert a == {"ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}], "routes": [{"dst": "0.0.0.0/0"}]}
    assert b["ips"][0]["address"] == "10.1.0.3/24"
    assert (tmp_path / "net" / "10.1.0.2").read_bytes() == b"a\r\neth0"
    assert host_local_del(st, "a", "eth0") == ["10.1.0.2"]
    assert host_local_del(st, "a", "eth0") == []  # idempotent
    c = host_local_add(cfg, st, "c", "eth0", [])
    assert c["ips"][0]["address"] == "10.1.0.4/24"  # round robin, not the just-released .2


def test_duplicate_allocation_refused(tmp_path):
    cfg = parse_host_local({"subnet": "10.1.0.0/24"})
    st = store_for(tmp_path)
    host_local_add(cfg, st, "a", "eth0", [])
    with pytest.raises(CniError) as e:
        host_local_add(cfg, st, "a", "eth0", [])
    assert e.value.code == errors.ALREADY_EXISTS


def test_exhaustion_is_clear_and_leaves_nothing(tmp_path):
    cfg = parse_host_local({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10",
                                         "rangeEnd": "10.1.0.11"}], [{"subnet": "10.9.0.0/24",
                                                                       "rangeStart": "10.9.0.5",
                                                                       "rangeEnd": "10.9.0.5"}]]})
    st = store_for(tmp_path)
    host_local_add(cfg, st, "a", "eth0", [])
    assert host_local_has_free(cfg, st) is False
    with pytest.raises(CniError) as e:
        host_local_add(cfg, st, "b", "eth0", [])
    assert e.value.code == errors.IPAM_EXHAUSTED and "10.9.0.0/24" in e.value.msg
    # the first range set still had room: its tentative reservation must have been rolled back
    assert set(st.reservations()) == {"10.1.0.10", "10.9.0.5"}


def test_requested_ip(tmp_path):
    cfg = parse_host_local({"subnet": "10.1.0.0/24"})
    st = store_for(tmp_path)
    assert host_local_add(cfg, st, "a", "eth0", [ip("10.1.0.77")])["ips"][0]["address"] == "10.1.0.77/24"
    for bad in ("10.1.0.77", "10.1.0.1", "10.5.0.1"):
        with pytest.raises(CniError):
            host_local_add(cfg, st, "b", "eth0", [ip(bad)])
    assert set(st.reservations()) == {"10.1.0.77"}


def test_ipv6_range(tmp_path):
    cfg = parse_host_local({"ranges": [[{"subnet": "fd00:10::/120"}]]})
    out = host_local_add(cfg, store_for(tmp_path), "a", "eth0", [])
    assert out["ips"][0] == {"address": "fd00:10::2/120", "gateway": "fd00:10::1"}


def test_state_survives_a_new_store_object(tmp_path):
    cfg = parse_host_local({"subnet": "10.1.0.0/24"})
    host_local_add(cfg, store_for(tmp_path), "a", "eth0", [])
    again = host_local_add(cfg, store_for(tmp_path), "b", "eth0", [])
    assert again["ips"][0]["address"] == "10.1.0.3/24"


def test_concurrent_allocations_never_collide(tmp_path):
    cfg = parse_host_local({"subnet": "10.1.0.0/24"})
    results: list[str] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        # a Store per thread, like separate plugin processes: only the file lock serialises them
        out = host_local_add(cfg, store_for(tmp_path), f"c{i}", "eth0", [])
        with lock:
            results.append(out["ips"][0]["address"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 50 and len(set(results)) == 50


def test_gc_keeps_only_valid_attachments(tmp_path):
    cfg = parse_host_local({"subnet": "10.1.0.0/24"})
    st = store_for(tmp_path)
    for cid in ("a", "b", "c"):
        host_local_add(cfg, st, cid, "eth0", [])
    released = host_local_gc(st, [{"containerID": "b", "ifname": "eth0"}])
    assert sorted(released) == ["10.1.0.2", "10.1.0.4"]
    assert st.reservations() == {"10.1.0.3": ("b", "eth0")}


def test_last_reserved_is_overwritten_whole_whatever_its_length(tmp_path):
    store = store_for(tmp_path)
    with store.locked():
        for value in ("10.1.0.100", "10.1.0.9", "fd00::1:2:3:4", "10.1.0.10"):
            store.set_last_reserved(0, value)
            assert store.last_reserved(0) == value
    with open(tmp_path / "net" / "last_reserved_ip.0", "rb") as f:
        assert f.read() == b"10.1.0.10"  # what the reference plugin reads, byte for byte


def test_dual_stack_one_address_per_range_set_and_a_default_route_per_family(tmp_path):
    from cni.config import parse_netconf
    from cni.datapath import pod_routes

    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]}
    cfg = parse_host_local(ipam)
    st = store_for(tmp_path)
    out = host_local_add(cfg, st, "a", "eth0", [])
    assert out["ips"] == [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"},
                          {"address": "fd00:10:244:1::2/64", "gateway": "fd00:10:244:1::1"}]
    again = host_local_add(cfg, st, "b", "eth0", [ip("fd00:10:244:1::77")])
    assert [e["address"] for e in again["ips"]] == ["10.244.1.3/24", "fd00:10:244:1::77/64"]
    conf = parse_netconf({"cniVersion": "1.0.0", "name": "n", "type": "knet-cni", "isGateway": True, "ipam": ipam})
    assert pod_routes(conf, out) == [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"},
                                     {"dst": "::/0", "gw": "fd00:10:244:1::1"}]
    # a v6 range set that is full fails the whole ADD and gives back the v4 address it took
    full = parse_host_local({"ranges": [[{"subnet": "10.244.2.0/24"}], [{
        "subnet": "fd00:10:244:2::/64", "rangeStart": "fd00:10:244:2::9", "rangeEnd": "fd00:10:244:2::9"}]]})
    host_local_add(full, st, "c", "eth0", [])
    with pytest.raises(CniError) as e:
        host_local_add(full, st, "d", "eth0", [])
    assert e.value.code == errors.IPAM_EXHAUSTED and "fd00:10:244:2::/64" in e.value.msg
    assert "10.244.2.3" not in st.reservations()
