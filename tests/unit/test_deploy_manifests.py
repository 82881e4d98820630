"""deploy/: renders with kustomize, validates against the Kubernetes 1.27 schemas
(kubernetes-validate, strict: unknown fields fail), and carries what issue 10 asks for. Every
daemon's command line in the manifests is parsed by that daemon's own argument parser."""

from __future__ import annotations

import ipaddress
import json

import kubernetes_validate
import pytest

from tests.integration.deploy import manifests as m

DOCS = m.render()
SERVICE_CIDR = "10.96.0.0/12"


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_schema_valid(doc):
    kubernetes_validate.validate(doc, "1.27.0", strict=True)


def test_validator_catches_a_typo():
    ds = json.loads(json.dumps(m.by_kind(DOCS, "DaemonSet")["knet-node"]))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, "1.27.0", strict=True)


def test_namespace_and_single_image():
    assert "knet-system" in m.by_kind(DOCS, "Namespace")
    namespaced = [d for d in DOCS if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                                                       "IngressClass")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"knet-system"}
    images = {c["image"] for _, c in m.containers(DOCS)}
    assert images == {"localhost/knet:0.1.0"}  # kustomization.yaml's images: is the one variable


def test_daemonset_shape():
    spec = m.pod_spec(DOCS, "DaemonSet", "knet-node")
    assert spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni"]
    assert [c["name"] for c in spec["containers"]] == ["flannel-py", "knet-cni-agent", "kproxy", "netpolicy"]
    kproxy = next(c for c in spec["containers"] if c["name"] == "kproxy")
    assert "--mode=iptables" in m.argv(kproxy, DOCS)  # from the ConfigMap
    paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/run/flannel", "/run/knet", "/var/lib/cni", "/run/netns"} <= paths


def test_probes_and_requests():
    http = {"kproxy": 10249, "netpolicy": 9641, "kdns": 9153, "knet-ingress": 10254}
    for _, c in m.containers(DOCS):
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        if c["name"] == "install-cni":
            continue
        assert "readinessProbe" in c, c["name"]
        if c["name"] in http:
            for probe in ("livenessProbe", "readinessProbe"):
                get = c[probe]["httpGet"]
                assert get["path"] == "/healthz" and get["port"] == http[c["name"]], (c["name"], probe)
                assert any(a.endswith(f":{http[c['name']]}") for a in c["args"] if "metrics-bind" in a)


def test_kdns_service_is_tenth_address():
    svc = m.by_kind(DOCS, "Service")["kdns"]
    assert svc["spec"]["clusterIP"] == str(ipaddress.ip_network(SERVICE_CIDR)[10])
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} >= {(53, "UDP"), (53, "TCP")}


def test_ingress_pieces():
    assert m.by_kind(DOCS, "Service")["knet-ingress"]["spec"]["type"] == "LoadBalancer"
    assert "knet" in m.by_kind(DOCS, "IngressClass")
    args = m.argv(m.pod_spec(DOCS, "Deployment", "knet-ingress")["containers"][0], DOCS)
    assert "--ingress-class=knet" in args and "--publish-service=knet-system/knet-ingress" in args


def _parse(argv: list[str]):
    cmd, rest = argv[0], argv[1:]
    if cmd == "flannel-py":
        from flannel_py.daemon import build_parser
        return build_parser().parse_args(rest)
    module = {"kproxy": "kproxy.daemon", "netpolicy": "netpolicy.daemon", "kdns": "kdns.daemon",
              "knet-ingress": "ingress.daemon"}.get(cmd)
    if module is None:
        return None
    return __import__(module, fromlist=["parse_args"]).parse_args(rest)


@pytest.mark.parametrize("name", [c["name"] for _, c in m.containers(DOCS)])
def test_daemon_accepts_manifest_args(name):
    container = next(c for _, c in m.containers(DOCS) if c["name"] == name)
    argv = m.argv(container, DOCS)
    assert not any("$(" in a for a in argv), argv  # every $(VAR) is defined
    if argv[0] == "knet-install-cni":
        m.load_installer().build_parser().parse_args(argv[1:])
        return
    if argv[0] == "knet-cni-agent":
        assert argv[1:] == ["--socket=/run/knet/cni.sock"]
        return
    assert _parse(argv) is not None


def test_conflist_in_configmap():
    data = m.by_kind(DOCS, "ConfigMap")["knet-config"]["data"]
    conf = json.loads(data["cni-conflist.json"])
    main = conf["plugins"][0]
    assert main["type"] == "knet-cni" and main["subnetFile"] == "/run/flannel/subnet.env"
    assert main["agentSocket"] == "/run/knet/cni.sock"
    net = json.loads(data["net-conf.json"])
    assert net["Network"] == data["cluster-cidr"]
    from flannel_py.config import parse_config
    parse_config(data["net-conf.json"])
