"""The contract every kproxy data path implements, and the one place that maps a mode name to
its backend.

One calling convention for all modes: the daemon calls every method from a worker thread that
is in the node's network namespace (never from its event loop: kernel programming blocks, and
the eBPF loader runs an event loop of its own); a backend that needs the event loop (userspace)
is given it and hands its socket work over.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol

from kproxy.model import Config, ServicePort, SyncResult

MODES = ("iptables", "userspace", "ebpf", "nftables")
# uvloop (libuv, C) in userspace mode: the proxied bytes and datagrams go through the loop, and
# it carries them with ~20% more new connections/s and ~70% more UDP requests/s than asyncio's
# pure-Python loop on the same CPU (bench/proxy_modes.py). The other modes only program the kernel.
EVENT_LOOPS = {"userspace": "uvloop"}


class Backend(Protocol):
    name: str

    def sync(self, ports: list[ServicePort], full: bool = False) -> SyncResult:
        """Make the data path serve exactly `ports`. A partial sync (full=False) writes only what
        changed since the last sync; a full sync rewrites everything and removes what nobody
        owns (state left by a predecessor, or tampering). Raises on failure, leaving the data
        path as the last successful sync (or the failed transaction's predecessor) left it."""
        ...

    def entries(self) -> int:
        """Rules / map entries / listeners this backend owns (for metrics)."""
        ...

    def close(self) -> None:
        """Release this process's resources, leaving the data path in place (SIGTERM: traffic
        keeps flowing while the daemon restarts; the successor adopts it)."""
        ...

    def cleanup(self) -> None:
        """Remove everything this mode put in the kernel (uninstall)."""
        ...


@dataclass
class Options:
    """Mode-specific settings from the command line (each backend takes what it needs)."""
    udp_idle_timeout: float = 60.0  # userspace
    loop: asyncio.AbstractEventLoop | None = None  # userspace: the loop the proxying runs on
    cgroup: str | None = None  # ebpf: the cgroup v2 directory of the node's pods
    external_ifaces: list[str] = field(default_factory=list)  # ebpf: where outside traffic arrives


def create(mode: str, cfg: Config, opts: Options | None = None) -> Backend:
    """The backend of `mode`, made in the calling thread's network namespace. Each mode's module
    is imported only here and only when chosen: the eBPF one pulls in bcc (and compiles its
    programs), which the other modes must not need."""
    opts = opts or Options()
    if mode == "iptables":
        from kproxy.iptables.backend import IptablesBackend
        return IptablesBackend(cfg)
    if mode == "nftables":
        from kproxy.nftables.backend import NftablesBackend
        return NftablesBackend(cfg)
    if mode == "userspace":
        from kproxy.userspace.backend import UserspaceBackend
        if opts.loop is None:
            raise ValueError("userspace mode needs the event loop its listeners run on")
        return UserspaceBackend(cfg, opts.loop, udp_idle_timeout=opts.udp_idle_timeout)
    if mode == "ebpf":
        from kproxy.ebpf.backend import EbpfBackend  # raises with a clear message when bcc can't load
        return EbpfBackend(cfg, cgroup=opts.cgroup, external_ifaces=opts.external_ifaces)
    raise ValueError(f"unknown proxy mode {mode!r} (one of {', '.join(MODES)})")
