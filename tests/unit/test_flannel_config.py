"""flannel network config: defaults and validation as flanneld computes them."""

from __future__ import annotations

import ipaddress
import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel_py.config import ConfigError, parse_config


def cfg(**doc):
    return parse_config(json.dumps(doc))


def test_defaults_for_a_16():
    c = cfg(Network="10.244.0.0/16")
    assert c.network == IPv4Network("10.244.0.0/16")
    assert c.subnet_len == 24
    # The first subnet is skipped (its .0 would be the network address); the last one is used.
    assert c.subnet_min == IPv4Address("10.244.1.0")
    assert c.subnet_max == IPv4Address("10.244.255.0")
    assert (c.backend.type, c.backend.vni, c.backend.port, c.backend.device) == ("vxlan", 1, 8472, "flannel.1")


@pytest.mark.parametrize(("network", "subnet_len", "smin", "smax"), [
    ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
    ("10.1.0.0/22", 24, "10.1.1.0", "10.1.3.0"),
    ("10.1.0.0/23", 25, "10.1.0.128", "10.1.1.128"),   # smaller than /22: Network + 2
    ("10.1.0.0/28", 30, "10.1.0.4", "10.1.0.12"),
])
def test_subnet_len_default(network, subnet_len, smin, smax):
    c = cfg(Network=network)
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (subnet_len, smin, smax)


def test_explicit_values():
    c = cfg(Network="10.0.0.0/8", SubnetLen=20, SubnetMin="10.10.0.0", SubnetMax="10.99.0.0",
            Backend={"Type": "vxlan", "VNI": 4096, "Port": 4789})
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (20, "10.10.0.0", "10.99.0.0")
    assert (c.backend.vni, c.backend.port, c.backend.device) == (4096, 4789, "flannel.4096")


def test_host_gw():
    c = cfg(Network="10.244.0.0/16", Backend={"Type": "host-gw"})
    assert c.backend.type == "host-gw"


def test_port_zero_means_kernel_default():
    assert cfg(Network="10.244.0.0/16", Backend={"Type": "vxlan", "Port": 0}).backend.port == 8472


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "Network is missing"),
    ({"Network": "10.244.0.1/16"}, "not an IPv4 CIDR"),
    ({"Network": "fd00::/64"}, "not IPv4"),
    ({"Network": "10.1.0.0/29"}, "too small"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 31}, "/30 or shorter"),
    ({"Network": "10.244.0.0/16", "SubnetLen": 17}, "fewer than four subnets"),
    ({"Network": "10.244.0.0/16", "SubnetLen": "24"}, "must be an integer"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.245.0.0"}, "not in the range"),
    ({"Network": "10.244.0.0/16", "SubnetMax": "10.244.3.7"}, "boundary"),
    ({"Network": "10.244.0.0/16", "SubnetMin": "10.244.9.0", "SubnetMax": "10.244.3.0"}, "above SubnetMax"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}, "not supported"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1 << 24}}, "VNI"),
    ({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}}, "Port"),
    ({"Network": "10.244.0.0/16", "Backend": "vxlan"}, "JSON object"),
])
def test_invalid(doc, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps(doc))


@pytest.mark.parametrize("raw", ["", "{", "[]", b"\xff"])
def test_not_json(raw):
    with pytest.raises(ConfigError):
        parse_config(raw)


# --- dual-stack (EnableIPv6), flanneld's defaults and checks for the IPv6 keys --------------------

@pytest.mark.parametrize(("network", "subnet_len", "smin", "smax"), [
    ("fd00:10:244::/56", 64, "fd00:10:244:1::", "fd00:10:244:ff::"),   # the lab's: a /64 per node
    ("fd00::/48", 64, "fd00:0:0:1::", "fd00:0:0:ffff::"),
    ("fd00::/63", 65, "fd00::8000:0:0:0", "fd00:0:0:1:8000::"),        # smaller than /62: IPv6Network + 2
    ("fd00::/124", 126, "fd00::4", "fd00::c"),
])
def test_ipv6_defaults(network, subnet_len, smin, smax):
    c = cfg(Network="10.244.0.0/16", EnableIPv6=True, IPv6Network=network)
    assert c.ipv6 is not None and c.ipv6.network == ipaddress.IPv6Network(network)
    assert (c.ipv6.subnet_len, str(c.ipv6.subnet_min), str(c.ipv6.subnet_max)) == (subnet_len, smin, smax)
    assert c.subnet_len == 24 and c.backend.device_v6 == "flannel-v6.1"


def test_ipv6_explicit_values_and_off_by_default():
    c = cfg(Network="10.244.0.0/16", EnableIPv6=True, IPv6Network="fd00:10:244::/56", IPv6SubnetLen=72,
            IPv6SubnetMin="fd00:10:244:2::", IPv6SubnetMax="fd00:10:244:3::")
    assert c.ipv6 is not None
    assert (c.ipv6.subnet_len, str(c.ipv6.subnet_min), str(c.ipv6.subnet_max)) == \
        (72, "fd00:10:244:2::", "fd00:10:244:3::")
    assert cfg(Network="10.244.0.0/16", IPv6Network="fd00:10:244::/56").ipv6 is None  # EnableIPv6 not set


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "IPv6Network is missing"),
    ({"IPv6Network": "10.1.0.0/16"}, "not IPv6"),
    ({"IPv6Network": "fd00:10:244::1/56"}, "not an IPv6 CIDR"),
    ({"IPv6Network": "fd00::/125"}, "too small"),
    ({"IPv6Network": "fd00::/56", "IPv6SubnetLen": 127}, "/126 or shorter"),
    ({"IPv6Network": "fd00::/56", "IPv6SubnetLen": 57}, "fewer than four subnets"),
    ({"IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd01::"}, "not in the range"),
    ({"IPv6Network": "fd00::/56", "IPv6SubnetMax": "fd00:0:0:3::1"}, "boundary"),
    ({"IPv6Network": "fd00::/56", "IPv6SubnetMin": "10.244.1.0"}, "not an IPv6 address"),
    ({"IPv6Network": "fd00::/56", "IPv6SubnetMin": "fd00:0:0:9::", "IPv6SubnetMax": "fd00:0:0:3::"}, "above"),
    ({"IPv6Network": "fd00::/56", "EnableIPv4": False}, "IPv6-only"),
    ({"IPv6Network": "fd00::/56", "EnableIPv6": "yes"}, "true or false"),
])
def test_ipv6_invalid(doc, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(json.dumps({"Network": "10.244.0.0/16", "EnableIPv6": True, **doc}))
