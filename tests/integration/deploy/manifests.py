"""Reading deploy/ as the cluster would: render with kustomize (kubectl's built-in), index the
objects, and turn a container's command + args into the argv the kubelet would exec (`$(VAR)`
expanded from env / ConfigMaps / the downward API). Shared by the unit and integration tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DEPLOY = os.path.join(REPO, "deploy")
FILES = ("namespace.yaml", "config.yaml", "rbac.yaml", "node-daemonset.yaml", "kdns.yaml", "ingress.yaml")


def load_installer():
    """deploy/image/knet_install_cni.py as a module (the image installs it as knet-install-cni)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("knet_install_cni", os.path.join(DEPLOY, "image",
                                                                                   "knet_install_cni.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def render() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/` when kubectl is there (also proves kustomization.yaml), else the
    listed files with the image substituted as kustomization.yaml's `images:` says."""
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", DEPLOY], capture_output=True, text=True, check=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    with open(os.path.join(DEPLOY, "kustomization.yaml")) as f:
        img = yaml.safe_load(f)["images"][0]
    ref = f"{img['newName']}:{img['newTag']}"
    docs = []
    for name in FILES:
        with open(os.path.join(DEPLOY, name)) as f:
            text = f.read()
        docs += [d for d in yaml.safe_load_all(re.sub(r"image: knet\b", f"image: {ref}", text)) if d]
    return docs


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(docs: list[dict], kind: str, name: str) -> dict:
    return by_kind(docs, kind)[name]["spec"]["template"]["spec"]


def container_env(container: dict, docs: list[dict], node_name: str = "node1") -> dict[str, str]:
    cms = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        src = e["valueFrom"]
        if "configMapKeyRef" in src:
            ref = src["configMapKeyRef"]
            env[e["name"]] = cms[ref["name"]]["data"][ref["key"]]
        elif src.get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[e["name"]] = node_name
        else:
            raise AssertionError(f"unexpected env source {src}")
    return env


def argv(container: dict, docs: list[dict], node_name: str = "node1") -> list[str]:
    """command + args with $(VAR) expanded the way the kubelet does (unknown references stay)."""
    env = container_env(container, docs, node_name)

    def expand(s: str) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), s)

    return [expand(a) for a in container.get("command", []) + container.get("args", [])]


def containers(docs: list[dict]) -> list[tuple[str, dict]]:
    """(workload name, container) for every container and init container."""
    out = []
    for kind in ("DaemonSet", "Deployment"):
        for name, obj in by_kind(docs, kind).items():
            spec = obj["spec"]["template"]["spec"]
            out += [(name, c) for c in spec.get("initContainers", []) + spec["containers"]]
    return out


def corefile(docs: list[dict]) -> str:
    """The Corefile of the kube-system/coredns ConfigMap."""
    return by_kind(docs, "ConfigMap")["coredns"]["data"]["Corefile"]


def corefile_kubernetes(docs: list[dict]) -> tuple[list[str], str]:
    """(zones, pods mode) of the Corefile's `kubernetes` plugin (pods: CoreDNS's default "disabled")."""
    text = corefile(docs)
    zones = re.search(r"^\s*kubernetes\s+([^{\n]*)", text, re.M)
    pods = re.search(r"^\s*pods\s+(\w+)", text, re.M)
    return (zones.group(1).split() if zones else []), (pods.group(1) if pods else "disabled")


def corefile_pods_mode(docs: list[dict]) -> str:
    return corefile_kubernetes(docs)[1]
