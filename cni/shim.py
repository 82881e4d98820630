"""`knet-cni`: the executable a container runtime runs. Kept deliberately thin.

Starting Python and importing pyroute2 costs far more than the work itself, so, as Cilium and
Multus do, the executable hands the request to the node's long-running agent over a unix socket
(`agentSocket` in the config, default /run/knet/cni.sock). Without a reachable agent in the same
network namespace it runs the plugin in-process: slower, identical in behaviour.
Only the standard library is imported on the fast path.
"""

from __future__ import annotations

import json
import os
import socket
import sys

DEFAULT_AGENT_SOCKET = "/run/knet/cni.sock"


def _agent_socket(stdin: bytes) -> str | None:
    try:
        conf = json.loads(stdin)
        path = conf.get("agentSocket") if isinstance(conf, dict) else None
    except (ValueError, UnicodeDecodeError):
        path = None
    path = path if isinstance(path, str) and path else DEFAULT_AGENT_SOCKET
    return path if os.path.exists(path) else None


def via_agent(path: str, env: dict[str, str], stdin: bytes) -> tuple[int, str] | None:
    """(exit status, stdout) from the agent, or None when the direct path must be taken."""
    request = json.dumps({
        "env": env,
        "stdin": stdin.decode("latin-1"),
        # The agent works in its own namespace: refuse it if that is not ours.
        "netns_inode": os.stat("/proc/self/ns/net").st_ino,
    }).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(path)
            s.settimeout(300.0)
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        return None
    if not isinstance(reply, dict) or reply.get("wrong_netns") or "exit" not in reply:
        return None
    return int(reply["exit"]), str(reply.get("stdout", ""))


def _version(stdin: bytes) -> tuple[int, str] | None:
    """VERSION needs no agent and no kernel: answer it here (malformed stdin: the full path)."""
    from cni.versions import version_answer
    if not stdin.strip():
        return 0, json.dumps(version_answer(None))
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError):
        return None
    return (0, json.dumps(version_answer(conf))) if isinstance(conf, dict) else None


def direct(env: dict[str, str], stdin: bytes) -> tuple[int, str]:
    from cni.plugin import run
    return run(env, stdin)


def main() -> int:
    stdin = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    env = dict(os.environ)
    answer = None
    if env.get("CNI_COMMAND") == "VERSION":
        answer = _version(stdin)
    elif os.environ.get("KNET_CNI_DIRECT") != "1":
        path = _agent_socket(stdin)
        if path:
            answer = via_agent(path, env, stdin)
    if answer is None:
        answer = direct(env, stdin)
    code, out = answer
    if out:
        sys.stdout.write(out)
        sys.stdout.write("\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
