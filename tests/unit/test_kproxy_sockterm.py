"""sock_diag messages and the choice of sockets to abort (kproxy/ebpf/sockterm.py).

The wire layout is checked against the kernel's own answer too: a dump in a fresh network
namespace must list a connected UDP socket made there, with its addresses and ports.
"""

from __future__ import annotations

import socket
import struct
import uuid

import pytest

from knet import netns
from kproxy.ebpf import sockterm
from kproxy.model import Endpoint, ServicePort


def udp_port(*eps: Endpoint, protocol: str = "UDP") -> ServicePort:
    return ServicePort("default", "dns", "", protocol, 53, cluster_ips=("10.96.0.10",), endpoints=eps)


def test_stale_targets_are_removed_or_unready_udp_endpoints() -> None:
    a, b = Endpoint("10.244.1.2", 5353), Endpoint("10.244.2.2", 5353)
    assert sockterm.stale_targets(udp_port(a, b), udp_port(b)) == {("10.244.1.2", 5353)}
    assert sockterm.stale_targets(udp_port(a, b), None) == {("10.244.1.2", 5353), ("10.244.2.2", 5353)}
    unready = Endpoint("10.244.1.2", 5353, ready=False, serving=False)
    assert sockterm.stale_targets(udp_port(a, b), udp_port(unready, b)) == {("10.244.1.2", 5353)}
    # A new port number on the same pod is a different target.
    assert sockterm.stale_targets(udp_port(a), udp_port(Endpoint("10.244.1.2", 53))) == {("10.244.1.2", 5353)}


def test_no_targets_for_tcp_new_services_or_unchanged_endpoints() -> None:
    a = Endpoint("10.244.1.2", 80)
    assert sockterm.stale_targets(udp_port(a, protocol="TCP"), None) == set()
    assert sockterm.stale_targets(None, udp_port(a)) == set()
    assert sockterm.stale_targets(udp_port(a), udp_port(a)) == set()


def test_destroy_request_carries_the_dumped_id_unchanged() -> None:
    sockid = bytes(range(sockterm.SOCKID_LEN))
    sock = sockterm.UdpSocket("10.0.0.1", 1, "10.0.0.2", 2, sockid)
    msg = sockterm.destroy_request(sock, seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, seq) == (len(msg), sockterm.SOCK_DESTROY, 7)
    assert flags & sockterm.NLM_F_ACK
    assert msg.endswith(sockid)
    family, proto = msg[16], msg[17]
    assert (family, proto) == (socket.AF_INET, socket.IPPROTO_UDP)


def test_truncated_netlink_message_is_an_error_not_a_loop() -> None:
    msg = sockterm.dump_request()
    with pytest.raises(ValueError):
        list(sockterm.parse_messages(msg[:-4]))
    bad_len = struct.pack("=IHHII", 4, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        list(sockterm.parse_messages(bad_len))


@pytest.mark.integration
def test_kernel_dump_lists_and_destroys_a_connected_socket() -> None:
    name = f"kt-sockterm-{uuid.uuid4().hex[:6]}"
    netns.create(name)
    try:
        with netns.enter(name):
            server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            server.bind(("127.0.0.1", 0))
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.connect(server.getsockname())
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.bind(("127.0.0.1", 0))
            other.connect(("127.0.0.1", 9))
            diag = sockterm._Diag()
        try:
            target = {server.getsockname()}
            found = sockterm.matching(diag.connected_udp(), target)
            assert [(s.src, s.sport, s.dst, s.dport) for s in found] == [
                (*client.getsockname(), *server.getsockname())]
            assert diag.destroy(found[0]) == 0
            # The pending error surfaces on the next receive; the socket is disconnected.
            client.settimeout(1)
            with pytest.raises(ConnectionAbortedError):
                client.recv(100)
            with pytest.raises(OSError, match="Destination address required"):
                client.send(b"x")
            other.send(b"x")  # the other connected socket is untouched
            assert sockterm.matching(diag.connected_udp(), target) == []
        finally:
            diag.close()
            for s in (server, client, other):
                s.close()
    finally:
        netns.delete(name)
