"""The controller's sync (reload only on change, status.loadBalancer) and the access-log metrics,
with a fake nginx."""

from __future__ import annotations

import asyncio

from ingress import tls
from ingress.accesslog import AccessLogReader, upstream_seconds
from ingress.compiler import Options, Snapshot
from ingress.controller import Controller
from ingress.daemon import IngressDaemon, parse_args
from ingress.nginx import NginxError
from ingress.nginxconf import Settings, config_digest
from knet_testing.ingress import endpoint_slice, ingress, path, rule, service, tls_secret
from tests.informer_feed import feed, scans, settle
from tests.promtext import value


class FakeNginx:
    def __init__(self) -> None:
        self.digest = ""
        self.running = False
        self.reloads: list[str] = []
        self.fail_next = False

    def alive(self) -> bool:
        return self.running

    def start(self, text: str) -> None:
        self.running, self.digest = True, config_digest(text)

    def reload(self, text: str) -> None:
        if self.fail_next:
            self.fail_next = False
            raise NginxError("nginx -t failed: boom")
        self.digest = config_digest(text)
        self.reloads.append(text)


def snap(ips=("10.244.1.2",), ingresses=None, lb=()):
    ings = ingresses if ingresses is not None else [ingress("web", rule("a.x", path("/", "web")))]
    return Snapshot.of(ings, [], [service("web"), service("ingress-lb", kind="LoadBalancer", lb_ips=list(lb))],
                       [endpoint_slice("web", list(ips))], [])


def make(tmp_path, **kw):
    writes: list[tuple[str, str, list]] = []
    nginx = FakeNginx()
    ctl = Controller(Settings(run_dir=str(tmp_path)), Options(), nginx,  # type: ignore[arg-type]
                     status_writer=lambda ns, n, e: writes.append((ns, n, e)), **kw)
    return ctl, nginx, writes


def test_reload_only_when_the_config_changes(tmp_path):
    ctl, nginx, _ = make(tmp_path, publish=["192.168.33.240"])
    ctl.start(snap())
    assert not ctl.sync(snap()).reloaded and nginx.reloads == []
    r = ctl.sync(snap(ips=("10.244.1.2", "10.244.2.2")))      # endpoint churn: one reload
    assert r.reloaded and "server 10.244.2.2:80" in nginx.reloads[-1]
    assert not ctl.sync(snap(ips=("10.244.2.2", "10.244.1.2"))).reloaded   # same set, other order
    text = ctl.metrics.registry.render()
    assert 'knet_ingress_reloads_total{result="ok"} 1' in text
    assert 'knet_ingress_upstream_endpoints{service="default/web:80"} 2' in text


def test_failed_reload_keeps_running_and_retries(tmp_path):
    ctl, nginx, _ = make(tmp_path)
    ctl.start(snap())
    nginx.fail_next = True
    r = ctl.sync(snap(ips=("10.244.1.9",)))
    assert r.error and "boom" in r.error and not r.reloaded
    assert "knet_ingress_config_last_reload_successful 0" in ctl.metrics.registry.render()
    assert ctl.sync(snap(ips=("10.244.1.9",))).reloaded   # the next sync applies it


def test_dead_nginx_is_restarted(tmp_path):
    ctl, nginx, _ = make(tmp_path)
    ctl.start(snap())
    nginx.running = False
    assert ctl.sync(snap()).reloaded and nginx.running
    assert ctl.healthy()[0]


def test_status_is_published_and_taken_back(tmp_path):
    ctl, _, writes = make(tmp_path, publish=["192.168.33.240"])
    ctl.start(snap())
    assert writes == [("default", "web", [{"ip": "192.168.33.240"}])]
    ctl.sync(snap())                       # written, informer not caught up yet: no second write
    assert len(writes) == 1
    seen = ingress("web", rule("a.x", path("/", "web")), status_ips=["192.168.33.240"])
    ctl.sync(snap(ingresses=[seen]))
    assert len(writes) == 1
    moved = ingress("web", rule("a.x", path("/", "web")), cls="other", status_ips=["192.168.33.240"])
    ctl.sync(snap(ingresses=[moved]))      # no longer ours: our address is removed
    assert writes[-1] == ("default", "web", [])
    foreign = ingress("web", rule("a.x", path("/", "web")), cls="other", status_ips=["10.0.0.1"])
    ctl.sync(snap(ingresses=[foreign]))    # someone else's address: left alone
    assert len(writes) == 2


def test_publish_service_addresses(tmp_path):
    ctl, _, writes = make(tmp_path, publish=["192.168.33.11"], publish_service="default/ingress-lb")
    ctl.start(snap(lb=["192.168.33.240"]))
    assert writes[-1][2] == [{"ip": "192.168.33.240"}]


def test_no_address_leaves_status_alone(tmp_path):
    ctl, _, writes = make(tmp_path, publish_service="default/ingress-lb")   # LB address not assigned yet
    ctl.start(snap(ingresses=[ingress("web", rule("a.x", path("/", "web")), status_ips=["10.0.0.9"])]))
    assert writes == []


def test_status_write_failure_is_retried(tmp_path):
    calls = []

    def flaky(ns, name, entries):
        calls.append(entries)
        if len(calls) == 1:
            raise RuntimeError("api away")

    ctl = Controller(Settings(run_dir=str(tmp_path)), Options(), FakeNginx(),  # type: ignore[arg-type]
                     publish=["192.168.33.240"], status_writer=flaky)
    ctl.start(snap())
    ctl.sync(snap())
    assert len(calls) == 2


# --- access log -> metrics -----------------------------------------------------------------------

def test_log_format_is_the_parsers():
    from ingress.accesslog import FIELDS, LOG_FORMAT

    assert LOG_FORMAT.split("\\t") == list(FIELDS) and len(FIELDS) == 5


def test_retried_upstream_times_are_summed(tmp_path):
    ctl, _, _ = make(tmp_path)
    ctl.metrics.requests.observe(_line(urt="0.002, 0.003").encode() + _line(urt="-").encode())
    text = ctl.metrics.registry.render()
    assert 'knet_ingress_upstream_latency_seconds_sum{ingress="default/web",service="default/web:80"} 0.005' in text
    assert 'knet_ingress_upstream_latency_seconds_count{ingress="default/web",service="default/web:80"} 1' in text


def test_upstream_seconds():
    assert upstream_seconds("0.004") == 0.004
    assert abs(upstream_seconds("0.002, 0.003") - 0.005) < 1e-9
    assert abs(upstream_seconds("0.001 : 0.002") - 0.003) < 1e-9
    assert upstream_seconds("-") is None and upstream_seconds("") is None


def _line(ingress="default/web", host="a.x", service="default/web:80", status=200, urt="0.001"):
    return "\t".join([ingress, host, service, str(status), urt]) + "\n"


def test_access_log_metrics_and_rotation(tmp_path):
    ctl, _, _ = make(tmp_path)
    log_path = tmp_path / "access.log"
    log_path.write_text(_line(status=500))                 # from before we started: skipped
    reopened = []
    reader = AccessLogReader(str(log_path), ctl.metrics.requests.observe, reopen=lambda: reopened.append(1),
                             max_bytes=100)
    with open(log_path, "a") as f:
        f.write(_line() + _line() + _line(status=404, urt="-", ingress="", service="") + "not a log line\n")
        f.write(_line(status=502)[:20])                  # an unfinished line waits for its end
    reader.poll()
    text = ctl.metrics.registry.render()
    assert value(text, "knet_ingress_requests_total", ingress="default/web", host="a.x", status="200") == 2
    assert value(text, "knet_ingress_requests_total", ingress="-", host="a.x", status="404") == 1
    assert "status=\"500\"" not in text and "status=\"502\"" not in text
    assert value(text, "knet_ingress_upstream_latency_seconds_bucket", ingress="default/web",
                 service="default/web:80", le="0.001") == 2
    assert "knet_ingress_access_log_unparsed_total 1" in text
    assert 'knet_ingress_upstream_latency_seconds_count{ingress="default/web",service="default/web:80"} 2' in text
    assert reopened == [1]                                 # past max_bytes: renamed, nginx told to reopen
    with open(str(log_path) + ".1", "a") as f:             # a worker still writing to the old file
        f.write(_line(status=502)[20:])
    log_path.write_text(_line(status=201))                 # the reopened file
    reader.poll()
    text = ctl.metrics.registry.render()
    assert 'status="502"} 1' in text and 'status="201"} 1' in text


def test_a_service_slice_or_secret_change_re_resolves_only_its_routes_without_scanning(tmp_path):
    """The daemon's handling of one change: found through indexes (no informer scans), only the
    servers that use the changed Service or Secret are rebuilt, and nginx gets the new config."""
    pair = tls.self_signed("b.x", ["b.x"])

    async def scenario():
        args = parse_args(["--run-dir", str(tmp_path)])  # nothing to publish: no status writes
        assert args.ingress_class == "knet" and args.http_port == 80 and args.https_port == 443
        d = IngressDaemon(args)
        d.controller.nginx = nginx = FakeNginx()
        d.make_informers(asyncio.get_running_loop())  # no API client: fed below
        i = d.informers
        feed(i["ingress"], ingress("web", rule("a.x", path("/", "web"))))
        feed(i["ingress"], ingress("api", rule("b.x", path("/", "api")), tls=[{"hosts": ["b.x"], "secretName": "b"}]))
        feed(i["secret"], tls_secret("b", *pair))
        for name in ("web", "api", "unused"):
            feed(i["service"], service(name))
            feed(i["slice"], endpoint_slice(name, ["10.244.1.2"]))
        await settle()
        d.take_pending()  # as the daemon does before its first config
        d.controller.start(d.snapshot())
        before, servers = scans(i.values()), dict(d.controller.table.servers)

        feed(i["slice"], endpoint_slice("web", ["10.244.1.2", "10.244.2.2"]))  # an endpoint more
        await settle()
        assert d.changed_services == {"default/web"} and not d.full
        await d.sync_once()
        assert "server 10.244.2.2:80" in nginx.reloads[-1]
        table = d.controller.table
        assert table.servers["b.x"] is servers["b.x"] and table.servers["a.x"] is not servers["a.x"]

        d.wake.clear()
        feed(i["slice"], endpoint_slice("unused", ["10.244.3.3"]))  # no Ingress refers to these
        feed(i["service"], service("unused", ("x", 81)))
        feed(i["secret"], tls_secret("other", *pair))
        await settle()
        assert not d.wake.is_set() and d.take_pending() == (False, set(), set())

        feed(i["service"], service("api", ("http", 80)))  # the api Service's port gets a name
        feed(i["secret"], tls_secret("b", b"garbage", pair[1]))  # its certificate breaks
        await settle()
        assert (d.changed_services, d.changed_secrets, d.full) == ({"default/api"}, {"default/b"}, False)
        await d.sync_once()
        assert d.controller.table.servers["b.x"].tls.error and not d.controller.table.servers["b.x"].ssl_redirect
        assert any("TLS for b.x" in p for p in d.controller.table.problems)
        assert scans(i.values()) == before  # no list() / keys() on any informer

        feed(i["ingress"], ingress("web", rule("a.x", path("/", "web")), rule("c.x", path("/", "web"))))
        await settle()
        assert d.full  # an Ingress change compiles everything (that reads every Ingress)
        await d.sync_once()
        assert "c.x" in d.controller.table.servers

        nginx.fail_next = True  # nginx refuses an update: it keeps the old config, so the next
        feed(i["slice"], endpoint_slice("web", ["10.244.4.4"]))  # sync must compile everything
        await settle()
        await d.sync_once()
        assert d.full and "10.244.4.4" not in nginx.reloads[-1]

    asyncio.run(scenario())
