"""kdns server logic without the network: the answer cache, its invalidation on cluster changes,
truncation, garbage, routing to server blocks, and the metrics (CoreDNS's names)."""

from __future__ import annotations

import random

import dnslib
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kdns import config, metrics, wire
from kdns.daemon import parse_args
from kdns.forward import Upstream
from kdns.records import Config, RecordStore
from kdns.server import Listener, Server
from kdns.wire import SRV, A
from knet_testing.kdns import endpoint_slice, pod, query, service

Z = "cluster.local"


class Capture:
    """Stands in for a listener's UDP socket: keeps what the server sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def make_server(store: RecordStore | None = None, upstreams: list[Upstream] = (), flags: list[str] = ()) -> Server:
    if store is None:
        store = RecordStore()
        store.update_service("default/web", service("web", "default", "10.96.0.20", [("http", 80, "TCP")]))
    settings = config.from_flags(parse_args(["--listen", "127.0.0.1:53", *flags]), list(upstreams))
    server = Server(store, settings.blocks)
    server.listeners.append(Listener(0, "127.0.0.1", 53, Capture()))  # type: ignore[arg-type]
    server.cache.resize(1)
    return server


@pytest.fixture
def server() -> Server:
    return make_server()


def ask(server: Server, data: bytes, udp: bool = True) -> dnslib.DNSRecord | None:
    """What a client gets: the fast path (cache) when it hits, else the slow path."""
    entry = server.cache.entries.get(data[2:])
    if entry is not None and udp:
        entry[1][0] += 1
        return dnslib.DNSRecord.parse(data[:2] + entry[0])
    out = raw(server, data, udp)
    return dnslib.DNSRecord.parse(out) if out else None


def raw(server: Server, data: bytes, udp: bool = True) -> bytes | None:
    lst = server.listeners[0]
    if udp:
        sent = lst.sock.sent  # type: ignore[union-attr]
        before = len(sent)
        server._udp_miss(lst, data, ("10.244.1.5", 33333), 0.0)
        return sent[-1] if len(sent) > before else None
    got: list[bytes | None] = []
    server._tcp_query(lst, data, ("10.244.1.5", 33333), got.append)
    return got[0]


def addresses(rec: dnslib.DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in rec.rr if rr.rtype == A)


def test_answer_cached_with_the_clients_id(server):
    fqdn = f"web.default.svc.{Z}"
    first = ask(server, query(fqdn, qid=1))
    assert addresses(first) == ["10.96.0.20"] and len(server.cache) == 1
    second = ask(server, query(fqdn, qid=2))
    assert second.header.id == 2 and addresses(second) == ["10.96.0.20"]
    assert server.cache.total_hits() == 1


def test_case_variants_echo_their_own_spelling(server):
    rec = ask(server, query("WeB.default.SVC.cluster.local"))
    assert str(rec.q.qname) == "WeB.default.SVC.cluster.local." and addresses(rec) == ["10.96.0.20"]
    rec = ask(server, query("web.DEFAULT.svc.cluster.local"))
    assert str(rec.q.qname) == "web.DEFAULT.svc.cluster.local."


def test_change_and_delete_invalidate_cached_answers(server):
    fqdn = f"web.default.svc.{Z}"
    q = query(fqdn)
    srv_q = query(f"_http._tcp.{fqdn}", SRV)
    assert addresses(ask(server, q)) == ["10.96.0.20"]
    assert len(ask(server, srv_q).rr) == 1
    server.invalidate(server.store.update_service("default/web", service("web", "default", "10.96.0.21")))
    assert addresses(ask(server, q)) == ["10.96.0.21"]
    assert ask(server, srv_q).header.rcode == wire.NXDOMAIN  # the named port is gone
    server.invalidate(server.store.update_service("default/web", None))
    rec = ask(server, q)
    assert rec.header.rcode == wire.NXDOMAIN and rec.rr == []


def test_cached_nxdomain_dropped_when_the_name_appears(server):
    fqdn = f"db.prod.svc.{Z}"
    assert ask(server, query(fqdn)).header.rcode == wire.NXDOMAIN
    assert ask(server, query(f"prod.svc.{Z}")).header.rcode == wire.NXDOMAIN
    server.invalidate(server.store.update_service("prod/db", service("db", "prod", "10.96.5.5")))
    assert addresses(ask(server, query(fqdn))) == ["10.96.5.5"]
    rec = ask(server, query(f"prod.svc.{Z}"))  # now an empty non-terminal: NODATA
    assert rec.header.rcode == wire.NOERROR and rec.rr == []


def test_srv_additional_follows_endpoint_changes(server):
    svc = service("hs", "default", "None", [("http", 80, "TCP")])

    def slice_(ip):
        return [endpoint_slice("hs", endpoints=[{"addresses": [ip], "hostname": "p0"}], ports=[("http", 80, "TCP")])]

    server.invalidate(server.store.update_service("default/hs", svc, slice_("10.244.1.1")))
    q = query(f"_http._tcp.hs.default.svc.{Z}", SRV)
    assert [str(rr.rdata) for rr in ask(server, q).ar if rr.rtype == A] == ["10.244.1.1"]
    server.invalidate(server.store.update_service("default/hs", svc, slice_("10.244.1.2")))
    assert [str(rr.rdata) for rr in ask(server, q).ar if rr.rtype == A] == ["10.244.1.2"]


def test_many_endpoints_truncate_over_udp_not_tcp(server):
    eps = [{"addresses": [f"10.244.{i // 250}.{i % 250 + 1}"]} for i in range(100)]
    server.store.update_service("default/big", service("big", cluster_ip="None"),
                                [endpoint_slice("big", endpoints=eps)])
    q = query(f"big.default.svc.{Z}", edns=None)
    rec = ask(server, q)
    assert rec.header.tc and 0 < len(rec.rr) < 100  # the records that fit, TC: retry over TCP
    assert ask(server, q).header.tc  # the truncated answer is cached too
    full = ask(server, q, udp=False)
    assert not full.header.tc and len(full.rr) == 100
    assert server.stats.truncated == 1


def test_outside_zone_without_upstream_is_refused_and_cluster_names_never_wait(server):
    assert ask(server, query("example.com")).header.rcode == wire.REFUSED
    fwd = make_server(upstreams=[Upstream("127.0.0.1", 9)])
    rec = ask(fwd, query(f"web.default.svc.{Z}"))  # answered at once, no upstream involved
    assert rec.header.ra and str(rec.rr[0].rdata) == "10.96.0.20"  # recursion is available upstream


def test_opcode_and_edns_version(server):
    notify = bytearray(query(f"web.default.svc.{Z}"))
    notify[2] |= 4 << 3  # opcode NOTIFY
    assert ask(server, bytes(notify)).header.rcode == wire.NOTIMP
    q = bytearray(query(f"web.default.svc.{Z}"))
    q[-5] = 1  # EDNS version 1 (OPT: name, type, class, ext-rcode, version, flags, rdlen)
    rec = ask(server, bytes(q))
    assert rec.header.rcode == 0 and rec.ar[0].ttl >> 24 == 1  # BADVERS


@pytest.mark.parametrize("forwarding", [False, True])
def test_garbage_flood_then_correct_answers(forwarding):
    # With an upstream, misses outside the zone take the short path first (Server._lean).
    server = make_server(upstreams=[Upstream("127.0.0.1", 9)] if forwarding else [])
    assert (server.lean is not None) == forwarding
    rnd = random.Random(11)
    good = query(f"_http._tcp.web.default.svc.{Z}", SRV) if not forwarding else query("www.example.com")
    formerr = dropped = 0
    for i in range(5000):
        if i % 3 == 0:
            data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 100)))
        else:
            b = bytearray(good)
            for _ in range(rnd.randrange(1, 5)):
                b[rnd.randrange(2, len(b))] = rnd.getrandbits(8)
            data = bytes(b[:rnd.randrange(len(b) + 1)])
        resp = raw(server, data)  # (forwarded ones get no answer here: nothing answers on port 9)
        if resp is None:
            dropped += 1
        elif resp[3] & 0xF == wire.FORMERR:
            formerr += 1
    assert formerr > 100 and dropped > 100 and server.stats.panics == 0
    server.relay.close()
    rec = ask(server, query(f"web.default.svc.{Z}"))
    assert addresses(rec) == ["10.96.0.20"]


def scrape(server: Server) -> dict[str, dict[tuple, float]]:
    """/metrics as Prometheus parses it: family name -> {labels: value}."""
    text = generate_latest(metrics.registry(metrics.Collector(server.snapshot))).decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_metrics_have_coredns_names_and_count(server):
    ask(server, query(f"web.default.svc.{Z}"))
    ask(server, query(f"web.default.svc.{Z}"))  # a fast-path hit: counted on its cache entry
    ask(server, query(f"nope.default.svc.{Z}"))
    ask(server, query(f"web.default.svc.{Z}", edns=1232, do=True), udp=False)
    raw(server, b"\x00\x01")  # not even a header: dropped
    m = scrape(server)
    common = (("server", "dns://127.0.0.1:53"), ("view", ""), ("zone", "."))
    req = m["coredns_dns_requests_total"]
    assert req[tuple(sorted((*common, ("proto", "udp"), ("family", "1"), ("type", "A"))))] == 3
    assert req[tuple(sorted((*common, ("proto", "tcp"), ("family", "1"), ("type", "A"))))] == 1
    resp = m["coredns_dns_responses_total"]
    assert resp[tuple(sorted((*common, ("rcode", "NOERROR"), ("plugin", "kubernetes"))))] == 3
    assert resp[tuple(sorted((*common, ("rcode", "NXDOMAIN"), ("plugin", "kubernetes"))))] == 1
    assert m["coredns_dns_request_duration_seconds_count"][common] >= 3
    assert m["coredns_dns_do_requests_total"][common] == 1
    assert ("version", metrics.VERSION) in next(iter(m["coredns_build_info"]))
    enabled = {dict(k)["name"] for k in m["coredns_plugin_enabled"]}
    assert {"kubernetes", "cache"} <= enabled
    assert "process_cpu_seconds_total" in m and "python_info" in m


def test_cache_index_does_not_grow_with_churn(server):
    # alias -> web (a CNAME inside the zone): the answer for alias depends on web as well.
    server.store.update_service("default/alias", service("alias", cluster_ip=None, type="ExternalName",
                                                         externalName=f"web.default.svc.{Z}"))
    q = query(f"alias.default.svc.{Z}")
    for i in range(50):
        assert addresses(ask(server, q)) == [f"10.96.0.{20 + i % 2}"]
        server.invalidate(server.store.update_service("default/web",
                                                      service("web", "default", f"10.96.0.{21 - i % 2}")))
    assert sum(len(keys) for keys in server.cache.by_name.values()) <= 2
    assert all(server.cache.entries.get(k) is not None for keys in server.cache.by_name.values() for k in keys)


def test_popular_answers_are_recomputed_after_a_change(server):
    fqdn = f"web.default.svc.{Z}"
    q, once = query(fqdn), query(f"_http._tcp.{fqdn}", SRV)
    ask(server, q)
    ask(server, q)  # asked again from the cache: popular
    ask(server, once)  # asked once: not worth recomputing
    server.invalidate(server.store.update_service("default/web", service("web", "default", "10.96.0.21",
                                                                         [("http", 80, "TCP")])))
    assert q[2:] not in server.cache.entries and once[2:] not in server.cache.entries
    assert server.refresh() == 0
    assert q[2:] in server.cache.entries and once[2:] not in server.cache.entries
    assert addresses(ask(server, q)) == ["10.96.0.21"]  # served by the fast path, new address
    server.invalidate(server.store.update_service("default/web", None))
    server.refresh()
    assert ask(server, q).header.rcode == wire.NXDOMAIN
    assert server.refreshed == 2


def test_refresh_runs_on_the_loop_in_batches(server):
    import asyncio

    from kdns import server as server_mod
    keys = []
    for i in range(server_mod.REFRESH_BATCH * 2 + 5):  # more spellings than one batch holds
        spelled = "".join(c.upper() if (i >> k) & 1 else c for k, c in enumerate("webdefault"))
        name = f"{spelled[:3]}.{spelled[3:]}.svc.{Z}"
        q = query(name, qid=i)
        ask(server, q)
        ask(server, q)
        keys.append(q[2:])
    assert len(set(keys)) == len(keys)

    async def change() -> list[int]:
        server.loop = asyncio.get_running_loop()
        with server.lock:
            server.invalidate(server.store.update_service("default/web", service("web", "default", "10.96.0.22")))
        cached_after = []
        for _ in range(4):
            await asyncio.sleep(0)
            cached_after.append(sum(k in server.cache.entries for k in keys))
        return cached_after

    counts = asyncio.run(change())
    assert counts[0] == server_mod.REFRESH_BATCH  # one batch per callback: queries get the lock in between
    assert counts[-1] == len(keys)
    assert all(b"\x0a\x60\x00\x16" in server.cache.entries[k][0] for k in keys)  # 10.96.0.22


def test_autopath_walks_a_known_pods_search_path():
    store = RecordStore(Config(pods="verified"))
    store.update_service("default/web", service("web", "default", "10.96.0.20"))
    server = make_server(store, flags=["--pods", "verified", "--autopath"])
    server.pods.update("my-ns/client", pod("client", "my-ns", "10.244.1.5"))  # raw() asks from 10.244.1.5
    # "web.default" from a pod in my-ns: its resolver asks web.default.my-ns.svc.cluster.local first.
    q = query(f"web.default.my-ns.svc.{Z}")
    rec = ask(server, q)
    assert rec.header.rcode == wire.NOERROR and str(rec.q.qname) == f"web.default.my-ns.svc.{Z}."
    assert [(str(rr.rname), dnslib.QTYPE[rr.rtype], str(rr.rdata)) for rr in rec.rr] == [
        (f"web.default.my-ns.svc.{Z}.", "CNAME", f"web.default.svc.{Z}."),
        (f"web.default.svc.{Z}.", "A", "10.96.0.20")]
    assert server.stats.autopath == {0: 1}
    assert q[2:] not in server.cache.entries  # never a fast-path answer: it depends on who asks
    # The same question from an address that is no known pod: no autopath, the plain NXDOMAIN
    # (which must not be cached either: the pod's next copy of it must reach autopath).
    server.listeners[0].sock.sent.clear()
    server._udp_miss(server.listeners[0], q, ("10.244.9.9", 5353), 0.0)
    assert dnslib.DNSRecord.parse(server.listeners[0].sock.sent[-1]).header.rcode == wire.NXDOMAIN
    assert q[2:] not in server.cache.entries and server.stats.autopath == {0: 1}
    # A pod in another namespace has its own search path: web.default.my-ns... is not its first step.
    server.pods.update("my-ns/client", None)
    server.pods.update("other/client", pod("client", "other", "10.244.1.5"))
    assert ask(server, q).header.rcode == wire.NXDOMAIN
    rec = ask(server, query(f"web.default.other.svc.{Z}"))
    assert [str(rr.rdata) for rr in rec.rr] == [f"web.default.svc.{Z}.", "10.96.0.20"]


def test_autopath_every_step_nxdomain_returns_the_first_reply():
    store = RecordStore(Config(pods="verified"))
    server = make_server(store, flags=["--pods", "verified", "--autopath"])
    server.pods.update("default/client", pod("client", "default", "10.244.1.5"))
    rec = ask(server, query(f"nothing.default.svc.{Z}"))
    assert rec.header.rcode == wire.NXDOMAIN and rec.rr == [] and str(rec.auth[0].rname) == f"{Z}."
    assert server.stats.autopath == {}


def test_reverse_zones_and_fallthrough():
    store = RecordStore()
    store.update_service("default/web", service("web", "default", "10.96.0.20"))
    cfg = config.from_corefile(". {\n kubernetes cluster.local in-addr.arpa\n}")  # no fallthrough, no forward
    server = Server(store, cfg.blocks)
    server.listeners.append(Listener(0, "127.0.0.1", 53, Capture()))  # type: ignore[arg-type]
    server.cache.resize(1)
    assert [str(r.rdata) for r in ask(server, query("20.0.96.10.in-addr.arpa", wire.PTR)).rr] == [
        f"web.default.svc.{Z}."]
    rec = ask(server, query("9.9.9.10.in-addr.arpa", wire.PTR))  # ours, unknown: NXDOMAIN, not forwarded
    assert rec.header.rcode == wire.NXDOMAIN and rec.header.aa and str(rec.auth[0].rname) == "in-addr.arpa."
    assert ask(server, query("1.0.0.0.ip6.arpa", wire.PTR)).header.rcode == wire.REFUSED  # not ours, no forward
