"""The material's kubectl workflows against the lab (issue 21): exec (stdin, exit codes, a
terminal), attach (`kubectl run -it`), cp, port-forward, logs (--previous, --tail, --timestamps,
-f), top, events, and cAdvisor's network counters, through this machine's kubectl over
WebSocket and over SPDY (the feature gates that force it), Debian's kubectl 1.20 (SPDY only)
and the official Python client's stream API.

Everything goes through the lab API server's host URL (127.0.0.1): the proxy to the node agents
runs inside the lab. kubectl port-forward listens on 127.0.0.1 of the root namespace (loopback only).
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from knet.kube import client
from lab.bringup import controlplane
from tests.integration.controlplane.cp_helpers import ControlPlaneLab, wait_for

pytestmark = pytest.mark.integration
NS = "default"
SPDY_ENV = {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false", "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false"}


def _version(path: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=30)
        v = json.loads(out.stdout)["clientVersion"]
        return int(v["major"]), int(re.sub(r"\D.*", "", v["minor"]))
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return None


@dataclass
class Kubectl:
    """One way of running kubectl: its binary and the environment that picks its protocols."""
    path: str
    env: dict[str, str]
    kubeconfig: str
    cache: str

    def argv(self, *args: str) -> list[str]:
        return [self.path, "--kubeconfig", self.kubeconfig, "--cache-dir", self.cache, *args]

    def run(self, *args: str, input: str | None = None, timeout: float = 90,
            check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, input=input, timeout=timeout,
                              env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        return proc

    def in_terminal(self, *args: str, input: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """Run it on a pseudo-terminal (`script`), as a user at a terminal does `-it`."""
        command = " ".join(f"'{a}'" for a in self.argv(*args))
        return subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True,
                              input=input, timeout=timeout, env={**os.environ, **self.env})


@pytest.fixture(scope="module")
def flavours(cp: ControlPlaneLab) -> dict[str, Kubectl]:
    """websocket / spdy: this machine's kubectl (>= 1.30 speaks both); kubectl-1.20: Debian's."""
    cache = os.path.join(cp.lab.state_dir, "kubectl-cache")
    out: dict[str, Kubectl] = {}
    modern = shutil.which("kubectl")
    if modern and (_version(modern) or (0, 0)) >= (1, 30):
        out["websocket"] = Kubectl(modern, {}, cp.kubeconfig, cache)
        out["spdy"] = Kubectl(modern, SPDY_ENV, cp.kubeconfig, cache)
    if cp.kubectl_path and _version(cp.kubectl_path) == (1, 20):
        out["kubectl-1.20"] = Kubectl(cp.kubectl_path, {}, cp.kubeconfig, cache)
    return out


def read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """The next line of a process's stdout, within `timeout` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from {what} within {timeout}s")
    return proc.stdout.readline()


def flavour(flavours: dict[str, Kubectl], name: str) -> Kubectl:
    if name not in flavours:
        pytest.skip(f"no kubectl for the {name} path on this machine")
    return flavours[name]


@dataclass
class Pods:
    web: str
    web_ip: str
    client: str
    web_node: str


def _pod(name: str, container: dict, **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 1, **spec}}


def running(cp: ControlPlaneLab, name: str, restarts: int = 0) -> dict:
    def check() -> dict | None:
        pod = client.get(cp.api, "Pod", name, NS) or {}
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        ok = statuses and all("running" in s.get("state", {}) and s.get("restartCount", 0) >= restarts
                              for s in statuses)
        return pod if ok else None
    return wait_for(check, 60, f"pod {name} running (restarts >= {restarts})")


@pytest.fixture(scope="module")
def pods(cp: ControlPlaneLab) -> Iterator[Pods]:
    web, cl = "ks-web", "ks-client"
    client.create(cp.api, "Pod", _pod(web, {"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}), NS)
    client.create(cp.api, "Pod", _pod(cl, {"name": "shell", "image": "busybox",
                                           "command": ["sleep", "3600"]}), NS)
    try:
        pod = running(cp, web)
        running(cp, cl)
        yield Pods(web, pod["status"]["podIP"], cl, pod["spec"]["nodeName"])
    finally:
        for name in (web, cl):
            client.delete(cp.api, "Pod", name, NS, grace_period_seconds=0)


# --- exec ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("way", ["websocket", "spdy", "kubectl-1.20"])
def test_exec_with_stdin_output_streams_and_exit_code(cp: ControlPlaneLab, pods: Pods, flavours: dict,
                                                      way: str) -> None:
    kc = flavour(flavours, way)
    got = kc.run("exec", pods.client, "--", "curl", "-s", "-m", "5", pods.web_ip)
    assert got.stdout.startswith(pods.web), got.stdout  # the server answers "<hostname> <version>"
    r = kc.run("exec", "-i", pods.client, "--", "sh", "-c", "tr a-z A-Z; echo to-stderr >&2; exit 3",
               input="hello from stdin\n", check=False)
    assert r.stdout == "HELLO FROM STDIN\n"
    assert "to-stderr" in r.stderr
    assert r.returncode == 3 and "command terminated with exit code 3" in r.stderr
    missing = kc.run("exec", pods.client, "--", "no-such-command", check=False)
    assert missing.returncode != 0 and "executable file not found" in missing.stderr


@pytest.mark.parametrize("way", ["websocket", "spdy"])
def test_exec_on_a_terminal(cp: ControlPlaneLab, pods: Pods, flavours: dict, way: str) -> None:
    kc = flavour(flavours, way)
    r = kc.in_terminal("exec", "-it", pods.client, "--", "sh", input="tty; echo rc-$((40+2)); exit 5\n")
    assert "/dev/pts/" in r.stdout and "rc-42" in r.stdout
    assert r.returncode == 5, r.stdout


def test_run_it_attaches_to_a_terminal_container_and_rm_deletes_it(cp: ControlPlaneLab, flavours: dict) -> None:
    kc = flavour(flavours, "websocket")
    name = "ks-run-" + uuid.uuid4().hex[:6]
    # The shell reads its input only once attached: the input waits in the pipe meanwhile.
    r = kc.in_terminal("run", "-it", "--rm", name, "--image=busybox", "--restart=Never", "--", "sh",
                       input="echo inside $HOSTNAME; exit 0\n", timeout=120)
    assert f"inside {name}" in r.stdout, r.stdout
    wait_for(lambda: client.get(cp.api, "Pod", name, NS) is None, 30, f"{name} deleted by --rm")


@pytest.mark.parametrize("way", ["websocket", "spdy"])
def test_run_i_with_piped_input_ends_with_the_input(cp: ControlPlaneLab, flavours: dict, way: str) -> None:
    """`... | kubectl run -i --rm`: the container reads what is piped in, sees its end (kubectl sets
    stdinOnce), finishes, and the pod goes."""
    kc = flavour(flavours, way)
    name = "ks-cat-" + uuid.uuid4().hex[:6]
    r = kc.run("run", "-i", "--rm", name, "--image=busybox", "--restart=Never", "--", "sh", "-c",
               "tr a-z A-Z; echo input ended", input="piped in\nsecond line\n", timeout=120)
    assert "PIPED IN\nSECOND LINE\ninput ended\n" in r.stdout, (r.stdout, r.stderr)
    wait_for(lambda: client.get(cp.api, "Pod", name, NS) is None, 30, f"{name} deleted by --rm")


def test_cp_into_and_out_of_a_pod(cp: ControlPlaneLab, pods: Pods, flavours: dict) -> None:
    kc = flavour(flavours, "websocket")
    # The lab's pods see the host's file system (they run host binaries): a private directory.
    remote = f"/tmp/knet-cp-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as local:
        src = os.path.join(local, "in.txt")
        with open(src, "w") as f:
            f.write("copied through exec and tar\n")
        try:
            kc.run("exec", pods.client, "--", "mkdir", remote)
            kc.run("cp", src, f"{pods.client}:{remote}/in.txt")
            copied = kc.run("exec", pods.client, "--", "cat", f"{remote}/in.txt").stdout
            assert copied == "copied through exec and tar\n"
            kc.run("cp", f"{pods.client}:{remote}/in.txt", os.path.join(local, "back.txt"))
            with open(os.path.join(local, "back.txt")) as f:
                assert f.read() == "copied through exec and tar\n"
        finally:
            shutil.rmtree(remote, ignore_errors=True)


# --- port-forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("way", ["websocket", "spdy", "kubectl-1.20"])
def test_port_forward_carries_http_requests(cp: ControlPlaneLab, pods: Pods, flavours: dict, way: str) -> None:
    kc = flavour(flavours, way)
    proc = subprocess.Popen(kc.argv("port-forward", f"pod/{pods.web}", ":80"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **kc.env})
    try:
        line = ""
        while "Forwarding from 127.0.0.1:" not in line:
            line = read_line(proc, 60, "kubectl port-forward")
            if not line and proc.poll() is not None:
                raise AssertionError(f"kubectl port-forward exited: {proc.stderr.read() if proc.stderr else ''}")
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line)[1])  # type: ignore[index]
        for _ in range(3):  # each request is a connection of its own through the tunnel
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as resp:
                assert resp.read().decode().startswith(pods.web)
    finally:
        proc.terminate()
        proc.wait(10)


# --- logs ---------------------------------------------------------------------------------------

def test_logs_of_a_restarted_container_previous_tail_timestamps_follow(cp: ControlPlaneLab,
                                                                       flavours: dict) -> None:
    kc = flavour(flavours, "websocket" if "websocket" in flavours else "kubectl-1.20")
    name = "ks-ticker"
    script = ("echo instance-$(cat /proc/sys/kernel/random/uuid); i=0; "
              "while true; do i=$((i+1)); echo tick $i; sleep 0.3; done")
    client.create(cp.api, "Pod", _pod(name, {"name": "tick", "image": "busybox", "command": ["sh", "-c", script]}), NS)
    try:
        pod = running(cp, name)

        def instance_line() -> str | None:
            m = re.search(r"instance-\S+", kc.run("logs", name).stdout)
            return m[0] if m else None
        first = wait_for(instance_line, 30, "the first instance's line")
        tail = kc.run("logs", name, "--tail=2", "--timestamps").stdout.splitlines()
        assert len(tail) == 2, tail
        assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z tick \d+$", ln) for ln in tail), tail
        # --since: the ticks of the last second, not the first line (once it is older than that)
        wait_for(lambda: (out := kc.run("logs", name, "--since=1s").stdout) and "tick" in out
                 and "instance-" not in out, 30, "logs --since=1s without the first line")
        follow = subprocess.Popen(kc.argv("logs", "-f", "--tail=0", name), stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, **kc.env})
        try:
            assert read_line(follow, 30, "kubectl logs -f").startswith("tick ")  # new lines as they come
        finally:
            follow.terminate()
            follow.wait(10)
        # the container dies (its process killed): the agent restarts it; the old output stays as --previous
        pid = int(pod["status"]["containerStatuses"][0]["containerID"].split("//")[1])
        os.kill(pid, 9)
        running(cp, name, restarts=1)
        second = wait_for(lambda: (line := instance_line()) != first and line, 30, "the new instance's line")
        assert second != first
        previous = kc.run("logs", name, "--previous").stdout
        assert first in previous and second not in previous
    finally:
        client.delete(cp.api, "Pod", name, NS, grace_period_seconds=0)


# --- top and network counters -------------------------------------------------------------------

def counters(kc: Kubectl, node: str, pod: str) -> dict[str, float]:
    """The pod's eth0 counters from its node agent's cAdvisor metrics (through nodes/proxy)."""
    text = kc.run("get", "--raw", f"/api/v1/nodes/{node}/proxy/metrics/cadvisor").stdout
    pattern = r'^(container_network_\w+)\{interface="eth0",namespace="default",pod="' + pod + r'"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def test_network_counters_grow_with_traffic_and_top_shows_the_pods(cp: ControlPlaneLab, pods: Pods,
                                                                   flavours: dict) -> None:
    kc = flavour(flavours, "websocket")
    before = counters(kc, pods.web_node, pods.web)
    assert set(before) >= {"container_network_receive_bytes_total", "container_network_transmit_bytes_total",
                           "container_network_receive_errors_total", "container_network_transmit_errors_total",
                           "container_network_receive_packets_dropped_total",
                           "container_network_transmit_packets_dropped_total"}, before
    kc.run("exec", pods.client, "--", "sh", "-c",
           f"for i in $(seq 20); do curl -s -m 5 {pods.web_ip} >/dev/null; done")
    after = counters(kc, pods.web_node, pods.web)
    # 20 requests of well over 50 bytes each arrived, and 20 answers left
    assert after["container_network_receive_bytes_total"] - before["container_network_receive_bytes_total"] > 20 * 50
    assert after["container_network_transmit_bytes_total"] - before["container_network_transmit_bytes_total"] > 20 * 50

    def top() -> dict[str, tuple[str, str]]:
        r = kc.run("top", "pods", check=False)
        return {f[0]: (f[1], f[2]) for line in r.stdout.splitlines()[1:] if len(f := line.split()) >= 3}
    shown = wait_for(lambda: (t := top()) and pods.web in t and pods.client in t and t, 60, "kubectl top pods")
    assert re.fullmatch(r"\d+m", shown[pods.web][0]) and re.fullmatch(r"\d+Mi", shown[pods.web][1])
    nodes = kc.run("top", "nodes").stdout
    assert pods.web_node in nodes


# --- the Python client --------------------------------------------------------------------------

def test_python_client_stream_exec_and_portforward(cp: ControlPlaneLab, pods: Pods) -> None:
    from kubernetes import client as k8s
    from kubernetes.stream import portforward, stream
    from kubernetes.stream.ws_client import WSClient, get_websocket_url

    core = k8s.CoreV1Api(cp.api)
    out = stream(core.connect_get_namespaced_pod_exec, pods.client, NS,
                 command=["sh", "-c", "echo hi; echo ho >&2"], stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "hi\nho\n"
    resp = stream(core.connect_get_namespaced_pod_exec, pods.client, NS, command=["sh", "-c", "cat; exit 4"],
                  stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False)
    resp.write_stdin("through v5\n")
    resp.close_channel(0)  # v5's CLOSE: stdin ended
    resp.run_forever(timeout=30)
    assert resp.read_stdout() == "through v5\n" and resp.returncode == 4
    # v4 (an older server's protocol): the exit status as a JSON Status on the error channel
    cfg = cp.api.configuration
    url = get_websocket_url(f"{cfg.host}/api/v1/namespaces/{NS}/pods/{pods.client}/exec",
                            [("command", ["sh", "-c", "echo v4; exit 6"]), ("stdout", "true"), ("stderr", "true")])
    token = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
    v4 = WSClient(cfg, url, {"authorization": token, "sec-websocket-protocol": "v4.channel.k8s.io"},
                  capture_all=True)
    v4.run_forever(timeout=30)
    assert v4.subprotocol == "v4.channel.k8s.io" and v4.read_stdout() == "v4\n" and v4.returncode == 6

    pf = portforward(core.connect_get_namespaced_pod_portforward, pods.web, NS, ports="80")
    sock = pf.socket(80)
    sock.setblocking(True)
    sock.settimeout(30)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200") and pods.web.encode() in data
    assert pf.error(80) is None


def test_exec_logs_and_attach_survive_an_agent_restart(cp: ControlPlaneLab, pods: Pods, flavours: dict) -> None:
    """The agent restarts (pods keep running): the new one serves the adopted containers' logs
    (kept by their log writers meanwhile) and runs commands in them with their environment."""
    kc = flavour(flavours, "websocket")
    before = kc.run("logs", pods.web).stdout
    assert before, "the web server logs its requests"
    controlplane.restart_agent(cp.lab.name, pods.web_node)
    out = wait_for(lambda: (r := kc.run("exec", pods.web, "--", "sh", "-c", "echo $HOSTNAME", check=False))
                   .returncode == 0 and r.stdout, 60, "exec through the new agent")
    assert out == f"{pods.web}\n"
    kc.run("exec", pods.client, "--", "curl", "-s", "-m", "5", pods.web_ip)
    after = wait_for(lambda: (text := kc.run("logs", pods.web).stdout).count("GET /") > before.count("GET /")
                     and text, 30, "the request after the restart in the log")
    assert after.startswith(before)
