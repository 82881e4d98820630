"""The Corefile's syntax (CoreDNS's Caddyfile dialect): text in, server blocks and directives out.

    # comment
    .:53 {
        errors
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods verified
            fallthrough in-addr.arpa ip6.arpa
        }
        forward . 10.0.0.2 10.0.0.3 { policy sequential }
    }
    consul.local:53 {
        forward . 10.150.0.1
    }

A server block is one or more keys (`ZONE[:PORT]`, optionally `dns://`), then `{ ... }`. Each line
inside is a directive: its name and arguments, and optionally a `{ ... }` block of option lines.
Tokens are separated by blanks; "double quotes" group a token (with \\" and \\\\ escapes); `{$VAR}`
is replaced by the environment variable. Pure: no I/O; what the directives mean is config.py's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field


class CorefileError(ValueError):
    """The text is not a Corefile, or a directive is wrong: the message says where and why."""


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    line: int
    quoted: bool = False


@dataclass
class Directive:
    name: str
    args: list[str]
    line: int
    block: list[Directive] = field(default_factory=list)
    has_block: bool = False


@dataclass
class ServerBlock:
    keys: list[str]
    line: int
    directives: list[Directive] = field(default_factory=list)


_ENV = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)\}")


def tokenize(text: str, env: Mapping[str, str] | None = None) -> list[Token]:
    env = os.environ if env is None else env
    text = _ENV.sub(lambda m: env.get(m.group(1), ""), text)
    tokens: list[Token] = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r,":  # commas separate server block keys, as blanks do
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c == '"':
            start_line = line
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise CorefileError(f"line {start_line}: unterminated quote")
                c = text[i]
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\':
                    buf.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                if c == "\n":
                    line += 1
                buf.append(c)
                i += 1
            tokens.append(Token("".join(buf), start_line, True))
        else:
            start = i
            while i < n and text[i] not in " \t\r\n\"#,":
                i += 1
            tokens.append(Token(text[start:i], line))
    return tokens


def parse(text: str, env: Mapping[str, str] | None = None) -> list[ServerBlock]:
    """Server blocks with their directives, in file order. CorefileError with the line number."""
    tokens = tokenize(text, env)
    blocks: list[ServerBlock] = []
    pos = 0
    while pos < len(tokens):
        keys: list[str] = []
        first = tokens[pos]
        while pos < len(tokens) and not (tokens[pos].text == "{" and not tokens[pos].quoted):
            if tokens[pos].text == "}" and not tokens[pos].quoted:
                raise CorefileError(f"line {tokens[pos].line}: unexpected }}")
            keys.append(tokens[pos].text)
            pos += 1
        if pos >= len(tokens):
            raise CorefileError(f"line {first.line}: server block {' '.join(keys)!r} has no {{ ... }}")
        if not keys:
            raise CorefileError(f"line {tokens[pos].line}: {{ without a server block address")
        block = ServerBlock(keys, first.line)
        pos = _directives(tokens, pos + 1, block.directives, nested=False, opened=tokens[pos].line)
        blocks.append(block)
    return blocks


def _directives(tokens: list[Token], pos: int, out: list[Directive], nested: bool, opened: int) -> int:
    """Lines up to the matching }; returns the position after it."""
    while True:
        if pos >= len(tokens):
            raise CorefileError(f"line {opened}: {{ is never closed")
        tok = tokens[pos]
        if tok.text == "}" and not tok.quoted:
            return pos + 1
        if tok.text == "{" and not tok.quoted:
            raise CorefileError(f"line {tok.line}: {{ without a directive")
        d = Directive(tok.text, [], tok.line)
        pos += 1
        while pos < len(tokens) and tokens[pos].line == d.line:
            t = tokens[pos]
            if not t.quoted and t.text == "}":
                break  # closes the enclosing block: `forward . 1.2.3.4 }` on one line
            if not t.quoted and t.text == "{":
                if nested:
                    raise CorefileError(f"line {t.line}: options of {d.name!r} cannot have blocks")
                d.has_block = True
                pos = _directives(tokens, pos + 1, d.block, nested=True, opened=t.line)
                break
            d.args.append(t.text)
            pos += 1
        out.append(d)
