from knet.kube.endpoints import resolve
from knet.kube.models import EndpointSlice, Service
from kproxy import build
from kproxy.build import health_check_node_port


def service_ports(svc: Service, slices: list[EndpointSlice]):
    return build.service_ports(svc, resolve(slices, family=build.FAMILY))


def svc(**spec) -> Service:
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "node-js", "namespace": "default"},
            "spec": {"clusterIP": "10.0.0.20", "ports": [{"name": "http", "port": 80, "targetPort": "www"}],
                     **spec}}
    return Service.model_validate(body)


def slice_(endpoints, ports=None, family="IPv4") -> EndpointSlice:
    return EndpointSlice.model_validate({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
        "metadata": {"name": f"node-js-{family.lower()}", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "node-js"}},
        "endpoints": endpoints, "ports": ports or [{"name": "http", "port": 8080, "protocol": "TCP"}]})


def test_named_target_port_resolves_per_slice_and_conditions_carry_over():
    sl = slice_([{"addresses": ["10.244.1.5"], "nodeName": "node1"},
                 {"addresses": ["10.244.2.5"], "conditions": {"ready": False, "serving": True, "terminating": True},
                  "nodeName": "node2"}])
    (sp,) = service_ports(svc(), [sl])
    assert sp.key == "default/node-js:http" and sp.cluster_ips == ("10.0.0.20",)
    assert [(e.ip, e.port, e.ready, e.terminating) for e in sp.endpoints] == [
        ("10.244.1.5", 8080, True, False), ("10.244.2.5", 8080, False, True)]


def test_ports_match_by_name_and_protocol():
    s = svc(ports=[{"name": "http", "port": 80}, {"name": "admin", "port": 8888}])
    sl = slice_([{"addresses": ["10.244.1.5"]}], ports=[{"name": "http", "port": 80}, {"name": "admin", "port": 9000}])
    http, admin = service_ports(s, [sl])
    assert http.endpoints[0].port == 80 and admin.endpoints[0].port == 9000


def test_headless_and_external_name_are_not_proxied():
    assert service_ports(svc(clusterIP="None"), []) == []
    assert service_ports(svc(type="ExternalName", externalName="foo.bar.example.com", clusterIP=None), []) == []


def test_node_port_lb_affinity_and_policies():
    s = Service.model_validate({
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.30", "ports": [{"port": 80, "nodePort": 30080}],
                 "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local", "externalIPs": ["192.168.33.200"]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.168.33.240"}]}}})
    (sp,) = service_ports(s, [])
    assert sp.node_port == 30080 and sp.load_balancer_ips == ("192.168.33.240",)
    assert sp.affinity_seconds == 10800 and sp.external_local and not sp.internal_local
    assert sp.external_ips == ("192.168.33.200",) and sp.endpoints == ()


def test_cluster_ip_service_has_no_node_port_even_if_set():
    (sp,) = service_ports(svc(ports=[{"port": 80, "nodePort": 30001}]), [])
    assert sp.node_port is None


def test_the_ipv4_proxier_reads_no_ipv6_slices():
    v6 = slice_([{"addresses": ["fd00::5"]}], family="IPv6")
    (sp,) = service_ports(svc(), [v6, slice_([{"addresses": ["10.244.1.5"]}])])
    assert [e.ip for e in sp.endpoints] == ["10.244.1.5"]


def test_health_check_node_port_only_for_local_load_balancers():
    def lb(**spec) -> Service:
        return Service.model_validate({"metadata": {"name": "lb", "namespace": "default"}, "spec": {
            "type": "LoadBalancer", "clusterIP": "10.0.0.30", "ports": [{"port": 80, "nodePort": 30080}], **spec}})
    assert health_check_node_port(lb(externalTrafficPolicy="Local", healthCheckNodePort=31000)) == 31000
    assert health_check_node_port(lb(externalTrafficPolicy="Cluster", healthCheckNodePort=31000)) is None
    assert health_check_node_port(lb(externalTrafficPolicy="Local")) is None


def test_each_family_reads_its_own_addresses_and_slices_in_the_kernels_form():
    s = svc(type="NodePort", clusterIPs=["10.0.0.20", "fd00:10:96:0::20"], externalIPs=["192.168.33.9", "fd00:33::9"],
            ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    v4 = slice_([{"addresses": ["10.244.1.5"]}])
    v6 = slice_([{"addresses": ["fd00:10:244:1:0::5"]}], family="IPv6")
    (four,) = build.service_ports(s, resolve([v4, v6], family=4), family=4)
    (six,) = build.service_ports(s, resolve([v4, v6], family=6), family=6)
    assert (four.family, four.cluster_ips, four.external_ips, [e.ip for e in four.endpoints]) == \
        (4, ("10.0.0.20",), ("192.168.33.9",), ["10.244.1.5"])
    assert (six.family, six.cluster_ips, six.external_ips, [e.ip for e in six.endpoints]) == \
        (6, ("fd00:10:96::20",), ("fd00:33::9",), ["fd00:10:244:1::5"])
    assert four.node_port == six.node_port == 30080  # the node port in both families
    # A single-stack Service has no ports in the other family.
    assert build.service_ports(svc(), resolve([v6], family=6), family=6) == []
