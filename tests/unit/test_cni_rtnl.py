"""The plugin's rtnetlink messages, byte for byte (the integration tests prove the kernel takes
them), and the decoding of what the kernel sends back."""

import errno
import struct

import pytest

from cni import rtnl


def nlattrs(data: bytes) -> list[tuple[int, bytes]]:
    """An independent reading of netlink attributes: (type, payload) in order."""
    out, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        out.append((kind, data[offset + 4:offset + size]))
        offset += (size + 3) & ~3
    return out


def test_veth_pair_in_one_message_golden():
    msg = rtnl.encode(rtnl.new_veth("veth0", "eth0", 7, 3, 1400), seq=5)
    assert msg.hex() == (
        "80000000100005060500000000000000"          # len 128, RTM_NEWLINK, REQUEST|ACK|EXCL|CREATE, seq 5
        "00000000000000000100000001000000"          # ifinfomsg: index 0, IFF_UP, change IFF_UP
        "0a0003007665746830000000"                  # IFLA_IFNAME veth0
        "0800040078050000" "08000a0003000000"       # IFLA_MTU 1400, IFLA_MASTER 3
        "44001200" "090001007665746800000000"       # IFLA_LINKINFO { KIND veth,
        "34000200" "30000100"                       #   INFO_DATA { VETH_INFO_PEER {
        "00000000000000000000000000000000"          #     ifinfomsg: down (both ends must exist first)
        "09000300657468300000000008001c0007000000"  #     IFLA_IFNAME eth0, IFLA_NET_NS_FD 7
        "0800040078050000"                          #     IFLA_MTU 1400 } } }
    )
    assert len(msg) == struct.unpack_from("=I", msg)[0]
    (_, info), = [a for a in nlattrs(msg[32:]) if a[0] == rtnl.IFLA_LINKINFO]
    kind, data = nlattrs(info)
    assert kind == (rtnl.IFLA_INFO_KIND, b"veth\0")
    (peer_type, peer), = nlattrs(data[1])
    assert peer_type == rtnl.VETH_INFO_PEER
    assert dict(nlattrs(peer[16:])) == {rtnl.IFLA_IFNAME: b"eth0\0", rtnl.IFLA_NET_NS_FD: b"\x07\0\0\0",
                                        rtnl.IFLA_MTU: struct.pack("=I", 1400)}


def test_ipv4_address_has_broadcast_like_iproute2():
    msg = rtnl.encode(rtnl.new_address(2, "10.1.0.2/24"), seq=6)
    family, prefixlen, _flags, scope, index = struct.unpack_from("=BBBBI", msg, 16)
    assert (family, prefixlen, scope, index) == (rtnl.AF_INET, 24, 0, 2)
    assert dict(nlattrs(msg[24:])) == {rtnl.IFA_LOCAL: bytes([10, 1, 0, 2]), rtnl.IFA_ADDRESS: bytes([10, 1, 0, 2]),
                                       rtnl.IFA_BROADCAST: bytes([10, 1, 0, 255])}
    # /31 and /32 have no broadcast address; IPv6 never has one
    assert rtnl.IFA_BROADCAST not in dict(nlattrs(rtnl.new_address(2, "10.1.0.2/31").body[8:]))
    v6 = rtnl.new_address(2, "fd00::2/64").body
    assert v6[0] == rtnl.AF_INET6
    assert dict(nlattrs(v6[8:]))[rtnl.IFA_ADDRESS] == bytes.fromhex("fd00" + "00" * 13 + "02")
    # IPv6: no duplicate address detection (the address is usable at once); IPv4 has no DAD
    assert v6[2] == rtnl.IFA_F_NODAD and _flags == 0


def test_routes_golden():
    default = rtnl.encode(rtnl.new_route("0.0.0.0/0", "10.1.0.1", 2), seq=7)
    assert default.hex() == ("2c000000180005060700000000000000"
                             "02000000fe030001" "00000000"     # inet /0, main table, proto boot, universe, unicast
                             "080005000a010001" "0800040002000000")  # RTA_GATEWAY, RTA_OIF (no RTA_DST for /0)
    link = rtnl.new_route("fd00:1::/64", None, 3).body
    assert link[:8] == bytes([rtnl.AF_INET6, 64, 0, 0, 254, 3, rtnl.RT_SCOPE_LINK, 1])
    assert [t for t, _ in nlattrs(link[12:])] == [rtnl.RTA_DST, rtnl.RTA_OIF]


def test_hairpin_is_bridge_port_data_by_name():
    body = rtnl.set_hairpin("veth0").body
    attrs = dict(nlattrs(body[16:]))
    assert attrs[rtnl.IFLA_IFNAME] == b"veth0\0"
    slave = dict(nlattrs(attrs[rtnl.IFLA_LINKINFO]))
    assert slave[rtnl.IFLA_INFO_SLAVE_KIND] == b"bridge\0"
    assert dict(nlattrs(slave[rtnl.IFLA_INFO_SLAVE_DATA])) == {rtnl.IFLA_BRPORT_MODE: b"\x01"}


def link_message(index: int, name: str, mac: bytes, kind: str | None, master: int | None) -> bytes:
    attrs = rtnl.attr_str(rtnl.IFLA_IFNAME, name) + rtnl.attr(rtnl.IFLA_ADDRESS, mac) + \
        rtnl.attr_u32(rtnl.IFLA_MTU, 1500) + rtnl.attr(99, b"unknown attributes are skipped")
    if master is not None:
        attrs += rtnl.attr_u32(rtnl.IFLA_MASTER, master)
    if kind:
        attrs += rtnl.attr(rtnl.IFLA_LINKINFO, rtnl.attr_str(rtnl.IFLA_INFO_KIND, kind))
    return rtnl.ifinfomsg(index=index, flags=rtnl.IFF_UP) + attrs


def test_parse_link():
    link = rtnl.parse_link(link_message(4, "cni0", bytes.fromhex("0a0b0c0d0e0f"), "bridge", None))
    assert link == rtnl.Link(index=4, flags=rtnl.IFF_UP, name="cni0", mac="0a:0b:0c:0d:0e:0f", kind="bridge",
                             master=None, mtu=1500)
    port = rtnl.parse_link(link_message(5, "veth1", b"\x02" * 6, None, 4))
    assert (port.kind, port.master) == (None, 4)


def test_parse_address_and_route():
    msg = rtnl.new_address(3, "10.9.0.7/16").body
    assert rtnl.parse_address(msg) == (3, "10.9.0.7/16")
    route = rtnl.new_route("10.8.0.0/16", "10.9.0.1", 3).body
    assert rtnl.parse_route(route) == {"dst": "10.8.0.0/16", "gw": "10.9.0.1", "oif": 3}
    assert rtnl.parse_route(rtnl.new_route("0.0.0.0/0", "10.9.0.1", 3).body)["dst"] == "0.0.0.0/0"
    local = bytearray(route)
    local[4] = 255  # table local
    assert rtnl.parse_route(bytes(local)) is None


def test_parse_error_with_kernel_explanation():
    text = rtnl.attr_str(rtnl.NLMSGERR_ATTR_MSG, "Invalid master")
    body = struct.pack("=i", -errno.EINVAL) + b"\0" * 16 + text
    assert rtnl.parse_error(body, rtnl.NLM_F_ACK_TLVS) == (errno.EINVAL, "Invalid master")
    assert rtnl.parse_error(struct.pack("=i", 0) + b"\0" * 16, 0) == (0, "")
    reply = rtnl.Reply()
    reply.error, reply.detail = errno.EINVAL, "Invalid master"
    with pytest.raises(rtnl.NetlinkError) as e:
        reply.check(errno.EEXIST)
    assert e.value.errno == errno.EINVAL and "Invalid master" in str(e.value)
    reply.error = errno.EEXIST
    assert reply.check(errno.EEXIST) is reply


def test_random_mac_is_local_unicast():
    for _ in range(50):
        first = int(rtnl.random_mac()[:2], 16)
        assert first & 0x02 and not first & 0x01
