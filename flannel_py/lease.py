"""flannel's lease value: the JSON stored at <prefix>/subnets/<a.b.c.d>-<len>[&<ipv6>-<len>].

    {"PublicIP":"192.168.33.10","PublicIPv6":null,"BackendType":"vxlan",
     "BackendData":{"VNI":1,"VtepMAC":"7a:1c:..."}}

A dual-stack lease (EnableIPv6) also carries the node's IPv6 underlay address and its IPv6 VTEP:

    {"PublicIP":"192.168.33.10","PublicIPv6":"fd00:33::10","BackendType":"vxlan",
     "BackendData":{"VNI":1,"VtepMAC":"7a:1c:..."},"BackendV6Data":{"VNI":1,"VtepMAC":"9e:03:..."}}

Encoding writes exactly flanneld's field names and order so other tools (and flanneld itself)
read our leases. Decoding is tolerant of unknown keys but rejects values that cannot be used,
with a message naming the problem: a corrupt lease must be skipped by its readers, never crash them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel_py.config import HOST_GW, VXLAN

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class LeaseError(ValueError):
    """A lease value that cannot be used."""


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: IPv4Address
    backend_type: str
    vni: int | None = None
    vtep_mac: str | None = None
    public_ipv6: IPv6Address | None = None
    vtep_mac_v6: str | None = None  # the MAC of the node's flannel-v6.<VNI> (BackendV6Data)

    @property
    def backend_data(self) -> dict[str, Any] | None:
        """flanneld's BackendData: vxlan's VNI and VTEP MAC; nothing (JSON null) for host-gw."""
        return {"VNI": self.vni, "VtepMAC": self.vtep_mac} if self.backend_type == VXLAN else None

    @property
    def backend_v6_data(self) -> dict[str, Any] | None:
        """flanneld's BackendV6Data: the IPv6 VTEP's VNI and MAC (vxlan, dual-stack)."""
        if self.backend_type != VXLAN or self.vtep_mac_v6 is None:
            return None
        return {"VNI": self.vni, "VtepMAC": self.vtep_mac_v6}

    def encode(self) -> str:
        doc: dict[str, Any] = {"PublicIP": str(self.public_ip),
                               "PublicIPv6": str(self.public_ipv6) if self.public_ipv6 else None,
                               "BackendType": self.backend_type}
        if self.backend_type == VXLAN:
            doc["BackendData"] = self.backend_data
            if self.backend_v6_data is not None:
                doc["BackendV6Data"] = self.backend_v6_data
        return json.dumps(doc, separators=(",", ":"))


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    attrs: LeaseAttrs
    ipv6_subnet: IPv6Network | None = None


def decode(raw: str | bytes) -> LeaseAttrs:
    """Parse a lease value; LeaseError says what is wrong with a bad one."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise LeaseError(f"lease value is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise LeaseError(f"lease value is a JSON {type(doc).__name__}, not an object")
    return decode_doc(doc)


def decode_doc(doc: dict[str, Any]) -> LeaseAttrs:
    """The attributes of a decoded lease object (also what the kube subnet manager assembles from
    a Node's annotations); LeaseError says what is wrong."""
    public_ip = doc.get("PublicIP")
    if not isinstance(public_ip, str):
        raise LeaseError("lease has no PublicIP string")
    try:
        ip = IPv4Address(public_ip)
    except ValueError:
        raise LeaseError(f"lease PublicIP {public_ip!r} is not an IPv4 address") from None
    raw_v6 = doc.get("PublicIPv6")
    ipv6 = None
    if raw_v6 is not None:
        try:
            ipv6 = IPv6Address(str(raw_v6))
        except ValueError:
            raise LeaseError(f"lease PublicIPv6 {raw_v6!r} is not an IPv6 address") from None
    backend = doc.get("BackendType") or ""
    if not isinstance(backend, str):
        raise LeaseError(f"lease BackendType {backend!r} is not a string")
    if backend != VXLAN:
        # host-gw (and other backends' data) needs nothing but the public addresses.
        return LeaseAttrs(ip, backend, public_ipv6=ipv6)
    vni, mac = _vxlan_data(doc.get("BackendData"), "BackendData")
    mac_v6 = None
    if doc.get("BackendV6Data") is not None:
        vni_v6, mac_v6 = _vxlan_data(doc["BackendV6Data"], "BackendV6Data")
        if vni_v6 != vni:
            raise LeaseError(f"vxlan lease BackendV6Data VNI {vni_v6} differs from BackendData VNI {vni}")
    return LeaseAttrs(ip, VXLAN, vni, mac, ipv6, mac_v6)


def _vxlan_data(data: object, what: str) -> tuple[int, str]:
    """(VNI, VtepMAC) of a vxlan BackendData / BackendV6Data object."""
    if not isinstance(data, dict):
        raise LeaseError(f"vxlan lease has no {what} object")
    vni = data.get("VNI")
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni < 1 << 24:
        raise LeaseError(f"vxlan lease VNI {vni!r} is not an integer in 0..16777215")
    mac = data.get("VtepMAC")
    if not isinstance(mac, str) or not _MAC.match(mac.lower()):
        raise LeaseError(f"vxlan lease VtepMAC {mac!r} is not a MAC address")
    mac = mac.lower()
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise LeaseError(f"vxlan lease VtepMAC {mac} is not a unicast address")
    return vni, mac


def vxlan_attrs(public_ip: IPv4Address, vni: int, vtep_mac: str, public_ipv6: IPv6Address | None = None,
                vtep_mac_v6: str | None = None) -> LeaseAttrs:
    return LeaseAttrs(public_ip, VXLAN, vni, vtep_mac.lower(), public_ipv6,
                      vtep_mac_v6.lower() if vtep_mac_v6 else None)


def hostgw_attrs(public_ip: IPv4Address, public_ipv6: IPv6Address | None = None) -> LeaseAttrs:
    return LeaseAttrs(public_ip, HOST_GW, public_ipv6=public_ipv6)
