"""The controller's sync (reload only on change, status.loadBalancer) and the access-log metrics,
with a fake nginx."""

from __future__ import annotations

from ingress.accesslog import AccessLogReader, upstream_seconds
from ingress.compiler import Options, Snapshot
from ingress.controller import Controller
from ingress.nginx import NginxError
from ingress.nginxconf import Settings, config_digest
from knet_testing.ingress import endpoint_slice, ingress, path, rule, service


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
    assert 'knet_ingress_requests_total{ingress="default/web",host="a.x",status="200"} 2' in text
    assert 'knet_ingress_requests_total{ingress="-",host="a.x",status="404"} 1' in text
    assert "status=\"500\"" not in text and "status=\"502\"" not in text
    assert 'knet_ingress_upstream_latency_seconds_bucket{ingress="default/web",service="default/web:80",le="0.001"} 2' \
        in text
    assert "knet_ingress_access_log_unparsed_total 1" in text
    assert 'knet_ingress_upstream_latency_seconds_count{ingress="default/web",service="default/web:80"} 2' in text
    assert reopened == [1]                                 # past max_bytes: renamed, nginx told to reopen
    with open(str(log_path) + ".1", "a") as f:             # a worker still writing to the old file
        f.write(_line(status=502)[20:])
    log_path.write_text(_line(status=201))                 # the reopened file
    reader.poll()
    text = ctl.metrics.registry.render()
    assert 'status="502"} 1' in text and 'status="201"} 1' in text


def test_daemon_wakes_only_for_referenced_objects(tmp_path):
    from ingress.daemon import IngressDaemon, parse_args

    args = parse_args(["--run-dir", str(tmp_path), "--publish-address", "192.168.33.11"])
    assert args.ingress_class == "knet" and args.http_port == 80 and args.https_port == 443
    d = IngressDaemon(args)
    d.controller.table.services = {"default/web"}
    d._touch_if_referenced(endpoint_slice("other", ["10.244.1.2"]))
    d._touch_if_referenced(service("other"))
    assert not d.wake.is_set()
    d._touch_if_referenced(endpoint_slice("web", ["10.244.1.2"]))
    assert d.wake.is_set()
