"""`knet ...`: the command line. It only composes: each part registers its own subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import knet
import netpolicy.cli
from knet_cli import uninstall

try:  # the product image leaves the lab out (Containerfile): there `knet` has no `lab` commands
    import lab.cli as lab_cli
    from lab.errors import LabError

    USER_ERRORS: tuple[type[Exception], ...] = (LabError,)
except ImportError:
    lab_cli = None  # type: ignore[assignment]  # no lab in this installation
    USER_ERRORS = ()


def cmd_version(_args: argparse.Namespace) -> int:
    print(f"knet {knet.__version__}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="knet", description="knet: Kubernetes pod networking in Python")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    netpolicy.cli.register(sub)
    # main() hands `uninstall-node ...` to its own parser before this one sees it (every option,
    # also --help, is its own); listed here for `knet --help`.
    un = sub.add_parser("uninstall-node", add_help=False,
                        help="remove everything knet put on this node (see knet uninstall-node --help)")
    un.add_argument("rest", nargs=argparse.REMAINDER)
    un.set_defaults(func=lambda args: uninstall.main(args.rest))
    if lab_cli is not None:
        lab_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["uninstall-node"]:
        return uninstall.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:  # a LabError: one line; anything else is a bug and keeps its traceback
        print(f"knet: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
