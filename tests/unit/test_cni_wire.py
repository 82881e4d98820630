"""JSON through the C codec (must equal the json package), and the executable <-> agent exchange:
the executable against fake agents on a real unix socket, each misbehaving in one way."""

import json
import os
import socket
import threading
import time

import pytest

from cni import shim, wire
from cni.config import valid_network_name

SAMPLES = [
    {"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}]]}, "mtu": 1450},
    {"s": "é \" \\ \n \u2028 \U0001f600", "f": 1.5, "neg": -3, "e": 1e100, "t": True, "n": None, "l": []},
    [1, "two", {"three": [3]}],
    "plain",
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_codec_matches_json(obj):
    text = json.dumps(obj)
    assert wire.dumps(obj) == text
    assert wire.loads(text) == json.loads(text)
    assert wire.loads(("  \n" + text + " \t").encode()) == obj


@pytest.mark.parametrize("bad", [b"", b"   ", b'{"a": ', b'{"a": 1} x', b"{'a': 1}", b"\xff\xfe", b"[1,]"])
def test_codec_rejects_what_json_rejects(bad):
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        wire.loads(bad)


@pytest.mark.parametrize("env", [
    {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=a=b;X=1", "EMPTY": "", "UNI": "é"},
    {b"CNI_COMMAND": b"ADD", b"RAW": b"\xff not utf-8"},  # os.environb, as the executable sends it
])
def test_request_round_trip(env):
    stdin = b'{"cniVersion": "1.0.0"}\0binary ok'
    data = wire.encode_request(env, stdin, 4026531840, 123456789)
    head, _, rest = data.partition(b"\n")
    inode, deadline, env_len, stdin_len = wire.parse_header(head)
    assert (inode, deadline) == (4026531840, 123456789) and env_len + stdin_len == len(rest)
    decoded = wire.parse_env(rest[:env_len])
    assert {os.fsencode(k): os.fsencode(v) for k, v in decoded.items()} == \
        {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    assert rest[env_len:] == stdin


@pytest.mark.parametrize("head", [b"", b"GET / HTTP/1.1", b"KNETCNI3 1 2 3", b"KNETCNI3 a 1 1 1",
                                  b"KNETCNI3 1 1 -1 5", b"KNETCNI2 1 1 1", b"KNETCNI3 1 1 9999999 9999999"])
def test_bad_headers(head):
    with pytest.raises(wire.BadRequest):
        wire.parse_header(head)


def test_network_names_follow_libcni():
    assert all(map(valid_network_name, ["a", "knet", "my-net_1.2", "0net"]))
    assert not any(map(valid_network_name, ["", "-net", ".net", "_net", "bad name", "net/1", "é", None, 5]))


class FakeAgent:
    """A unix socket server that reads one request and then behaves as `script` says."""

    def __init__(self, path: str, script: str) -> None:
        self.path, self.script = path, script
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        self.started = threading.Event()
        self.saw_close = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.srv.accept()
        with conn:
            f = conn.makefile("rb")
            _inode, deadline, env_len, stdin_len = wire.parse_header(f.readline().rstrip(b"\n"))
            f.read(env_len + stdin_len)
            if self.script == "silent":  # never starts; notes when the caller hangs up
                conn.settimeout(10)
                if conn.recv(1) == b"":
                    self.saw_close.set()
                return
            if self.script == "wrong-netns":
                conn.sendall(b"WRONG-NETNS\n")
                return
            if self.script == "last-moment":  # STARTED a little before the caller's deadline
                time.sleep(max(0.0, (deadline - time.monotonic_ns()) / 1e9 - 0.05))
            conn.sendall(b"STARTED\n")
            self.started.set()
            if self.script in ("answer", "last-moment"):
                time.sleep(0.2 if self.script == "last-moment" else 0)  # answers after the deadline
                out = b'{"cniVersion": "1.0.0"}'
                conn.sendall(b"0 %d\n" % len(out) + out)
            elif self.script == "aborted":
                conn.sendall(b"ABORTED\n")
            elif self.script == "slow":
                time.sleep(3)

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def agent(tmp_path, monkeypatch):
    monkeypatch.setattr(shim, "START_TIMEOUT", 0.5)
    monkeypatch.setattr(shim, "ANSWER_TIMEOUT", 1.0)
    made = []

    def start(script: str) -> FakeAgent:
        made.append(FakeAgent(str(tmp_path / f"{script}.sock"), script))
        return made[-1]

    yield start
    for a in made:
        a.close()


ENV = {"CNI_COMMAND": "ADD"}
STDIN = b'{"cniVersion": "0.4.0", "name": "n"}'


def test_answer_after_started(agent):
    a = agent("answer")
    assert shim.via_agent(a.path, ENV, STDIN) == (0, '{"cniVersion": "1.0.0"}')
    assert a.started.is_set()


def test_started_before_the_deadline_is_waited_for_past_it(agent):
    assert shim.via_agent(agent("last-moment").path, ENV, STDIN) == (0, '{"cniVersion": "1.0.0"}')


def test_agent_in_another_namespace_means_direct(agent):
    assert shim.via_agent(agent("wrong-netns").path, ENV, STDIN) is None


def test_not_started_in_time_means_direct_and_the_agent_sees_the_caller_leave(agent):
    a = agent("silent")
    start = time.monotonic()
    assert shim.via_agent(a.path, ENV, STDIN) is None
    assert time.monotonic() - start < 5
    assert a.saw_close.wait(10)


def test_aborted_or_gone_after_started_means_direct(agent):
    assert shim.via_agent(agent("aborted").path, ENV, STDIN) is None
    assert shim.via_agent(agent("die").path, ENV, STDIN) is None


def test_agent_too_slow_after_started_is_try_again_later(agent):
    code, out = shim.via_agent(agent("slow").path, ENV, STDIN)
    err = json.loads(out)
    assert code == 1 and err["code"] == 11 and err["cniVersion"] == "0.4.0" and "try again" in err["msg"]


def test_nobody_listening_means_direct(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # a socket file left by a dead agent
    assert os.path.exists(path)
    assert shim.via_agent(path, ENV, STDIN) is None
    assert shim._agent_socket(json.dumps({"agentSocket": str(tmp_path / "none.sock")}).encode()) is None
    assert shim._agent_socket(json.dumps({"agentSocket": path}).encode()) == path
