"""A TCP relay from a loopback port of the root namespace to an address inside a lab namespace:
what gives kubectl on the host its `https://127.0.0.1:<port>` when the API server is a program
that cannot be handed a listening socket of another namespace (kube-apiserver). knet-apiserver
takes the root namespace's socket itself (--listen-fd); the relay does the same and nothing else.

    python -m lab.bringup.relay --listen-fd 5 --to 192.168.33.2:6443

It runs inside the lab namespace (started there by its launcher, the listening socket inherited
from the root namespace), so every connection it makes is the lab namespace's: the root
namespace only ever has the loopback listener. Bytes are copied both ways untouched (TLS passes
through: the server certificate names 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys

CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # a half-close travels on (a watch's client may close its side first)
    except (ConnectionError, OSError):
        writer.close()


async def _serve(sock: socket.socket, host: str, port: int) -> None:
    async def relay(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(host, port)
        except OSError as e:
            print(f"relay: cannot reach {host}:{port}: {e}", file=sys.stderr, flush=True)
            c_writer.close()
            return
        try:
            await asyncio.gather(_pipe(c_reader, s_writer), _pipe(s_reader, c_writer))
        finally:
            for w in (s_writer, c_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    server = await asyncio.start_server(relay, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"relay: {sock.getsockname()} -> {host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lab.bringup.relay", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen-fd", type=int, required=True, help="an inherited listening TCP socket")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="where every connection goes")
    args = p.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    if not host or not port.isdigit():
        p.error(f"--to must be HOST:PORT, got {args.to!r}")
    sock = socket.socket(fileno=args.listen_fd)
    asyncio.run(_serve(sock, host, int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
