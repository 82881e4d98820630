"""Helpers that exchange real packets between lab namespaces (a module of its own, not conftest,
so that test modules can import it by a name no other test directory uses).

Every socket is created from a thread that has entered a lab namespace (a socket stays in the
namespace it was made in), so no test traffic ever originates in the root namespace.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from knet import netns


def ns_socket(ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    with netns.enter(ns):
        # Paranoia: the socket must not be made in the root namespace, whose routes go outside.
        assert netns.inode() == netns.inode(ns)
        s = socket.socket(family, kind)
    s.settimeout(5)
    return s


def tcp_exchange(server_ns: str, server_ip: str, client_ns: str, dst_ip: str, port: int,
                 dst_port: int | None = None, payload: bytes = b"hello knet") -> tuple[str, bytes, bytes]:
    """Listen in server_ns, connect from client_ns, send payload, get it echoed back.
    Returns (client address as the server saw it, what the server got, what the client got)."""
    srv = ns_socket(server_ns)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((server_ip, port))
    srv.listen(1)
    seen: dict = {}

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, addr = srv.accept()  # the accepted socket lives in the listener's namespace
            with conn:
                conn.settimeout(5)
                data = _recv_all(conn)
                seen.update(peer=addr[0], data=data)
                conn.sendall(b"echo:" + data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with ns_socket(client_ns) as cli:
            cli.connect((dst_ip, dst_port or port))
            cli.sendall(payload)
            cli.shutdown(socket.SHUT_WR)
            reply = _recv_all(cli)
        t.join(5)
    finally:
        srv.close()
    return seen.get("peer", ""), seen.get("data", b""), reply


def _recv_all(s: socket.socket) -> bytes:
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def udp_both_ways(a_ns: str, a_ip: str, b_ns: str, b_ip: str, port: int) -> tuple[tuple, bytes, tuple, bytes]:
    """a -> b, then b answers to the address it saw. Returns what each side received and from whom."""
    with ns_socket(a_ns, kind=socket.SOCK_DGRAM) as a, ns_socket(b_ns, kind=socket.SOCK_DGRAM) as b:
        a.bind((a_ip, port))
        b.bind((b_ip, port))
        a.sendto(b"ping from a", (b_ip, port))
        got_b, from_a = b.recvfrom(2048)
        b.sendto(b"pong from b", from_a)
        got_a, from_b = a.recvfrom(2048)
    return from_a, got_b, from_b, got_a


@contextlib.contextmanager
def scapy_in(ns: str) -> Iterator[None]:
    """Enter the namespace with scapy's cached view (interfaces, routes, ARP) of it.

    scapy opens its sockets at call time, so they land in the entered namespace, but it reads
    interfaces and routes once at import, from the root namespace: without a resync it binds to
    the wrong ifindex (ENODEV) and picks the wrong source. Its sender thread is started from the
    entered thread and so inherits the namespace; threaded=False in the callers keeps even that
    out of the question."""
    from scapy.all import conf
    conf.verb = 0
    with netns.enter(ns):
        assert netns.inode() == netns.inode(ns)
        _resync(conf)
        try:
            yield
        finally:
            conf.netcache.flush()
    _resync(conf)  # back to the view of the namespace we run in (only read)


def _resync(conf) -> None:  # scapy.config.Conf
    conf.netcache.flush()
    conf.ifaces.reload()
    conf.route.resync()
