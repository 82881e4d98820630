"""netpolicy's subcommands of the `knet` command line (its public entry point for the CLI).

    knet netpol explain SRC DST PORT[/PROTO]     (netpolicy.explain)
"""

from __future__ import annotations

from typing import Any

from netpolicy import explain


def register(subparsers: Any) -> None:
    """Add `netpol ...` to the CLI's subparsers; each handler is set as `func` (returns the exit code)."""
    explain.add_parser(subparsers)
