"""kproxy's handling of changes (kproxy.proxier + kproxy.changes), with its informers fed directly
and a recording backend: one changed EndpointSlice rebuilds one Service and hands the backend
only its ports, without any whole-cache scan of the informers; the network programming
duration runs from the slice's trigger time; health check ports follow the Services."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from knet.kube.models import EndpointSlice, Service
from kproxy.changes import TRIGGER_TIME, ChangeTracker, parse_trigger_time
from kproxy.config import Settings, with_defaults
from kproxy.model import SyncResult
from kproxy.proxier import Proxier
from tests.informer_feed import feed, remove, scans


class RecordingBackend:
    name = "iptables"

    def __init__(self) -> None:
        self.ports: dict = {}
        self.calls: list[tuple[set[str], bool]] = []
        self.fail = False

    def sync(self, ports, changed, full=False) -> SyncResult:
        if self.fail:
            raise RuntimeError("boom")
        self.calls.append((set(changed), full))
        self.ports = dict(ports)
        return SyncResult(full=full, services_written=len(changed), rules=0, seconds=0.0)

    def entries(self) -> int:
        return len(self.ports)

    def close(self) -> None:
        pass


def service(name: str, **spec) -> Service:
    return Service.model_validate({"metadata": {"name": name, "namespace": "default"}, "spec": {
        "clusterIP": f"10.96.0.{len(name)}", "ports": [{"name": "http", "port": 80}], **spec}})


def endpoint_slice(service_name: str, addresses: list[str], node: str = "node1", ready: bool = True,
                   annotations: dict | None = None, name: str | None = None, family: str = "IPv4") -> EndpointSlice:
    return EndpointSlice.model_validate({
        "addressType": family,
        "metadata": {"name": name or f"{service_name}-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service_name}, "annotations": annotations or {}},
        "endpoints": [{"addresses": [a], "nodeName": node, "conditions": {"ready": ready}} for a in addresses],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})


@pytest.fixture
def proxier():
    p = Proxier(with_defaults(Settings(mode="iptables"), "node1"))
    p.backend = RecordingBackend()
    p.make_informers(None)
    for i, name in enumerate(("web", "db", "api")):
        feed(p.services, service(name))
        feed(p.slices, endpoint_slice(name, [f"10.244.{i}.1"]))
    p.sync_once(full=True)  # the start-up sync: every Service from the initial list
    p.tracker.start_recording()
    yield p
    p.health_checks.close()
    p.executor.shutdown(wait=False)


def test_startup_sync_builds_every_service_from_the_initial_list(proxier):
    assert proxier.backend.calls == [({"default/web:http", "default/db:http", "default/api:http"}, True)]
    assert proxier.ports["default/db:http"].endpoints[0].ip == "10.244.1.1"


def test_one_slice_change_rebuilds_one_service_without_scanning(proxier):
    rebuilt: list[str] = []
    rebuild = proxier.rebuild
    proxier.rebuild = lambda keys: rebuilt.extend(keys) or rebuild(keys)
    before = scans((proxier.services, proxier.slices))

    feed(proxier.slices, endpoint_slice("web", ["10.244.0.1", "10.244.0.2"]))
    proxier.sync_once(full=False)
    assert rebuilt == ["default/web"]
    assert proxier.backend.calls[-1] == ({"default/web:http"}, False)
    assert [e.ip for e in proxier.ports["default/web:http"].endpoints] == ["10.244.0.1", "10.244.0.2"]

    # A slice moved to another Service: both are rebuilt; a Service deleted: its port goes.
    rebuilt.clear()
    feed(proxier.slices, endpoint_slice("api", ["10.244.0.9"], name="web-abc"))
    remove(proxier.services, service("db"))
    proxier.sync_once(full=False)
    assert sorted(rebuilt) == ["default/api", "default/db", "default/web"]
    assert proxier.backend.calls[-1][0] == {"default/api:http", "default/db:http", "default/web:http"}
    assert "default/db:http" not in proxier.ports and proxier.ports["default/web:http"].endpoints == ()
    assert scans((proxier.services, proxier.slices)) == before


def test_a_change_that_changes_nothing_hands_the_backend_nothing(proxier):
    feed(proxier.services, service("web", sessionAffinity="None"))  # the same ports again
    proxier.sync_once(full=False)
    assert proxier.backend.calls[-1] == (set(), False)


def test_programming_duration_from_the_trigger_time_and_a_failed_sync_keeps_it(proxier):
    proxier.tracker.started -= 60  # kproxy has been up a minute (earlier trigger times are not used)
    triggered = datetime.fromtimestamp(time.time() - 2.5, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
    feed(proxier.slices, endpoint_slice("web", ["10.244.0.3"], annotations={TRIGGER_TIME: triggered}))
    proxier.backend.fail = True
    with pytest.raises(RuntimeError):
        proxier.sync_once(full=False)
    assert proxier.need_full
    proxier.backend.fail = False
    proxier.sync_once(full=False)
    assert proxier.backend.calls[-1][1] is True  # after a failure: full
    (series,) = proxier.metrics.programming.series.values()
    _, total, count = series
    assert count == 1 and 2.5 <= total < 60


def test_health_check_ports_follow_local_load_balancers(proxier):
    lb = service("lb", type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=0)
    feed(proxier.services, lb)
    proxier.sync_once(full=False)
    assert proxier.health_ports == {}
    port = _free_port()
    feed(proxier.services, service("lb", type="LoadBalancer", externalTrafficPolicy="Local",
                                   healthCheckNodePort=port, ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    feed(proxier.slices, endpoint_slice("lb", ["10.244.0.7", "10.244.5.5"]))
    proxier.sync_once(full=False)
    assert proxier.health_ports == {"default/lb": port}
    assert proxier.health_checks.counts == {"default/lb": 2}
    assert set(proxier.health_checks.servers) == {"default/lb"}
    remove(proxier.services, lb)
    proxier.sync_once(full=False)
    assert proxier.health_ports == {} and proxier.health_checks.servers == {}


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tracker_keeps_the_earliest_time_and_wakes_once():
    wakes = []
    now = [1000.0]
    t = ChangeTracker(on_first=lambda: wakes.append(1), clock=lambda: now[0])
    t.service_changed(service("web"))  # start-up: no time
    t.start_recording()
    now[0] = 1005.0
    t.service_changed(service("web"))
    now[0] = 1003.0
    t.slice_changed(endpoint_slice("db", ["10.244.0.1"]))
    assert len(wakes) == 1
    assert t.pending() == (1, 1)
    assert t.take() == {"default/web": 1005.0, "default/db": 1003.0}
    t.slice_changed(endpoint_slice("db", ["10.244.0.1"], annotations={TRIGGER_TIME: "1970-01-01T00:16:41Z"}))
    assert t.take() == {"default/db": 1001.0} and len(wakes) == 2
    # A trigger time from before kproxy started is not used.
    t.slice_changed(endpoint_slice("db", ["10.244.0.1"], annotations={TRIGGER_TIME: "1970-01-01T00:00:01Z"}))
    assert t.take() == {"default/db": 1003.0}


@pytest.mark.parametrize("text,expected", [
    ("2024-03-01T10:00:00Z", 1709287200.0),
    ("2024-03-01T10:00:00.123456789Z", 1709287200.123456),
    ("2024-03-01T12:00:00+02:00", 1709287200.0),
    ("yesterday", None), ("", None), (None, None), ("2024-03-01T10:00:00", None),
])
def test_trigger_time_parsing(text, expected):
    got = parse_trigger_time(text)
    assert got == pytest.approx(expected) if expected is not None else got is None


# --- dual-stack: one plan and one backend per family ----------------------------------------------

def slice6(service_name: str, addresses: list[str], name: str | None = None) -> EndpointSlice:
    return endpoint_slice(service_name, addresses, name=name or f"{service_name}-v6", family="IPv6")


@pytest.fixture
def dual():
    p = Proxier(with_defaults(Settings(mode="iptables"), "node1"))
    p.plans[4].backend, p.plans[6].backend = RecordingBackend(), RecordingBackend()
    p.make_informers(None)
    feed(p.services, service("both", clusterIPs=["10.96.0.4", "fd00:10:96::4"], clusterIP="10.96.0.4",
                             ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack"))
    feed(p.slices, endpoint_slice("both", ["10.244.0.4"]))
    feed(p.slices, slice6("both", ["fd00:10:244::4"]))
    feed(p.services, service("six", clusterIP="fd00:10:96::6", clusterIPs=["fd00:10:96::6"], ipFamilies=["IPv6"]))
    feed(p.slices, slice6("six", ["fd00:10:244::6"]))
    feed(p.services, service("four"))
    feed(p.slices, endpoint_slice("four", ["10.244.0.5"]))
    p.sync_once(full=True)
    p.tracker.start_recording()
    yield p
    p.health_checks.close()
    p.executor.shutdown(wait=False)


def test_each_family_programs_its_own_addresses_and_slices(dual):
    four, six = dual.plans[4], dual.plans[6]
    assert four.backend.calls == [({"default/both:http", "default/four:http"}, True)]
    assert six.backend.calls == [({"default/both:http", "default/six:http"}, True)]
    both4, both6 = four.ports["default/both:http"], six.ports["default/both:http"]
    assert (both4.cluster_ips, [e.ip for e in both4.endpoints], both4.family) == (("10.96.0.4",), ["10.244.0.4"], 4)
    assert (both6.cluster_ips, [e.ip for e in both6.endpoints], both6.family) == \
        (("fd00:10:96::4",), ["fd00:10:244::4"], 6)
    assert six.ports["default/six:http"].cluster_ips == ("fd00:10:96::6",)


def test_an_ipv6_slice_change_syncs_the_ipv6_family_only(dual):
    feed(dual.slices, slice6("both", ["fd00:10:244::4", "fd00:10:244::7"]))
    dual.sync_once(full=False)
    assert dual.plans[6].backend.calls[-1] == ({"default/both:http"}, False)
    assert dual.plans[4].backend.calls[-1] == (set(), False)  # rebuilt, but nothing of IPv4 changed
    assert [e.ip for e in dual.plans[6].ports["default/both:http"].endpoints] == ["fd00:10:244::4", "fd00:10:244::7"]
    # The Service becomes IPv4-only: its IPv6 port goes from the IPv6 plan alone.
    feed(dual.services, service("both", clusterIP="10.96.0.4", clusterIPs=["10.96.0.4"], ipFamilies=["IPv4"]))
    dual.sync_once(full=False)
    assert dual.plans[6].backend.calls[-1] == ({"default/both:http"}, False)
    assert "default/both:http" not in dual.plans[6].ports and "default/both:http" in dual.plans[4].ports


def test_a_failed_family_makes_the_next_sync_full_for_both(dual):
    dual.plans[6].backend.fail = True
    feed(dual.slices, endpoint_slice("four", ["10.244.0.8"]))
    with pytest.raises(RuntimeError):
        dual.sync_once(full=False)
    dual.plans[6].backend.fail = False
    dual.sync_once(full=False)
    assert dual.plans[4].backend.calls[-1][1] and dual.plans[6].backend.calls[-1][1]
    assert [e.ip for e in dual.plans[4].ports["default/four:http"].endpoints] == ["10.244.0.8"]
