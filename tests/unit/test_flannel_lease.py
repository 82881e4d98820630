"""flannel's lease JSON: exact encoding, round trip, tolerant decoding, clear errors on garbage."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest

from flannel_py.lease import LeaseError, decode, hostgw_attrs, vxlan_attrs

FLANNELD_VALUE = ('{"PublicIP":"192.168.33.11","PublicIPv6":null,"BackendType":"vxlan",'
                  '"BackendData":{"VNI":1,"VtepMAC":"a2:e4:33:f8:bd:f3"}}')


def test_encoding_matches_flanneld():
    attrs = vxlan_attrs(IPv4Address("192.168.33.11"), 1, "A2:E4:33:F8:BD:F3")
    assert attrs.encode() == FLANNELD_VALUE


def test_round_trip():
    for attrs in (vxlan_attrs(IPv4Address("10.0.0.5"), 77, "02:00:00:00:00:01"), hostgw_attrs(IPv4Address("10.0.0.6"))):
        assert decode(attrs.encode()) == attrs
        assert decode(attrs.encode().encode()) == attrs


def test_hostgw_value():
    assert json.loads(hostgw_attrs(IPv4Address("10.0.0.6")).encode()) == {
        "PublicIP": "10.0.0.6", "PublicIPv6": None, "BackendType": "host-gw"}


def test_tolerates_extra_fields_and_case():
    doc = json.loads(FLANNELD_VALUE)
    doc["BackendV6Data"] = None
    doc["Future"] = {"x": 1}
    doc["BackendData"]["VtepMAC"] = "A2:E4:33:F8:BD:F3"
    attrs = decode(json.dumps(doc))
    assert attrs.vtep_mac == "a2:e4:33:f8:bd:f3" and attrs.vni == 1


@pytest.mark.parametrize(("raw", "message"), [
    ("not json", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    ("[1, 2]", "JSON list, not an object"),
    ("{}", "no PublicIP"),
    ('{"PublicIP": "1.2.3"}', "not an IPv4 address"),
    ('{"PublicIP": 7}', "no PublicIP"),
    ('{"PublicIP": "1.2.3.4", "BackendType": "vxlan"}', "no BackendData"),
    ('{"PublicIP": "1.2.3.4", "BackendType": "vxlan", "BackendData": {"VNI": "1", "VtepMAC": "02:00:00:00:00:01"}}',
     "VNI"),
    ('{"PublicIP": "1.2.3.4", "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": "zz"}}', "VtepMAC"),
    ('{"PublicIP": "1.2.3.4", "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": "01:00:5e:00:00:01"}}',
     "not a unicast"),
    ('{"PublicIP": "1.2.3.4", "BackendType": 3}', "BackendType"),
])
def test_garbage_is_rejected_with_a_reason(raw, message):
    with pytest.raises(LeaseError, match=message):
        decode(raw)


def test_dual_stack_value_is_flanneld_shape_and_round_trips():
    from ipaddress import IPv6Address

    attrs = vxlan_attrs(IPv4Address("192.168.33.11"), 1, "A2:E4:33:F8:BD:F3", IPv6Address("fd00:33::11"),
                        "9E:03:00:00:00:11")
    assert attrs.encode() == ('{"PublicIP":"192.168.33.11","PublicIPv6":"fd00:33::11","BackendType":"vxlan",'
                              '"BackendData":{"VNI":1,"VtepMAC":"a2:e4:33:f8:bd:f3"},'
                              '"BackendV6Data":{"VNI":1,"VtepMAC":"9e:03:00:00:00:11"}}')
    assert decode(attrs.encode()) == attrs
    hg = hostgw_attrs(IPv4Address("10.0.0.6"), IPv6Address("fd00:33::6"))
    assert json.loads(hg.encode()) == {"PublicIP": "10.0.0.6", "PublicIPv6": "fd00:33::6", "BackendType": "host-gw"}
    assert decode(hg.encode()) == hg
    for bad, message in (({"PublicIPv6": "10.0.0.1"}, "not an IPv6"),
                         ({"BackendV6Data": {"VNI": 1, "VtepMAC": "nope"}}, "not a MAC"),
                         ({"BackendV6Data": {"VNI": 2, "VtepMAC": "9e:03:00:00:00:11"}}, "differs"),
                         ({"BackendV6Data": "x"}, "no BackendV6Data")):
        with pytest.raises(LeaseError, match=message):
            decode(json.dumps({**json.loads(attrs.encode()), **bad}))
