"""`knet`: a lab failure a user can act on is one line on stderr and exit 1; a bug keeps its
traceback; the lab's errors share one base."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest

import lab.cli
from knet_cli import main as cli
from lab.bringup import controlplane, dns, etcd, ingress, netpol, overlay, proxy
from lab.errors import LabError, NoSuchLab
from lab.net import cniexec, pods, topology


def test_every_lab_error_shares_the_base():
    for cls in (topology.PlanError, pods.PodError, cniexec.CniExecError, NoSuchLab, controlplane.ControlPlaneError,
                etcd.EtcdError, overlay.OverlayError, dns.DnsError, proxy.ProxyError, netpol.NetpolError,
                ingress.IngressError):
        assert issubclass(cls, LabError), cls
    assert issubclass(NoSuchLab, LookupError) and issubclass(topology.PlanError, ValueError)


def test_a_lab_error_is_one_line(monkeypatch, capsys):
    def fails(_args):
        raise pods.PodError("pod default/x already exists on node1")

    monkeypatch.setattr(lab.cli, "cmd_status", fails)
    assert cli.main(["lab", "status", "--name", "kt0000"]) == 1
    assert capsys.readouterr().err == "knet: pod default/x already exists on node1\n"


def test_a_missing_lab_is_one_line(capsys):
    assert cli.main(["lab", "status", "--name", "ktnolab"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("knet: lab ktnolab does not exist") and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["--no-control-plane", "--subnet-manager", "kube"], "knet: the kube subnet manager needs the control plane"),
    (["--subnet-manager", "consul"], "invalid choice: 'consul'"),
])
def test_an_impossible_subnet_manager_is_refused_before_anything_is_made(monkeypatch, capsys, argv, says):
    made = []
    monkeypatch.setattr("lab.api.state.write_owner", lambda *a, **kw: made.append(a))  # the first thing up() makes
    with pytest.raises(SystemExit) if "invalid" in says else contextlib.nullcontext():
        assert cli.main(["lab", "up", "--name", "ktnolab", *argv]) == 1
    assert says in capsys.readouterr().err and not made


def test_a_bug_keeps_its_traceback(monkeypatch):
    def buggy(_args):
        return {}["missing"]

    monkeypatch.setattr(lab.cli, "cmd_status", buggy)
    with pytest.raises(KeyError):
        cli.main(["lab", "status", "--name", "kt0000"])


def test_without_the_lab_knet_still_has_its_product_commands():
    """The product image leaves lab/ out (Containerfile): `knet` there must still start."""
    code = ("import sys; sys.modules['lab'] = None\n"
            "from knet_cli import main\n"
            "sys.exit(main.main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "netpol" in r.stdout and "uninstall-node" in r.stdout and "lab" not in r.stdout.split("options:")[0]
    r = subprocess.run([sys.executable, "-c", code, "version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("knet "), r.stderr
