"""knet.kube.models: real-looking objects (shapes from the Kubernetes docs) parse; malformed ones
are skipped with a log line naming them."""

from __future__ import annotations

import logging

import pytest

from knet.kube.models import (
    ConfigMap,
    Deployment,
    Endpoints,
    EndpointSlice,
    Ingress,
    IngressClass,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    ReplicaSet,
    ReplicationController,
    Secret,
    Service,
    model_for,
    parse,
)


def test_service_named_target_port():
    svc = parse(Service, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "nginx-service", "namespace": "default", "uid": "u1", "resourceVersion": "7",
                     "creationTimestamp": "2024-05-01T10:00:00Z",
                     "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"selector": {"app.kubernetes.io/name": "proxy"}, "clusterIP": "10.96.0.20",
                 "clusterIPs": ["10.96.0.20"],
                 "ports": [{"name": "name-of-service-port", "protocol": "TCP", "port": 80,
                            "targetPort": "http-web-svc"}],
                 "ipFamilyPolicy": "SingleStack", "someFutureField": {"x": 1}},
    })
    assert svc is not None
    assert svc.key == "default/nginx-service"
    assert svc.spec.type == "ClusterIP" and svc.spec.session_affinity == "None"
    assert svc.spec.external_traffic_policy == "Cluster"
    port = svc.spec.ports[0]
    assert port.target_port == "http-web-svc" and port.effective_target_port == "http-web-svc"
    assert svc.cluster_ips == ["10.96.0.20"] and not svc.is_headless
    assert svc.affinity_timeout is None
    out = svc.to_dict()
    assert out["spec"]["someFutureField"] == {"x": 1}  # unknown fields survive a round trip
    assert out["spec"]["clusterIP"] == "10.96.0.20" and out["spec"]["ports"][0]["targetPort"] == "http-web-svc"
    assert "managedFields" not in out["metadata"]
    assert out["metadata"]["creationTimestamp"] == "2024-05-01T10:00:00Z"


def test_service_numeric_target_port_is_int_and_default_is_port():
    svc = parse("service", {"metadata": {"name": "a", "namespace": "ns"},
                            "spec": {"ports": [{"port": 80, "targetPort": 9376}, {"port": 443, "name": "https"}]}})
    assert svc.spec.ports[0].target_port == 9376 and isinstance(svc.spec.ports[0].target_port, int)
    assert svc.spec.ports[1].effective_target_port == 443


def test_service_nodeport_lb_affinity_headless():
    lb = parse(Service, {
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.5.5", "externalTrafficPolicy": "Local",
                 "internalTrafficPolicy": "Local", "externalIPs": ["192.0.2.10"], "loadBalancerIP": "192.0.2.50",
                 "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                 "publishNotReadyAddresses": True, "healthCheckNodePort": 31000,
                 "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080, "protocol": "UDP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.50"}]}},
    })
    assert lb.spec.external_traffic_policy == "Local" and lb.spec.internal_traffic_policy == "Local"
    assert lb.spec.ports[0].node_port == 30080 and lb.spec.ports[0].protocol == "UDP"
    assert lb.affinity_timeout == 60 and lb.spec.publish_not_ready_addresses
    assert lb.status.load_balancer.ingress[0].ip == "192.0.2.50"
    assert lb.spec.external_ips == ["192.0.2.10"] and lb.spec.load_balancer_ip == "192.0.2.50"
    headless = parse(Service, {"metadata": {"name": "h", "namespace": "d"},
                               "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"a": "b"},
                                        "externalTrafficPolicy": "", "sessionAffinity": "ClientIP"}})
    assert headless.is_headless and headless.cluster_ips == []
    assert headless.spec.external_traffic_policy == "Cluster"
    assert headless.affinity_timeout == 10800
    ext = parse(Service, {"metadata": {"name": "e", "namespace": "d"},
                          "spec": {"type": "ExternalName", "externalName": "example.com"}})
    assert ext.spec.external_name == "example.com" and ext.spec.selector is None


def test_endpointslice_from_docs():
    es = parse(EndpointSlice, {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "example-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "example"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
        "endpoints": [
            {"addresses": ["10.1.2.3"], "conditions": {"ready": True}, "hostname": "pod-1", "nodeName": "node-1",
             "zone": "us-west2-a", "targetRef": {"kind": "Pod", "namespace": "default", "name": "pod-1", "uid": "x"}},
            {"addresses": ["10.1.2.4"], "conditions": {"ready": False, "serving": True, "terminating": True}},
            {"addresses": ["10.1.2.5"]},
        ],
    })
    assert es.service_name == "example"
    e0, e1, e2 = es.endpoints
    assert e0.conditions.is_ready and e0.hostname == "pod-1" and e0.target_ref.name == "pod-1"
    assert not e1.conditions.is_ready and e1.conditions.is_serving and e1.conditions.is_terminating
    # Unset conditions: ready and serving mean true, terminating false (the API's rule).
    assert e2.conditions.is_ready and e2.conditions.is_serving and not e2.conditions.is_terminating
    assert es.ports[0].port == 80 and es.ports[0].name == "http"


def test_network_policy_from_docs_with_ipblock_except_and_endport():
    np = parse(NetworkPolicy, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "test-network-policy", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [
                {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                {"podSelector": {"matchLabels": {"role": "frontend"}}},
                {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
                 "podSelector": {}},
            ], "ports": [{"protocol": "TCP", "port": 6379}, {"port": "metrics"}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                        "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]}],
        },
    })
    assert np is not None
    rule = np.spec.ingress[0]
    assert rule.from_[0].ip_block.except_ == ["172.17.1.0/24"] and rule.from_[0].pod_selector is None
    assert rule.from_[1].pod_selector is None
    assert rule.from_[1].namespace_selector.match_labels == {"project": "myproject"}
    assert rule.from_[3].pod_selector.is_empty()
    assert rule.ports[1].port == "metrics" and rule.ports[1].protocol == "TCP"
    assert np.spec.egress[0].ports[0].end_port == 32768
    assert np.spec.effective_policy_types == ["Ingress", "Egress"]
    assert np.to_dict()["spec"]["ingress"][0]["from"][0]["ipBlock"]["except"] == ["172.17.1.0/24"]


def test_network_policy_defaults():
    deny = parse(NetworkPolicy, {"metadata": {"name": "deny", "namespace": "d"}, "spec": {"podSelector": {}}})
    assert deny.spec.effective_policy_types == ["Ingress"] and deny.spec.ingress == []
    allow_all = parse(NetworkPolicy, {"metadata": {"name": "a", "namespace": "d"},
                                      "spec": {"podSelector": {}, "ingress": [{}], "egress": [{"to": None}]}})
    assert allow_all.spec.ingress[0].from_ == [] and allow_all.spec.ingress[0].ports == []
    assert allow_all.spec.effective_policy_types == ["Ingress", "Egress"]


def test_ingress_prefix_exact_tls_and_class():
    ing = parse(Ingress, {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "minimal-ingress", "namespace": "default",
                     "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/"}},
        "spec": {
            "ingressClassName": "knet",
            "defaultBackend": {"service": {"name": "default-svc", "port": {"number": 80}}},
            "tls": [{"hosts": ["https-example.foo.com"], "secretName": "testsecret-tls"}],
            "rules": [
                {"host": "https-example.foo.com", "http": {"paths": [
                    {"path": "/testpath", "pathType": "Prefix",
                     "backend": {"service": {"name": "test", "port": {"number": 80}}}},
                    {"path": "/exact", "pathType": "Exact",
                     "backend": {"service": {"name": "web", "port": {"name": "http"}}}},
                ]}},
                {"http": {"paths": [{"path": "/", "pathType": "ImplementationSpecific",
                                     "backend": {"resource": {"apiGroup": "k8s.example.com", "kind": "StorageBucket",
                                                              "name": "static-assets"}}}]}},
            ],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}},
    })
    assert ing.class_name == "knet"
    paths = ing.spec.rules[0].http.paths
    assert paths[0].path_type == "Prefix" and paths[0].backend.service.port.value == 80
    assert paths[1].path_type == "Exact" and paths[1].backend.service.port.value == "http"
    assert ing.spec.rules[1].host is None
    assert ing.spec.rules[1].http.paths[0].backend.resource["kind"] == "StorageBucket"
    assert ing.spec.tls[0].secret_name == "testsecret-tls" and ing.spec.default_backend.service.name == "default-svc"
    legacy = parse(Ingress, {"metadata": {"name": "l", "namespace": "d",
                                          "annotations": {"kubernetes.io/ingress.class": "nginx"}}})
    assert legacy.class_name == "nginx"
    cls = parse(IngressClass, {"metadata": {"name": "knet",
                                            "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
                               "spec": {"controller": "knet.dev/ingress"}})
    assert cls.is_default and cls.key == "knet" and cls.spec.controller == "knet.dev/ingress"


def test_pod_with_probes_and_status():
    pod = parse(Pod, {
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d",
                                          "uid": "rs1", "controller": True}]},
        "spec": {"nodeName": "node1", "hostname": "web-0", "subdomain": "web", "restartPolicy": "Always",
                 "nodeSelector": {"kubernetes.io/os": "linux"},
                 "containers": [{
                     "name": "agnhost", "image": "registry.k8s.io/e2e-test-images/agnhost:2.39",
                     "args": ["netexec", "--http-port=8080"],
                     "ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 8081, "protocol": "UDP"}],
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}],
                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
                     "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5},
                     "startupProbe": {"exec": {"command": ["true"]}},
                 }]},
        "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
                   "hostIP": "192.168.33.11",
                   "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"}],
                   "containerStatuses": [{"name": "agnhost", "ready": True, "restartCount": 2,
                                          "state": {"running": {}}}]},
    })
    c = pod.spec.containers[0]
    assert c.readiness_probe.http_get.port == "http" and c.readiness_probe.http_get.scheme == "HTTP"
    assert c.readiness_probe.period_seconds == 2 and c.readiness_probe.failure_threshold == 3
    assert c.liveness_probe.tcp_socket.port == 8080 and c.liveness_probe.initial_delay_seconds == 5
    assert c.startup_probe.exec.command == ["true"]
    assert c.ports[1].protocol == "UDP" and c.ports[0].protocol == "TCP"
    assert pod.spec.named_port("http") == 8080 and pod.spec.named_port("http", "UDP") is None
    assert pod.is_ready and pod.ips == ["10.244.1.5"] and pod.status.container_statuses[0].restart_count == 2
    assert pod.metadata.controller_ref().name == "web-5d"
    assert not pod.is_terminating


def test_other_kinds():
    node = parse(Node, {"metadata": {"name": "node1"},
                        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
                        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.33.11"},
                                                 {"type": "Hostname", "address": "node1"}],
                                   "conditions": [{"type": "Ready", "status": "True"}]}})
    assert node.internal_ip == "192.168.33.11" and node.pod_cidrs == ["10.244.1.0/24"] and node.is_ready
    assert node.key == "node1"
    sec = parse(Secret, {"metadata": {"name": "tls", "namespace": "d"}, "type": "kubernetes.io/tls",
                         "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}})
    assert sec.decoded("tls.crt") == b"cert" and sec.decoded("missing") is None
    cm = parse(ConfigMap, {"metadata": {"name": "kdns", "namespace": "kube-system"}, "data": {"Corefile": "."}})
    assert cm.data["Corefile"] == "."
    ns = parse(Namespace, {"metadata": {"name": "prod", "labels": {"team": "a"}}, "status": {"phase": "Active"}})
    assert ns.labels == {"team": "a"}
    ep = parse(Endpoints, {"metadata": {"name": "ext", "namespace": "d"},
                           "subsets": [{"addresses": [{"ip": "192.0.2.42"}], "ports": [{"port": 9376}]}]})
    assert ep.subsets[0].addresses[0].ip == "192.0.2.42" and ep.subsets[0].ports[0].protocol == "TCP"
    template = {"metadata": {"labels": {"app": "nginx"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx:1.14.2", "ports": [{"containerPort": 80}]}]}}
    dep = parse(Deployment, {"apiVersion": "apps/v1", "kind": "Deployment",
                             "metadata": {"name": "nginx-deployment", "namespace": "d", "generation": 3},
                             "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "nginx"}},
                                      "template": template,
                                      "strategy": {"type": "RollingUpdate",
                                                   "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}},
                             "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 3}})
    assert dep.spec.strategy.rolling_update.max_surge == "25%" and dep.spec.strategy.rolling_update.max_unavailable == 1
    assert dep.status.ready_replicas == 2 and dep.spec.template.spec.containers[0].ports[0].container_port == 80
    rs = parse(ReplicaSet, {"metadata": {"name": "r", "namespace": "d"},
                            "spec": {"selector": {"matchLabels": {"app": "nginx"}}, "template": template}})
    assert rs.spec.replicas == 1
    rc = parse(ReplicationController, {"metadata": {"name": "nginx", "namespace": "d"},
                                       "spec": {"replicas": 2, "template": template}})
    assert rc.spec.effective_selector == {"app": "nginx"}


def test_nulls_mean_unset():
    svc = parse(Service, {"metadata": {"name": "n", "namespace": "d", "labels": None, "annotations": None},
                          "spec": {"ports": None, "selector": None, "clusterIP": None}, "status": None})
    assert svc.labels == {} and svc.spec.ports == [] and svc.spec.selector is None


def test_model_for():
    assert model_for("Pod") is Pod and model_for("endpointslice") is EndpointSlice and model_for(Service) is Service
    with pytest.raises(KeyError):
        model_for("Widget")


MALFORMED = [
    ("Service", {"spec": {"ports": [{"port": 70000}]}}, "spec.ports.0.port"),
    ("Service", {"spec": {"ports": [{"port": 80, "targetPort": True}]}}, "spec.ports.0.targetPort"),
    ("Service", {"spec": {"ports": [{"port": 80, "targetPort": 0}]}}, "spec.ports.0.targetPort"),
    ("Service", {"spec": {"type": "Magic"}}, "spec.type"),
    ("Service", {"spec": {"clusterIP": "10.96.0.300"}}, "spec.clusterIP"),
    ("Service", {"spec": {"ports": [{"port": 80, "protocol": "ICMP"}]}}, "spec.ports.0.protocol"),
    ("Service", {"spec": "not an object"}, "spec"),
    ("Pod", {"status": {"podIP": "not-an-ip"}}, "status.podIP"),
    ("Pod", {"spec": {"containers": [{"name": "c", "readinessProbe": {"periodSeconds": 1}}]}}, "readinessProbe"),
    ("EndpointSlice", {"endpoints": []}, "addressType"),
    ("EndpointSlice", {"addressType": "IPv4", "endpoints": [{"addresses": ["fd00::1"]}]}, "not IPv4"),
    ("NetworkPolicy", {"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}},
     "endPort needs a numeric port"),
    ("NetworkPolicy", {"spec": {"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}}, "not inside"),
    ("NetworkPolicy", {"spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}},
     "needs values"),
    ("NetworkPolicy", {"spec": {}}, "spec.podSelector"),
    ("Ingress", {"spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": {
        "service": {"name": "s", "port": {"number": 80}}}}]}}]}}, "pathType"),
    ("Ingress", {"spec": {"defaultBackend": {"service": {"name": "s", "port": {}}}}}, "exactly one"),
    ("Secret", {"data": {"k": "not base64!"}}, "not base64"),
    ("Deployment", {"spec": {"selector": {}, "replicas": -1, "template": {}}}, "spec.replicas"),
    ("Node", {"spec": {"podCIDR": "10.244.1.0/33"}}, "spec.podCIDR"),
]


@pytest.mark.parametrize("kind,body,reason", MALFORMED, ids=[f"{k}-{r}" for k, _, r in MALFORMED])
def test_malformed_is_skipped_with_a_log_line(kind, body, reason, caplog):
    raw = {"metadata": {"name": "bad", "namespace": "prod"}, **body}
    with caplog.at_level(logging.WARNING, logger="knet.kube"):
        assert parse(kind, raw) is None
    line = caplog.records[-1].getMessage()
    assert line.startswith(f"skipping malformed {kind} prod/bad: "), line
    assert reason in line, line


def test_malformed_not_an_object_and_bad_metadata(caplog):
    with caplog.at_level(logging.WARNING, logger="knet.kube"):
        assert parse(Pod, ["a", "list"]) is None
        assert parse(Pod, {"metadata": "oops"}) is None
        assert parse(Namespace, {"metadata": {"name": "n", "labels": {"a": 1}}}) is None
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("skipping malformed Pod ?: not an object")
    assert msgs[1].startswith("skipping malformed Pod ?: metadata")
    assert msgs[2].startswith("skipping malformed Namespace n: metadata.labels.a")
