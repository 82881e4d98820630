"""knet.kube.streams: WebSocket framing, the Kubernetes channel protocols and SPDY/3.1, byte for byte."""

from __future__ import annotations

import hashlib
import json
import zlib

import pytest

from knet.kube.streams import channels, spdy, websocket

# --- WebSocket ----------------------------------------------------------------------------------


def test_accept_key_of_rfc6455_example() -> None:
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_headers_and_protocol_choice() -> None:
    req = {"upgrade": "websocket", "connection": "keep-alive, Upgrade", "sec-websocket-version": "13",
           "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
           "sec-websocket-protocol": "v5.channel.k8s.io, v4.channel.k8s.io"}
    offered = websocket.offered_protocols(req)
    assert offered == ["v5.channel.k8s.io", "v4.channel.k8s.io"]
    assert websocket.choose_protocol(offered, channels.EXEC_WEBSOCKET) == "v5.channel.k8s.io"
    assert websocket.choose_protocol(offered, ("v4.channel.k8s.io",)) == "v4.channel.k8s.io"
    assert websocket.choose_protocol([], channels.EXEC_WEBSOCKET) == ""
    assert websocket.choose_protocol(["x"], channels.EXEC_WEBSOCKET) is None
    assert websocket.handshake(req, "v5.channel.k8s.io") == [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), ("Sec-WebSocket-Protocol", "v5.channel.k8s.io")]
    for broken in ({**req, "sec-websocket-version": "8"}, {**req, "sec-websocket-key": "short"},
                   {**req, "connection": "close"}):
        with pytest.raises(websocket.HandshakeError):
            websocket.handshake(broken, "")


def test_frames_of_rfc6455_examples() -> None:
    # 5.7: a single-frame unmasked text message, and the same masked with key 37 fa 21 3d
    assert websocket.frame(websocket.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    assert websocket.frame(websocket.TEXT, b"Hello", mask=bytes.fromhex("37fa213d")) == \
        bytes.fromhex("818537fa213d7f9f4d5158")
    assert websocket.frame(websocket.BINARY, b"x" * 256)[:4] == bytes.fromhex("827e0100")
    assert websocket.frame(websocket.BINARY, b"x" * 65536)[:10] == bytes.fromhex("827f0000000000010000")


def test_parser_joins_fragments_passes_control_frames_and_splits_anywhere() -> None:
    key = bytes.fromhex("01020304")
    wire = (websocket.frame(websocket.TEXT, b"Hel", fin=False, mask=key)
            + websocket.frame(websocket.PING, b"p", mask=key)
            + websocket.frame(websocket.CONTINUATION, b"lo", mask=key)
            + websocket.frame(websocket.BINARY, bytes(300), mask=key)
            + websocket.frame(websocket.CLOSE, websocket.close_payload(1000, "bye"), mask=key))
    for cut in range(len(wire)):
        p = websocket.Parser()
        got = p.feed(wire[:cut]) + p.feed(wire[cut:])
        assert got == [websocket.Message(websocket.PING, b"p"), websocket.Message(websocket.TEXT, b"Hello"),
                       websocket.Message(websocket.BINARY, bytes(300)),
                       websocket.Message(websocket.CLOSE, b"\x03\xe8bye")]
    assert websocket.parse_close(b"\x03\xe8bye") == (1000, "bye")


@pytest.mark.parametrize("wire, why", [
    (websocket.frame(websocket.TEXT, b"x"), "must be masked"),                             # unmasked client frame
    (bytes([0xC1, 0x80]) + bytes(4), "reserved bits"),                                    # RSV1 without extension
    (websocket.frame(websocket.PING, bytes(126), mask=b""), "control frames"),            # oversized control
    (websocket.frame(websocket.CONTINUATION, b"x", mask=b""), "continuation"),
    (websocket.frame(websocket.TEXT, b"\xff", mask=b""), "UTF-8"),
    (websocket.frame(0x3, b"", mask=b""), "unknown opcode"),
])
def test_parser_rejects_protocol_violations(wire: bytes, why: str) -> None:
    with pytest.raises(websocket.ProtocolError, match=why):
        websocket.Parser().feed(wire)


def test_parser_limits_message_size() -> None:
    p = websocket.Parser(max_message=10)
    with pytest.raises(websocket.ProtocolError) as e:
        p.feed(websocket.frame(websocket.BINARY, bytes(11), mask=b""))
    assert e.value.code == websocket.TOO_BIG


# --- channel protocols --------------------------------------------------------------------------


def test_binary_and_base64_channel_codecs() -> None:
    v4 = channels.Codec(channels.V4)
    assert v4.encode(channels.STDOUT, b"hi\n") == b"\x01hi\n"
    assert v4.decode(b"\x00foo\n") == (channels.STDIN, b"foo\n")
    assert not v4.text and v4.json_status and not v4.close_signal
    b64 = channels.Codec(channels.V1_BASE64)
    # wsstream's documented example: "foo\n" on stdin, "\n" on stdout
    assert b64.decode(bytes([48, 90, 109, 57, 118, 67, 103, 61, 61])) == (0, b"foo\n")
    assert b64.encode(channels.STDOUT, b"\n") == bytes([49, 67, 103, 61, 61])
    assert b64.text and not b64.json_status
    with pytest.raises(channels.ChannelError):
        b64.decode(b"0!!!")
    with pytest.raises(channels.ChannelError):
        v4.decode(b"")


def test_v5_close_signal() -> None:
    v5 = channels.Codec(channels.V5)
    assert v5.decode(bytes([255, 0])) == (channels.CLOSE_SIGNAL, b"\x00")
    assert channels.Codec(channels.V4).decode(bytes([255, 0])) == (255, b"\x00")  # no CLOSE in v4
    with pytest.raises(channels.ChannelError):
        v5.decode(bytes([255, 0, 1]))


def test_exit_status_is_what_client_go_decodes() -> None:
    assert channels.error_payload(channels.exit_status(0), True) == b'{"metadata":{},"status":"Success"}'
    failed = json.loads(channels.error_payload(channels.exit_status(3), True))
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    # the pre-v4 protocols: text, and nothing for a success
    assert channels.error_payload(channels.exit_status(0), False) == b""
    assert channels.error_payload(channels.exit_status(3), False).startswith(b"command terminated")
    internal = channels.exit_status(None, "container not running")
    assert internal["code"] == 500 and internal["message"] == "container not running"


def test_resize_messages() -> None:
    assert channels.parse_resize(b'{"Width":80,"Height":24}\n{"Width":100,"Height":30}\n') == [(80, 24), (100, 30)]
    assert channels.parse_resize(b"") == []
    with pytest.raises(channels.ChannelError):
        channels.parse_resize(b"{nope")


def test_port_forward_channels_and_ports() -> None:
    assert [channels.port_channels(i) for i in range(3)] == [(0, 1), (2, 3), (4, 5)]
    assert channels.port_prefix(8080) == b"\x90\x1f"
    assert channels.parse_ports(["80", "8080,9090"]) == [80, 8080, 9090]
    for bad in (["0"], ["65536"], ["http"]):
        with pytest.raises(ValueError):
            channels.parse_ports(bad)


# --- SPDY/3.1 -----------------------------------------------------------------------------------

# Written by moby/spdystream's framer (v0.5.1; what client-go sends): SYN_STREAM 1 {streamtype:
# error}, SYN_STREAM 3 {streamtype: stdin, port: 80} (the second block uses the first's zlib
# context), DATA 3 "hello" with FIN, PING 1.
SPDYSTREAM_FRAMES = bytes.fromhex(
    "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a6800000000ffff"
    "80030001000000230000000300000000000002651c4ca9e29294cc3c48895d044add4c160600000000ffff"
    "000000030100000568656c6c6f"
    "800300060000000400000001")


def test_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == \
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


def test_decodes_spdystream_frames_in_any_pieces() -> None:
    expected = [spdy.SynStream(1, {"streamtype": ["error"]}),
                spdy.SynStream(3, {"streamtype": ["stdin"], "port": ["80"]}),
                spdy.Data(3, b"hello", spdy.FLAG_FIN), spdy.Ping(1)]
    for cut in range(0, len(SPDYSTREAM_FRAMES), 7):
        c = spdy.Codec()
        assert c.feed(SPDYSTREAM_FRAMES[:cut]) + c.feed(SPDYSTREAM_FRAMES[cut:]) == expected


def test_every_frame_round_trips_with_one_compression_context_per_direction() -> None:
    frames: list[spdy.Frame] = [
        spdy.SynReply(1), spdy.SynStream(2, {"streamtype": ["error"], "x": ["a", "b"]}, spdy.FLAG_FIN, 0, 3),
        spdy.Data(1, b"out", spdy.FLAG_FIN), spdy.RstStream(3, spdy.CANCEL), spdy.GoAway(3),
        spdy.Ping(2), spdy.HeadersFrame(1, {"a": ["b"]}), spdy.Settings(((0, 7, 100),)), spdy.WindowUpdate(1, 100)]
    ours, theirs = spdy.Codec(), spdy.Codec()
    assert theirs.feed(b"".join(ours.encode(f) for f in frames)) == frames
    # fixed layouts (no header block): checked byte for byte
    assert ours.encode(spdy.RstStream(3, spdy.CANCEL)) == bytes.fromhex("80030003000000080000000300000005")
    assert ours.encode(spdy.GoAway(3)) == bytes.fromhex("80030007000000080000000300000000")
    assert ours.encode(spdy.Data(5, b"ab", spdy.FLAG_FIN)) == bytes.fromhex("00000005010000026162")


def test_header_block_layout_before_compression() -> None:
    block = spdy.encode_header_block({"StreamType": "error", "x": ["1", "2"]})
    assert block == (b"\x00\x00\x00\x02" b"\x00\x00\x00\x0astreamtype" b"\x00\x00\x00\x05error"
                     b"\x00\x00\x00\x01x" b"\x00\x00\x00\x031\x002")
    assert spdy.decode_header_block(block) == {"streamtype": ["error"], "x": ["1", "2"]}
    with pytest.raises(spdy.SpdyError, match="lower-case"):
        spdy.decode_header_block(b"\x00\x00\x00\x01\x00\x00\x00\x01X\x00\x00\x00\x00")


def test_compressed_blocks_end_on_a_sync_flush() -> None:
    raw = spdy.Codec().encode(spdy.SynReply(1, {"a": "b"}))
    assert raw.endswith(b"\x00\x00\xff\xff")
    d = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert spdy.decode_header_block(d.decompress(raw[12:])) == {"a": ["b"]}


def test_data_frames_split_at_the_24_bit_limit_with_fin_on_the_last() -> None:
    c = spdy.Codec()
    wire = c.encode(spdy.Data(1, bytes(spdy.MAX_DATA + 5), spdy.FLAG_FIN))
    got = spdy.Codec().feed(wire)
    assert [(len(f.data), f.flags) for f in got] == [(spdy.MAX_DATA, 0), (5, spdy.FLAG_FIN)]


def test_malformed_input_raises_spdy_error() -> None:
    with pytest.raises(spdy.SpdyError, match="version"):
        spdy.Codec().feed(bytes.fromhex("800200060000000400000001"))
    with pytest.raises(spdy.SpdyError, match="decompression"):
        spdy.Codec().feed(bytes.fromhex("800300020000000800000001") + b"garb")
    assert spdy.Codec().feed(bytes.fromhex("8003000a00000000")) == []  # unknown type: ignored


def test_protocol_negotiation() -> None:
    client_go = [channels.V5, channels.V4, channels.V3, channels.V2, channels.V1]
    assert spdy.negotiate(client_go, channels.EXEC_SPDY) == channels.V4  # as the kubelet answers
    assert spdy.negotiate([], channels.EXEC_SPDY) == ""
    assert spdy.negotiate(["x"], channels.EXEC_SPDY) is None
    assert spdy.header({"streamtype": ["data"]}, "streamType") == "data"
