import json

import pytest

from cni import errors
from cni.config import apply_subnet_file, parse_netconf
from cni.errors import CniError
from cni.plugin import run
from cni.request import parse_cni_args, parse_env, parse_stdin

BASE = {"cniVersion": "1.0.0", "name": "knet", "type": "knet-cni",
        "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/usr/lib/cni"}


def code_of(fn, *args) -> int:
    with pytest.raises(CniError) as e:
        fn(*args)
    return e.value.code


def test_defaults_follow_reference_bridge():
    conf = parse_netconf(dict(BASE))
    assert conf.bridge == "cni0"
    assert not conf.is_gateway and not conf.ip_masq and conf.mtu is None


@pytest.mark.parametrize(("change", "code"), [
    ({"cniVersion": "9.9.9"}, errors.INCOMPATIBLE_VERSION),
    ({"cniVersion": None}, errors.INVALID_CONFIG),
    ({"name": "bad name!"}, errors.INVALID_CONFIG),
    ({"name": None}, errors.INVALID_CONFIG),
    ({"mtu": "1500"}, errors.INVALID_CONFIG),
    ({"mtu": 20}, errors.INVALID_CONFIG),
    ({"isGateway": "yes"}, errors.INVALID_CONFIG),
    ({"mtu": True}, errors.INVALID_CONFIG),
    ({"bridge": "a-very-long-bridge-name"}, errors.INVALID_CONFIG),
    ({"ipam": {}}, errors.INVALID_CONFIG),
])
def test_invalid_config_codes(change, code):
    conf = dict(BASE)
    for k, v in change.items():
        if v is None:
            conf.pop(k)
        else:
            conf[k] = v
    assert code_of(parse_netconf, conf) == code


def test_error_message_names_the_field():
    with pytest.raises(CniError) as e:
        parse_netconf(dict(BASE, mtu="big"))
    assert "'mtu'" in e.value.msg


def test_gc_needs_valid_attachments():
    assert code_of(parse_netconf, dict(BASE), "GC") == errors.INVALID_CONFIG
    conf = parse_netconf(dict(BASE, **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}),
                         "GC")
    assert conf.valid_attachments == [{"containerID": "a", "ifname": "eth0"}]


def test_default_route_rules():
    assert parse_netconf(dict(BASE, isGateway=True)).wants_default_route
    assert not parse_netconf(dict(BASE, isGateway=True, isDefaultGateway=False)).wants_default_route
    assert parse_netconf(dict(BASE, isDefaultGateway=True)).wants_default_route
    assert not parse_netconf(dict(BASE)).wants_default_route


def test_subnet_file_fills_flannel_mode(tmp_path):
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\n"
                   "FLANNEL_IPMASQ=true\n")
    conf = parse_netconf({"cniVersion": "1.0.0", "name": "knet", "type": "knet-cni",
                          "subnetFile": str(env), "ipam": {"dataDir": "/tmp/x"}})
    apply_subnet_file(conf)
    assert conf.ipam == {"dataDir": "/tmp/x", "type": "host-local", "ranges": [[{"subnet": "10.244.3.0/24"}]],
                         "routes": [{"dst": "10.244.0.0/16"}]}
    assert conf.mtu == 1450 and conf.is_gateway
    assert conf.ip_masq is False  # flanneld masquerades itself when FLANNEL_IPMASQ=true


def test_dual_stack_subnet_file_gives_a_range_set_and_a_route_per_family(tmp_path):
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\n"
                   "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
                   "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n")
    conf = parse_netconf({"cniVersion": "1.0.0", "name": "knet", "type": "knet-cni", "subnetFile": str(env)})
    apply_subnet_file(conf)
    assert conf.ipam == {"type": "host-local",
                         "ranges": [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]],
                         "routes": [{"dst": "10.244.0.0/16"}, {"dst": "fd00:10:244::/56"}]}
    assert conf.mtu == 1430 and conf.is_gateway and conf.ip_masq
    # an IPv6-only overlay writes no FLANNEL_SUBNET
    env.write_text("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n")
    conf = parse_netconf({"cniVersion": "1.0.0", "name": "knet", "type": "knet-cni", "subnetFile": str(env)})
    apply_subnet_file(conf)
    assert conf.ipam["ranges"] == [[{"subnet": "fd00:10:244:3::/64"}]]
    env.write_text("FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:3::1/129\n")
    with pytest.raises(CniError) as e:
        apply_subnet_file(conf)
    assert e.value.code == errors.INVALID_CONFIG and "malformed" in e.value.msg


def test_missing_subnet_file_is_clear(tmp_path):
    conf = parse_netconf({"cniVersion": "1.0.0", "name": "knet", "type": "knet-cni",
                          "subnetFile": str(tmp_path / "nope.env")})
    with pytest.raises(CniError) as e:
        apply_subnet_file(conf)
    assert e.value.code == errors.INVALID_CONFIG and "overlay daemon" in e.value.msg


@pytest.mark.parametrize(("env", "code"), [
    ({}, errors.INVALID_ENVIRONMENT),
    ({"CNI_COMMAND": "FROB"}, errors.INVALID_ENVIRONMENT),
    (dict(ENV, CNI_NETNS=""), errors.INVALID_ENVIRONMENT),
    ({k: v for k, v in ENV.items() if k != "CNI_CONTAINERID"}, errors.INVALID_ENVIRONMENT),
    (dict(ENV, CNI_IFNAME="x" * 16), errors.INVALID_ENVIRONMENT),
    (dict(ENV, CNI_ARGS="novalue"), errors.INVALID_ENVIRONMENT),
])
def test_environment_errors(env, code):
    assert code_of(parse_env, env) == code


def test_del_does_not_need_netns():
    req = parse_env(dict(ENV, CNI_COMMAND="DEL", CNI_NETNS=""))
    assert req.command == "DEL" and req.netns == ""


def test_cni_args():
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a") == {"IgnoreUnknown": "1", "K8S_POD_NAME": "a"}


@pytest.mark.parametrize("data", [b"", b"{", b"[1,2]", b"\xff\xfe"])
def test_stdin_decode_errors(data):
    assert code_of(parse_stdin, data) == errors.DECODE_FAILURE


def test_run_returns_spec_error_json():
    code, out = run(ENV, b"{not json")
    assert code == 1
    err = json.loads(out)
    assert err["code"] == errors.DECODE_FAILURE and err["msg"] and err["cniVersion"]


def test_run_error_echoes_config_version():
    code, out = run(ENV, json.dumps(dict(BASE, cniVersion="0.4.0", mtu="x")).encode())
    assert code == 1 and json.loads(out)["cniVersion"] == "0.4.0"


def test_version_command():
    code, out = run({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    answer = json.loads(out)
    assert code == 0 and answer["cniVersion"] == "1.0.0"
    assert {"0.4.0", "1.0.0", "1.1.0"} <= set(answer["supportedVersions"])


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_new_verbs_need_1_1(command):
    code, out = run(dict(ENV, CNI_COMMAND=command), json.dumps(
        dict(BASE, **{"cni.dev/valid-attachments": []})).encode())
    assert code == 1 and json.loads(out)["code"] == errors.INCOMPATIBLE_VERSION


def test_check_needs_prev_result():
    code, out = run(dict(ENV, CNI_COMMAND="CHECK"), json.dumps(BASE).encode())
    assert code == 1 and "prevResult" in json.loads(out)["msg"]
