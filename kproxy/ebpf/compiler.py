"""Compile and load kproxy.c with bcc in a child process, and hand the daemon the file
descriptors of the loaded programs and maps (SCM_RIGHTS over a socket pair).

Why a child: bcc brings libbcc and LLVM into the process that compiles, about 220 MB resident
that stays after the compile (glibc keeps the heap, the libraries stay mapped) — more than the
rest of kproxy at 10,000 services. The kernel objects live on as long as any descriptor refers
to them, so the daemon keeps working with the descriptors alone (bpfsys.py) and never imports
bcc; the child exits once they are sent.

Protocol: the parent runs `python -m kproxy.ebpf.compiler REQUEST_JSON` with one end of a
SOCK_SEQPACKET pair inherited (its number in $KPROXY_COMPILER_FD); the child sends one message:
JSON {"programs": [names], "maps": [[name, key size, value size]]} with the descriptors in that
order (programs, then maps), or {"error": text, "stage": "import"|"compile"|"load"} and none.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

REPLY_MAX = 65536
TIMEOUT = 600.0  # a compile on a loaded 2-core machine can take a minute; never hang forever


@dataclass(frozen=True)
class Loaded:
    programs: dict[str, int]                 # name -> program fd
    maps: dict[str, tuple[int, int, int]]    # name -> (fd, key size, value size)


class CompileError(RuntimeError):
    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


def compile_and_load(source: str, cflags: list[str], programs: list[tuple[str, str]],
                     map_names: list[str]) -> Loaded:
    """`programs`: (function name, bcc program type name, e.g. "CGROUP_SOCK_ADDR") with, for
    cgroup programs, the expected attach type after a colon ("CGROUP_SOCK_ADDR:CGROUP_INET4_CONNECT")."""
    request = json.dumps({"source": source, "cflags": cflags, "programs": programs, "maps": map_names})
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "kproxy.ebpf.compiler", request],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "KPROXY_COMPILER_FD": str(theirs.fileno())})
        theirs.close()
        ours.settimeout(TIMEOUT)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ours, REPLY_MAX, 64)
        except TimeoutError:
            proc.kill()
            raise CompileError("compile", f"the compiler process gave no answer in {TIMEOUT:.0f}s") from None
        finally:
            _, err = proc.communicate(timeout=TIMEOUT)
        if not msg:
            raise CompileError("compile", f"the compiler process exited ({proc.returncode}) without an answer: "
                                          f"{err.decode(errors='replace')[-2000:]}")
        reply = json.loads(msg)
        if "error" in reply:
            for fd in fds:
                os.close(fd)
            raise CompileError(reply.get("stage", "compile"), reply["error"])
        names = reply["programs"]
        progs = dict(zip(names, fds[:len(names)], strict=True))
        maps = {name: (fd, k, v) for (name, k, v), fd in zip(reply["maps"], fds[len(names):], strict=True)}
        return Loaded(progs, maps)
    finally:
        ours.close()
        theirs.close()


def _child(request: dict, sock: socket.socket) -> int:
    def fail(stage: str, text: str) -> int:
        sock.send(json.dumps({"error": text, "stage": stage}).encode())
        return 1
    try:
        from bcc import BPF, BPFAttachType
    except ImportError as e:
        return fail("import", str(e))
    try:
        bpf = BPF(src_file=request["source"].encode(), cflags=request["cflags"])
    except Exception as e:
        return fail("compile", str(e))
    try:
        fns = []
        for name, kind in request["programs"]:
            prog_type, _, attach = kind.partition(":")
            kwargs = {"attach_type": int(getattr(BPFAttachType, attach))} if attach else {}
            fns.append((name, bpf.load_func(name.encode(), getattr(BPF, prog_type), **kwargs)))
        maps = []
        for name in request["maps"]:
            table = bpf[name.encode()]
            maps.append((name, ct.sizeof(table.Key), ct.sizeof(table.Leaf), table.map_fd))
    except Exception as e:
        return fail("load", str(e))
    reply = {"programs": [n for n, _ in fns], "maps": [[n, k, v] for n, k, v, _ in maps]}
    socket.send_fds(sock, [json.dumps(reply).encode()], [fn.fd for _, fn in fns] + [fd for *_, fd in maps])
    return 0


if __name__ == "__main__":
    with socket.socket(fileno=int(os.environ["KPROXY_COMPILER_FD"])) as s:
        sys.exit(_child(json.loads(sys.argv[1]), s))
