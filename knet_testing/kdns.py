"""Helpers shared by kdns's tests and benchmark: Kubernetes object builders and a fake upstream.

`FakeUpstream` is a tiny authoritative server for a made-up world (UDP and TCP, on a loopback
address) that counts the queries it gets, can be slowed down, and can answer with more records
than fit in 512 bytes (to exercise the TC -> TCP retry). Upstream tests use it, never a real
resolver.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
import time
from typing import Any

from kdns import wire
from knet.kube.models import EndpointSlice, Pod, Service


def service(name: str, ns: str = "default", cluster_ip: str | None = "10.96.0.10",
            ports: list[tuple[str, int, str]] | None = None, **spec: Any) -> Service:
    body: dict[str, Any] = {"ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports or []]}
    if cluster_ip is not None:
        body["clusterIP"] = cluster_ip
    body.update(spec)
    return Service.model_validate({"metadata": {"name": name, "namespace": ns}, "spec": body})


def endpoint_slice(svc: str, ns: str = "default", endpoints: list[dict[str, Any]] | None = None,
                   ports: list[tuple[str, int, str]] | None = None, name: str | None = None,
                   address_type: str = "IPv4") -> EndpointSlice:
    """endpoints: [{"addresses": [...], "hostname": ..., "conditions": {"ready": ...}}, ...]"""
    return EndpointSlice.model_validate({
        "metadata": {"name": name or f"{svc}-abcde", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": address_type, "endpoints": endpoints or [],
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports or []]})


def pod(name: str, ns: str = "default", ip: str = "10.244.1.5") -> Pod:
    return Pod.model_validate({"metadata": {"name": name, "namespace": ns},
                               "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})


def query(name: str, qtype: int = wire.A, *, qid: int = 0x1234, rd: bool = True, edns: int | None = 1232,
          do: bool = False) -> bytes:
    """A query message as a stub resolver sends it."""
    flags = wire.RD if rd else 0
    msg = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if edns is not None else 0)
    msg += wire.name_to_wire(name.rstrip(".")) + struct.pack("!HH", qtype, wire.IN)
    if edns is not None:
        msg += b"\0" + struct.pack("!HHIH", wire.OPT, edns, 0x8000 if do else 0, 0)
    return msg


class FakeUpstream:
    """`records`: lowercase name -> list of addresses, A and AAAA (TTL `ttl`); other names: NXDOMAIN with
    an SOA (negative TTL `negative_ttl`). `delay` seconds before each answer."""

    def __init__(self, host: str = "127.0.0.1", records: dict[str, list[str]] | None = None, *, ttl: int = 60,
                 negative_ttl: int = 30, delay: float = 0.0) -> None:
        self.records = records if records is not None else {}
        self.ttl, self.negative_ttl, self.delay = ttl, negative_ttl, delay
        self.queries: list[tuple[str, str, int]] = []  # (transport, name, qtype)
        self.udp_sources: set[tuple[str, int]] = set()  # client addresses of UDP queries
        self.host = host
        for _ in range(50):  # a UDP port whose TCP twin is free too (another process may hold it)
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((host, 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        else:
            raise OSError(f"no port on {host} free for both UDP and TCP")
        self.tcp.listen(16)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True)]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> FakeUpstream:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for s in (self.udp, self.tcp):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def count(self, name: str | None = None) -> int:
        return sum(1 for _, n, _ in self.queries if name is None or n == name)

    def answer(self, data: bytes, transport: str) -> bytes | None:
        try:
            q = wire.parse_query(data)
        except wire.FormError:
            return None
        self.queries.append((transport, q.qname, q.qtype))
        if self.delay:
            time.sleep(self.delay)
        reply = wire.Reply(ra=True, aa=True)
        addrs = self.records.get(q.qname)
        if addrs is None:
            reply.rcode = wire.NXDOMAIN
            zone = q.qname.partition(".")[2] or q.qname
            reply.authority.append((zone, wire.SOA, self.negative_ttl,
                                    (f"ns.{zone}", f"root.{zone}", 1, 3600, 600, 86400, self.negative_ttl)))
        elif q.qtype in (wire.A, wire.AAAA):  # the name's addresses of the asked family (none: NODATA)
            version = 4 if q.qtype == wire.A else 6
            reply.answer = [(q.qname, q.qtype, self.ttl, ip.packed) for ip in map(ipaddress.ip_address, addrs)
                            if ip.version == version]
        return wire.build(q, reply, q.udp_limit if transport == "udp" else None)[0]

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65535)
            except OSError:
                return
            if addr:  # (shutdown wakes recvfrom with nothing)
                self.udp_sources.add(addr)
            resp = self.answer(data, "udp")
            if resp is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(resp, addr)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = _recv_exactly(conn, 2)
                    data = _recv_exactly(conn, int.from_bytes(head, "big"))
                    resp = self.answer(data, "tcp")
                    if resp is None:
                        return
                    conn.sendall(len(resp).to_bytes(2, "big") + resp)
            except (OSError, EOFError):
                return


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf
