"""The shared endpoints resolver: a Service's EndpointSlices -> endpoints per service port, with
the cases kproxy (build.py), kdns (records.py) and ingress (compiler.py) each handled before."""

from __future__ import annotations

import pytest

from knet.kube.endpoints import ServiceEndpoint, publishes_not_ready, resolve, usable
from knet.kube.models import EndpointSlice, Service, ServicePort


def sl(name: str, endpoints: list, ports: list | None = None, family: str = "IPv4",
       ns: str = "default") -> EndpointSlice:
    """ports: (name, number, protocol) tuples; endpoints: an address string or a full dict."""
    return EndpointSlice.model_validate({
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": family,
        "endpoints": [{"addresses": [e]} if isinstance(e, str) else e for e in endpoints],
        "ports": [{"name": n, "port": p, "protocol": proto} if p is not None else {"name": n, "protocol": proto}
                  for n, p, proto in (ports if ports is not None else [("http", 8080, "TCP")])]})


def port(name: str = "http", protocol: str = "TCP", number: int = 80) -> ServicePort:
    return ServicePort.model_validate({"name": name, "protocol": protocol, "port": number})


NOT_READY = {"ready": False, "serving": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}


def addrs(eps) -> list[str]:
    return [e.addr for e in eps]


# (case, slices, family, service port, expected "ip:port"s of for_port)
PORT_TABLE = [
    ("named targetPort resolves per slice (per pod)",
     [sl("a", ["10.0.0.1", "10.0.0.2"], [("http", 8080, "TCP")]), sl("b", ["10.0.0.3"], [("http", 9090, "TCP")])],
     4, port("http"), ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:9090"]),
    ("matched by name: another port's endpoints are not ours",
     [sl("a", ["10.0.0.1"], [("http", 80, "TCP"), ("admin", 9000, "TCP")])],
     4, port("admin", number=8888), ["10.0.0.1:9000"]),
    ("matched by protocol: dns/UDP is not dns/TCP",
     [sl("a", ["10.0.0.1"], [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")])],
     4, port("dns", "UDP", 53), ["10.0.0.1:53"]),
    ("same name, other protocol: nothing",
     [sl("a", ["10.0.0.1"], [("dns", 53, "UDP")])], 4, port("dns", "TCP", 53), []),
    ("the unnamed port: name '' matches a slice port without a name",
     [sl("a", ["10.0.0.1"], [(None, 8080, "TCP")])], 4, port(""), ["10.0.0.1:8080"]),
    ("a slice port without a number is skipped",
     [sl("a", ["10.0.0.1"], [("http", None, "TCP")])], 4, port("http"), []),
    ("duplicates across slices (an endpoint moving) are one endpoint",
     [sl("a", ["10.0.0.1", "10.0.0.2"]), sl("b", ["10.0.0.2", "10.0.0.3"])],
     4, port("http"), ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]),
    ("the same address on two port numbers (a named port changing) is two endpoints",
     [sl("a", ["10.0.0.1"], [("http", 8080, "TCP")]), sl("b", ["10.0.0.1"], [("http", 8081, "TCP")])],
     4, port("http"), ["10.0.0.1:8080", "10.0.0.1:8081"]),
    ("IPv4 only: the IPv6 slice is left out",
     [sl("a", ["10.0.0.1"]), sl("b", ["fd00::1"], family="IPv6")], 4, port("http"), ["10.0.0.1:8080"]),
    ("IPv6 only",
     [sl("a", ["10.0.0.1"]), sl("b", ["fd00::1"], family="IPv6")], 6, port("http"), ["[fd00::1]:8080"]),
    ("both families",
     [sl("a", ["10.0.0.1"]), sl("b", ["fd00::1"], family="IPv6")], None, port("http"),
     ["10.0.0.1:8080", "[fd00::1]:8080"]),
    ("FQDN slices are never read",
     [sl("a", ["db.example.com"], family="FQDN")], None, port("http"), []),
    ("every address of an endpoint",
     [sl("a", [{"addresses": ["10.0.0.1", "10.0.0.9"]}])], 4, port("http"), ["10.0.0.1:8080", "10.0.0.9:8080"]),
    ("no slices: no endpoints", [], 4, port("http"), []),
]


@pytest.mark.parametrize("case,slices,family,svc_port,expected", PORT_TABLE, ids=[c[0] for c in PORT_TABLE])
def test_endpoints_per_service_port(case, slices, family, svc_port, expected):
    assert addrs(resolve(slices, family).for_port(svc_port)) == expected
    # The same, whatever order the slices come in.
    assert addrs(resolve(list(reversed(slices)), family).for_port(svc_port)) == expected


@pytest.mark.parametrize("conditions,ready,serving,terminating", [
    ({}, True, True, False),                                   # unset: ready and serving
    ({"ready": True}, True, True, False),
    ({"ready": False}, False, False, False),                   # serving unset follows ready
    ({"ready": False, "serving": True, "terminating": True}, False, True, True),
    ({"ready": False, "serving": False, "terminating": True}, False, False, True),
])
def test_conditions_carry_over(conditions, ready, serving, terminating):
    (ep,) = resolve([sl("a", [{"addresses": ["10.0.0.1"], "conditions": conditions}])]).for_port(port())
    assert (ep.ready, ep.serving, ep.terminating) == (ready, serving, terminating)


def test_endpoint_details_node_hostname_zone_pod_family():
    s = sl("a", [{"addresses": ["fd00::7"], "nodeName": "node2", "hostname": "web-0", "zone": "z1",
                  "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "team"}},
                 {"addresses": ["fd00::8"], "targetRef": {"kind": "Pod", "name": "web-1"}},
                 {"addresses": ["fd00::9"], "targetRef": {"kind": "Node", "name": "n"}}], family="IPv6", ns="team")
    eps = resolve([s])
    first, second, third = eps.for_port(port())
    assert first == ServiceEndpoint("fd00::7", 6, True, True, False, 8080, "web-0", "node2", "z1", "team/web-0")
    assert second.pod == "team/web-1" and third.pod is None
    assert [e.addr for e in eps.endpoints] == ["[fd00::7]", "[fd00::8]", "[fd00::9]"]


def test_a_duplicate_counts_its_most_available_copy_whatever_the_slice_order():
    moving_from = sl("a", [{"addresses": ["10.0.0.1"], "conditions": NOT_READY, "nodeName": "old"}])
    moving_to = sl("b", [{"addresses": ["10.0.0.1"], "nodeName": "new"}])
    for slices in ([moving_from, moving_to], [moving_to, moving_from]):
        eps = resolve(slices)
        (ep,) = eps.for_port(port())
        assert ep.ready and ep.node_name == "new"
        assert [(e.address, e.ready) for e in eps.endpoints] == [("10.0.0.1", True)]
    # Equal copies: the first by slice name.
    a, b = sl("a", [{"addresses": ["10.0.0.1"], "nodeName": "n-a"}]), sl("b", [{"addresses": ["10.0.0.1"],
                                                                              "nodeName": "n-b"}])
    assert resolve([b, a]).for_port(port())[0].node_name == "n-a"


def test_address_level_endpoints_include_slices_without_ports_and_merge_duplicates():
    # A headless Service without ports: its slices carry endpoints and no ports (DNS still names them).
    eps = resolve([sl("a", ["10.0.0.2", "10.0.0.1"], ports=[]), sl("b", ["10.0.0.1"], ports=[("http", 80, "TCP")])])
    assert [(e.address, e.port) for e in eps.endpoints] == [("10.0.0.1", None), ("10.0.0.2", None)]
    assert addrs(eps.for_port(port())) == ["10.0.0.1:80"]
    assert list(eps.ports) == [("http", "TCP")]


@pytest.mark.parametrize("spec,annotations,expected", [
    ({}, {}, False),
    ({"publishNotReadyAddresses": True}, {}, True),
    ({}, {"service.alpha.kubernetes.io/tolerate-unready-endpoints": "true"}, True),
    ({}, {"service.alpha.kubernetes.io/tolerate-unready-endpoints": "false"}, False),
])
def test_publish_not_ready_addresses(spec, annotations, expected):
    svc = Service.model_validate({"metadata": {"name": "h", "namespace": "default", "annotations": annotations},
                                  "spec": {"clusterIP": "None", **spec}})
    assert publishes_not_ready(svc) is expected
    eps = resolve([sl("a", ["10.0.0.1", {"addresses": ["10.0.0.2"], "conditions": NOT_READY}])])
    published = eps.published(publishes_not_ready(svc))
    want = ["10.0.0.1", "10.0.0.2"] if expected else ["10.0.0.1"]
    assert [e.address for e in published.endpoints] == want
    assert [e.address for e in published.for_port(port())] == want


@pytest.mark.parametrize("endpoints,expected", [
    (["10.0.0.3", "10.0.0.2", {"addresses": ["10.0.0.9"], "conditions": NOT_READY},
      {"addresses": ["10.0.0.8"], "conditions": TERMINATING}], ["10.0.0.2:8080", "10.0.0.3:8080"]),
    ([{"addresses": ["10.0.0.9"], "conditions": NOT_READY}, {"addresses": ["10.0.0.8"], "conditions": TERMINATING}],
     ["10.0.0.8:8080"]),  # none ready: the serving, terminating ones
    ([{"addresses": ["10.0.0.7"], "conditions": {"ready": False, "serving": False, "terminating": True}}], []),
    ([{"addresses": ["10.0.0.9"], "conditions": NOT_READY}], []),
])
def test_usable_is_ready_else_serving_terminating(endpoints, expected):
    assert addrs(usable(resolve([sl("a", endpoints)]).for_port(port()))) == expected


def test_bad_family_is_an_error():
    with pytest.raises(ValueError, match="address family"):
        resolve([], family=5)
