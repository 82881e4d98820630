"""The lab's runtime side of CNI (libcni behaviour), with fake plugins that only record what they
were given: no namespaces, no kernel."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from lab.net import cniexec, pods
from lab.net.cniexec import CniExecError, RuntimeConf

FAKE = f"""#!{sys.executable}
import json, os, sys
name = os.path.basename(sys argv0)
conf = json.load(sys.stdin)
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"plugin": name, "env": env, "conf": conf}}) + "\\n")
if os.environ.get("FAKE_FAIL") == name + ":" + env["CNI_COMMAND"]:
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "boom from " + name, "details": "d"}}))
    sys.exit(1)
if env["CNI_COMMAND"] == "ADD":
    result = conf.get("prevResult") or {{"cniVersion": "1.0.0", "ips": [{{"address": "10.0.0.5/24"}}]}}
    result = dict(result, seen=result.get("seen", []) + [name])
    print(json.dumps(result))
""".replace("sys argv0", "sys.argv[0]")

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "net",
    "plugins": [
        {"type": "one", "x": 1},
        {"type": "two", "capabilities": {"portMappings": True, "bandwidth": False}},
        {"type": "three"},
    ],
}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("one", "two", "three"):
        f = bindir / name
        f.write_text(FAKE)
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    return [str(tmp_path / "empty"), str(bindir)], log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


RT = RuntimeConf("c0ffee", "/run/netns/x", "eth0", args=cniexec.k8s_args("default", "web", "c0ffee"),
                 capability_args={"portMappings": [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}],
                                  "bandwidth": {"rate": 1}})


def test_plugin_config_injects_name_version_prev_and_declared_capabilities() -> None:
    conf = cniexec.plugin_config(CONFLIST, CONFLIST["plugins"][1], {"ips": []}, RT.capability_args)
    assert conf["name"] == "net" and conf["cniVersion"] == "1.0.0"
    assert conf["prevResult"] == {"ips": []}
    # bandwidth is declared false and never asked for: only portMappings goes in.
    assert conf["runtimeConfig"] == {"portMappings": RT.capability_args["portMappings"]}
    first = cniexec.plugin_config(CONFLIST, CONFLIST["plugins"][0], None, RT.capability_args)
    assert "prevResult" not in first and "runtimeConfig" not in first
    assert "name" not in CONFLIST["plugins"][0]  # the list itself is not modified


def test_env() -> None:
    env = cniexec.cni_env("ADD", RT, ["/a", "/b"])
    assert env["CNI_COMMAND"] == "ADD" and env["CNI_CONTAINERID"] == "c0ffee"
    assert env["CNI_NETNS"] == "/run/netns/x" and env["CNI_IFNAME"] == "eth0"
    assert env["CNI_PATH"] == "/a:/b"
    assert env["CNI_ARGS"] == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
                               "K8S_POD_INFRA_CONTAINER_ID=c0ffee")


def test_add_runs_in_order_chaining_prev_result(fake: tuple[list[str], Path]) -> None:
    path, log = fake
    result = cniexec.add_list(CONFLIST, RT, cni_path=path)
    assert result["seen"] == ["one", "two", "three"]
    got = calls(log)
    assert [c["plugin"] for c in got] == ["one", "two", "three"]
    assert "prevResult" not in got[0]["conf"]
    assert got[1]["conf"]["prevResult"]["seen"] == ["one"]
    assert got[2]["conf"]["prevResult"]["seen"] == ["one", "two"]
    assert got[1]["conf"]["runtimeConfig"] == {"portMappings": RT.capability_args["portMappings"]}
    assert got[0]["conf"]["x"] == 1 and got[0]["env"]["CNI_COMMAND"] == "ADD"


def test_del_runs_in_reverse_with_cached_result(fake: tuple[list[str], Path]) -> None:
    path, log = fake
    cniexec.del_list(CONFLIST, RT, {"cached": True}, cni_path=path)
    got = calls(log)
    assert [c["plugin"] for c in got] == ["three", "two", "one"]
    assert all(c["conf"]["prevResult"] == {"cached": True} for c in got)
    assert all(c["env"]["CNI_COMMAND"] == "DEL" for c in got)


def test_add_failure_surfaces_msg_and_deletes_what_was_attempted(fake: tuple[list[str], Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path, log = fake
    monkeypatch.setenv("FAKE_FAIL", "two:ADD")
    with pytest.raises(CniExecError) as exc:
        cniexec.add_list(CONFLIST, RT, cni_path=path)
    assert exc.value.code == 11 and exc.value.msg == "boom from two" and exc.value.plugin == "two"
    got = [(c["plugin"], c["env"]["CNI_COMMAND"]) for c in calls(log)]
    # "three" was never added, so it is not deleted either; the failed one is (it may be half done).
    assert got == [("one", "ADD"), ("two", "ADD"), ("two", "DEL"), ("one", "DEL")]


def test_del_keeps_going_and_raises_the_first_error(fake: tuple[list[str], Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path, log = fake
    monkeypatch.setenv("FAKE_FAIL", "two:DEL")
    with pytest.raises(CniExecError, match="boom from two"):
        cniexec.del_list(CONFLIST, RT, None, cni_path=path)
    assert [c["plugin"] for c in calls(log)] == ["three", "two", "one"]


def test_missing_plugin(fake: tuple[list[str], Path]) -> None:
    path, _ = fake
    with pytest.raises(CniExecError, match="failed to find plugin 'nope'"):
        cniexec.find_plugin("nope", path)
    with pytest.raises(CniExecError):
        cniexec.find_plugin("../one", path)
    assert cniexec.find_plugin("one", path) == os.path.join(path[1], "one")


def test_non_json_failure_output(tmp_path: Path) -> None:
    script = tmp_path / "bad"
    script.write_text("#!/bin/sh\necho 'plain failure' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(CniExecError) as exc:
        cniexec.exec_plugin(str(script), "ADD", {}, {"cniVersion": "1.0.0"})
    assert exc.value.code == 3 and exc.value.msg == "plain failure"


@pytest.mark.parametrize(("spec", "want"), [
    ("8080:80", {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}),
    ("53:5353/udp", {"hostPort": 53, "containerPort": 5353, "protocol": "udp"}),
    ("192.168.33.11:80:80/TCP", {"hostPort": 80, "containerPort": 80, "protocol": "tcp",
                                 "hostIP": "192.168.33.11"}),
])
def test_parse_port(spec: str, want: dict) -> None:
    assert pods.parse_port(spec) == want


@pytest.mark.parametrize("spec", ["80", "0:80", "80:70000", "a:b", "80:80/icmp", ""])
def test_parse_port_rejects(spec: str) -> None:
    with pytest.raises(pods.PodError):
        pods.parse_port(spec)


def test_result_helpers() -> None:
    result = {"interfaces": [{"name": "cni0", "mac": "m"}, {"name": "veth1234", "mac": "m"},
                             {"name": "eth0", "mac": "m", "sandbox": "/run/netns/x"}],
              "ips": [{"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2}]}
    assert pods.first_ip(result) == "10.244.1.7"
    assert pods.host_veth(result) == "veth1234"
    assert pods.first_ip({}) is None and pods.host_veth({}) is None
