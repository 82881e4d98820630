"""Subnet allocation: SubnetMin/Max, SubnetLen, reuse of a preferred subnet, exhaustion, keys."""

from __future__ import annotations

import json
from ipaddress import IPv4Network as N

import pytest

from flannel_py.config import parse_config
from flannel_py.subnets import (
    SubnetExhausted,
    allocate,
    candidates,
    capacity,
    gateway,
    is_allocatable,
    parse_subnet_key,
    subnet_key,
)


def cfg(**doc):
    return parse_config(json.dumps({"Network": "10.244.0.0/16", **doc}))


def test_lowest_free_starting_at_subnet_min():
    c = cfg()
    assert allocate(c, set()) == N("10.244.1.0/24")
    assert allocate(c, {N("10.244.1.0/24"), N("10.244.2.0/24")}) == N("10.244.3.0/24")
    assert allocate(c, {N("10.244.1.0/24"), N("10.244.3.0/24")}) == N("10.244.2.0/24")


def test_subnet_min_max_and_len():
    c = cfg(SubnetLen=26, SubnetMin="10.244.7.64", SubnetMax="10.244.7.192")
    assert list(candidates(c)) == [N("10.244.7.64/26"), N("10.244.7.128/26"), N("10.244.7.192/26")]
    assert capacity(c) == 3
    assert allocate(c, {N("10.244.7.64/26")}) == N("10.244.7.128/26")


def test_exhaustion_is_a_clear_error():
    c = cfg(SubnetMin="10.244.1.0", SubnetMax="10.244.2.0")
    with pytest.raises(SubnetExhausted, match=r"all 2 /24 subnets between 10.244.1.0 and 10.244.2.0"):
        allocate(c, {N("10.244.1.0/24"), N("10.244.2.0/24")})


def test_preferred_is_reused_when_free_and_valid():
    c = cfg()
    assert allocate(c, {N("10.244.1.0/24")}, preferred=N("10.244.9.0/24")) == N("10.244.9.0/24")
    # taken, wrong size, outside SubnetMin..Max: fall back to the lowest free
    assert allocate(c, {N("10.244.9.0/24")}, preferred=N("10.244.9.0/24")) == N("10.244.1.0/24")
    assert allocate(c, set(), preferred=N("10.244.9.0/25")) == N("10.244.1.0/24")
    assert allocate(c, set(), preferred=N("10.244.0.0/24")) == N("10.244.1.0/24")
    assert allocate(c, set(), preferred=N("10.99.0.0/24")) == N("10.244.1.0/24")


def test_exclude_skips_subnets_lost_in_a_race():
    assert allocate(cfg(), set(), exclude={N("10.244.1.0/24")}) == N("10.244.2.0/24")


def test_is_allocatable():
    c = cfg(SubnetMax="10.244.10.0")
    assert is_allocatable(c, N("10.244.10.0/24"))
    assert not is_allocatable(c, N("10.244.11.0/24"))
    assert not is_allocatable(c, N("10.244.0.0/24"))


def test_keys():
    assert subnet_key(N("10.244.3.0/24")) == "10.244.3.0-24"
    assert parse_subnet_key("/coreos.com/network/subnets/10.244.3.0-24") == N("10.244.3.0/24")
    # dual-stack flanneld keys carry the IPv6 subnet after '&'
    assert parse_subnet_key("10.244.3.0-24&fc00:0:0:3::-64") == N("10.244.3.0/24")
    for bad in ("10.244.3.0", "10.244.3.1-24", "garbage", "10.244.3.0-24x", "300.1.1.0-24"):
        with pytest.raises(ValueError):
            parse_subnet_key(bad)


def test_gateway_is_dot_one():
    assert str(gateway(N("10.244.3.0/24"))) == "10.244.3.1"


def test_dual_stack_keys_and_ipv6_allocation():
    from ipaddress import IPv6Network as N6

    from flannel_py.subnets import parse_key

    v6 = N6("fd00:10:244:3::/64")
    assert subnet_key(N("10.244.3.0/24"), v6) == "10.244.3.0-24&fd00:10:244:3::-64"
    assert parse_key("/coreos.com/network/subnets/10.244.3.0-24&fd00:10:244:3::-64") == (N("10.244.3.0/24"), v6)
    assert parse_key("10.244.3.0-24") == (N("10.244.3.0/24"), None)
    with pytest.raises(ValueError):
        parse_key("10.244.3.0-24&fd00:10:244:3::1-64")  # host bits
    pool = cfg(EnableIPv6=True, IPv6Network="fd00:10:244::/56").ipv6
    assert allocate(pool, {N6("fd00:10:244:1::/64"), N("10.244.2.0/24")}) == N6("fd00:10:244:2::/64")
    assert allocate(pool, set(), preferred=v6) == v6
    assert allocate(pool, set(), preferred=N6("fd00:99::/64")) == N6("fd00:10:244:1::/64")
    assert capacity(pool) == 255 and not is_allocatable(pool, N("10.244.1.0/24"))
    assert str(gateway(v6)) == "fd00:10:244:3::1"
