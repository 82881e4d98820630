"""The ebpf data path: service translation by BPF programs (bcc) from maps updated in place.

Where translation happens, and why there:
- Pods -> ClusterIP (and -> node ports / LB / external IPs): cgroup v2 socket hooks on the node's
  pod cgroup. connect4 / sendmsg4 replace the service address by a backend before the first
  packet exists, so there is no per-packet NAT, no conntrack entry and no reverse translation on
  the wire; recvmsg4 / getpeername4 show the service address back to the application (unconnected
  UDP replies come "from" the VIP). A service without endpoints fails connect()/sendto() with
  ECONNREFUSED at once (bpf_set_retval), the socket-level equivalent of kube-proxy's REJECT.
  Affinity identifies a pod by its network namespace cookie (one pod, one netns, one IP).
  A connected UDP socket is translated once, at connect(); when its backend is removed, the
  sync aborts it (sockterm.py) so the application reconnects to a live one.
- Outside -> node port / LB / external IP: tc on the node's external interfaces. Ingress DNATs
  to a backend and records the flow in an LRU conntrack map; egress gives replies the frontend
  address back. Under externalTrafficPolicy Cluster the packet gets mark 0x4000 and the kernel's
  MASQUERADE (the KUBE-POSTROUTING chain shared with iptables mode) SNATs it, so a remote
  backend's replies come back through this node and through the egress program; under Local
  only local endpoints are used and nothing is masqueraded (the client address is kept).
- No endpoints for external traffic: the tc program lets the packet through untranslated and
  the same filter rules as iptables mode reject it (REJECT, or DROP for Local without local
  endpoints) — the kernel builds the RST / ICMP error, which is simpler and more correct than
  forging one in tc.

Maps are sized for 10,000 service ports (maps.py). A sync updates them in place, in an order
that never exposes a half-written service (maps.plan); a full sync rewrites every entry and
deletes entries nobody owns, repairing tampering. The programs are attached only after the
first sync has filled the maps, so a restarted daemon replaces its predecessor's programs
(atomically: single-program cgroup attachment and tc filter replace) with fully populated ones.
close() leaves programs attached (traffic keeps flowing while the daemon restarts); cleanup()
removes everything.

Dual-stack: the daemon makes one backend per family (as for every mode), and both write the maps
of one loaded program set: the IPv6 backend its own maps (services6, ...: maps.map_name), through
the connect6 / sendmsg6 / recvmsg6 / getpeername6 hooks and the IPv6 branch of the tc programs,
its node ports on the node's global IPv6 addresses, its rejects and masquerade with ip6tables.
The program set is shared per (network namespace, cgroup) in the process (`_Shared`) and attached
once, after every family's backend made so far has filled its maps. An IPv4-mapped address on an
IPv6 socket (::ffff:10.96.0.1) is not translated: the kernel runs no IPv4 hook for it and the
IPv6 hook sees no IPv6 service there.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from knet import netfilter, netns
from kproxy.ebpf import maps, sockterm
from kproxy.ebpf.loader import CGROUP_PROGRAMS, Datapath, EbpfUnavailable, attach_type_value, detach_cgroup_all
from kproxy.iptables.backend import ensure_jumps, family_binary, remove_chains
from kproxy.iptables.rules import FILTER_BASE, render_filter, render_masquerade, render_rejects
from kproxy.iptables.rules import JUMPS as IPTABLES_JUMPS
from kproxy.model import MASQ_MARK, Config, ServicePort, SyncResult, categorize, recount

log = logging.getLogger("knet.kproxy.ebpf")
# The filter jumps (rejects for services without endpoints) and the masquerade jump; the nat
# KUBE-SERVICES jumps of iptables mode are not needed: nothing is DNATed by netfilter here.
JUMPS = tuple(j for j in IPTABLES_JUMPS if j[0] == "filter" or j[1] == "POSTROUTING")

__all__ = ["EbpfBackend", "EbpfUnavailable"]


def check_cgroup(path: str) -> str:
    """A cgroup v2 directory that is not a hierarchy root (hooks on a root would translate every
    process on the machine)."""
    path = os.path.abspath(path)
    if not os.path.exists(path) and path.startswith("/sys/") and not (
            os.path.isdir("/sys/fs/cgroup") and os.listdir("/sys/fs/cgroup")):
        raise ValueError(f"{path} is not visible: /sys/fs/cgroup is empty here, as under `ip netns exec` (it "
                         "remounts /sys); start kproxy with `nsenter --net=/run/netns/NAME` instead")
    if not os.path.isfile(os.path.join(path, "cgroup.procs")) or \
            not os.path.isfile(os.path.join(path, "cgroup.controllers")):
        raise ValueError(f"{path} is not a cgroup v2 directory")
    if not os.path.isfile(os.path.join(path, "cgroup.type")):  # only non-root cgroups have it
        raise ValueError(f"{path} is the root of a cgroup v2 hierarchy; give the pods' own cgroup")
    return path


def local_ipv4() -> list[str]:
    """This namespace's IPv4 addresses except loopback: where node ports listen (kube-proxy's
    default, nodePortAddresses unset)."""
    from knet import links
    with links.iproute() as ipr:
        addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)]
    return sorted({a for a in addrs if a and not a.startswith("127.")})


def local_ipv6() -> list[str]:
    """This namespace's IPv6 addresses except ::1 (kube-proxy never serves node ports there) and
    link-local ones (meaningless without an interface)."""
    from knet import links
    with links.iproute() as ipr:
        addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET6)]
    return sorted({socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, a)) for a in addrs
                   if a and a != "::1" and not a.lower().startswith("fe80:")})


@dataclass
class _Shared:
    """The program set both families' backends write (one per network namespace and cgroup)."""
    dp: Datapath
    families: set[int] = field(default_factory=set)  # the backends made so far
    synced: set[int] = field(default_factory=set)  # those whose maps are filled
    attached: bool = False
    users: int = 0


_SHARED: dict[tuple[int, str], _Shared] = {}
_SHARED_LOCK = threading.Lock()


class EbpfBackend:
    name = "ebpf"

    def __init__(self, cfg: Config, cgroup: str | None, external_ifaces: Iterable[str] = (),
                 node_ips: Iterable[str] | None = None, binary: str = "iptables") -> None:
        """Compile and load the programs (raises EbpfUnavailable when bcc cannot) in the calling
        thread's network namespace (the node's). `cgroup`: the cgroup v2 directory holding this
        node's pods (socket hooks); `external_ifaces`: interfaces where node port / LB traffic
        arrives (tc); `node_ips`: node port addresses (None: every local address of the family,
        re-read at each full sync)."""
        if not cgroup:
            raise ValueError("ebpf mode needs the cgroup v2 directory of this node's pods (--cgroup)")
        self.cfg = cfg
        self.cgroup = check_cgroup(cgroup)
        self.external_ifaces = list(external_ifaces)
        self.fixed_node_ips = sorted(node_ips) if node_ips is not None else None
        self.node_ips: list[str] = list(self.fixed_node_ips or [])
        self.family = cfg.family
        self.binary = family_binary(binary, cfg.family)
        from knet import links
        with links.iproute() as ipr:
            for ifname in self.external_ifaces:
                if links.index(ipr, ifname) is None:
                    raise ValueError(f"external interface {ifname} does not exist in this network namespace")
        with _SHARED_LOCK:
            key = (netns.inode(), self.cgroup)
            shared = _SHARED.get(key)
            if shared is None:
                shared = _SHARED[key] = _Shared(Datapath(masq_mark=int(MASQ_MARK, 16)))
            shared.families.add(cfg.family)
            shared.users += 1
        self.shared_key, self.shared = key, shared
        self.dp = shared.dp
        self.ids = maps.SetIds()
        self.addr_refs = maps.AddrRefs()
        self.ports: dict[str, ServicePort] = {}
        self.progs: dict[str, maps.Program] = {}
        self.entry_count = 0
        self.rejects: dict[str, tuple[list[str], list[str]]] = {}  # service port -> its filter lines (no endpoints)
        self.applied_rejects: str | None = None
        self.synced = False
        self.closed = False

    # -- compile
    def _compile(self, sp: ServicePort) -> maps.Program:
        prog = maps.compile_port(sp, self.cfg.node_name, self.node_ips, self.ids)
        for kind in ("cluster", "local"):
            own = maps.owner(sp, kind)
            if self.ids.by_owner.get(own) not in prog.sets:
                self.ids.release(own)
        return prog

    def _forget(self, sp: ServicePort) -> None:
        for kind in ("cluster", "local"):
            self.ids.release(maps.owner(sp, kind))

    def _reject_lines(self, sp: ServicePort) -> tuple[list[str], list[str]]:
        return render_rejects(sp, categorize(sp, self.cfg.node_name))

    # -- iptables (rejects and masquerade only)
    def _sync_iptables(self, full: bool) -> None:
        text = "\n".join(render_filter([self.rejects[k] for k in sorted(self.rejects)]) + render_masquerade()) + "\n"
        if not full and text == self.applied_rejects:
            return
        if full:
            ensure_jumps(JUMPS, self.binary)
        netfilter.restore(text, self.binary)
        self.applied_rejects = text

    # -- sync
    def sync(self, ports: Mapping[str, ServicePort], changed: AbstractSet[str], full: bool = False) -> SyncResult:
        start = time.monotonic()
        full = full or not self.synced  # the first sync is always full
        if full:
            new = dict(ports)
            changed = {k for k in new.keys() | self.ports.keys()
                       if new.get(k) != self.ports.get(k) or (k in new and k not in self.progs)}
            if self.fixed_node_ips is None:
                node_ips = local_ipv6() if self.family == 6 else local_ipv4()
                if node_ips != self.node_ips:  # every service port's node port entries change
                    self.node_ips = node_ips
                    changed |= new.keys()
        else:
            new = dict(self.ports)
            for k in changed:
                if k in ports:
                    new[k] = ports[k]
                else:
                    new.pop(k, None)
        old_progs = self.progs
        progs = dict(old_progs)
        for k in (new.keys() - old_progs.keys()) | changed if full else changed:
            if k in self.ports and k in changed:
                self._forget(self.ports[k])  # its protocol may have changed, and with it the owner names
            if k in new:
                progs[k] = self._compile(new[k])
                self.rejects[k] = self._reject_lines(new[k])
                if not any(self.rejects[k]):
                    del self.rejects[k]
            else:
                progs.pop(k, None)
                self.rejects.pop(k, None)
        saved_refs = dict(self.addr_refs.count)
        try:
            if full:
                kernel = {name: self.dp.keys(maps.map_name(name, self.family)) for name in maps.DAEMON_MAPS}
                ops = maps.plan_full(progs.values(), kernel)
                self.addr_refs.reset(progs.values())
            else:
                addrs = self.addr_refs.change((old_progs.get(k), progs.get(k)) for k in changed)
                ops = maps.plan([old_progs[k] for k in changed if k in old_progs],
                                [progs[k] for k in changed if k in progs], addrs)
            self.dp.apply(ops, self.family)
            self._sync_iptables(full)
            self.shared.synced.add(self.family)
            self.synced = True
            if not self.shared.attached and self.shared.synced >= self.shared.families:
                self._attach()
        except Exception:
            # The daemon retries the same changes against the state we last completed.
            self.addr_refs.count = saved_refs
            raise
        stale = set().union(*(sockterm.stale_targets(self.ports.get(k), new.get(k)) for k in changed))
        self.entry_count = recount(self.entry_count, old_progs, progs, changed, lambda p: p.entries(), full)
        self.ports, self.progs = new, progs
        if stale:
            # After the maps: a client reconnecting on the error must find the new backends.
            aborted = sockterm.terminate(self.cgroup, stale)
            log.info("aborted %d connected UDP sockets to %d removed endpoints", aborted, len(stale))
        return SyncResult(full=full, services_written=len(new) if full else len(changed), rules=len(ops),
                          seconds=time.monotonic() - start)

    def _attach(self) -> None:
        # A previous kproxy's programs may still be attached (it leaves them on exit): take over
        # its flow/affinity/UDP-socket state before and again right after replacing them (the
        # second pass catches entries made in between, without overwriting ours), so established
        # node-port flows keep their backend and their reverse translation.
        old = self.dp.predecessor_maps(self.cgroup, self.external_ifaces)
        try:
            copied = self.dp.carry_over(old)
            self.dp.attach_cgroup(self.cgroup)
            for ifname in self.external_ifaces:
                self.dp.attach_tc(ifname)
            copied += self.dp.carry_over(old, keep_newer=True)
        finally:
            for fds in old.values():
                for fd, _, _ in fds:
                    os.close(fd)
        if old:
            log.info("took over %d flow/affinity entries from the previous programs", copied)
        self.shared.attached = True
        log.info("ebpf programs attached: cgroup %s, interfaces %s", self.cgroup, ",".join(self.external_ifaces) or "-")

    def entries(self) -> int:
        """Map entries this backend owns (frontends, slots, members)."""
        return self.entry_count

    def close(self) -> None:
        """Release fds; the programs stay attached so traffic keeps flowing across a restart."""
        if not self.closed:
            self.closed = True
            with _SHARED_LOCK:
                self.shared.users -= 1
                self.shared.families.discard(self.family)
                if self.shared.users == 0:
                    _SHARED.pop(self.shared_key, None)
                    self.dp.close()

    def cleanup(self) -> None:
        """Detach every program (also a predecessor's) and remove the filter/masquerade rules."""
        self.dp.detach_cgroup(self.cgroup)
        if os.path.isdir(self.cgroup):
            detach_cgroup_all(self.cgroup, [attach_type_value(at) for _, at in CGROUP_PROGRAMS])
        for ifname in self.external_ifaces:
            self.dp.detach_tc(ifname)
        self.shared.attached = False
        self.synced = False
        remove_chains(JUMPS, {"filter": list(FILTER_BASE), "nat": ["KUBE-POSTROUTING", "KUBE-MARK-MASQ"]}, self.binary)
        self.close()
