"""A small rtnetlink client on a raw socket: only the messages the plugin sends.

Why not pyroute2: importing it takes ~0.25 s, more than the reference plugin's whole ADD+DEL, and
each of its calls runs an asyncio loop (~1 ms of Python per message here). The plugin needs a
handful of messages (get/create/set/delete a link, add an address, add a route, dump addresses
and routes for CHECK), which fit in this module, and it sends several of them in one datagram:
the kernel answers each in turn, so a batch costs one system call pair.

Encoding and decoding are pure functions (unit-tested byte for byte); `Rtnl` is the socket.
"""

from __future__ import annotations

# The C module, not `socket`: that one imports enum and selectors (~15% of the direct path's start).
import _socket
import errno
import ipaddress
import os
import struct
from collections import namedtuple
from collections.abc import Sequence

try:
    from os import setns as _setns  # Python >= 3.12
except ImportError:
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)

    def _setns(fd: int, nstype: int = 0) -> None:
        if _libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns: {os.strerror(err)}")

AF_NETLINK = 16
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10   # acks without a copy of the request
NETLINK_EXT_ACK = 11   # the kernel's error text (extack) with an error

NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLM_F_ACK_TLVS = 0x200          # in an NLMSG_ERROR: extack attributes follow
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_EXT_MASK = 29
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link without its counters: a fifth of the message
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4            # hairpin mode of a bridge port
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
IFA_F_NODAD = 0x02              # `ip addr add ... nodad`: usable at once, never "dadfailed"
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15

IFF_UP, IFF_PROMISC = 0x1, 0x100
AF_INET, AF_INET6 = 2, 10
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3                 # what `ip route add` and the reference plugin use
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
NLA_TYPE_MASK = 0x3FFF
CLONE_NEWNET = 0x40000000


class NetlinkError(OSError):
    """A request the kernel refused: errno plus the kernel's own explanation when it gave one."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, os.strerror(code) + (f" ({detail})" if detail else ""))
        self.detail = detail


# --- encoding (pure) -----------------------------------------------------------------------------

def attr(kind: int, data: bytes) -> bytes:
    size = _NLATTR.size + len(data)
    return _NLATTR.pack(size, kind) + data + b"\0" * (-size % 4)


def attr_str(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return _IFINFOMSG.pack(family, 0, index, flags, change)


def mac_bytes(mac: str) -> bytes:
    return bytes(int(octet, 16) for octet in mac.split(":"))


def random_mac() -> str:
    """A random unicast, locally administered MAC address (what the kernel picks for a veth)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


# Named tuples, not dataclasses: dataclasses imports inspect, ~20% of the direct path's start.
Request = namedtuple("Request", "type flags body")
"""One message of a batch: its type, the flags beyond REQUEST|ACK, and its body."""


def get_link(name: str) -> Request:
    return Request(RTM_GETLINK, 0, ifinfomsg() + attr_str(IFLA_IFNAME, name)
                   + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS))


def new_bridge(name: str, mac: str, mtu: int | None, up_flags: int) -> Request:
    info = attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge"))
    body = ifinfomsg(flags=up_flags, change=up_flags) + attr_str(IFLA_IFNAME, name) + \
        attr(IFLA_ADDRESS, mac_bytes(mac)) + (attr_u32(IFLA_MTU, mtu) if mtu else b"") + info
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def set_flags(name: str, flags: int, mask: int) -> Request:
    """Set `mask` bits of the link's flags to those of `flags`, by name."""
    return Request(RTM_NEWLINK, 0, ifinfomsg(flags=flags, change=mask) + attr_str(IFLA_IFNAME, name))


def new_veth(name: str, peer: str, peer_netns_fd: int, master: int, mtu: int | None) -> Request:
    """A veth pair in one message: `name` here, up and enslaved to `master`; `peer` in another
    namespace, still down (the kernel cannot bring a veth end up before both ends exist)."""
    mtu_attr = attr_u32(IFLA_MTU, mtu) if mtu else b""
    peer_msg = ifinfomsg() + attr_str(IFLA_IFNAME, peer) + \
        attr_u32(IFLA_NET_NS_FD, peer_netns_fd) + mtu_attr
    info = attr(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth")
                + attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, peer_msg)))
    body = ifinfomsg(flags=IFF_UP, change=IFF_UP) + attr_str(IFLA_IFNAME, name) + mtu_attr + \
        attr_u32(IFLA_MASTER, master) + info
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def set_hairpin(name: str) -> Request:
    """`ip link set <name> type bridge_slave hairpin on`."""
    slave = attr_str(IFLA_INFO_SLAVE_KIND, "bridge") + \
        attr(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, b"\x01"))
    return Request(RTM_NEWLINK, 0, ifinfomsg() + attr_str(IFLA_IFNAME, name) + attr(IFLA_LINKINFO, slave))


def del_link(name: str) -> Request:
    return Request(RTM_DELLINK, 0, ifinfomsg() + attr_str(IFLA_IFNAME, name))


def new_address(index: int, cidr: str) -> Request:
    """`ip addr add <cidr> dev <index>`, with the broadcast address iproute2 and the reference
    plugin set for IPv4 prefixes shorter than /31; an IPv6 address without duplicate address
    detection (`nodad`).

    Why no DAD: every address the plugin adds is one host-local reserved under its lock (the pod's,
    or its range's gateway on the bridge), so DAD can only find a duplicate that is not one. While
    DAD runs (a second or more) the address is tentative: the pod cannot bind it or use it as a
    source, so its first connections fail. And with hairpinMode the bridge echoes the pod's own
    neighbour solicitation back to it, which a kernel without enhanced_dad takes for a duplicate:
    the address is never usable (the reference bridge plugin sets accept_dad=0 in the pod for that
    reason). The per-address flag does the same in the message that adds the address, without
    entering the pod's namespace to write a sysctl."""
    iface = ipaddress.ip_interface(cidr)
    family = AF_INET if iface.version == 4 else AF_INET6
    packed = iface.ip.packed
    flags = IFA_F_NODAD if iface.version == 6 else 0
    body = _IFADDRMSG.pack(family, iface.network.prefixlen, flags, RT_SCOPE_UNIVERSE, index) + \
        attr(IFA_LOCAL, packed) + attr(IFA_ADDRESS, packed)
    if iface.version == 4 and iface.network.prefixlen < 31:
        body += attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def new_route(dst: str, gateway: str | None, oif: int) -> Request:
    net = ipaddress.ip_network(dst, strict=False)
    family = AF_INET if net.version == 4 else AF_INET6
    scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = _RTMSG.pack(family, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
    if net.prefixlen:
        body += attr(RTA_DST, net.network_address.packed)
    if gateway:
        body += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    body += attr_u32(RTA_OIF, oif)
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def encode(request: Request, seq: int, flags: int = NLM_F_REQUEST | NLM_F_ACK) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(request.body), request.type, flags | request.flags,
                          seq, 0) + request.body


# --- decoding (pure) -----------------------------------------------------------------------------

def parse_attrs(data: bytes | memoryview, offset: int = 0) -> dict[int, bytes]:
    """type -> payload of the attributes from offset on (the last one wins for repeated types)."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + _NLATTR.size <= end:
        size, kind = _NLATTR.unpack_from(data, offset)
        if size < _NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = bytes(data[offset + _NLATTR.size:offset + size])
        offset += (size + 3) & ~3
    return out


def _cstr(data: bytes | None) -> str | None:
    return data.split(b"\0", 1)[0].decode() if data is not None else None


Link = namedtuple("Link", "index flags name mac kind master mtu")
"""A link: index, flags (IFF_*), name, mac ("aa:bb:..."), kind ("veth", "bridge"... or None),
master index or None, mtu."""


def parse_link(body: bytes) -> Link:
    _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(body)
    attrs = parse_attrs(body, _IFINFOMSG.size)
    info = parse_attrs(attrs[IFLA_LINKINFO]) if IFLA_LINKINFO in attrs else {}
    mac = attrs.get(IFLA_ADDRESS, b"")
    return Link(
        index=index, flags=flags, name=_cstr(attrs.get(IFLA_IFNAME)) or "",
        mac=":".join(f"{b:02x}" for b in mac),
        kind=_cstr(info.get(IFLA_INFO_KIND)),
        master=_U32.unpack(attrs[IFLA_MASTER])[0] if IFLA_MASTER in attrs else None,
        mtu=_U32.unpack(attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else None,
    )


def parse_address(body: bytes) -> tuple[int, str]:
    """(interface index, "address/prefixlen") of an RTM_NEWADDR message."""
    _family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
    attrs = parse_attrs(body, _IFADDRMSG.size)
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS) or b""
    return index, f"{ipaddress.ip_address(raw)}/{prefixlen}"


def parse_route(body: bytes) -> dict | None:
    """{"dst", "gw", "oif"} of a main-table unicast route message (None for any other)."""
    family, dst_len, _src_len, _tos, table, _proto, _scope, rtype, _flags = _RTMSG.unpack_from(body)
    attrs = parse_attrs(body, _RTMSG.size)
    if RTA_TABLE in attrs:
        table = _U32.unpack(attrs[RTA_TABLE])[0]
    if table != RT_TABLE_MAIN or rtype != RTN_UNICAST:
        return None
    dst = str(ipaddress.ip_address(attrs[RTA_DST])) if RTA_DST in attrs else (
        "0.0.0.0" if family == AF_INET else "::")
    gw = str(ipaddress.ip_address(attrs[RTA_GATEWAY])) if RTA_GATEWAY in attrs else None
    oif = _U32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else None
    return {"dst": f"{dst}/{dst_len}", "gw": gw, "oif": oif}


def parse_error(body: bytes, flags: int) -> tuple[int, str]:
    """(errno, extack text) of an NLMSG_ERROR message (errno 0: an acknowledgement)."""
    code = -_I32.unpack_from(body)[0]
    detail = ""
    if code and flags & NLM_F_ACK_TLVS:
        # error, then the request's header (the request itself is cut: NETLINK_CAP_ACK), then TLVs
        detail = _cstr(parse_attrs(body, _I32.size + _NLMSGHDR.size).get(NLMSGERR_ATTR_MSG)) or ""
    return code, detail


# --- the socket ----------------------------------------------------------------------------------

class Reply:
    """What the kernel answered to one request of a batch: errno (0 = done) and data messages."""
    __slots__ = ("detail", "error", "messages")

    def __init__(self) -> None:
        self.error = 0
        self.detail = ""
        self.messages: list[bytes] = []

    def __repr__(self) -> str:
        return f"Reply(error={self.error}, detail={self.detail!r}, messages={len(self.messages)})"

    def check(self, *tolerated: int) -> Reply:
        if self.error and self.error not in tolerated:
            raise NetlinkError(self.error, self.detail)
        return self


class Rtnl:
    """A NETLINK_ROUTE socket in the namespace it was created in (see `in_netns`)."""

    BUFSIZE = 1 << 16  # the kernel sizes dump datagrams to what the reader offers, up to 32 KiB

    def __init__(self) -> None:
        self.sock = _socket.socket(AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0
        self.buf = bytearray(self.BUFSIZE)  # reused: a fresh 64 KiB bytes per recv costs more than the data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def batch(self, requests: Sequence[Request]) -> list[Reply]:
        """Send every request in one datagram; the kernel runs them in order (a failing one does
        not stop the next) and acknowledges each. Returns the replies in request order."""
        first = self.seq + 1
        self.seq += len(requests)
        self.sock.send(b"".join(encode(r, first + i) for i, r in enumerate(requests)))
        replies = [Reply() for _ in requests]
        pending = len(requests)
        while pending:
            for mtype, flags, seq, body in self._receive():
                i = seq - first
                if not 0 <= i < len(requests):
                    continue  # an answer to an earlier, abandoned batch on this socket
                if mtype == NLMSG_ERROR:
                    replies[i].error, replies[i].detail = parse_error(body, flags)
                    pending -= 1
                else:
                    replies[i].messages.append(body)
        return replies

    def request(self, request: Request, *tolerated: int) -> Reply:
        return self.batch([request])[0].check(*tolerated)

    def link(self, name: str) -> Link | None:
        """The link of that name, or None."""
        reply = self.request(get_link(name), errno.ENODEV)
        return parse_link(reply.messages[0]) if not reply.error else None

    def dump(self, mtype: int, body: bytes) -> list[bytes]:
        self.seq += 1
        seq = self.seq
        self.sock.send(encode(Request(mtype, 0, body), seq, NLM_F_REQUEST | NLM_F_DUMP))
        out: list[bytes] = []
        while True:
            for kind, flags, got, msg in self._receive():
                if got != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    code, detail = parse_error(msg, flags)
                    raise NetlinkError(code or errno.EIO, detail)
                out.append(msg)

    def addresses(self, index: int) -> list[str]:
        """Every address of the interface, as "address/prefixlen"."""
        found = [parse_address(m) for m in self.dump(RTM_GETADDR, _IFADDRMSG.pack(0, 0, 0, 0, 0))]
        return [cidr for idx, cidr in found if idx == index]

    def routes(self) -> list[dict]:
        """Main-table unicast routes of both families ({"dst", "gw", "oif"})."""
        out = []
        for family in (AF_INET, AF_INET6):
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            out += [r for r in map(parse_route, self.dump(RTM_GETROUTE, body)) if r is not None]
        return out

    def _receive(self) -> list[tuple[int, int, int, bytes]]:
        size = self.sock.recv_into(self.buf)
        data = self.buf
        out = []
        offset = 0
        while offset + _NLMSGHDR.size <= size:
            length, mtype, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                break
            out.append((mtype, flags, seq, bytes(data[offset + _NLMSGHDR.size:offset + length])))
            offset += (length + 3) & ~3
        return out


def in_netns(netns_fd: int) -> Rtnl:
    """A socket in another network namespace (an open nsfs file): made by this thread while it is
    inside it (a socket stays in the namespace it was created in), so no process has to be forked.
    (The same switch as knet.netns.enter, which would import subprocess into the direct path.)"""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(netns_fd, CLONE_NEWNET)
        try:
            return Rtnl()
        finally:
            _setns(own, CLONE_NEWNET)  # if this fails the thread is lost in the pod: let it raise
    finally:
        os.close(own)
