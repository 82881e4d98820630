"""The contract every kproxy data path implements, and the one place that maps a mode name to
its backend.

One calling convention for all modes: the daemon calls every method from its one sync thread,
which is in the node's network namespace (never from its event loop: kernel programming blocks,
and the eBPF loader runs an event loop of its own); a backend that needs the event loop
(userspace) is given it and hands its socket work over, as little of it as it can.

Work proportional to the change: the daemon keeps the desired service ports in one mapping and
tells `sync` which keys changed since the last successful sync; a partial sync reads only those
(and whatever the mode always rewrites), never the whole mapping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from kproxy.model import Config, ServicePort, SyncResult

MODES = ("iptables", "userspace", "ebpf", "nftables")
# The IP families each mode serves (one backend per family, made with Config.family).
FAMILIES = {"iptables": (4, 6), "userspace": (4, 6), "nftables": (4, 6), "ebpf": (4, 6)}
# uvloop (libuv, C) in userspace mode: the proxied bytes and datagrams go through the loop, and
# it carries them with ~20% more new connections/s and ~70% more UDP requests/s than asyncio's
# pure-Python loop on the same CPU (bench/proxy_modes.py). The other modes only program the kernel.
EVENT_LOOPS = {"userspace": "uvloop"}


class Backend(Protocol):
    name: str
    ports: dict[str, ServicePort]  # what the last successful sync programmed (read-only outside)

    def sync(self, ports: Mapping[str, ServicePort], changed: AbstractSet[str], full: bool = False) -> SyncResult:
        """Make the data path serve exactly `ports` (service port key -> port). A partial sync
        (full=False) writes only the keys in `changed` (added, removed or different since the last
        successful sync); a full sync rewrites everything and removes what nobody owns (state
        left by a predecessor, or tampering). The first sync is always full. Raises on failure,
        leaving the data path as the last successful sync (or the failed transaction's
        predecessor) left it; the daemon's next sync after a failure is full. `ports` is the
        daemon's and changes after the call: keep what you need, not the mapping."""
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


def sync_all(backend: Backend, ports: Iterable[ServicePort], full: bool = False) -> SyncResult:
    """Drive a backend with a whole list of service ports (tests, benchmarks, tools): the changed
    keys are found by comparing with what the backend last programmed. (The daemon knows them
    from its change tracking and never compares everything.)"""
    new = {sp.key: sp for sp in ports}
    have = backend.ports
    changed = {k for k in new.keys() | have.keys() if new.get(k) != have.get(k)}
    return backend.sync(new, changed, full)


@dataclass
class Options:
    """Mode-specific settings from the command line (each backend takes what it needs)."""
    udp_idle_timeout: float = 60.0  # userspace
    loop: asyncio.AbstractEventLoop | None = None  # userspace: the loop the proxying runs on
    cgroup: str | None = None  # ebpf: the cgroup v2 directory of the node's pods
    external_ifaces: list[str] = field(default_factory=list)  # ebpf: where outside traffic arrives
    iptables: str = "auto"  # the iptables variant ("iptables-nft", "iptables-legacy"; auto: as kube-proxy's image)


def create(mode: str, cfg: Config, opts: Options | None = None) -> Backend:
    """The backend of `mode`, made in the calling thread's network namespace. Each mode's module
    is imported only here and only when chosen: the eBPF one pulls in bcc (and compiles its
    programs), which the other modes must not need."""
    opts = opts or Options()
    if mode == "nftables":
        from kproxy.nftables.backend import NftablesBackend
        return NftablesBackend(cfg)
    if mode not in MODES:
        raise ValueError(f"unknown proxy mode {mode!r} (one of {', '.join(MODES)})")
    if mode == "userspace" and opts.loop is None:
        raise ValueError("userspace mode needs the event loop its listeners run on")
    from kproxy.iptables.backend import IptablesBackend, detect_binary
    binary = detect_binary() if opts.iptables == "auto" else opts.iptables
    if mode == "iptables":
        return IptablesBackend(cfg, binary=binary)
    if mode == "userspace":
        from kproxy.userspace.backend import UserspaceBackend
        assert opts.loop is not None
        return UserspaceBackend(cfg, opts.loop, udp_idle_timeout=opts.udp_idle_timeout, binary=binary)
    if mode == "ebpf":
        from kproxy.ebpf.backend import EbpfBackend  # raises with a clear message when bcc can't load
        return EbpfBackend(cfg, cgroup=opts.cgroup, external_ifaces=opts.external_ifaces, binary=binary)
    raise ValueError(f"unknown proxy mode {mode!r} (one of {', '.join(MODES)})")
