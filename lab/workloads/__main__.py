"""`python -m lab.workloads MODE [flags]`: flags spelled as agnhost's (`--http-port=8080` or
`--http-port 8080`), so a pod's `args` are passed through unchanged."""

from __future__ import annotations

import argparse
import sys

from lab.workloads import servers


def _bool(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lab.workloads")
    sub = p.add_subparsers(dest="mode", required=True)
    ne = sub.add_parser("netexec", help="agnhost netexec")
    ne.add_argument("--http-port", type=int, default=8080)
    ne.add_argument("--udp-port", type=int, default=8081)
    ne.add_argument("--sctp-port", type=int, default=-1)  # accepted, not served
    sh = sub.add_parser("serve-hostname", help="agnhost serve-hostname")
    sh.add_argument("--port", type=int, default=9376)
    sh.add_argument("--http", type=_bool, nargs="?", const=True, default=True)
    sh.add_argument("--tcp", type=_bool, nargs="?", const=True, default=False)
    sh.add_argument("--udp", type=_bool, nargs="?", const=True, default=False)
    sh.add_argument("--close", type=_bool, nargs="?", const=True, default=False)
    ht = sub.add_parser("http", help="a plain HTTP server image (nginx, node-js, ...)")
    ht.add_argument("--port", type=int, action="append", default=[])
    ht.add_argument("--udp-port", type=int, action="append", default=[])
    ht.add_argument("--version", default="latest")
    ht.add_argument("--image", default="")
    sub.add_parser("pause", help="sleep until killed")
    return p


def main(argv: list[str] | None = None) -> int:
    args, unknown = parser().parse_known_args(argv)
    if unknown:
        print(f"lab.workloads {args.mode}: ignoring unsupported flags {unknown}", file=sys.stderr)
    if args.mode == "netexec":
        servers.netexec(args.http_port, args.udp_port)
    elif args.mode == "serve-hostname":
        # Like agnhost: with --tcp or --udp alone, HTTP is off unless asked for explicitly.
        http = args.http and not ((args.tcp or args.udp) and "--http" not in " ".join(argv or sys.argv))
        servers.serve_hostname(args.port, http, args.tcp, args.udp)
    elif args.mode == "http":
        servers.plain_http(args.port or [80], args.udp_port, args.version, args.image)
    print(f"lab.workloads {args.mode} serving as {servers.hostname()}", file=sys.stderr, flush=True)
    servers.wait_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
