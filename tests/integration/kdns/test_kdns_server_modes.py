"""The Server on loopback without the API server, in both UDP modes: answers over UDP and TCP,
cluster answers while the upstream is slow, a clean close (the UDP thread ends)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import dnslib
import pytest

from kdns.forward import Forwarder, Upstream
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
        server = Server(store, Forwarder([Upstream("127.0.0.1", up.port)], timeout=3.0), udp_mode=mode)
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
        udp_threads = [th for th in threading.enumerate() if th.name == f"udp 127.0.0.1:{port}"]
        deadline = time.monotonic() + 3
        while any(th.is_alive() for th in udp_threads) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(th.is_alive() for th in udp_threads)
