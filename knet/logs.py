"""Structured log lines for every daemon: logfmt (`--logging-format text`, the default) or one JSON
object per line (`--logging-format json`, as Kubernetes components offer it).

    log.info("lease acquired", extra={"subnet": "10.244.3.0/24", "how": "new"})

    ts=2024-05-01T10:00:00.123Z level=info component=flannel-py msg="lease acquired" subnet=10.244.3.0/24 how=new
    {"ts":1714557600.123,"caller":"daemon.py:210","v":0,"level":"info","component":"flannel-py",
     "msg":"lease acquired","subnet":"10.244.3.0/24","how":"new"}          (one line)

Fields go in `extra` (plain logging): every attribute a record has beyond the standard ones is a
field, so the message stays a constant string that log tools can group by. A field cannot be
named like a LogRecord attribute (`name`, `msg`, `args`, `module`, ...; logging refuses it):
say what it is (`service`, `node`). logfmt values are quoted when they hold a space, `=`, a
quote or a control character, with `\\`, `"`, newlines and tabs escaped, so one record is always
one line and `key="a \\"b\\""` parses back to what was logged.

`setup()` refuses an unknown level or format with one line on stderr and exit status 2 (the
usage-error code), never a traceback: every daemon calls it first thing.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
_LEVEL_ALIASES = {"warn": "warning", "critical": "error", "fatal": "error"}
# Attributes every LogRecord has (plus what Formatter.format adds): anything else came in `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
_BARE = re.compile(r"[^\s=\"\\\x00-\x1f\x7f]+")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-/]")


def fields(record: logging.LogRecord) -> Iterator[tuple[str, Any]]:
    """The record's structured fields (from `extra`), in the order they were given."""
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            yield key, value


def logfmt_value(value: Any) -> str:
    """One logfmt value: bare when that is unambiguous, else double-quoted with escapes."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else _text(value)
    if text and _BARE.fullmatch(text):
        return text
    escaped = (text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
               .replace("\t", "\\t"))
    return '"' + re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", lambda m: f"\\u{ord(m[0]):04x}", escaped) + '"'


def _text(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return json.dumps(value if not isinstance(value, set | frozenset) else sorted(value, key=str),
                          default=str, separators=(",", ":"))
    return str(value)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_value(v) for v in value]
    return str(value)


class LogfmtFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"component={logfmt_value(self.component)}",
                 f"msg={logfmt_value(record.getMessage())}"]
        parts += [f"{_KEY_UNSAFE.sub('_', key)}={logfmt_value(value)}" for key, value in fields(record)]
        if record.exc_info:
            parts.append(f"exc={logfmt_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """Kubernetes' JSON log schema (`ts` in Unix seconds, `caller`, `msg`, `v` for the verbosity of
    non-errors, `err` for errors' exceptions) plus `level` and `component`."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": round(record.created, 6), "caller": f"{record.filename}:{record.lineno}"}
        if record.levelno < logging.ERROR:
            doc["v"] = 0 if record.levelno >= logging.INFO else 4
        doc.update(level=record.levelname.lower(), component=self.component, msg=record.getMessage())
        for key, value in fields(record):
            doc.setdefault(key, _json_value(value))
        if record.exc_info:
            doc["err"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def parse_level(level: str) -> int:
    """The logging level of a --log-level value; ValueError naming the valid ones."""
    name = _LEVEL_ALIASES.get(level.lower(), level.lower())
    if name not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (valid: {', '.join(LEVELS)})")
    return getattr(logging, name.upper())


def setup(component: str, level: str = "info", stream: TextIO | None = None, fmt: str = "text") -> None:
    """Route all logging to `stream` (stderr) as `component`; a bad level or format ends the process
    with one line on stderr and exit status 2."""
    try:
        levelno = parse_level(level)
        if fmt not in FORMATS:
            raise ValueError(f"unknown logging format {fmt!r} (valid: {', '.join(FORMATS)})")
    except ValueError as e:
        print(f"{component}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(component) if fmt == "json" else LogfmtFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(levelno)
    # urllib3 logs each of its own connection retries while an API server is down; the informers
    # already log one line per backoff step, which is the useful one.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
