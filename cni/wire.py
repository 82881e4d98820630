"""What crosses a process boundary: JSON, and the exchange between `knet-cni` and its agent.

JSON goes through the interpreter's C codec (`_json`) directly: the `json` package would import
`re` (and with it enum), which costs the thin executable and the direct path more than their
whole JSON work. Output is byte for byte what `json.dumps(obj)` writes.

The exchange: one message each way, plus the agent's STARTED, which is what makes it safe for the
executable to give up waiting and run the request itself (`shim.py` has the bounds):
    executable: b"KNETCNI3 <netns inode> <deadline> <env bytes> <stdin bytes>\\n" env stdin
    agent:      b"STARTED\\n", then b"<exit status> <stdout bytes>\\n" stdout
                (or, instead: b"WRONG-NETNS\\n", b"BAD <reason>\\n"; after STARTED: b"ABORTED\\n")
The deadline is the caller's CLOCK_MONOTONIC time (ns; the same clock in both processes on a
host) until which it waits for STARTED. The agent sends STARTED before it runs anything and then
looks at the clock: past the deadline, it sends ABORTED and runs nothing. The caller, at the
deadline, reads once more without waiting and gives up only if STARTED is not there. So either
the caller has STARTED in hand and waits (the agent runs the request, or says ABORTED), or the
agent's STARTED came after the caller's last look, hence after the deadline, and the agent aborts:
a request never runs in both.
"""

# No `os`, `json` or `__future__`: the thin executable imports this module (see shim.py), and the
# deploy launcher runs it on hosts' python3 >= 3.8, hence the string annotations.
import _json
import sys

PROTOCOL = b"KNETCNI3"
MAX_REQUEST = 4 * 1024 * 1024
_WHITESPACE = " \t\n\r"


class _ScanContext:
    """What `_json.make_scanner` reads from a json.JSONDecoder."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float


_scan = _json.make_scanner(_ScanContext())
_encode = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def loads(data: "bytes | str") -> object:
    """json.loads; ValueError (or UnicodeDecodeError) when the input is not one JSON value."""
    text = data.decode() if isinstance(data, bytes) else data
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:
        raise ValueError(f"expecting a value at character {e.value}") from None
    end += len(text[end:]) - len(text[end:].lstrip(_WHITESPACE))
    if end != len(text):
        raise ValueError(f"extra data at character {end}")
    return value


def dumps(obj: object) -> str:
    """json.dumps(obj) for plain data (dicts, lists, strings, numbers, booleans, None)."""
    return "".join(_encode(obj, 0))


class BadRequest(ValueError):
    pass


def _fsencode(text: "str | bytes") -> bytes:
    return text if isinstance(text, bytes) else text.encode(sys.getfilesystemencoding(), "surrogateescape")


def encode_request(env: "dict[str, str] | dict[bytes, bytes]", stdin: bytes, netns_inode: int,
                   deadline_ns: int) -> bytes:
    """The request: environment (str or, as os.environb, bytes), stdin, the caller's netns, and
    the CLOCK_MONOTONIC time after which the agent must not start it."""
    block = b"\0".join(_fsencode(k) + b"=" + _fsencode(v) for k, v in env.items())
    return b"%s %d %d %d %d\n" % (PROTOCOL, netns_inode, deadline_ns, len(block), len(stdin)) + block + stdin


def parse_header(line: bytes) -> "tuple[int, int, int, int]":
    """(netns inode, deadline, env bytes, stdin bytes) from a request's first line."""
    parts = line.split()
    if len(parts) != 5 or parts[0] != PROTOCOL:
        raise BadRequest(f"not a {PROTOCOL.decode()} request")
    try:
        inode, deadline_ns, env_len, stdin_len = (int(p) for p in parts[1:])
    except ValueError:
        raise BadRequest("malformed header") from None
    if min(inode, deadline_ns, env_len, stdin_len) < 0 or env_len + stdin_len > MAX_REQUEST:
        raise BadRequest("request too large")
    return inode, deadline_ns, env_len, stdin_len


def parse_env(block: bytes) -> "dict[str, str]":
    encoding = sys.getfilesystemencoding()
    env = {}
    for item in filter(None, block.split(b"\0")):
        key, sep, value = item.partition(b"=")
        if not sep or not key:
            raise BadRequest("malformed environment")
        env[key.decode(encoding, "surrogateescape")] = value.decode(encoding, "surrogateescape")
    return env
