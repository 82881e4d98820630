"""The Server on loopback without the API server, in both UDP modes: answers over UDP and TCP,
cluster answers while the upstream is slow, a clean close (the UDP thread ends)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import dnslib
import pytest

from kdns import config, wire
from kdns.daemon import parse_args
from kdns.forward import Upstream
from kdns.records import RecordStore
from kdns.server import Server
from knet_testing.kdns import FakeUpstream, query, service

pytestmark = pytest.mark.integration
Z = "cluster.local"


def udp_ask(port: int, data: bytes, timeout: float = 2.0) -> dnslib.DNSRecord:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        return dnslib.DNSRecord.parse(s.recv(65535))


def tcp_ask(port: int, data: bytes) -> dnslib.DNSRecord:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
        c.sendall(len(data).to_bytes(2, "big") + data)
        size = int.from_bytes(c.recv(2), "big")
        buf = b""
        while len(buf) < size:
            buf += c.recv(size - len(buf))
        return dnslib.DNSRecord.parse(buf)


@pytest.mark.parametrize("mode", ["thread", "loop"])
def test_modes_answer_and_close(mode):
    store = RecordStore()
    store.update_service("default/web", service("web", "default", "10.96.0.20", [("http", 80, "TCP")]))
    with FakeUpstream("127.0.0.1", {"slow.example.com": ["192.0.2.9"]}, delay=1.0) as up:
        args = parse_args(["--listen", "127.0.0.1:53", "--forward-timeout", "3"])
        server = Server(store, config.from_flags(args, [Upstream("127.0.0.1", up.port)]).blocks, udp_mode=mode)
        ready = threading.Event()
        box: dict = {}

        async def main() -> None:
            box["port"] = (await server.listen([("127.0.0.1", 0)]))[0][1]
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = asyncio.Event()
            ready.set()
            await box["stop"].wait()
            server.close()

        t = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
        t.start()
        assert ready.wait(10)
        port = box["port"]
        try:
            assert str(udp_ask(port, query(f"web.default.svc.{Z}")).rr[0].rdata) == "10.96.0.20"
            assert str(udp_ask(port, query(f"web.default.svc.{Z}", qid=9)).rr[0].rdata) == "10.96.0.20"  # hit
            assert tcp_ask(port, query(f"_http._tcp.web.default.svc.{Z}", 33)).rr[0].rdata.port == 80
            slow: dict = {}
            th = threading.Thread(target=lambda: slow.update(r=udp_ask(port, query("slow.example.com"), 5)))
            th.start()
            time.sleep(0.1)
            t0 = time.monotonic()
            assert udp_ask(port, query(f"web.default.svc.{Z}", qid=10)).header.id == 10
            assert time.monotonic() - t0 < 0.3  # not behind the 1 s upstream
            th.join()
            assert str(slow["r"].rr[0].rdata) == "192.0.2.9"
        finally:
            box["loop"].call_soon_threadsafe(box["stop"].set)
            t.join(5)
        assert not t.is_alive()
        udp_threads = [th for th in threading.enumerate() if th.name == "kdns udp"]
        deadline = time.monotonic() + 3
        while any(th.is_alive() for th in udp_threads) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(th.is_alive() for th in udp_threads)


def test_loop_detection():
    """Two kdns forwarding to each other (a `forward . /etc/resolv.conf` that names the other):
    the `loop` plugin's probe comes back, and the callback that stops kdns fires."""
    detected = threading.Event()

    async def main() -> None:
        a = Server(RecordStore(), [], udp_mode="loop")
        b = Server(RecordStore(), [], udp_mode="loop")
        (_, pa), = await a.listen([("127.0.0.1", 0)])
        (_, pb), = await b.listen([("127.0.0.1", 0)])
        for server, other in ((a, pb), (b, pa)):
            args = parse_args(["--listen", "127.0.0.1:53", "--forward-timeout", "5"])
            server.configure(config.from_flags(args, [Upstream("127.0.0.1", other)]).blocks)
        a.loop_probe, a.loop_probe_wire = "12345.67890", wire.name_to_wire("12345.67890")
        a.on_loop_detected = detected.set
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(query("12345.67890", 13), ("127.0.0.1", pa))
            for _ in range(100):
                if detected.is_set():
                    break
                await asyncio.sleep(0.05)
        a.close()
        b.close()

    asyncio.run(main())
    assert detected.is_set()
