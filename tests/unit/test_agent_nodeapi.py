"""The node agent's API, pure parts: request heads, CRI logs, the log writer, stats, and the
SPDY session engine driven by a client's frames."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time

import pytest

from knet import metrics
from knet.kube.streams import spdy
from lab.agent import logwriter, stats
from lab.agent.nodeapi import http1, logs
from lab.agent.nodeapi.conns import SpdyConn
from lab.agent.nodeapi.remotecommand import Options

# --- request heads ------------------------------------------------------------------------------


def test_request_head_keeps_every_value_of_a_repeated_header() -> None:
    raw = (b"POST /exec/default/web/c?command=sh&command=-c&command=echo%20hi&input=1&output=1 HTTP/1.1\r\n"
           b"Host: 192.168.33.11:10250\r\nUpgrade: SPDY/3.1\r\nConnection: Upgrade\r\n"
           b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n\r\n")
    req = http1.parse_head(raw)
    assert (req.method, req.path) == ("POST", "/exec/default/web/c")
    assert req.query["command"] == ["sh", "-c", "echo hi"]
    assert req.values("x-stream-protocol-version") == ["v4.channel.k8s.io", "v3.channel.k8s.io"]
    assert req.header("Upgrade") == "SPDY/3.1"
    opts = Options.from_request(req, command=True)
    assert (opts.stdin, opts.stdout, opts.stderr, opts.tty, opts.command) == (True, True, False, False,
                                                                              ("sh", "-c", "echo hi"))


@pytest.mark.parametrize("raw", [b"GET /x\r\n\r\n", b"GET x HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nbad\r\n\r\n"])
def test_malformed_heads_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(http1.BadRequest):
        http1.parse_head(raw)


def test_exec_options_need_a_stream_and_a_command() -> None:
    with pytest.raises(http1.BadRequest, match="at least 1 of stdin"):
        Options.from_request(http1.parse_head(b"GET /exec/a/b/c?command=ls HTTP/1.1\r\n\r\n"), command=True)
    with pytest.raises(http1.BadRequest, match="command"):
        Options.from_request(http1.parse_head(b"GET /exec/a/b/c?stdout=true HTTP/1.1\r\n\r\n"), command=True)
    # a tty has no separate stderr
    tty = Options.from_request(http1.parse_head(b"GET /attach/a/b/c?output=1&error=1&tty=1 HTTP/1.1\r\n\r\n"),
                               command=False)
    assert tty.stdout and not tty.stderr and tty.tty


# --- CRI logs -----------------------------------------------------------------------------------

LOG = (b"2024-01-01T00:00:00.000000001Z stdout F first line\n"
       b"2024-01-01T00:00:01.5Z stderr F an error\n"
       b"2024-01-01T00:00:02Z stdout P par\n"
       b"2024-01-01T00:00:03Z stdout P ti\n"
       b"2024-01-01T00:00:04Z stdout F al\n"
       b"garbage that is no CRI line\n"
       b"2024-01-01T00:00:05Z stdout F \n"
       b"2024-01-01T00:00:06Z stdout P no newline yet")


def test_cri_lines_are_parsed_and_pieces_joined() -> None:
    lines = logs.join(ln for raw in LOG.split(b"\n") if (ln := logs.parse_line(raw)) is not None)
    assert [(ln.stream, ln.text, ln.full) for ln in lines] == [
        ("stdout", b"first line", True), ("stderr", b"an error", True), ("stdout", b"partial", True),
        ("stdout", b"", True), ("stdout", b"no newline yet", False)]
    assert lines[2].time == "2024-01-01T00:00:02Z"  # a joined line has its first piece's time
    assert logs.render(lines[0], True) == b"2024-01-01T00:00:00.000000001Z first line\n"
    assert logs.render(lines[4], False) == b"no newline yet"


def test_log_options_select_since_and_tail() -> None:
    lines = logs.join(ln for raw in LOG.split(b"\n") if (ln := logs.parse_line(raw)) is not None)
    now = dt.datetime(2024, 1, 1, 0, 0, 5, tzinfo=dt.UTC)
    req = http1.parse_head(b"GET /containerLogs/a/b/c?sinceSeconds=3&timestamps=true HTTP/1.1\r\n\r\n")
    opts = logs.LogOptions.from_request(req, now)
    assert opts.timestamps and opts.since == dt.datetime(2024, 1, 1, 0, 0, 2, tzinfo=dt.UTC)
    assert [ln.text for ln in logs.select(lines, opts)] == [b"partial", b"", b"no newline yet"]
    tail = logs.LogOptions(tail_lines=2)
    assert [ln.text for ln in logs.select(lines, tail)] == [b"", b"no newline yet"]
    assert logs.select(lines, logs.LogOptions(tail_lines=0)) == []
    for bad in (b"tailLines=-1", b"sinceSeconds=x", b"sinceSeconds=1&sinceTime=2024-01-01T00:00:00Z",
                b"sinceTime=yesterday"):
        with pytest.raises(http1.BadRequest):
            logs.LogOptions.from_request(http1.parse_head(b"GET /c?" + bad + b" HTTP/1.1\r\n\r\n"))


def test_serve_reads_rotated_files_oldest_first_and_limits_bytes(tmp_path) -> None:
    path = str(tmp_path / "0.log")
    for suffix, text in ((".2", b"one"), (".1", b"two"), ("", b"three")):
        with open(path + suffix, "wb") as f:
            f.write(b"2024-01-01T00:00:00Z stdout F " + text + b"\n")
    out: list[bytes] = []

    async def write(data: bytes) -> None:
        out.append(data)

    asyncio.run(logs.serve(path, logs.LogOptions(), write, lambda: False))
    assert b"".join(out) == b"one\ntwo\nthree\n"
    out.clear()
    asyncio.run(logs.serve(path, logs.LogOptions(limit_bytes=6), write, lambda: False))
    assert b"".join(out) == b"one\ntw"


def test_follow_sees_appended_lines_across_a_rotation_and_ends_with_the_container(tmp_path) -> None:
    path = str(tmp_path / "0.log")
    with open(path, "wb") as f:
        f.write(b"2024-01-01T00:00:00Z stdout F before\n")
    running = True
    got: list[bytes] = []

    async def write(data: bytes) -> None:
        got.append(data)

    async def scenario() -> None:
        nonlocal running
        task = asyncio.create_task(logs.serve(path, logs.LogOptions(follow=True, tail_lines=0), write,
                                              lambda: running))
        await asyncio.sleep(0.3)
        with open(path, "ab") as f:
            f.write(b"2024-01-01T00:00:01Z stdout F after\n")
        await asyncio.sleep(0.5)
        os.replace(path, path + ".1")  # what the log writer does at its size limit
        with open(path, "wb") as f:
            f.write(b"2024-01-01T00:00:02Z stderr F rotated\n")
        await asyncio.sleep(0.5)
        running = False
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert b"".join(got) == b"after\nrotated\n"


# --- the log writer -----------------------------------------------------------------------------


def test_log_writer_tags_streams_splits_long_lines_and_rotates(tmp_path) -> None:
    path = str(tmp_path / "0.log")
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-S", logwriter.__file__, "--log", path, "--out-fd", str(out_r),
                             "--err-fd", str(err_r), "--max-size", "400", "--max-files", "3"],
                            pass_fds=(out_r, err_r))
    os.close(out_r)
    os.close(err_r)
    os.write(out_w, b"hello\n" + b"x" * (logwriter.MAX_LINE + 10) + b"\n")
    os.write(err_w, b"oops\n")
    os.write(out_w, b"tail without newline")
    os.close(out_w)
    os.close(err_w)
    assert proc.wait(20) == 0
    lines = logs.read_lines(path)
    texts = {(ln.stream, ln.text[:5], len(ln.text)) for ln in lines}
    assert ("stdout", b"hello", 5) in texts and ("stderr", b"oops", 4) in texts
    assert ("stdout", b"xxxxx", logwriter.MAX_LINE + 10) in texts  # written in pieces, read back whole
    assert ("stdout", b"tail ", 20) in texts
    assert os.path.exists(path + ".1") and not os.path.exists(path + ".3")  # rotated, at most 3 files
    with open(path + ".1", "rb") as old, open(path, "rb") as new:
        assert b" stdout P " in old.read() + new.read()


def test_log_writer_feeds_stdin_from_its_fifo_and_closes_it_when_told(tmp_path) -> None:
    """stdin: true without a terminal: what attach writes to the FIFO reaches the container's
    stdin pipe; {"CloseStdin": true} on the control FIFO ends it (stdinOnce)."""
    fifos = {}
    for name in ("stdin", "control"):
        os.mkfifo(tmp_path / name)
        fifos[name] = os.open(tmp_path / name, os.O_RDWR)
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    fds = (out_r, in_w, fifos["stdin"], fifos["control"])
    proc = subprocess.Popen([sys.executable, "-S", logwriter.__file__, "--log", str(tmp_path / "0.log"),
                             "--out-fd", str(out_r), "--stdin-fd", str(in_w), "--stdin-fifo-fd", str(fifos["stdin"]),
                             "--control-fifo-fd", str(fifos["control"])], pass_fds=fds)
    for fd in fds:
        os.close(fd)
    try:
        with open(tmp_path / "stdin", "wb", buffering=0) as f:
            f.write(b"typed in\n")
        with open(tmp_path / "control", "wb", buffering=0) as f:
            f.write(b'{"Width": 80, "Height": 24}\n{"CloseStdin": true}\n')  # no terminal: the size is ignored
        got = b""
        while chunk := os.read(in_r, 1024):  # ends: the writer closed the pipe after the data
            got += chunk
        assert got == b"typed in\n"
    finally:
        os.close(in_r)
        os.close(out_w)
        assert proc.wait(20) == 0


# --- stats --------------------------------------------------------------------------------------

NET_DEV = "\n".join([  # /proc/net/dev, its columns narrowed
    "Inter-|   Receive                                                |  Transmit",
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
    "carrier compressed",
    "    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0",
    "  eth0: 5008 63 1 2 0 0 0 0 1453 18 3 4 0 0 0 0"])


def test_net_dev_counters_and_cadvisor_names() -> None:
    parsed = stats.parse_net_dev(NET_DEV)
    assert parsed["eth0"] == stats.NetCounters(5008, 63, 1, 2, 1453, 18, 3, 4)
    pod = stats.PodTarget("default", "web", "u1", None, {"web": "/cg/web"}, net_pid=os.getpid())
    usage = {"/cg/web": stats.Usage(1.0, 2_500_000_000, 1000, 5.0, 4096)}
    reg = metrics.Registry(process_metrics=False)
    reg.register(stats.CadvisorCollector(lambda: [pod], lambda: usage))
    text = reg.render()
    assert 'container_cpu_usage_seconds_total{container="web",namespace="default",pod="web"} 2.5\n' in text
    assert 'container_memory_working_set_bytes{container="web",namespace="default",pod="web"} 4096.0\n' in text
    assert "# TYPE container_network_receive_bytes_total counter" in text
    # this process's own network namespace has interfaces (the pod's eth0 in the lab)
    own = {name for name in stats.net_counters(os.getpid())}
    for iface in own:
        assert f'container_network_transmit_bytes_total{{interface="{iface}",namespace="default",pod="web"}}' in text


def test_cpu_rate_in_nanocores() -> None:
    assert stats.parse_cpu_stat("usage_usec 1500\nuser_usec 1000\n") == 1_500_000
    first = stats.Usage(100.0, 1_000_000_000, None, None, 0)
    assert stats.rate(first, 102.0, 1_500_000_000) == (250_000_000, 2.0)  # half a second in two: 250m
    assert stats.rate(None, 102.0, 1) == (None, None)
    assert stats.rate(first, 102.0, 10) == (None, None)  # counter went back: a new cgroup
    s = stats.Usage(time.time(), 5, 250_000_000, 2.0, 1024).stats()
    assert s["cpu"]["usageNanoCores"] == 250_000_000 and s["memory"]["workingSetBytes"] == 1024


# --- the SPDY session engine --------------------------------------------------------------------


class Pipe:
    """A byte stream: what the test feeds is what the session reads; what it writes is kept."""

    def __init__(self) -> None:
        self.inbound: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent = bytearray()
        self.closed = False

    async def read(self) -> bytes:
        return await self.inbound.get()

    def write(self, data: bytes) -> None:
        self.sent += data

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


def test_spdy_session_replies_echoes_pings_and_ends_streams() -> None:
    async def scenario() -> list[spdy.Frame]:
        pipe, client = Pipe(), spdy.Codec()
        conn = SpdyConn(pipe)  # type: ignore[arg-type]
        serving = asyncio.create_task(conn.serve())
        pipe.inbound.put_nowait(client.encode(spdy.SynStream(1, {"streamtype": ["error"]}))
                                + client.encode(spdy.SynStream(3, {"streamtype": ["stdin"]}))
                                + client.encode(spdy.Data(3, b"input")) + client.encode(spdy.Ping(7))
                                + client.encode(spdy.Data(3, b"", spdy.FLAG_FIN)))
        error = await conn.accept(5)
        stdin = await conn.accept(5)
        assert error.header("streamType") == "error" and stdin.id == 3
        assert await stdin.read() == b"input" and await stdin.read() == b""
        await error.write(b"status")
        await error.close()
        pipe.inbound.put_nowait(client.encode(spdy.RstStream(1, spdy.CANCEL)))
        await asyncio.sleep(0.05)
        assert 1 not in conn.streams
        await conn.close()
        pipe.inbound.put_nowait(b"")
        await asyncio.wait_for(serving, 5)
        assert pipe.closed and conn.ended.is_set()
        return client.feed(bytes(pipe.sent))

    frames = asyncio.run(scenario())
    assert frames == [spdy.SynReply(1, {}), spdy.SynReply(3, {}), spdy.Ping(7), spdy.Data(1, b"status"),
                      spdy.Data(1, b"", spdy.FLAG_FIN), spdy.GoAway(3)]


def test_spdy_session_refuses_stream_ids_that_go_back() -> None:
    async def scenario() -> list[spdy.Frame]:
        pipe, client = Pipe(), spdy.Codec()
        conn = SpdyConn(pipe)  # type: ignore[arg-type]
        serving = asyncio.create_task(conn.serve())
        pipe.inbound.put_nowait(client.encode(spdy.SynStream(5, {"streamtype": ["data"]}))
                                + client.encode(spdy.SynStream(3, {"streamtype": ["error"]})) + b"")
        await conn.accept(5)
        await asyncio.sleep(0.05)
        pipe.inbound.put_nowait(b"")
        await asyncio.wait_for(serving, 5)
        return client.feed(bytes(pipe.sent))

    assert asyncio.run(scenario()) == [spdy.SynReply(5, {}), spdy.RstStream(3, spdy.PROTOCOL_ERROR)]
