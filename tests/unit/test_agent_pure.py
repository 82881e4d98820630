"""Node agent pure logic: what an image runs, service env vars, resolv.conf/hosts, probe
thresholds and timing, pod status and phase."""

from __future__ import annotations

from knet.kube.models import Container, Pod, Probe, Service
from lab.agent import images, podenv, status
from lab.agent.containers import Backoff
from lab.agent.probes import LIVENESS, READINESS, Tracker, resolve_port

PY = "/venv/bin/python"


def ctr(**kw) -> Container:
    return Container.model_validate({"name": "c", **kw})


def test_images() -> None:
    argv = images.container_argv(ctr(image="registry.k8s.io/e2e-test-images/agnhost:2.39",
                                     args=["netexec", "--http-port=8080", "--udp-port=8081"]), PY)
    assert argv == [PY, "-m", "lab.workloads", "netexec", "--http-port=8080", "--udp-port=8081"]
    argv = images.container_argv(ctr(image="agnhost:2.39", command=["/agnhost", "serve-hostname"]), PY)
    assert argv == [PY, "-m", "lab.workloads", "serve-hostname"]
    assert images.container_argv(ctr(image="k8s.gcr.io/serve_hostname"), PY)[3] == "serve-hostname"
    argv = images.container_argv(ctr(image="jonbaier/node-express-info:0.2",
                                     ports=[{"containerPort": 80}, {"containerPort": 8888},
                                            {"containerPort": 53, "protocol": "UDP"}]), PY)
    assert argv == [PY, "-m", "lab.workloads", "http", "--version", "0.2", "--image",
                    "jonbaier/node-express-info:0.2", "--port", "80", "--port", "8888", "--udp-port", "53"]
    assert images.container_argv(ctr(image="nginx"), PY)[-2:] == ["--port", "80"]
    assert images.container_argv(ctr(image="busybox", command=["sleep", "3600"]), PY) == ["sleep", "3600"]
    assert images.container_argv(ctr(image="busybox:22"), PY) == ["sh", "-c", "exit 0"]  # crash-loops
    assert images.version_of("localhost:5000/whale:v2") == "v2"
    assert images.version_of("nginx@sha256:abc") == "latest"


def svc(name: str, ns: str = "default", ip: str = "10.96.0.20", ports: list | None = None) -> Service:
    return Service.model_validate({"metadata": {"name": name, "namespace": ns},
                                   "spec": {"clusterIP": ip, "ports": ports or [{"port": 80}]}})


def test_service_env_vars_docker_links() -> None:
    ports = [{"name": "http", "port": 80}, {"name": "admin", "port": 8888, "protocol": "UDP"}]
    services = [svc("node-js", ports=ports),
                svc("kubernetes", ip="10.96.0.1", ports=[{"name": "https", "port": 443}]),
                svc("elsewhere", ns="test"), svc("headless", ip="None")]
    env = podenv.service_env(services, "default")
    assert env["NODE_JS_SERVICE_HOST"] == "10.96.0.20" and env["NODE_JS_SERVICE_PORT"] == "80"
    assert env["NODE_JS_SERVICE_PORT_ADMIN"] == "8888"
    assert env["NODE_JS_PORT"] == "tcp://10.96.0.20:80"
    assert env["NODE_JS_PORT_8888_UDP"] == "udp://10.96.0.20:8888"
    assert env["NODE_JS_PORT_80_TCP_ADDR"] == "10.96.0.20" and env["NODE_JS_PORT_80_TCP_PROTO"] == "tcp"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    assert not any(k.startswith(("ELSEWHERE", "HEADLESS")) for k in env)
    only_master = podenv.service_env(services, "test", enable_links=False)
    assert set(k.split("_")[0] for k in only_master) == {"KUBERNETES"}


def pod(**spec) -> Pod:
    return Pod.model_validate({"metadata": {"name": "web-1", "namespace": "prod", "uid": "u1", "labels": {"a": "b"}},
                               "spec": {"containers": [{"name": "c"}], "nodeName": "node1", **spec}})


def test_container_env() -> None:
    c = ctr(env=[{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(NODE_JS_SERVICE_HOST)-$$(A)"},
                 {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                 {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                 {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['a']"}}}])
    env = podenv.container_env(c, pod(), {"NODE_JS_SERVICE_HOST": "10.96.0.20"}, "10.244.1.5", "192.168.33.11")
    assert env["B"] == "x-10.96.0.20-$(A)"
    assert (env["ME"], env["IP"], env["L"], env["HOSTNAME"]) == ("web-1", "10.244.1.5", "b", "web-1")


def test_resolv_conf_and_hosts() -> None:
    assert podenv.dns_service_ip("10.96.0.0/12") == "10.96.0.10"
    assert podenv.dns_service_ip("10.0.0.0/16") == "10.0.0.10"
    text = podenv.resolv_conf(pod(), "10.96.0.10")
    assert text == ("nameserver 10.96.0.10\nsearch prod.svc.cluster.local svc.cluster.local cluster.local\n"
                    "options ndots:5\n")
    assert podenv.resolv_conf(pod(dnsPolicy="Default"), "10.96.0.10") is None
    custom = podenv.resolv_conf(pod(dnsPolicy="None", dnsConfig={"nameservers": ["1.1.1.1"], "searches": ["x.y"],
                                                                 "options": [{"name": "ndots", "value": "2"}]}), "")
    assert custom == "nameserver 1.1.1.1\nsearch x.y\noptions ndots:2\n"
    hosts = podenv.hosts_file(pod(hostname="whaleset-1", subdomain="sayhey-svc"), "10.244.1.5")
    assert "10.244.1.5\twhaleset-1.sayhey-svc.prod.svc.cluster.local\twhaleset-1" in hosts


def test_probe_tracker_thresholds_and_timing() -> None:
    probe = Probe.model_validate({"httpGet": {"port": 80}, "initialDelaySeconds": 5, "periodSeconds": 2,
                                  "failureThreshold": 3, "successThreshold": 2})
    r = Tracker(probe, READINESS, started=100.0)
    assert r.result is False and not r.due(104.9) and r.due(105.0)
    assert not r.record(True, 105.0)  # one success is not enough (successThreshold 2)
    assert r.next_due() == 107.0
    assert r.record(True, 107.0) and r.result is True
    assert not r.record(False, 109.0) and not r.record(False, 111.0)
    assert r.record(False, 113.0) and r.result is False  # the third consecutive failure
    live = Tracker(probe, LIVENESS, started=0.0)
    assert live.result is True
    live.record(False, 5)
    live.record(True, 7)  # a success resets the failure count
    live.record(False, 9)
    live.record(False, 11)
    assert live.result is True


def test_probe_port_by_name() -> None:
    c = ctr(ports=[{"name": "www", "containerPort": 8080}])
    assert resolve_port("www", c) == 8080 and resolve_port(81, c) == 81 and resolve_port("nope", c) is None


def test_crashloop_backoff() -> None:
    b = Backoff(initial=1, maximum=8, reset_after=10)
    assert [b.on_exit(0.1) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.on_exit(60) == 1


def test_pod_status_and_phase() -> None:
    running = status.ContainerState("c", "nginx", running=True, pid=42, started_at="t", ready=True, started=True,
                                    ever_started=True)
    st = status.pod_status(pod(), [running], True, ["10.244.1.5"], "192.168.33.11", "t0")
    assert st["phase"] == "Running" and st["podIP"] == "10.244.1.5" and st["podIPs"] == [{"ip": "10.244.1.5"}]
    assert st["hostIP"] == "192.168.33.11"
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Initialized": "True", "Ready": "True", "ContainersReady": "True", "PodScheduled": "True"}
    cs = st["containerStatuses"][0]
    assert cs["ready"] and cs["state"] == {"running": {"startedAt": "t"}} and cs["containerID"] == "knet://42"
    unready = status.ContainerState("c", "nginx", running=True, ready=False, ever_started=True, restart_count=2)
    st2 = status.pod_status(pod(), [unready], True, ["10.244.1.5"], None, None)
    assert {c["type"]: c["status"] for c in st2["conditions"]}["Ready"] == "False"
    assert st2["containerStatuses"][0]["restartCount"] == 2
    assert status.comparable(st) != status.comparable(st2)
    assert status.phase("Always", [status.ContainerState("c", "x")], True) == "Pending"
    done = status.ContainerState("c", "x", ever_started=True, terminated={"exitCode": 0})
    assert status.phase("Never", [done], True) == "Succeeded"
    failed = status.ContainerState("c", "x", ever_started=True, terminated={"exitCode": 1})
    assert status.phase("Never", [failed], True) == "Failed"
