"""Test helpers that send real packets between namespaces (sockets are created inside the
namespace they belong to via knet.netns.enter, then used from the test thread)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from knet import netns


def unique(tag: str) -> str:
    """A namespace-name prefix no other test run uses ("kt" marks test resources)."""
    return f"kt{tag}{secrets.token_hex(3)}"


def family(addr: str) -> int:
    """The socket family of an address literal ("::" and "fd00::2" are IPv6)."""
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def server_socket(ns: str, kind: int = socket.SOCK_STREAM, addr: str = "0.0.0.0", port: int = 0) -> socket.socket:
    """A socket made in `ns` and bound to addr:port (SO_REUSEADDR), listening if it is TCP, with the
    short timeout the serving loops below poll their stop event with."""
    with netns.enter(ns):
        srv = socket.socket(family(addr), kind)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    if kind == socket.SOCK_STREAM:
        srv.listen(256)
    srv.settimeout(0.2)
    return srv


def accept_loop(srv: socket.socket, stop: threading.Event, handle: Callable[[socket.socket, tuple], None]) -> None:
    """`handle(conn, peer)` every connection to `srv` until `stop` is set."""
    while not stop.is_set():
        try:
            conn, peer = srv.accept()
        except (TimeoutError, OSError):
            continue
        handle(conn, peer)


@contextmanager
def serving(socks: list[socket.socket], *loops: Callable[[threading.Event], None]) -> Iterator[None]:
    """Each `loop(stop)` on a thread of its own for the block; then `stop` is set, the threads are
    given 2 s to end and `socks` are closed."""
    stop = threading.Event()
    threads = [threading.Thread(target=loop, args=(stop,), daemon=True) for loop in loops]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        for s in socks:
            s.close()


@contextmanager
def tcp_server(ns: str, addr: str = "0.0.0.0", port: int = 0) -> Iterator[int]:
    """A TCP server in `ns` that answers each connection with b"from <peer ip>:" + the data."""
    srv = server_socket(ns, socket.SOCK_STREAM, addr, port)

    def answer(conn: socket.socket, peer: tuple) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            data = conn.recv(65536)
            conn.sendall(f"from {peer[0]}:".encode() + data)

    with serving([srv], lambda stop: accept_loop(srv, stop, answer)):
        yield srv.getsockname()[1]


def tcp_request(ns: str, host: str, port: int, payload: bytes = b"hello", timeout: float = 3.0) -> bytes:
    with netns.enter(ns):
        s = socket.socket(family(host), socket.SOCK_STREAM)
    with s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(payload)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def udp_exchange(client_ns: str, server_ns: str, server_ip: str, payload: bytes = b"ping",
                 timeout: float = 3.0) -> tuple[bytes, str]:
    """Send a datagram client -> server, echo it back; returns (reply, source seen by server)."""
    with netns.enter(server_ns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with netns.enter(client_ns):
        cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with srv, cli:
        srv.bind((server_ip, 0))
        srv.settimeout(timeout)
        cli.settimeout(timeout)
        cli.sendto(payload, (server_ip, srv.getsockname()[1]))
        data, peer = srv.recvfrom(65536)
        srv.sendto(data, peer)
        reply, _ = cli.recvfrom(65536)
        return reply, peer[0]


def icmp_echo(ns: str, dst: str, timeout: float = 2.0, ident: int = 0x4B4E):
    """Send one ICMP echo request built with scapy from inside `ns` and return the echo reply
    (a scapy IP packet) or None. A raw socket made inside the namespace carries it: scapy's own
    sockets resolve interfaces from the namespace scapy was imported in."""
    import time

    from scapy.layers.inet import ICMP, IP

    with netns.enter(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with s:
        s.settimeout(timeout)
        s.sendto(bytes(ICMP(type=8, id=ident, seq=1) / b"knet-probe"), (dst, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, _ = s.recvfrom(65535)
            except TimeoutError:
                return None
            pkt = IP(data)
            if ICMP in pkt and pkt[ICMP].type == 0 and pkt[ICMP].id == ident and pkt.src == dst:
                return pkt
    return None
