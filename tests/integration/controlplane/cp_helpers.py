"""Helpers for the control-plane tests (a module of its own, not conftest, so the tests can
import it by a name no other test directory uses)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from knet import netns
from knet.kube import client
from lab import api


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class ControlPlaneLab:
    lab: api.Lab
    kubeconfig: str
    api: Any
    kubectl_path: str | None

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        if self.kubectl_path is None:
            pytest.skip("kubectl 1.20 (Debian kubernetes-client) is not available")
        proc = subprocess.run([self.kubectl_path, "--kubeconfig", self.kubeconfig, "--cache-dir",
                               os.path.join(self.lab.state_dir, "kubectl-cache"), *args],
                              capture_output=True, text=True, input=input, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stdout}\n{proc.stderr}")
        return proc

    def pods(self, selector: str, namespace: str = "default") -> list[dict]:
        return client.list_objects(self.api, "Pod", namespace, label_selector=selector)["items"]

    def slices(self, service: str, namespace: str = "default") -> list[dict]:
        return client.list_objects(self.api, "EndpointSlice", namespace,
                                   label_selector=f"kubernetes.io/service-name={service}")["items"]

    def ready_endpoints(self, service: str, namespace: str = "default") -> set[str]:
        return {e["addresses"][0] for s in self.slices(service, namespace) for e in s.get("endpoints") or []
                if e.get("conditions", {}).get("ready")}

    def http(self, from_ns: str, url: str) -> str:
        """curl from a lab namespace (never from the root one)."""
        r = netns.run(from_ns, ["curl", "-s", "-m", "3", url])
        return r.stdout if r.returncode == 0 else f"<curl exit {r.returncode}>"


def ready_ips(pods: list[dict]) -> set[str]:
    return {p["status"]["podIP"] for p in pods if p.get("status", {}).get("podIP")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))}
