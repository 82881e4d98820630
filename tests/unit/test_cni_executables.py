"""The two thin executables, native (cni/shim/knet-cni.c) and Python (cni/knet-cni -> shim.py), run
as a runtime runs them against fake agents on a real unix socket, each misbehaving in one way: both
must give the caller the same answer. When the agent cannot take a request they run the direct
path; here its answer is recognisable (the environment lacks CNI_CONTAINERID and the others, so the
plugin answers error 4; no kernel is touched)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from cni import shim, versions, wire

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SOURCE = os.path.join(ROOT, "cni", "shim", "knet-cni.c")


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _python_executable() -> str:
    path = os.path.join(BIN, "knet-cni-py")
    if not os.path.exists(path):
        path = os.path.join(BIN, "knet-cni")
    with open(path, "rb") as f, open(os.path.join(ROOT, "cni", "knet-cni"), "rb") as g:
        assert f.read() == g.read(), f"{path} is not cni/knet-cni: run ./scripts/install-deps"
    return path


def _native_executable() -> str:
    path = os.path.join(BIN, "knet-cni")
    if not _is_elf(path):
        pytest.skip("the native knet-cni is not built (no C compiler when ./scripts/install-deps ran)")
    assert os.stat(path).st_mtime >= os.stat(SOURCE).st_mtime, \
        f"{path} is older than {SOURCE}: run ./scripts/install-deps"
    return path


@pytest.fixture(params=["native", "python"])
def exe(request) -> str:
    return _native_executable() if request.param == "native" else _python_executable()


Behaviour = Callable[[socket.socket, int], None]


class FakeAgent:
    """Accepts connections on a unix socket; for each, reads one request (kept in `requests`) and
    then does what `behaviour(conn, caller's deadline)` does."""

    def __init__(self, path: str, behaviour: Behaviour) -> None:
        self.path, self.behaviour = path, behaviour
        self.requests: list[tuple[int, int, dict[bytes, bytes], bytes]] = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        self.saw_close = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as f:  # (the file holds the connection open until closed)
                inode, deadline, env_len, stdin_len = wire.parse_header(f.readline().rstrip(b"\n"))
                block, stdin = f.read(env_len), f.read(stdin_len)
                env = dict(item.split(b"=", 1) for item in block.split(b"\0") if item)
                self.requests.append((inode, deadline, env, stdin))
                with contextlib.suppress(OSError):  # the caller may have left
                    self.behaviour(conn, deadline)

    def close(self) -> None:
        self.srv.close()


def reply(*chunks: bytes, pause: float = 0.0) -> Behaviour:
    def behave(conn: socket.socket, _deadline: int) -> None:
        for chunk in chunks:
            conn.sendall(chunk)
            time.sleep(pause)
    return behave


def answer(body: bytes, code: int = 0) -> bytes:
    return b"STARTED\n%d %d\n" % (code, len(body)) + body


def silent(agent_box: list) -> Behaviour:
    def behave(conn: socket.socket, _deadline: int) -> None:  # never starts; notes when the caller leaves
        conn.settimeout(30)
        if conn.recv(1) == b"":
            agent_box[0].saw_close.set()
    return behave


def started_then_after_the_deadline(conn: socket.socket, deadline: int) -> None:
    conn.sendall(b"STARTED\n")
    while time.monotonic_ns() < deadline + 200_000_000:
        time.sleep(0.05)
    conn.sendall(answer(b'{"late": true}')[len(b"STARTED\n"):])


def slow(conn: socket.socket, _deadline: int) -> None:
    conn.sendall(b"STARTED\n")
    time.sleep(5)


@pytest.fixture
def agents(tmp_path):
    made: list[FakeAgent] = []

    def start(behaviour: Behaviour, name: str = "agent.sock") -> FakeAgent:
        made.append(FakeAgent(str(tmp_path / name), behaviour))
        return made[-1]

    yield start
    for a in made:
        a.close()


def run(exe: str, conf: dict | bytes, command: str = "ADD", **env: str) -> tuple[int, bytes]:
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    full = {"CNI_COMMAND": command, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    proc = subprocess.run([exe], input=data, env=full, capture_output=True, timeout=120)
    assert proc.stderr == b"", proc.stderr.decode(errors="replace")
    return proc.returncode, proc.stdout


def conf_for(agent: FakeAgent | str, **more) -> dict:
    return {"cniVersion": "0.4.0", "name": "n", "agentSocket": agent if isinstance(agent, str) else agent.path,
            **more}


DIRECT_MSG = "ADD needs the environment variable(s) CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH"


def is_direct(rc: int, out: bytes) -> bool:
    """The direct path's answer to these requests (the plugin itself, in-process)."""
    return rc == 1 and json.loads(out) == {"cniVersion": "1.1.0", "code": 4, "msg": DIRECT_MSG}


def test_the_agents_answer_exit_status_and_stdout_pass_through(exe, agents):
    body = b'{"cniVersion": "0.4.0", "ips": []}'
    assert run(exe, conf_for(agents(reply(answer(body))))) == (0, body + b"\n")
    assert run(exe, conf_for(agents(reply(answer(b"{}", 7)), "seven.sock"))) == (7, b"{}\n")
    assert run(exe, conf_for(agents(reply(answer(b"")), "empty.sock"))) == (0, b"")
    raw = b"\xff\xfe not UTF-8 \xc3"  # passed on byte for byte
    assert run(exe, conf_for(agents(reply(answer(raw)), "raw.sock"))) == (0, raw + b"\n")
    big = b"[" + b"1, " * 60000 + b"1]"
    assert run(exe, conf_for(agents(reply(answer(big) + b"trailing bytes are ignored"), "big.sock"))) == \
        (0, big + b"\n")


def test_an_answer_in_small_pieces(exe, agents):
    data = answer(b'{"ok": 1}')
    pieces = [data[i:i + 3] for i in range(0, len(data), 3)]
    assert run(exe, conf_for(agents(reply(*pieces, pause=0.01)))) == (0, b'{"ok": 1}\n')


def test_the_request_carries_environment_stdin_namespace_and_deadline(exe, agents):
    a = agents(reply(answer(b"{}")))
    conf = json.dumps(conf_for(a)).encode() + b"  \n"
    before = time.monotonic_ns()
    rc, _ = run(exe, conf, CNI_ARGS="K8S_POD_NAME=a=b;X=1", EMPTY="", UNI="é")
    assert rc == 0
    inode, deadline, env, stdin = a.requests[0]
    assert inode == os.stat("/proc/thread-self/ns/net").st_ino
    assert before + 2_000_000_000 < deadline < time.monotonic_ns() + 3_000_000_000
    assert stdin == conf
    assert {env[k] for k in (b"CNI_COMMAND", b"CNI_ARGS", b"EMPTY", b"UNI")} == \
        {b"ADD", b"K8S_POD_NAME=a=b;X=1", b"", "é".encode()}
    given = {b"CNI_COMMAND", b"PATH", b"CNI_ARGS", b"EMPTY", b"UNI"}
    # The native executable sends the runtime's environment as it is; the Python one's own start
    # adds PWD (sh) and LC_CTYPE (the interpreter's C-locale coercion) where they were not set.
    assert set(env) - given <= ({b"PWD", b"LC_CTYPE"} if exe.endswith("-py") else set()) and given <= set(env)


@pytest.mark.parametrize("said", [b"WRONG-NETNS\n", b"BAD malformed\n", b"BAD stopping\n", b"", b"STARTEDX\n",
                                  b"started\n", b"STARTED", b"x" * 5000, b"STARTED\nABORTED\n", b"STARTED\n"])
def test_not_started_aborted_or_gone_means_direct(exe, agents, said):
    """Refused, another namespace, garbage, a line too long, ABORTED, or gone after STARTED."""
    assert is_direct(*run(exe, conf_for(agents(reply(said)))))


@pytest.mark.parametrize("head", [b"0", b"x 5", b"0 5 6", b"-1 5", b"256 5", b"+0 5", b"00 5", b"0  5", b" 0 5",
                                  b"0 99999999999999999999", b"0 5\r", b"0 0x5", b"\xd9\xa1 5", b""])
def test_a_garbled_answer_means_direct(exe, agents, head):
    assert is_direct(*run(exe, conf_for(agents(reply(b"STARTED\n" + head + b"\n12345")))))


def test_an_answer_cut_short_means_direct(exe, agents):
    assert is_direct(*run(exe, conf_for(agents(reply(b"STARTED\n0 10\n12345")))))


def test_started_in_time_is_waited_for_past_the_deadline(exe, agents):
    a = agents(started_then_after_the_deadline)
    assert run(exe, conf_for(a), KNET_CNI_START_TIMEOUT="2") == (0, b'{"late": true}\n')


def test_not_started_in_time_means_direct_and_the_agent_sees_the_caller_leave(exe, agents):
    box: list = []
    box.append(agents(silent(box)))
    start = time.monotonic()
    assert is_direct(*run(exe, conf_for(box[0]), KNET_CNI_START_TIMEOUT="1"))
    assert time.monotonic() - start < 60
    assert box[0].saw_close.wait(30)


@pytest.mark.parametrize("version", ["0.4.0", "0.0.1", None])
def test_too_slow_after_started_is_try_again_later(exe, agents, tmp_path, version):
    odd = tmp_path / 'dir "é☃😀\\\x7f\t'
    odd.mkdir()
    a = agents(slow, os.path.join(odd.name, "a.sock"))
    conf = conf_for(a, cniVersion=version) if version else {"agentSocket": a.path}
    rc, out = run(exe, conf, KNET_CNI_ANSWER_TIMEOUT="1")
    expected = {"cniVersion": version if version in versions.SUPPORTED_VERSIONS else versions.LATEST_VERSION,
                "code": 11, "msg": f"knet-cni-agent at {a.path} started the request but did not answer "
                                   "within 1s; try again"}
    assert rc == 1 and out == wire.dumps(expected).encode() + b"\n"


def test_no_agent_or_a_stale_socket_means_direct(exe, tmp_path):
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(stale)
    s.close()  # a socket file left by a dead agent
    assert is_direct(*run(exe, conf_for(stale)))
    assert is_direct(*run(exe, conf_for(str(tmp_path / "none.sock"))))
    assert is_direct(*run(exe, conf_for(str(tmp_path / ("x" * 200)))))
    assert is_direct(*run(exe, conf_for("with\0nul")))
    assert is_direct(*run(exe, b'{"agentSocket": "\\ud800x"}'))  # no file name can hold it


def test_the_direct_path_gets_the_same_stdin_and_environment(exe, agents):
    """A request the direct path answers from its stdin and environment (a bad network name)."""
    a = agents(reply(b"BAD malformed\n"))
    env = {"CNI_CONTAINERID": "c", "CNI_NETNS": "/nonexistent", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    rc, out = run(exe, conf_for(a, name="bad name!", type="knet-cni"), **env)
    assert rc == 1 and json.loads(out)["code"] == 7 and "bad name!" in json.loads(out)["msg"]
    assert len(a.requests) == 1
    run(exe, conf_for(a, name="n2", type="knet-cni"), **env, KNET_CNI_DIRECT="1")
    assert len(a.requests) == 1  # forced direct: the agent is not asked
    rc, out = run(exe, b'{"cniVersion": "0.4.0"}', "VERSION")
    assert (rc, json.loads(out)) == (0, versions.version_answer({"cniVersion": "0.4.0"}))


# The native executable reads two fields of the configuration itself; for every input its reading
# must be Python's json module's. Each config names the fake agent (or not) in one way.
def _configs(path: str) -> list[bytes]:
    p = json.dumps(path)
    escaped = p.replace("/", "\\/")
    return [s.encode() if isinstance(s, str) else s for s in [
        f'{{"agentSocket": {p}}}',
        f'  {{"agent\\u0053ocket" : {escaped} }}\n',
        f'{{"agentSocket": "/elsewhere", "agentSocket": {p}}}',
        f'{{"agentSocket": {p}, "agentSocket": 5}}',
        f'{{"agentSocket": {p}, "agentSocket": null}}',
        f'{{"x": {{"agentSocket": {p}}}}}',
        f'[{{"agentSocket": {p}}}]',
        f'{{"agentSocket": {p}}} x',
        f'{{"agentSocket": {p}}}{{}}',
        f'{{"agentSocket": {p},}}',
        f'{{"agentSocket": {p}, "n": 01}}',
        f'{{"agentSocket": {p}, "n": 1.}}',
        f'{{"agentSocket": {p}, "n": .5}}',
        f'{{"agentSocket": {p}, "n": 1e}}',
        f'{{"agentSocket": {p}, "n": -}}',
        f'{{"agentSocket": {p}, "n": [NaN, -Infinity, Infinity, 1.5e+3, -0, 0.25E-2, true, false, null]}}',
        f'{{"agentSocket": {p}, "n": [nan]}}',
        f'{{"agentSocket": {p}, "n": [1 2]}}',
        f'{{"agentSocket": {p}, "n": [1,]}}',
        f'{{"agentSocket": {p}, "s": "\x01"}}',
        f'{{"agentSocket": {p}, "s": "\\x"}}',
        f'{{"agentSocket": {p}, "s": "\\u12g4"}}',
        f'{{"agentSocket": {p}, "s": "\\ud800 lone \\udc00 \\ud83d\\ude00"}}',
        f'{{"agentSocket": {p}, "s": "é"}}',
        f'{{"agentSocket": {p}, "s": "é"}}'.encode("latin-1"),
        f'{{"agentSocket": {p}, "s": "'.encode() + b"\xed\xa0\x80" + b'"}',  # an encoded surrogate
        f'{{"agentSocket": {p}, "s": "'.encode() + b"\xf4\x90\x80\x80" + b'"}',  # beyond U+10FFFF
        f'{{"agentSocket": {p}, "s": "'.encode() + b"\xc0\xaf" + b'"}',  # overlong
        f'{{"agentSocket": {p}, "d": ' + "[" * 200 + "]" * 200 + "}",
        f'{{"agentSocket": {p}, "d": ' + "[" * 200 + "]" * 199 + "}",
        f'{{"agentSocket": {p}, 5: 1}}',
        f'{{"agentSocket" {p}}}',
        f'{{"agentSocket": {p}',
        f'\ufeff{{"agentSocket": {p}}}',
        f'{{"agentSocket": {p}}}\x00',
        '{"agentSocket": ""}',
        b"",
    ]]


def _python_asks(conf: bytes, path: str) -> bool:
    """Whether the Python executable asks the agent at `path` for this configuration."""
    value = shim.parse_config(conf)
    return value is not None and value.get("agentSocket") == path


def test_the_native_executable_reads_the_configuration_as_python_does(agents):
    native = _native_executable()
    a = agents(reply(answer(b'{"from": "agent"}')))
    configs = _configs(a.path)
    asked = [run(native, conf) == (0, b'{"from": "agent"}\n') for conf in configs]
    assert asked == [_python_asks(conf, a.path) for conf in configs]
    assert 7 <= sum(asked) < len(configs) - 20


def test_native_and_python_supported_versions_agree():
    with open(SOURCE) as f:
        source = f.read()
    listed = re.search(r"SUPPORTED_VERSIONS\[\] = \{([^}]*)\}", source).group(1)
    assert tuple(re.findall(r'"([^"]+)"', listed)) == versions.SUPPORTED_VERSIONS
    assert re.search(r'#define LATEST_VERSION "([^"]+)"', source).group(1) == versions.LATEST_VERSION


def _mutations(data: bytes, alphabet: bytes, count: int, seed: int) -> list[bytes]:
    """`count` variants of data, each with a few random byte changes, insertions, deletions or a
    cut (seeded: a failure reproduces)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        b = bytearray(data)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(b) + 1)
            op = rnd.random()
            if op < 0.35 and i < len(b):
                b[i] = rnd.choice(alphabet)
            elif op < 0.65:
                b[i:i] = bytes([rnd.choice(alphabet)])
            elif op < 0.9 and i < len(b):
                del b[i]
            else:
                b = b[:i]
        out.append(bytes(b))
    return out


def test_random_answers_get_the_same_result_from_both_executables(agents):
    native, python = _native_executable(), _python_executable()
    good = answer(b'{"cniVersion": "0.4.0", "ips": [{"address": "10.0.0.2/24"}]}')
    for i, said in enumerate(_mutations(good, b"0123456789 \n-+STARTED\xff", 10, seed=20)):
        a = agents(reply(said), f"a{i}.sock")
        assert run(native, conf_for(a)) == run(python, conf_for(a)), said


def test_random_configurations_are_read_as_python_reads_them(agents):
    native = _native_executable()
    a = agents(reply(answer(b'{"from": "agent"}')))
    base = json.dumps({"cniVersion": "1.0.0", "x": [1, -2.5e3, {"y": "é\\"}, None, True], "agentSocket": a.path,
                       "z": "\U0001f600"}, ensure_ascii=False).encode()
    for conf in _mutations(base, b'{}[]",:\\ -+.eE0123456789ntfuNI\x00\x1f\xc3\xa9\xff', 20, seed=7):
        assert (run(native, conf) == (0, b'{"from": "agent"}\n')) == _python_asks(conf, a.path), conf
