"""Admission: defaults, validation causes (field + message as kube-apiserver words them), and
ClusterIP / nodePort allocation."""

from __future__ import annotations

import random

import pytest

from lab.apiserver import admission
from lab.apiserver.allocator import Allocator, NodePortRange, Reservation, ServiceCIDR, allocators_from
from lab.apiserver.kinds.services import IPS, PORTS
from lab.apiserver.resources import by_kind
from lab.apiserver.strategy import Config

CFG = Config(ServiceCIDR.parse("10.96.0.0/12"), NodePortRange(30000, 32767))
SVC, POD, DEP = by_kind("", "Service"), by_kind("", "Pod"), by_kind("apps", "Deployment")


def admit(rt, obj, old=None, used_ips=(), used_ports=()):
    """defaults + validation (+ allocation for Services); returns (object, causes)."""
    held = {IPS: list(used_ips), PORTS: [str(p) for p in used_ports]}
    with Reservation(allocators_from(SVC.strategy.ranges(CFG), held)) as res:
        causes = admission.admit(rt, obj, old, CFG, res)
    return obj, causes


def fields(causes):
    return [c["field"] for c in causes]


def service(name="s", ns="default", **spec):
    spec.setdefault("ports", [{"port": 80}])
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_service_defaults():
    obj, causes = admit(SVC, service(ports=[{"port": 80}, {"port": 53, "protocol": "UDP", "name": "dns",
                                                           "targetPort": "dns"}]))
    assert fields(causes) == ["spec.ports[0].name"]  # two ports need names
    obj, causes = admit(SVC, service(ports=[{"port": 80, "name": "http"}]))
    assert causes == []
    spec = obj["spec"]
    assert spec["type"] == "ClusterIP" and spec["sessionAffinity"] == "None"
    assert spec["ports"] == [{"port": 80, "name": "http", "protocol": "TCP", "targetPort": 80}]
    assert CFG.service_cidr.contains(spec["clusterIP"]) and spec["clusterIPs"] == [spec["clusterIP"]]
    obj, _ = admit(SVC, service(sessionAffinity="ClientIP"))
    assert obj["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 10800


def test_cluster_ip_allocation_rules():
    # explicit IP honoured, unless taken or outside the range
    obj, causes = admit(SVC, service(clusterIP="10.96.5.5"))
    assert causes == [] and obj["spec"]["clusterIP"] == "10.96.5.5"
    _, causes = admit(SVC, service(clusterIP="10.96.5.5"), used_ips={"10.96.5.5"})
    assert fields(causes) == ["spec.clusterIP"] and "already allocated" in causes[0]["message"]
    assert causes[0]["message"] == 'Invalid value: "10.96.5.5": provided IP is already allocated'
    for bad in ("10.112.0.1", "10.96.0.0", "nonsense"):
        _, causes = admit(SVC, service(clusterIP=bad))
        assert fields(causes) == ["spec.clusterIP"], bad
    # headless: no address, and not for NodePort
    obj, causes = admit(SVC, service(clusterIP="None"))
    assert causes == [] and obj["spec"]["clusterIP"] == "None"
    _, causes = admit(SVC, service(clusterIP="None", type="NodePort"))
    assert fields(causes) == ["spec.clusterIP"]
    # ExternalName gets none
    obj, causes = admit(SVC, {"metadata": {"name": "ext", "namespace": "d"},
                              "spec": {"type": "ExternalName", "externalName": "foo.bar.example.com"}})
    assert causes == [] and "clusterIP" not in obj["spec"]
    # the DNS service gets the tenth address when it leaves it to the server, or asks for it
    obj, _ = admit(SVC, service("kube-dns", "kube-system"))
    assert obj["spec"]["clusterIP"] == "10.96.0.10"
    obj, _ = admit(SVC, service("kube-dns", "kube-system", clusterIP="10.96.0.10"))
    assert obj["spec"]["clusterIP"] == "10.96.0.10"
    obj, _ = admit(SVC, service("other"))
    assert obj["spec"]["clusterIP"] != "10.96.0.10"


def test_allocator_never_duplicates_and_keeps_the_static_band_for_last():
    cidr = ServiceCIDR.parse("10.0.0.0/24")
    ips = Allocator("ips", cidr)
    ips.apply(cidr.api_service_ip, True, 1)
    used: set[str] = {cidr.api_service_ip}
    rng = random.Random(1)
    for _ in range(253):
        ip = ips.pick(rng)  # reserved: the next pick does not get it
        assert ip is not None and ip not in used and cidr.contains(ip)
        if len(used) < 253 - 16:  # the lower band (the first 16) is used only once the rest is full
            assert int(ip.rsplit(".", 1)[1]) > 16
        used.add(ip)
    assert ips.pick(rng) is None and len(used) == 254
    ports = Allocator("ports", NodePortRange.parse("30000-30099"))
    taken: set[str] = set()
    for i in range(100):
        port = ports.pick(rng)
        assert port is not None and port not in taken
        taken.add(port)
        ports.apply(port, True, i + 1)  # stored (the store's view), then its reservation ends
        ports.unreserve(port)
    assert ports.pick(rng) is None and len(ports) == 100
    # a release seen from the store frees it again; an older change arriving late is ignored
    ports.apply("30042", False, 200)
    ports.apply("30042", True, 150)
    assert not ports.taken("30042") and ports.pick(rng) == "30042"
    with pytest.raises(ValueError):
        NodePortRange.parse("40000-30000")
    with pytest.raises(ValueError):
        ServiceCIDR.parse("10.0.0.0/30")


def test_node_port_rules():
    obj, causes = admit(SVC, service(type="NodePort", ports=[{"port": 80, "name": "a"},
                                                             {"port": 81, "name": "b", "nodePort": 30001}]),
                        used_ports={30002})
    assert causes == []
    ports = [p["nodePort"] for p in obj["spec"]["ports"]]
    assert ports[1] == 30001 and 30000 <= ports[0] <= 32767 and ports[0] not in (30001, 30002)
    assert obj["spec"]["externalTrafficPolicy"] == "Cluster"
    _, causes = admit(SVC, service(type="NodePort", ports=[{"port": 80, "nodePort": 30001}]), used_ports={30001})
    assert fields(causes) == ["spec.ports[0].nodePort"] and "already allocated" in causes[0]["message"]
    _, causes = admit(SVC, service(type="NodePort", ports=[{"port": 80, "nodePort": 40000}]))
    assert causes[0]["message"] == ("Invalid value: 40000: provided port is not in the valid range. "
                                    "The range of valid ports is 30000-32767")
    _, causes = admit(SVC, service(ports=[{"port": 80, "nodePort": 30005}]))
    assert fields(causes) == ["spec.ports[0].nodePort"] and "Forbidden" in causes[0]["message"]
    # TCP and UDP of one port may share a node port
    obj, causes = admit(SVC, service(type="NodePort", ports=[
        {"port": 53, "name": "dns", "nodePort": 30053},
        {"port": 53, "name": "dns-udp", "protocol": "UDP", "nodePort": 30053}]))
    assert causes == []


def test_health_check_node_port_for_local_load_balancers():
    obj, causes = admit(SVC, service(type="LoadBalancer", externalTrafficPolicy="Local"), used_ports={30000})
    hc = obj["spec"]["healthCheckNodePort"]
    assert causes == [] and 30000 < hc <= 32767 and hc != obj["spec"]["ports"][0]["nodePort"]
    held = SVC.strategy.held(obj)
    assert (PORTS, str(hc)) in held  # held like a node port, released with the Service
    kept, causes = admit(SVC, service(type="LoadBalancer", externalTrafficPolicy="Local"), old=obj,
                         used_ports={int(v) for r, v in held if r == PORTS})
    assert causes == [] and kept["spec"]["healthCheckNodePort"] == hc
    cluster, _ = admit(SVC, service(type="LoadBalancer", externalTrafficPolicy="Cluster"), old=obj)
    assert "healthCheckNodePort" not in cluster["spec"] and (PORTS, str(hc)) not in SVC.strategy.held(cluster)
    _, causes = admit(SVC, service(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=31000),
                      used_ports={31000})
    assert fields(causes) == ["spec.healthCheckNodePort"] and "already allocated" in causes[0]["message"]
    # Without node ports for the load balancer the health check port is still allocated, as kube-apiserver does.
    obj, causes = admit(SVC, service(type="LoadBalancer", externalTrafficPolicy="Local",
                                     allocateLoadBalancerNodePorts=False))
    assert causes == [] and "nodePort" not in obj["spec"]["ports"][0] and obj["spec"]["healthCheckNodePort"]


def test_service_update_keeps_allocations_and_ip_is_immutable():
    old, _ = admit(SVC, service(type="NodePort"))
    new, causes = admit(SVC, service(type="NodePort"), old=old, used_ips=old["spec"]["clusterIPs"],
                        used_ports=[old["spec"]["ports"][0]["nodePort"]])
    assert causes == [] and new["spec"]["clusterIP"] == old["spec"]["clusterIP"]
    assert new["spec"]["ports"][0]["nodePort"] == old["spec"]["ports"][0]["nodePort"]
    _, causes = admit(SVC, service(clusterIP="10.96.9.9"), old=old)
    assert fields(causes) == ["spec.clusterIP"] and "immutable" in causes[0]["message"]
    to_cluster_ip, causes = admit(SVC, service(type="ClusterIP", ports=[dict(old["spec"]["ports"][0])]), old=old)
    assert causes == [] and "nodePort" not in to_cluster_ip["spec"]["ports"][0]


def test_service_validation_causes():
    cases = [
        (service(ports=[{"port": 0}]), "spec.ports[0].port"),
        (service(ports=[{"port": 80, "protocol": "ICMP"}]), "spec.ports[0].protocol"),
        (service(ports=[{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]), "spec.ports[1]"),
        (service(ports=[{"port": 80, "targetPort": "not_a_name!"}]), "spec.ports[0].targetPort"),
        (service(type="Bogus"), "spec.type"),
        (service(sessionAffinity="Sticky"), "spec.sessionAffinity"),
        (service(selector={"app": "bad value!"}), "spec.selector"),
        (service(externalIPs=["1.2.3"]), "spec.externalIPs[0]"),
        (service("Bad_Name"), "metadata.name"),
        ({"metadata": {"name": "noports", "namespace": "d"}, "spec": {}}, "spec.ports"),
    ]
    for obj, field in cases:
        _, causes = admit(SVC, obj)
        assert field in fields(causes), (obj, causes)


def test_pod_defaults_and_validation():
    obj, causes = admit(POD, {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "image": "agnhost:2.40", "ports": [{"containerPort": 8080, "name": "http"}],
         "readinessProbe": {"httpGet": {"port": "http"}}}]}})
    assert causes == []
    spec = obj["spec"]
    assert "nodeName" not in spec and spec["restartPolicy"] == "Always" and spec["dnsPolicy"] == "ClusterFirst"
    assert spec["containers"][0]["ports"][0]["protocol"] == "TCP"
    assert spec["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/"
    assert obj["status"]["phase"] == "Pending"
    bad = {"metadata": {"name": "p"}, "spec": {"restartPolicy": "Sometimes", "containers": [
        {"name": "c", "ports": [{"containerPort": 0}, {"containerPort": 1, "name": "x", "protocol": "IP"}]},
        {"name": "c", "image": "i", "readinessProbe": {}}]}}
    _, causes = admit(POD, bad)
    assert set(fields(causes)) == {"spec.containers[0].image", "spec.containers[0].ports[0].containerPort",
                                   "spec.containers[0].ports[1].protocol", "spec.containers[1].name",
                                   "spec.containers[1].readinessProbe", "spec.restartPolicy"}
    # a bound pod stays on its node
    old, _ = admit(POD, {"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [
        {"name": "c", "image": "i"}]}})
    _, causes = admit(POD, {"metadata": {"name": "p"}, "spec": {"nodeName": "n2", "containers": [
        {"name": "c", "image": "i"}]}}, old=old)
    assert fields(causes) == ["spec.nodeName"]


def test_deployment_defaults_and_selector_rules():
    template = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    obj, causes = admit(DEP, {"metadata": {"name": "d"},
                              "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}})
    assert causes == [] and obj["spec"]["replicas"] == 1
    assert obj["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    _, causes = admit(DEP, {"metadata": {"name": "d"},
                            "spec": {"selector": {"matchLabels": {"app": "db"}}, "template": template}})
    assert fields(causes) == ["spec.template.metadata.labels"]
    _, causes = admit(DEP, {"metadata": {"name": "d"}, "spec": {"template": template}})
    assert fields(causes) == ["spec.selector"]
    _, causes = admit(DEP, {"metadata": {"name": "d"}, "spec": {"replicas": -1, "selector": {
        "matchLabels": {"app": "web"}}, "template": template}})
    assert fields(causes) == ["spec.replicas"]
    rc = by_kind("", "ReplicationController")
    obj, causes = admit(rc, {"metadata": {"name": "r"}, "spec": {"template": template}})
    assert causes == [] and obj["spec"]["selector"] == {"app": "web"} and obj["metadata"]["labels"] == {"app": "web"}


def test_daemonset_defaults_and_rules():
    ds = by_kind("apps", "DaemonSet")
    template = {"metadata": {"labels": {"app": "node"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}

    def spec(**more):
        return {"metadata": {"name": "n"}, "spec": {"selector": {"matchLabels": {"app": "node"}},
                                                     "template": template, **more}}
    obj, causes = admit(ds, spec())
    assert causes == [] and "replicas" not in obj["spec"] and obj["spec"]["revisionHistoryLimit"] == 10
    assert obj["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                             "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert obj["status"] == {"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0,
                             "numberReady": 0}
    obj, causes = admit(ds, spec(updateStrategy={"type": "OnDelete"}))
    assert causes == [] and obj["spec"]["updateStrategy"] == {"type": "OnDelete"}
    _, causes = admit(ds, spec(selector={"matchLabels": {"app": "other"}}))
    assert fields(causes) == ["spec.template.metadata.labels"]
    _, causes = admit(ds, spec(updateStrategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}}))
    assert fields(causes) == ["spec.updateStrategy.rollingUpdate.maxUnavailable"]
    assert "may not be 0 when `maxSurge` is 0" in causes[0]["message"]
    _, causes = admit(ds, spec(updateStrategy={"type": "Sometimes"}))
    assert fields(causes) == ["spec.updateStrategy.type"]
    old, _ = admit(ds, spec())
    _, causes = admit(ds, spec(selector={"matchLabels": {"app": "node", "x": "y"}}), old=old)
    assert "spec.selector" in fields(causes)


def test_networking_kinds():
    np = by_kind("networking.k8s.io", "NetworkPolicy")
    obj, causes = admit(np, {"metadata": {"name": "n"}, "spec": {"egress": [{"ports": [{"port": 53}]}]}})
    assert causes == [] and obj["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert obj["spec"]["podSelector"] == {} and obj["spec"]["egress"][0]["ports"][0]["protocol"] == "TCP"
    _, causes = admit(np, {"metadata": {"name": "n"}, "spec": {"ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}, "podSelector": {}}],
        "ports": [{"port": 80, "endPort": 70}]}]}})
    assert set(fields(causes)) == {"spec.ingress[0].from[0]", "spec.ingress[0].from[0].ipBlock.except[0]",
                                   "spec.ingress[0].ports[0].endPort"}
    ing = by_kind("networking.k8s.io", "Ingress")
    _, causes = admit(ing, {"metadata": {"name": "i"}, "spec": {"rules": [{"host": "a.whale.hey", "http": {
        "paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "s", "port": {"number": 80}}}},
                  {"path": "x", "pathType": "Exact", "backend": {"service": {"name": "s", "port": {}}}},
                  {"path": "/", "backend": {"service": {"name": "s", "port": {"name": "http"}}}}]}}]}})
    assert set(fields(causes)) == {"spec.rules[0].http.paths[1].path", "spec.rules[0].http.paths[1].backend"
                                   ".service.port", "spec.rules[0].http.paths[2].pathType"}
    eps = by_kind("discovery.k8s.io", "EndpointSlice")
    _, causes = admit(eps, {"metadata": {"name": "e"}, "addressType": "IPv4", "endpoints": [
        {"addresses": ["10.0.0.1"]}, {"addresses": ["fe80::1"]}, {"addresses": []}]})
    assert fields(causes) == ["endpoints[1].addresses[0]", "endpoints[2].addresses"]
    secret = by_kind("", "Secret")
    obj, causes = admit(secret, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert causes == [] and obj["data"] == {"k": "dg=="} and obj["type"] == "Opaque"
    _, causes = admit(secret, {"metadata": {"name": "s"}, "data": {"k": "%%%"}})
    assert fields(causes) == ["data[k]"] and "redacted" in causes[0]["message"]  # secrets never echoed


def test_default_ingress_class_is_the_newest_default() -> None:
    from lab.apiserver.kinds import networking

    def cls(name: str, created: str) -> dict:
        return {"metadata": {"name": name, "creationTimestamp": created}}
    assert networking.default_class([]) is None
    assert networking.default_class([cls("old", "2026-01-01T00:00:00Z"), cls("new", "2026-02-01T00:00:00Z"),
                                     cls("mid", "2026-01-15T00:00:00Z")]) == "new"
    assert networking.default_class([cls("b", "2026-01-01T00:00:00Z"), cls("a", "2026-01-01T00:00:00Z")]) == "a"
    ing = networking.Ingresses()
    seen = []

    def lookup(group: str, kind: str, index: str, value: str) -> list[dict]:
        seen.append((group, kind, index, value))
        return [cls("nginx", "2026-01-01T00:00:00Z")]
    obj: dict = {"metadata": {"name": "i"}, "spec": {"rules": []}}
    ing.default_on_create(obj, lookup)
    assert obj["spec"]["ingressClassName"] == "nginx"
    assert seen == [("networking.k8s.io", "IngressClass", "default", "true")]
    named = {"metadata": {"name": "i"}, "spec": {"ingressClassName": "other"}}
    ing.default_on_create(named, lookup)
    assert named["spec"]["ingressClassName"] == "other"
    legacy = {"metadata": {"name": "i", "annotations": {"kubernetes.io/ingress.class": "x"}}, "spec": {}}
    ing.default_on_create(legacy, lookup)
    assert "ingressClassName" not in legacy["spec"]
    marked = {"metadata": {"annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}}}
    assert networking.IngressClasses().index_values("default", marked) == ["true"]
    assert networking.IngressClasses().index_values("default", {"metadata": {}}) == []
