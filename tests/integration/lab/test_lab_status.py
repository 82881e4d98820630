"""`knet lab status` shows every component per node with state, restarts and health, and the pods
of the system namespaces; `knet lab logs` prints (and follows) a component's or a pod's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from knet.kube import client
from lab import api
from lab.bringup import controlplane

pytestmark = pytest.mark.integration
KNET = os.path.join(os.path.dirname(sys.executable), "knet")


def knet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KNET, *args], capture_output=True, text=True, timeout=120)


def wait_for(cond: Callable[[], object], what: str, timeout: float = 60.0) -> object:
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.2)
    return got


def components(lab: api.Lab) -> dict[tuple[str, str], dict]:
    r = knet("lab", "status", "--name", lab.name, "--json")
    assert r.returncode == 0, r.stderr
    return {(c["node"], c["name"]): c for c in json.loads(r.stdout)["components"]}


def test_status_shows_every_component_and_system_pods(kube_lab: api.Lab) -> None:
    got = components(kube_lab)
    for key in (("ctl", "etcd"), ("ctl", "apiserver"), ("ctl", "controllers")):
        assert got[key]["state"] == "running" and got[key]["health"] == "ok", got[key]
    for node in ("node1", "node2", "node3"):
        for name in ("node-agent", "cni-agent", "flannel"):
            assert got[(node, name)]["state"] == "running", got[(node, name)]
    assert got[("ctl", "kdns")]["state"] == "running"
    table = knet("lab", "status", "--name", kube_lab.name).stdout
    assert "COMPONENT" in table and "RESTARTS" in table and "HEALTH" in table

    # A pod of kube-system, as a DaemonSet's would be: listed with its state and restarts, its log readable.
    kubeconfig = controlplane.kubeconfig_path(kube_lab.name, kube_lab.root)
    controlplane.loopback_only(kubeconfig)
    c = client.new_api_client(kubeconfig)
    try:
        client.create(c, "Pod", {"metadata": {"name": "status-probe"}, "spec": {
            "nodeName": "node2", "containers": [{"name": "main", "image": "busybox",
                                                 "command": ["sh", "-c", "echo hello-from-the-pod; sleep 3600"]}]}},
                      "kube-system")
        pod = wait_for(lambda: (got := components(kube_lab).get(("node2", "kube-system/status-probe")))
                       and got["state"] == "Running" and got, "the pod running in the status")
        assert pod["kind"] == "pod" and pod["restarts"] == 0 and pod["health"] == "ready"
        wait_for(lambda: "hello-from-the-pod" in knet("lab", "logs", "--name", kube_lab.name,
                                                      "kube-system/status-probe").stdout, "the pod's log")
    finally:
        client.delete(c, "Pod", "status-probe", "kube-system")
        c.close()


def test_logs_tail_follow_and_errors(kube_lab: api.Lab) -> None:
    r = knet("lab", "logs", "--name", kube_lab.name, "node-agent", "--node", "node1", "--tail", "3")
    assert r.returncode == 0 and 0 < len(r.stdout.splitlines()) <= 3, r.stderr
    r = knet("lab", "logs", "--name", kube_lab.name, "node-agent")
    assert r.returncode == 1 and "say which with --node" in r.stderr
    r = knet("lab", "logs", "--name", kube_lab.name, "nonesuch")
    assert r.returncode == 1 and "no component 'nonesuch'" in r.stderr and "controllers" in r.stderr
    log = os.path.join(kube_lab.state_dir, "controllers.log")
    follower = subprocess.Popen([KNET, "lab", "logs", "--name", kube_lab.name, "controllers", "-f", "--tail", "0"],
                                stdout=subprocess.PIPE, text=True)
    marker = f"follow-marker-{os.getpid()}"
    seen = threading.Event()

    def append() -> None:  # until the follower shows it (it starts at the file's end, whenever that is)
        deadline = time.monotonic() + 60
        while not seen.is_set() and time.monotonic() < deadline:
            with open(log, "a") as f:
                f.write(marker + "\n")
            seen.wait(0.5)
        follower.terminate()  # unblocks the reader below either way

    writer = threading.Thread(target=append, daemon=True)
    writer.start()
    try:
        assert follower.stdout is not None
        for line in follower.stdout:
            if marker in line:
                seen.set()
                break
        assert seen.is_set(), "knet lab logs -f did not show a line appended to the log"
    finally:
        seen.set()
        writer.join(10)
        follower.wait(10)
