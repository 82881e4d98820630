"""JSON through the C codec (must equal the json package), and the request's framing (the
executables against fake agents: test_cni_executables.py)."""

import json
import os

import pytest

from cni import wire
from cni.config import valid_network_name

SAMPLES = [
    {"cniVersion": "1.0.0", "name": "n", "ipam": {"ranges": [[{"subnet": "10.0.0.0/24"}]]}, "mtu": 1450},
    {"s": "é \" \\ \n \u2028 \U0001f600", "f": 1.5, "neg": -3, "e": 1e100, "t": True, "n": None, "l": []},
    [1, "two", {"three": [3]}],
    "plain",
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_codec_matches_json(obj):
    text = json.dumps(obj)
    assert wire.dumps(obj) == text
    assert wire.loads(text) == json.loads(text)
    assert wire.loads(("  \n" + text + " \t").encode()) == obj


@pytest.mark.parametrize("bad", [b"", b"   ", b'{"a": ', b'{"a": 1} x', b"{'a': 1}", b"\xff\xfe", b"[1,]"])
def test_codec_rejects_what_json_rejects(bad):
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        wire.loads(bad)


@pytest.mark.parametrize("env", [
    {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=a=b;X=1", "EMPTY": "", "UNI": "é"},
    {b"CNI_COMMAND": b"ADD", b"RAW": b"\xff not utf-8"},  # os.environb, as the executable sends it
])
def test_request_round_trip(env):
    stdin = b'{"cniVersion": "1.0.0"}\0binary ok'
    data = wire.encode_request(env, stdin, 4026531840, 123456789)
    head, _, rest = data.partition(b"\n")
    inode, deadline, env_len, stdin_len = wire.parse_header(head)
    assert (inode, deadline) == (4026531840, 123456789) and env_len + stdin_len == len(rest)
    decoded = wire.parse_env(rest[:env_len])
    assert {os.fsencode(k): os.fsencode(v) for k, v in decoded.items()} == \
        {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    assert rest[env_len:] == stdin


@pytest.mark.parametrize("head", [b"", b"GET / HTTP/1.1", b"KNETCNI3 1 2 3", b"KNETCNI3 a 1 1 1",
                                  b"KNETCNI3 1 1 -1 5", b"KNETCNI2 1 1 1", b"KNETCNI3 1 1 9999999 9999999"])
def test_bad_headers(head):
    with pytest.raises(wire.BadRequest):
        wire.parse_header(head)


def test_network_names_follow_libcni():
    assert all(map(valid_network_name, ["a", "knet", "my-net_1.2", "0net"]))
    assert not any(map(valid_network_name, ["", "-net", ".net", "_net", "bad name", "net/1", "é", None, 5]))
