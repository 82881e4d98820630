"""Helpers for the kproxy data-path tests (a module of its own, not conftest, so the tests can
import it by a name no other test directory uses): backends that say who they are, and the
request that asks them."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

from knet import netns
from tests.netutil import accept_loop, family, server_socket, serving


def _peer(peer: tuple) -> str:
    """The client's address as its family writes it (a dual-stack socket sees IPv4 clients as
    ::ffff:a.b.c.d)."""
    return peer[0].removeprefix("::ffff:")


@contextlib.contextmanager
def named_server(ns: str, name: str, proto: str = "TCP", port: int = 8080, addr: str = "0.0.0.0") -> Iterator[None]:
    """A TCP or UDP server in `ns` answering every request with "<name> <peer ip>" (addr "::":
    both families on one socket)."""
    srv = server_socket(ns, socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM, addr=addr, port=port)

    def answer(conn: socket.socket, peer: tuple) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(2)
            conn.recv(1024)
            conn.sendall(f"{name} {_peer(peer)}".encode())

    def serve_udp(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                _, peer = srv.recvfrom(2048)
                srv.sendto(f"{name} {_peer(peer)}".encode(), peer)
            except (TimeoutError, OSError):
                continue

    with serving([srv], (lambda stop: accept_loop(srv, stop, answer)) if proto == "TCP" else serve_udp):
        yield


def ask(ns: str, host: str, port: int, proto: str = "TCP", timeout: float = 2.0) -> str:
    """One request from `ns` (a client outside the pods' cgroup): the answer. A UDP answer must
    come from the address asked (the service's frontend), not from the backend behind it."""
    with netns.enter(ns):
        s = socket.socket(family(host), socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM)
    with s:
        s.settimeout(timeout)
        if proto == "UDP":
            s.sendto(b"q", (host, port))
            data, peer = s.recvfrom(2048)
            assert peer[:2] == (host, port), f"reply from {peer}, not the frontend"
            return data.decode()
        s.connect((host, port))
        s.sendall(b"q")
        return s.recv(1024).decode()


def wait_answers(ns: str, host: str, port: int, name: str, deadline: float = 30.0) -> None:
    """Until `name` answers at host:port from `ns`: set-up (new IPv6 neighbours through a fresh
    bridge), not speed, so a generous deadline on a loaded machine."""
    end = time.monotonic() + deadline
    while True:
        try:
            if ask(ns, host, port, timeout=1).split()[0] == name:
                return
        except OSError:
            if time.monotonic() > end:
                raise
        time.sleep(0.1)
