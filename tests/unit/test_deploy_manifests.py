"""deploy/: renders with kustomize, validates against supported Kubernetes versions' schemas
(kubernetes-validate, strict: unknown fields fail), and carries the names an operator replacing
flannel + kube-proxy + CoreDNS knows (issues 10 and 16). Every daemon's command line in the
manifests is parsed by that daemon's own argument parser."""

from __future__ import annotations

import ipaddress
import json

import kubernetes_validate
import pytest
import yaml

from kdns import config as kdns_config
from kdns.forward import Upstream
from kproxy.config import parse
from kproxy.daemon import parser, settings_from
from tests.integration.deploy import manifests as m

DOCS = m.render()
SERVICE_CIDR = "10.96.0.0/12"
# The oldest and the newest minor release the Kubernetes project supports (it supports the last
# three) that kubernetes-validate (pinned in constraints.txt) has schemas for.
K8S_VERSIONS = ("1.35.0", "1.37.0")
DNS = {("ConfigMap", "coredns"), ("ServiceAccount", "kdns"), ("Deployment", "kdns"), ("Service", "kube-dns")}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_schema_valid(doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def test_validator_catches_a_typo():
    ds = json.loads(json.dumps(m.by_kind(DOCS, "DaemonSet")["knet-node"]))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)


def test_namespaces_and_single_image():
    assert "knet-system" in m.by_kind(DOCS, "Namespace")
    namespaced = {(d["kind"], d["metadata"]["name"]): d["metadata"]["namespace"] for d in DOCS
                  if d["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "IngressClass")}
    assert {k for k, ns in namespaced.items() if ns == "kube-system"} == DNS  # cluster DNS where CoreDNS was
    assert {ns for k, ns in namespaced.items() if k not in DNS} == {"knet-system"}
    images = {c["image"] for _, c in m.containers(DOCS)}
    assert images == {"localhost/knet:0.1.0"}  # kustomization.yaml's images: is the one variable


def test_daemonset_shape():
    spec = m.pod_spec(DOCS, "DaemonSet", "knet-node")
    assert spec["hostNetwork"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni"]
    assert [c["name"] for c in spec["containers"]] == ["flannel-py", "knet-cni-agent", "kproxy", "netpolicy"]
    kproxy = next(c for c in spec["containers"] if c["name"] == "kproxy")
    assert "--proxy-mode=iptables" in m.argv(kproxy, DOCS)  # from the ConfigMap
    paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert {"/opt/cni/bin", "/etc/cni/net.d", "/run/flannel", "/run/knet", "/var/lib/cni", "/run/netns"} <= paths


def _mount(container: dict, spec: dict, path: str) -> dict:
    """The volume mounted at `path` in the container."""
    mount = next(v for v in container["volumeMounts"] if v["mountPath"] == path)
    return next(v for v in spec["volumes"] if v["name"] == mount["name"])


def test_flannel_uses_the_kube_subnet_manager():
    spec = m.pod_spec(DOCS, "DaemonSet", "knet-node")
    flannel = next(c for c in spec["containers"] if c["name"] == "flannel-py")
    argv = m.argv(flannel, DOCS, node_name="worker7")
    assert "--kube-subnet-mgr" in argv and "--net-config-path=/etc/kube-flannel/net-conf.json" in argv
    assert m.container_env(flannel, DOCS, node_name="worker7")["NODE_NAME"] == "worker7"  # downward API
    assert _mount(flannel, spec, "/etc/kube-flannel")["configMap"]["name"] == "kube-flannel-cfg"
    rendered = json.dumps(DOCS)
    assert "etcd" not in rendered.replace("etcd subnet manager", "")  # no endpoint, no Secret, no flags
    assert not [v for v in spec["volumes"] if "secret" in v]


def test_probes_and_requests():
    http = {"netpolicy": 9641, "knet-ingress": 10254}  # kdns: CoreDNS's probes (below); kproxy: kube-proxy's
    for _, c in m.containers(DOCS):
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], c["name"]
        if c["name"] == "install-cni":
            continue
        assert "readinessProbe" in c, c["name"]
        if c["name"] == "kproxy":  # kube-proxy's ports, from its config file (test_kube_proxy_configuration)
            assert (c["livenessProbe"]["httpGet"]["port"], c["readinessProbe"]["httpGet"]["port"]) == (10256, 10249)
        if c["name"] in http:
            for probe in ("livenessProbe", "readinessProbe"):
                get = c[probe]["httpGet"]
                assert get["path"] == "/healthz" and get["port"] == http[c["name"]], (c["name"], probe)
                assert any(a.endswith(f":{http[c['name']]}") for a in c["args"] if "metrics-bind" in a)


def test_cluster_dns_names():
    svc = m.by_kind(DOCS, "Service")["kube-dns"]
    assert svc["metadata"]["namespace"] == "kube-system" and svc["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert svc["spec"]["clusterIP"] == str(ipaddress.ip_network(SERVICE_CIDR)[10])
    assert svc["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert {(p["name"], p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == \
        {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")}  # CoreDNS's Service
    dep = m.by_kind(DOCS, "Deployment")["kdns"]
    assert dep["spec"]["template"]["metadata"]["labels"]["k8s-app"] == "kube-dns"  # "allow DNS" policies match


def test_kdns_runs_from_kubeadms_corefile_where_coredns_has_it():
    spec = m.pod_spec(DOCS, "Deployment", "kdns")
    kdns = spec["containers"][0]
    volume = _mount(kdns, spec, "/etc/coredns")["configMap"]
    assert volume["name"] == "coredns" and volume["items"] == [{"key": "Corefile", "path": "Corefile"}]
    assert m.argv(kdns, DOCS) == ["kdns", "-conf", "/etc/coredns/Corefile"]  # CoreDNS's command line
    # kdns's own parser takes the shipped file: every plugin of kubeadm's Corefile is served.
    settings = kdns_config.from_corefile(m.corefile(DOCS), read=lambda path: [Upstream("192.0.2.53")])
    root, = settings.blocks
    assert root.kubernetes is not None and root.kubernetes.zone == "cluster.local"
    assert root.kubernetes.pods == "insecure" and root.kubernetes.ttl == 30
    assert root.errors and root.loop and root.loadbalance and root.cache is not None
    assert root.forwards[0].max_concurrent == 1000
    assert (settings.health, settings.ready, settings.prometheus, settings.lameduck) == (":8080", ":8181", ":9153", 5.0)
    # CoreDNS's probes, on the health and ready plugins' ports.
    assert kdns["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8080}
    assert kdns["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8181}


def test_kube_proxy_configuration(tmp_path):
    cm = m.by_kind(DOCS, "ConfigMap")["kube-proxy"]
    cfg = yaml.safe_load(cm["data"]["config.conf"])
    assert (cfg["apiVersion"], cfg["kind"]) == ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration")
    knet = m.by_kind(DOCS, "ConfigMap")["knet-config"]["data"]
    assert cfg["mode"] == knet["proxy-mode"] and cfg["clusterCIDR"] == knet["cluster-cidr"]
    assert cfg["metricsBindAddress"].endswith(":10249") and cfg["healthzBindAddress"].endswith(":10256")
    spec = m.pod_spec(DOCS, "DaemonSet", "knet-node")
    kproxy = next(c for c in spec["containers"] if c["name"] == "kproxy")
    assert _mount(kproxy, spec, "/var/lib/kube-proxy")["configMap"]["name"] == "kube-proxy"
    argv = m.argv(kproxy, DOCS, node_name="worker7")
    assert "--config=/var/lib/kube-proxy/config.conf" in argv and "--hostname-override=worker7" in argv
    # kproxy reads the ConfigMap's file as shipped, and takes the DaemonSet's flags over it.
    settings = parse(cm["data"]["config.conf"])
    assert settings.ignored == () and settings.mode == "iptables"
    file = tmp_path / "config.conf"
    file.write_text(cm["data"]["config.conf"])
    args = parser().parse_args([a.replace("/var/lib/kube-proxy/config.conf", str(file)) for a in argv[1:]])
    s = settings_from(args)
    assert (s.mode, s.node_name, s.cluster_cidr) == ("iptables", "worker7", "10.244.0.0/16")
    assert (s.metrics_bind_address, s.healthz_bind_address) == ("0.0.0.0:10249", "0.0.0.0:10256")
    assert {p["httpGet"]["port"] for p in (kproxy["livenessProbe"], kproxy["readinessProbe"])} == {10249, 10256}


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
    if cmd == "kproxy":  # the flags only: the file they name is the ConfigMap's (test_kube_proxy_configuration)
        from kproxy.daemon import parser
        return parser().parse_args(rest)
    module = {"netpolicy": "netpolicy.daemon", "kdns": "kdns.daemon",
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


def test_conflist_and_net_conf():
    data = m.by_kind(DOCS, "ConfigMap")["knet-config"]["data"]
    conf = json.loads(data["cni-conflist.json"])
    main = conf["plugins"][0]
    assert main["type"] == "knet-cni" and main["subnetFile"] == "/run/flannel/subnet.env"
    assert main["agentSocket"] == "/run/knet/cni.sock"
    net_conf = m.by_kind(DOCS, "ConfigMap")["kube-flannel-cfg"]["data"]["net-conf.json"]
    assert json.loads(net_conf)["Network"] == data["cluster-cidr"]
    from flannel_py.config import parse_config
    parse_config(net_conf)
