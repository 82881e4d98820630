"""vagrant/: shellcheck on every provisioning script, `ruby -c` on the Vagrantfile, and the
overlay the control plane applies renders and validates (VMs cannot boot here: see docs/install.md)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml

from tests.integration.deploy import manifests as m

VAGRANT = os.path.join(m.REPO, "vagrant")
SCRIPTS = sorted(glob.glob(os.path.join(VAGRANT, "scripts", "*.sh")))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} missing: scripts/install-deps installs it"
    return path


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
    r = subprocess.run([_need("shellcheck"), "-x", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(script) as f:
        assert "set -euo pipefail" in f.read()


def test_vagrantfile_syntax():
    r = subprocess.run([_need("ruby"), "-c", os.path.join(VAGRANT, "Vagrantfile")], capture_output=True, text=True)
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stdout + r.stderr


def test_vagrantfile_parameters_at_top():
    with open(os.path.join(VAGRANT, "Vagrantfile")) as f:
        head = f.read().split("Vagrant.configure")[0]
    for name in ("WORKERS", "PROXY_MODE", "BOX", "MEMORY", "192.168.33", "10.244.0.0/16", "10.96.0.0/12"):
        assert name in head


@pytest.mark.parametrize("mode", ["iptables", "userspace", "ebpf"])
def test_overlay_renders(tmp_path, mode):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (its built-in kustomize) is not installed")
    out = tmp_path / "overlay"
    subprocess.run([os.path.join(VAGRANT, "scripts", "render-overlay.sh"), str(out), mode, "192.168.33.10", "eth1",
                    "registry.example/knet:1.2"], check=True, capture_output=True)
    docs = [d for d in yaml.safe_load_all(subprocess.run(["kubectl", "kustomize", str(out)], check=True,
                                                         capture_output=True, text=True).stdout) if d]
    for d in docs:
        kubernetes_validate.validate(d, "1.37.0", strict=True)
    cm = m.by_kind(docs, "ConfigMap")["knet-config"]["data"]
    assert (cm["proxy-mode"], cm["iface"]) == (mode, "eth1")
    assert "cni-conflist.json" in cm  # merged, not replaced
    assert {c["image"] for _, c in m.containers(docs)} == {"registry.example/knet:1.2"}
    kproxy = next(c for _, c in m.containers(docs) if c["name"] == "kproxy")
    assert f"--proxy-mode={mode}" in m.argv(kproxy, docs)
