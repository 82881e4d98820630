"""knet.logs: logfmt and JSON lines, fields as keys, escaping, and one-line refusal of a bad level."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys

import pytest

from knet import logs

BIN = os.path.dirname(sys.executable)


def _record(msg: str, *args: object, level: int = logging.INFO, exc: bool = False, **extra: object):
    exc_info = None
    if exc:
        try:
            raise ValueError('bad "thing"\nsecond line')
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("t", level, __file__, 42, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def _logfmt(line: str) -> dict[str, str]:
    """A logfmt line parsed back (quoted values unescaped), as log tools read it."""
    out = {}
    for m in re.finditer(r'([^\s=]+)=("((?:[^"\\]|\\.)*)"|\S*)', line):
        raw = m.group(3)
        out[m.group(1)] = m.group(2) if raw is None else json.loads('"' + raw + '"')
    return out


def test_logfmt_fields_are_keys_and_msg_stays_constant():
    line = logs.LogfmtFormatter("flannel-py").format(_record("lease acquired", subnet="10.244.3.0/24", how="new",
                                                             ttl=86400, ready=True, gone=None))
    assert line.startswith("ts=") and "\n" not in line
    assert ' level=info component=flannel-py msg="lease acquired" subnet=10.244.3.0/24 how=new ttl=86400 ' \
           'ready=true gone=null' in line


@pytest.mark.parametrize("value", ['say "hi"', "back\\slash", "two\nlines", "tab\there", "a=b", "", " lead",
                                   "ctl\x01char", "ünïcode"])
def test_logfmt_escapes_round_trip(value):
    line = logs.LogfmtFormatter("x").format(_record("m %s", value, field=value))
    assert "\n" not in line
    parsed = _logfmt(line)
    assert parsed["field"] == value
    assert parsed["msg"] == f"m {value}"


def test_logfmt_structures_and_exception():
    line = logs.LogfmtFormatter("x").format(_record("failed", level=logging.ERROR, exc=True,
                                                    added=["a", "b"], counts={"x": 1}))
    parsed = _logfmt(line)
    assert parsed["level"] == "error" and parsed["added"] == '["a","b"]' and parsed["counts"] == '{"x":1}'
    assert "\n" not in line and 'ValueError: bad "thing"\nsecond line' in parsed["exc"]


def test_json_is_kubernetes_shape():
    fmt = logs.JsonFormatter("kdns")
    info = json.loads(fmt.format(_record("sync", services=3)))
    assert info["msg"] == "sync" and info["services"] == 3 and info["v"] == 0 and info["component"] == "kdns"
    assert isinstance(info["ts"], float) and info["caller"].endswith(":42")
    err = json.loads(fmt.format(_record("boom", level=logging.ERROR, exc=True, subnet="10.0.0.0/24")))
    assert "v" not in err and 'bad "thing"\nsecond line' in err["err"] and err["subnet"] == "10.0.0.0/24"


def test_setup_routes_and_levels():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("c", "WARN", stream=stream, fmt="json")
        logging.getLogger("a.b").info("hidden")
        logging.getLogger("a.b").warning("shown", extra={"k": "v"})
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["k"] == "v"


@pytest.mark.parametrize("level,fmt,needle", [("loud", "text", "unknown log level 'loud'"),
                                              ("info", "yaml", "unknown logging format 'yaml'")])
def test_setup_refuses_bad_values_with_one_line(capsys, level, fmt, needle):
    with pytest.raises(SystemExit) as e:
        logs.setup("kproxy", level, fmt=fmt)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kproxy: error: ") and needle in err


# One of each way in: flannel-py's own main, knet.daemon.run (kproxy; kdns, netpolicy and
# knet-ingress likewise), logs.setup called directly (knet-cni-agent).
@pytest.mark.parametrize("argv", ["flannel-py --logging-format yaml", "kproxy --node-name n1 --log-level loud",
                                  "knet-cni-agent --log-level loud"])
def test_daemons_refuse_unknown_level_with_one_line(argv):
    cmd, *rest = shlex.split(argv)
    r = subprocess.run([os.path.join(BIN, cmd), *rest], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "error: unknown" in r.stderr and "Traceback" not in r.stderr
