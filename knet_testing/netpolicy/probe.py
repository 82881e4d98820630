"""The reachability matrix (packets): small servers in pod namespaces and parallel probes.

A stand-in for upstream's agnhost servers: every pod answers on TCP 80, 81 and UDP 80, 81 with
its own name (TCP: on accept; UDP: to any datagram), so a probe proves it reached the right pod.
All servers are sockets of one selector thread of this process and all probes of a round run
at once from one selector loop (a blocked probe costs its timeout once per round, not per cell).
Every socket is created inside its pod's namespace (`knet.netns.enter`): the test process never
sends anything from its own namespace.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import cast

from knet import netns
from knet_testing.netpolicy.matrix import PORTS, Cell, Table

KIND = {"TCP": socket.SOCK_STREAM, "UDP": socket.SOCK_DGRAM}


class Servers:
    """TCP/UDP servers for pods: {pod key: netns name}. Use as a context manager."""

    def __init__(self, pods: Mapping[str, str], ports: Iterable[tuple[int, str]] = PORTS) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        for key, ns in pods.items():
            for port, proto in ports:
                with netns.enter(ns):
                    s = socket.socket(socket.AF_INET, KIND[proto])
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", port))
                if proto == "TCP":
                    s.listen(512)
                s.setblocking(False)
                self.sel.register(s, selectors.EVENT_READ, (proto, key.encode()))
                self.socks.append(s)
        self.thread = threading.Thread(target=self._serve, name="netpol-servers", daemon=True)

    def __enter__(self) -> Servers:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for s in self.socks:
            s.close()
        self.sel.close()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for sk, _ in self.sel.select(0.1):
                proto, name = sk.data
                sock = cast(socket.socket, sk.fileobj)  # only sockets are registered
                with contextlib.suppress(OSError):
                    if proto == "TCP":
                        while True:  # drain the accept queue
                            conn, _ = sock.accept()
                            with conn:
                                conn.send(name)
                    else:
                        while True:
                            _, peer = sock.recvfrom(64)
                            sock.sendto(name, peer)


def probe(want: Iterable[Cell], pods: Mapping[str, tuple[str, str]], timeout: float = 0.5) -> Table:
    """Probe cells at once. pods: {key: (netns, ip)}. A cell is True when the destination pod
    answered with its own name within `timeout`."""
    sel = selectors.DefaultSelector()
    result: Table = {}
    pending: dict[socket.socket, Cell] = {}
    by_src: dict[str, list[Cell]] = {}
    for c in want:
        by_src.setdefault(c[0], []).append(c)
    try:
        for src, group in by_src.items():
            socks = []
            with netns.enter(pods[src][0]):  # enter once per source pod, make all its sockets
                socks = [socket.socket(socket.AF_INET, KIND[c[3]]) for c in group]
            for s, c in zip(socks, group, strict=True):
                s.setblocking(False)
                dst_ip = pods[c[1]][1]
                err = s.connect_ex((dst_ip, c[2]))
                if err not in (0, errno.EINPROGRESS):
                    result[c] = False
                    s.close()
                    continue
                if c[3] == "UDP":
                    with contextlib.suppress(OSError):
                        s.send(b"?")
                pending[s] = c
                sel.register(s, selectors.EVENT_READ, c)
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for sk, _ in sel.select(left):
                s = cast(socket.socket, sk.fileobj)  # only sockets are registered
                c = sk.data
                try:
                    data = s.recv(64)
                except BlockingIOError:
                    continue
                except OSError:  # refused / unreachable: an answer, but not from a server
                    data = b""
                result[c] = data == c[1].encode()
                sel.unregister(s)
                s.close()
                del pending[s]
    finally:
        for s, c in pending.items():
            result.setdefault(c, False)
            s.close()
        sel.close()
    return result


def probe_until_settled(want: Table, pods: Mapping[str, tuple[str, str]], timeout: float = 0.5,
                        retries: int = 2, retry_timeout: float = 1.5) -> Table:
    """Probe every cell; re-probe the cells that disagree with `want` (a lost SYN or a slow
    first packet can only turn an allowed cell into a blocked one; a blocked flow never turns
    allowed by asking again), as the upstream tests poll until the table matches or time is up."""
    got = probe(want, pods, timeout)
    for _ in range(retries):
        wrong = [c for c, v in want.items() if got[c] != v]
        if not wrong:
            break
        got.update(probe(wrong, pods, retry_timeout))
    return got
