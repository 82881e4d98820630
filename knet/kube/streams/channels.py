"""Kubernetes' channel protocols over WebSocket, and what flows on the error channel (pure).

remotecommand (exec, attach) — each binary message starts with its channel byte: 0 stdin,
1 stdout, 2 stderr, 3 error, 4 resize (JSON `{"Width":..,"Height":..}`). The base64 variants send
text messages: the channel as an ASCII digit, then the data base64-encoded.
- `channel.k8s.io`, `base64.channel.k8s.io` (and no protocol at all): the error channel carries
  the failure as text; a success writes nothing.
- `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`: the error channel carries a metav1.Status as
  JSON, for success too; a non-zero exit is reason NonZeroExitCode with an ExitCode cause.
- `v5.channel.k8s.io`: v4 plus the CLOSE signal: message `[255, channel]` half-closes that
  channel (how a client says stdin ended).

port-forward (the Python client's and older kubectl's WebSocket path) — `v4.channel.k8s.io`
(binary) or `v4.base64.channel.k8s.io`: two channels per requested port, data (2i) and error
(2i+1); the server's first message on each is the port, 2 bytes little-endian.

SPDY over WebSocket (current kubectl's port-forward): subprotocol `SPDY/3.1+portforward.k8s.io`,
the binary messages carry a SPDY byte stream (see `spdy`).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE_SIGNAL = 255
STREAM_TYPES = {"stdin": STDIN, "stdout": STDOUT, "stderr": STDERR, "error": ERROR, "resize": RESIZE}

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
V4_BASE64 = "v4.base64.channel.k8s.io"
V3 = "v3.channel.k8s.io"
V2 = "v2.channel.k8s.io"
V1 = "channel.k8s.io"
V1_BASE64 = "base64.channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"
SPDY_TUNNEL_PREFIX = "SPDY/3.1+"
PORT_FORWARD_TUNNEL = SPDY_TUNNEL_PREFIX + PORT_FORWARD

# What the server answers, in its order (the client's preference decides; see choose_protocol).
EXEC_WEBSOCKET = (V5, V4, V4_BASE64, V1, V1_BASE64, "")
EXEC_SPDY = (V4, V3, V2, V1)  # the kubelet's list: a client offering v5 over SPDY gets v4
PORT_FORWARD_WEBSOCKET = (PORT_FORWARD_TUNNEL, V4, V4_BASE64, "")
PORT_FORWARD_SPDY = (PORT_FORWARD,)

NON_ZERO_EXIT = "NonZeroExitCode"
EXIT_CODE_CAUSE = "ExitCode"


class ChannelError(ValueError):
    """A malformed channel message."""


@dataclass(frozen=True)
class Codec:
    """How one negotiated subprotocol puts channels into WebSocket messages."""
    protocol: str

    @property
    def base64(self) -> bool:
        return "base64" in self.protocol

    @property
    def json_status(self) -> bool:
        """The error channel carries a JSON Status (v4 and later) instead of text."""
        return self.protocol.startswith(("v4.", "v5.")) or self.protocol.startswith(SPDY_TUNNEL_PREFIX)

    @property
    def close_signal(self) -> bool:
        return self.protocol == V5

    @property
    def text(self) -> bool:
        """Messages go as WebSocket TEXT frames (the base64 variants), else BINARY."""
        return self.base64

    def encode(self, channel: int, data: bytes) -> bytes:
        if self.base64:
            return bytes([0x30 + channel]) + base64.b64encode(data)
        return bytes([channel]) + data

    def decode(self, message: bytes) -> tuple[int, bytes]:
        """(channel, data) of a received message; (CLOSE_SIGNAL, bytes([channel])) for a v5
        CLOSE. An empty message: ChannelError (the caller ignores it, as wsstream does)."""
        if not message:
            raise ChannelError("empty message")
        if self.close_signal and message[0] == CLOSE_SIGNAL:
            if len(message) != 2:
                raise ChannelError("a CLOSE signal names exactly one channel")
            return CLOSE_SIGNAL, message[1:]
        if self.base64:
            channel = message[0] - 0x30
            if not 0 <= channel <= 9:
                raise ChannelError(f"bad base64 channel character {message[:1]!r}")
            try:
                return channel, base64.b64decode(message[1:], validate=True)
            except (binascii.Error, ValueError):
                raise ChannelError("channel data is not valid base64") from None
        return message[0], message[1:]


def exit_status(code: int | None, message: str = "") -> dict[str, Any]:
    """The Status the kubelet writes when a command ends: Success for exit 0, else Failure /
    NonZeroExitCode with the code as an ExitCode cause (kubectl turns that into
    `command terminated with exit code N`); `code` None: an error that is no exit (500)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    if code is None:
        return {"metadata": {}, "status": "Failure", "message": message or "error executing command",
                "reason": "InternalError", "code": 500,
                "details": {"causes": [{"message": message or "error executing command"}]}}
    return {"metadata": {}, "status": "Failure", "reason": NON_ZERO_EXIT,
            "message": message or f"command terminated with non-zero exit code: exit status {code}",
            "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": str(code)}]}}


def error_payload(status: dict[str, Any], json_status: bool) -> bytes:
    """What goes on the error channel/stream: the Status as JSON (v4+), or for the older
    protocols its message as text, and nothing at all for a success."""
    if json_status:
        return json.dumps(status, separators=(",", ":")).encode()
    if status.get("status") == "Success":
        return b""
    return str(status.get("message", "")).encode()


def parse_resize(data: bytes) -> list[tuple[int, int]]:
    """Terminal sizes from resize-channel data: JSON objects `{"Width":w,"Height":h}`, several
    possibly back to back (client-go writes them with a json.Encoder: one per line)."""
    out: list[tuple[int, int]] = []
    decoder = json.JSONDecoder()
    text, pos = data.decode(errors="replace"), 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            return out
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except ValueError:
            raise ChannelError(f"malformed resize message {text[pos:pos + 60]!r}") from None
        if isinstance(obj, dict):
            w, h = obj.get("Width", obj.get("width")), obj.get("Height", obj.get("height"))
            if isinstance(w, int) and isinstance(h, int) and 0 <= w < 65536 and 0 <= h < 65536:
                out.append((w, h))


# --- port-forward over WebSocket ---------------------------------------------------------------

def port_channels(index: int) -> tuple[int, int]:
    """(data channel, error channel) of the index-th requested port."""
    return 2 * index, 2 * index + 1


def port_prefix(port: int) -> bytes:
    """The first message's payload on each channel of a forwarded port."""
    return struct.pack("<H", port)


def parse_ports(values: list[str]) -> list[int]:
    """The `ports` (or kubelet's `port`) query values, each possibly comma-separated."""
    out: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise ValueError(f"invalid port {part!r}: must be 1-65535")
            out.append(int(part))
    return out
