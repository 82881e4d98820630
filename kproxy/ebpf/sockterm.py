"""Terminating connected UDP sockets whose backend went away (the ebpf mode's stale-UDP fix).

In ebpf mode a connected UDP socket is translated once, in the connect4 hook: from then on it is
a plain socket connected to the backend's address, the kernel runs no sendmsg hook for it, and
no conntrack entry exists that kproxy could delete (the iptables mode's fix). So when a UDP
endpoint is removed, kproxy aborts the connected sockets pointing at it, as Cilium does: the
application's next send/recv fails with ECONNABORTED and it reconnects — through connect4 again,
which now picks a live backend. Resolvers and other long-lived UDP clients treat that error as
"open a new socket".

The sockets live in the pods' network namespaces: the namespaces of the processes in the pods'
cgroup (the one the hooks are attached to), each visited once. Inside a namespace, sock_diag
(NETLINK_SOCK_DIAG) lists connected UDP sockets and SOCK_DESTROY aborts one (the kernel's
CONFIG_INET_DIAG_DESTROY, which `ss -K` uses too). Pure parts (message building and parsing,
which sockets match) are separate from the socket I/O for unit tests. IPv6 backends' sockets are
dumped and aborted the same way, in the AF_INET6 table.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from knet import cgroups, netns
from kproxy.model import ServicePort, cluster_endpoints

log = logging.getLogger("knet.kproxy.ebpf")

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_ESTABLISHED = 1  # a connected UDP socket reports this state

_NLMSG = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
_REQ = struct.Struct("=BBBxI")
# inet_diag_sockid: sport, dport (big endian), src[16], dst[16], if, cookie[2]
_SOCKID = struct.Struct("!HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
SOCKID_LEN = _SOCKID.size + _SOCKID_TAIL.size  # 48
# inet_diag_msg: family, state, timer, retrans, then the sockid, expires, rqueue, wqueue, uid, inode
_MSG_HEAD = struct.Struct("=BBBB")


@dataclass(frozen=True)
class UdpSocket:
    """One socket as sock_diag reports it; `sockid` is the raw id to hand back to SOCK_DESTROY."""
    src: str
    sport: int
    dst: str
    dport: int
    sockid: bytes
    family: int = socket.AF_INET


def dump_request(seq: int = 1, family: int = socket.AF_INET) -> bytes:
    """SOCK_DIAG_BY_FAMILY dump of connected UDP sockets of one family."""
    body = _REQ.pack(family, socket.IPPROTO_UDP, 0, 1 << TCP_ESTABLISHED) + bytes(SOCKID_LEN)
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def destroy_request(sock: UdpSocket, seq: int) -> bytes:
    """SOCK_DESTROY for one socket: the id exactly as dumped (the kernel checks its cookie)."""
    body = _REQ.pack(sock.family, socket.IPPROTO_UDP, 0, 0xFFFFFFFF) + sock.sockid
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in one datagram."""
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            raise ValueError(f"truncated netlink message at offset {off}")
        yield kind, data[off + _NLMSG.size:off + length]
        off += (length + 3) & ~3


def parse_socket(payload: bytes) -> UdpSocket:
    """An inet_diag_msg (IPv4 or IPv6) as a UdpSocket."""
    if len(payload) < _MSG_HEAD.size + SOCKID_LEN:
        raise ValueError("short inet_diag_msg")
    family = payload[0]
    sockid = payload[_MSG_HEAD.size:_MSG_HEAD.size + SOCKID_LEN]
    sport, dport, src, dst = _SOCKID.unpack_from(sockid)
    if family == socket.AF_INET6:
        return UdpSocket(socket.inet_ntop(family, src), sport, socket.inet_ntop(family, dst), dport, sockid, family)
    return UdpSocket(socket.inet_ntoa(src[:4]), sport, socket.inet_ntoa(dst[:4]), dport, sockid)


def error_code(payload: bytes) -> int:
    """The (positive) errno of an NLMSG_ERROR payload; 0 is an ack."""
    return -struct.unpack_from("=i", payload)[0]


def matching(sockets: Iterable[UdpSocket], targets: set[tuple[str, int]]) -> list[UdpSocket]:
    """Sockets connected to one of the (address, port) targets."""
    return [s for s in sockets if (s.dst, s.dport) in targets]


def stale_targets(old: ServicePort | None, new: ServicePort | None) -> set[tuple[str, int]]:
    """(address, port) of UDP endpoints that stopped taking traffic between two versions of a
    service port (the ones kube-proxy would flush conntrack entries for)."""
    ref = new or old
    if ref is None or ref.protocol != "UDP" or old is None:
        return set()
    kept = {(e.ip, e.port) for e in cluster_endpoints(new)} if new else set()
    return {(e.ip, e.port) for e in cluster_endpoints(old)} - kept


class _Diag:
    """A NETLINK_SOCK_DIAG socket in the namespace the calling thread was in when it was made."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        self.sock.settimeout(2.0)
        self.seq = 1

    def close(self) -> None:
        self.sock.close()

    def connected_udp(self, family: int = socket.AF_INET) -> list[UdpSocket]:
        self.seq += 1
        self.sock.send(dump_request(self.seq, family))
        out: list[UdpSocket] = []
        while True:
            for kind, payload in parse_messages(self.sock.recv(1 << 16)):
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code = error_code(payload)
                    raise OSError(code, f"sock_diag dump: {os.strerror(code)}")
                if kind == SOCK_DIAG_BY_FAMILY:
                    out.append(parse_socket(payload))

    def destroy(self, sock: UdpSocket) -> int:
        """0, or the errno (ENOENT: the socket closed meanwhile)."""
        self.seq += 1
        self.sock.send(destroy_request(sock, self.seq))
        for kind, payload in parse_messages(self.sock.recv(4096)):
            if kind == NLMSG_ERROR:
                return error_code(payload)
        return 0


def pod_namespaces(cgroup: str) -> dict[int, int]:
    """Network namespace inode -> one process in it, for every process under the cgroup."""
    found: dict[int, int] = {}
    for pid in cgroups.pids(cgroup):
        with contextlib.suppress(OSError):
            found.setdefault(os.stat(f"/proc/{pid}/ns/net").st_ino, pid)
    return found


def terminate(cgroup: str, targets: set[tuple[str, int]]) -> int:
    """Abort every connected UDP socket of the cgroup's processes whose peer is one of the
    (backend address, port) targets; returns how many were aborted. Errors for one namespace
    (its processes exited meanwhile) are logged and skipped."""
    if not targets:
        return 0
    families = {socket.AF_INET6 if ":" in ip else socket.AF_INET for ip, _ in targets}
    aborted = 0
    for ns_inode, pid in pod_namespaces(cgroup).items():
        try:
            with netns.enter(f"/proc/{pid}/ns/net"):
                diag = _Diag()
            try:
                found = [s for family in sorted(families) for s in diag.connected_udp(family)]
                for sock in matching(found, targets):
                    code = diag.destroy(sock)
                    if code == 0:
                        aborted += 1
                    elif code != errno.ENOENT:
                        log.warning("cannot abort UDP socket %s:%d -> %s:%d: %s", sock.src, sock.sport,
                                    sock.dst, sock.dport, os.strerror(code))
            finally:
                diag.close()
        except OSError as e:
            log.debug("skipping network namespace %d (pid %d): %s", ns_inode, pid, e)
    return aborted
