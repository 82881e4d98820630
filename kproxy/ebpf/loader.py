"""Load and attach kproxy.c; raw map access; cgroup/tc attachment helpers.

bcc compiles and loads the programs in a child process (compiler.py); this process keeps their
and the maps' file descriptors and works on them with bpf(2) itself (bpfsys.py), so neither the
daemon nor the pure planner (maps.py) and its unit tests import bcc.
Everything that touches links (tc) acts on the calling thread's network namespace.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from kproxy.ebpf import bpfsys, compiler, maps

log = logging.getLogger("knet.kproxy.ebpf")
SOURCE = Path(__file__).with_name("kproxy.c")
TC_PRIO = 0xC1  # our filters' priority on clsact; a fixed value so a restart replaces them in place
TC_HANDLE = 1
TC_INGRESS, TC_EGRESS = 0xFFFFFFF2, 0xFFFFFFF3
# (program, attach type name in bcc's BPFAttachType)
CGROUP_PROGRAMS = (
    ("sock_connect4", "CGROUP_INET4_CONNECT"),
    ("sock_sendmsg4", "CGROUP_UDP4_SENDMSG"),
    ("sock_recvmsg4", "CGROUP_UDP4_RECVMSG"),
    ("sock_getpeername4", "CGROUP_INET4_GETPEERNAME"),
    ("sock_connect6", "CGROUP_INET6_CONNECT"),
    ("sock_sendmsg6", "CGROUP_UDP6_SENDMSG"),
    ("sock_recvmsg6", "CGROUP_UDP6_RECVMSG"),
    ("sock_getpeername6", "CGROUP_INET6_GETPEERNAME"),
)
TC_PROGRAMS = (("tc_ingress", TC_INGRESS), ("tc_egress", TC_EGRESS))
TC_FILTER_PREFIX = "knet-"  # our tc filters are named knet-<program>


class EbpfUnavailable(RuntimeError):
    """bcc cannot compile or load the programs on this machine (the message says what is missing)."""


# -- raw bpf(2): attachment queries, objects by id -------------------------------------------
_BPF_PROG_DETACH, _BPF_PROG_GET_FD_BY_ID, _BPF_MAP_GET_FD_BY_ID = 9, 13, 14
_BPF_OBJ_GET_INFO_BY_FD, _BPF_PROG_QUERY = 15, 16
# Maps the programs fill themselves (flows, affinity, UDP sockets): a restarted daemon copies
# them from its predecessor's programs, so established flows keep their backends.
STATE_MAPS = ("ct", "affinity", "sock_fwd", "sock_rev", "ct6", "affinity6", "sock_fwd6", "sock_rev6")
_bpf = bpfsys.call


def attach_type_value(name: str) -> int:
    return bpfsys.ATTACH_TYPES[name]


def cgroup_prog_ids(cgroup: str, attach_type: int) -> list[int]:
    """Ids of the programs attached to a cgroup for one attach type (BPF_PROG_QUERY)."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (ct.c_uint32 * 64)()
        attr = (ct.c_uint8 * 64)()
        ct.memmove(ct.byref(attr, 0), ct.byref(ct.c_uint32(fd)), 4)
        ct.memmove(ct.byref(attr, 4), ct.byref(ct.c_uint32(attach_type)), 4)
        ct.memmove(ct.byref(attr, 16), ct.byref(ct.c_uint64(ct.addressof(ids))), 8)
        ct.memmove(ct.byref(attr, 24), ct.byref(ct.c_uint32(64)), 4)
        _bpf(_BPF_PROG_QUERY, attr)
        count = ct.c_uint32.from_buffer(attr, 24).value
        return list(ids[:count])
    finally:
        os.close(fd)


def detach_cgroup_all(cgroup: str, attach_types: Iterable[int]) -> int:
    """Detach every program of these types from a cgroup, by id (works for programs a previous
    daemon attached, whose fds are long gone). Returns how many were detached."""
    done = 0
    for at in attach_types:
        for prog_id in cgroup_prog_ids(cgroup, at):
            done += detach_cgroup_prog(cgroup, at, prog_id)
    return done


def detach_cgroup_prog(cgroup: str, attach_type: int, prog_id: int) -> bool:
    """Detach one program, by id, from a cgroup (BPF_PROG_DETACH); False if it is gone already."""
    try:
        prog_fd = _fd_by_id(_BPF_PROG_GET_FD_BY_ID, prog_id)
    except OSError:
        return False
    try:
        cg = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            attr = (ct.c_uint8 * 16)()
            for off, val in ((0, cg), (4, prog_fd), (8, attach_type)):
                _put_u32(attr, off, val)
            _bpf(_BPF_PROG_DETACH, attr)
        finally:
            os.close(cg)
    finally:
        os.close(prog_fd)
    return True


def prog_name(prog_id: int) -> str:
    """A loaded program's name as the kernel keeps it (cut to 15 characters); "" if it is gone."""
    try:
        fd = _fd_by_id(_BPF_PROG_GET_FD_BY_ID, prog_id)
    except OSError:
        return ""
    try:
        info = (ct.c_uint8 * 256)()
        _obj_info(fd, info)
        return bytes(info[64:80]).split(b"\0", 1)[0].decode(errors="replace")  # bpf_prog_info.name
    finally:
        os.close(fd)


def _put_u32(buf: ct.Array, off: int, value: int) -> None:
    ct.memmove(ct.byref(buf, off), ct.byref(ct.c_uint32(value)), 4)


def _fd_by_id(cmd: int, obj_id: int) -> int:
    attr = (ct.c_uint8 * 16)()
    _put_u32(attr, 0, obj_id)
    return _bpf(cmd, attr)


def _obj_info(fd: int, info: ct.Array) -> None:
    attr = (ct.c_uint8 * 16)()
    _put_u32(attr, 0, fd)
    _put_u32(attr, 4, ct.sizeof(info))
    ct.memmove(ct.byref(attr, 8), ct.byref(ct.c_uint64(ct.addressof(info))), 8)
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)


def prog_map_ids(prog_id: int) -> list[int]:
    """The maps a loaded program uses (bpf_prog_info.nr_map_ids / map_ids)."""
    fd = _fd_by_id(_BPF_PROG_GET_FD_BY_ID, prog_id)
    try:
        ids = (ct.c_uint32 * 64)()
        info = (ct.c_uint8 * 256)()
        _put_u32(info, 52, 64)  # nr_map_ids: room in ids
        ct.memmove(ct.byref(info, 56), ct.byref(ct.c_uint64(ct.addressof(ids))), 8)
        _obj_info(fd, info)
        return list(ids[:min(64, ct.c_uint32.from_buffer(info, 52).value)])
    finally:
        os.close(fd)


def open_map(map_id: int) -> tuple[int, str, int, int]:
    """(fd, name, key size, value size) of a map by id; the caller closes the fd."""
    fd = _fd_by_id(_BPF_MAP_GET_FD_BY_ID, map_id)
    info = (ct.c_uint8 * 128)()
    try:
        _obj_info(fd, info)
    except OSError:
        os.close(fd)
        raise
    name = bytes(info[24:40]).split(b"\0", 1)[0].decode()
    return fd, name, ct.c_uint32.from_buffer(info, 8).value, ct.c_uint32.from_buffer(info, 12).value


def tc_prog_ids(ifname: str) -> list[int]:
    """Ids of our programs on an interface's clsact hooks (`tc filter show` prints them; the
    netlink attribute is not decoded by pyroute2). Runs in the caller's network namespace."""
    import re
    import subprocess
    out = []
    for hook in ("ingress", "egress"):
        proc = subprocess.run(["tc", "filter", "show", "dev", ifname, hook], capture_output=True, text=True)
        for line in proc.stdout.splitlines():
            if "knet-tc_" in line:
                m = re.search(r"\bid (\d+)", line)
                if m:
                    out.append(int(m.group(1)))
    return out


def tc_filters(ipr, ifname: str) -> list[tuple[int, str]]:
    """(parent, program name) of the bpf filters on an interface's clsact hooks."""
    from knet import links
    idx = links.index(ipr, ifname)
    out = []
    if idx is None:
        return out
    for parent in (TC_INGRESS, TC_EGRESS):
        try:
            flts = ipr.get_filters(index=idx, parent=parent)
        except Exception:  # no clsact qdisc: no filters
            continue
        for f in flts:
            name = f.get_nested("TCA_OPTIONS", "TCA_BPF_NAME")
            if name:
                out.append((parent, name))
    return out


def detach_tc(ifname: str, parents: Iterable[int] = (TC_INGRESS, TC_EGRESS)) -> None:
    """Remove our filters (by handle and priority: also a predecessor's) from an interface's clsact
    hooks, and the clsact qdisc once no filter is left on it. In the caller's network namespace."""
    from pyroute2.netlink.exceptions import NetlinkError

    from knet import links
    with links.iproute() as ipr:
        idx = links.index(ipr, ifname)
        if idx is None:
            return
        for parent in parents:
            try:
                ipr.tc("del-filter", "bpf", idx, TC_HANDLE, parent=parent, prio=TC_PRIO)
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.EINVAL):
                    raise
        if not tc_filters(ipr, ifname):
            with contextlib.suppress(NetlinkError):
                ipr.tc("del", "clsact", idx)


class Datapath:
    """The loaded programs and maps of one kproxy instance."""

    def __init__(self, masq_mark: int = 0x4000) -> None:
        try:  # a cheap check here (nothing of bcc is loaded); the compiler process imports it
            have_bcc = importlib.util.find_spec("bcc") is not None
        except (ImportError, ValueError):
            have_bcc = False
        if not have_bcc:
            raise EbpfUnavailable(
                "ebpf mode needs bcc's Python module, which is not importable: install the Debian "
                "package python3-bpfcc and run scripts/install-deps (it links bcc into the venv)")
        headers = Path(f"/lib/modules/{os.uname().release}/build")
        cflags = [f"-DFE_MAX={maps.FE_MAX}", f"-DSLOT_MAX={maps.SLOT_MAX}", f"-DAFF_MAX={maps.AFF_MAX}",
                  f"-DSOCK_MAX={maps.SOCK_MAX}", f"-DCT_MAX={maps.CT_MAX}", f"-DMASQ_MARK={masq_mark:#x}"]
        programs = [(name, f"CGROUP_SOCK_ADDR:{at}") for name, at in CGROUP_PROGRAMS] + \
                   [(name, "SCHED_CLS") for name, _ in TC_PROGRAMS]
        try:
            loaded = compiler.compile_and_load(str(SOURCE), cflags, programs, [*maps.LAYOUT, *STATE_MAPS])
        except compiler.CompileError as e:
            if e.stage == "import":
                raise EbpfUnavailable(
                    f"ebpf mode needs bcc's Python module, which is not importable ({e}): install the Debian "
                    "package python3-bpfcc and run scripts/install-deps (it links bcc into the venv)") from e
            if e.stage == "load":
                raise EbpfUnavailable(
                    f"the kernel refused kproxy's BPF programs ({e}); ebpf mode needs Linux >= 5.18 "
                    "(bpf_set_retval, cgroup getpeername hooks, netns cookies) and CAP_BPF/CAP_NET_ADMIN") from e
            hint = "" if headers.exists() else (
                f"; kernel headers missing: {headers} does not exist (install linux-headers-amd64 and run "
                "scripts/install-deps, which links the Debian headers there)")
            raise EbpfUnavailable(f"bcc cannot compile {SOURCE.name}: {e}{hint}") from e
        self.prog_fds = loaded.programs
        self.fds: dict[str, int] = {name: fd for name, (fd, _, _) in loaded.maps.items()}
        self.sizes: dict[str, tuple[int, int]] = {name: (k, v) for name, (_, k, v) in loaded.maps.items()}
        for name, (kt, vt) in maps.LAYOUT.items():
            if self.sizes[name] != (ct.sizeof(kt), ct.sizeof(vt)):
                self.close()
                raise EbpfUnavailable(f"map {name}: kproxy.c and maps.py disagree on the struct sizes")
        self.cgroups: list[str] = []
        self.ifaces: list[str] = []

    # -- attachment
    def attach_cgroup(self, cgroup: str) -> None:
        """Attach the socket hooks (replacing what a previous kproxy attached: a single-program
        attachment is swapped atomically, so a restart never leaves pods without translation)."""
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name, at in CGROUP_PROGRAMS:
                bpfsys.attach_cgroup(fd, self.prog_fds[name], attach_type_value(at))
        finally:
            os.close(fd)
        self.cgroups.append(cgroup)

    def detach_cgroup(self, cgroup: str) -> None:
        try:
            fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return
        try:
            for name, at in CGROUP_PROGRAMS:
                try:
                    bpfsys.detach_cgroup(fd, self.prog_fds[name], attach_type_value(at))
                except OSError as e:  # already gone (replaced by another instance): fine
                    log.debug("detach %s from %s: %s", name, cgroup, e)
        finally:
            os.close(fd)
        if cgroup in self.cgroups:
            self.cgroups.remove(cgroup)

    def attach_tc(self, ifname: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        from knet import links
        with links.iproute() as ipr:
            idx = links.index(ipr, ifname)
            if idx is None:
                raise ValueError(f"external interface {ifname} does not exist in this network namespace")
            try:
                ipr.tc("add", "clsact", idx)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise
            for name, parent in TC_PROGRAMS:
                ipr.tc("replace-filter", "bpf", idx, TC_HANDLE, fd=self.prog_fds[name],
                       name=f"{TC_FILTER_PREFIX}{name}", parent=parent, prio=TC_PRIO, classid=1, direct_action=True)
        self.ifaces.append(ifname)

    def detach_tc(self, ifname: str) -> None:
        detach_tc(ifname)
        if ifname in self.ifaces:
            self.ifaces.remove(ifname)

    # -- a predecessor's state
    def predecessor_maps(self, cgroup: str, ifaces: Iterable[str]) -> dict[str, list[tuple[int, int, int]]]:
        """STATE_MAPS of the programs currently attached (by a previous kproxy) to our cgroup and
        interfaces: name -> [(fd, key size, value size)]. Not ours; the caller closes the fds."""
        prog_ids: list[int] = []
        for _, at in CGROUP_PROGRAMS:
            with contextlib.suppress(OSError):
                prog_ids += cgroup_prog_ids(cgroup, attach_type_value(at))
        for ifname in ifaces:
            prog_ids += tc_prog_ids(ifname)
        own = set()
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                info = (ct.c_uint8 * 128)()
                _obj_info(fd, info)
                own.add(ct.c_uint32.from_buffer(info, 4).value)
        found: dict[str, list[tuple[int, int, int]]] = {}
        seen: set[int] = set()
        for prog_id in prog_ids:
            try:
                map_ids = prog_map_ids(prog_id)
            except OSError:
                continue  # detached meanwhile
            for map_id in map_ids:
                if map_id in seen or map_id in own:
                    continue
                seen.add(map_id)
                try:
                    fd, name, ksize, vsize = open_map(map_id)
                except OSError:
                    continue
                if name in STATE_MAPS:
                    found.setdefault(name, []).append((fd, ksize, vsize))
                else:
                    os.close(fd)
        return found

    def carry_over(self, old: dict[str, list[tuple[int, int, int]]], keep_newer: bool = False) -> int:
        """Copy entries of a predecessor's state maps into ours (same name and struct sizes).
        keep_newer: do not overwrite entries our programs made already. Returns entries copied."""
        copied = 0
        for name, fds in old.items():
            ksize, vsize = self.sizes[name]
            for fd, okey, oval in fds:
                if (okey, oval) != (ksize, vsize):
                    log.warning("previous %s map has another layout; its entries are not carried over", name)
                    continue
                cur, nxt, val = (ct.c_uint8 * ksize)(), (ct.c_uint8 * ksize)(), (ct.c_uint8 * vsize)()
                more = bpfsys.next_key(fd, None, nxt)
                while more:
                    if bpfsys.lookup(fd, nxt, val):
                        with contextlib.suppress(OSError):  # EEXIST: ours is newer (keep_newer)
                            bpfsys.update(self.fds[name], nxt, val, bpfsys.NOEXIST if keep_newer else 0)
                            copied += 1
                    ct.memmove(cur, nxt, ksize)
                    more = bpfsys.next_key(fd, cur, nxt)
        return copied

    # -- maps
    def update(self, name: str, pairs: list[tuple[object, object]]) -> None:
        """Write (key, value) pairs (readable tuples) in order."""
        if not pairs:
            return
        pack_k, pack_v = maps.PACK[name]
        fd = self.fds[name]
        kt, vt = maps.LAYOUT[name]
        if len(pairs) > 64:
            # One syscall for many entries; the kernel applies them in array order.
            keys = (kt * len(pairs))(*[pack_k(k) for k, _ in pairs])
            vals = (vt * len(pairs))(*[pack_v(v) for _, v in pairs])
            try:
                bpfsys.update_batch(fd, keys, vals, len(pairs))
                return
            except OSError as e:
                done = getattr(e, "done", 0)
                log.debug("batch update of %s failed (%s) after %d; per entry", name, e.strerror, done)
                pairs = pairs[done:]
        for k, v in pairs:
            try:
                bpfsys.update(fd, pack_k(k), pack_v(v))
            except OSError as e:
                raise OSError(e.errno, f"bpf map {name}: update of {k} failed: {e.strerror}") from None

    def delete(self, name: str, keys: list[object]) -> None:
        pack_k, _ = maps.PACK[name]
        fd = self.fds[name]
        for k in keys:
            try:
                bpfsys.delete(fd, pack_k(k))  # an absent key is fine
            except OSError as e:
                raise OSError(e.errno, f"bpf map {name}: delete of {k} failed: {e.strerror}") from None

    def raw_keys(self, name: str) -> Iterator[ct.Structure]:
        """Every key of a daemon-written map (get_next_key walk; entries added meanwhile may be
        missed, which a full sync tolerates: it only deletes what it found and does not want)."""
        kt, _ = maps.LAYOUT[name]
        fd = self.fds[name]
        cur, nxt = kt(), kt()
        if not bpfsys.next_key(fd, None, nxt):
            return
        while True:
            yield kt.from_buffer_copy(nxt)
            ct.memmove(ct.byref(cur), ct.byref(nxt), ct.sizeof(kt))
            if not bpfsys.next_key(fd, cur, nxt):
                return

    def keys(self, name: str) -> set:
        unpack_k, _ = maps.UNPACK[name]
        return {unpack_k(k) for k in self.raw_keys(name)}

    def lookup(self, name: str, key: object) -> object | None:
        pack_k, _ = maps.PACK[name]
        _, unpack_v = maps.UNPACK[name]
        _, vt = maps.LAYOUT[name]
        cv = vt()
        if not bpfsys.lookup(self.fds[name], pack_k(key), cv):
            return None
        return unpack_v(cv)

    def apply(self, ops: maps.Ops, family: int = 4) -> None:
        """Apply in plan order: set entries, then frontends, then deletions (to `family`'s maps)."""
        for group in (ops.puts_sets, ops.puts_frontends):
            run: list[tuple[object, object]] = []
            current = None
            for name, k, v in group:
                if name != current and run:
                    self.update(maps.map_name(current, family), run)
                    run = []
                current = name
                run.append((k, v))
            if run and current is not None:
                self.update(maps.map_name(current, family), run)
        for name in maps.DAEMON_MAPS:
            self.delete(maps.map_name(name, family), [k for m, k in ops.deletes if m == name])

    def close(self) -> None:
        """Release our fds; attached programs (and the maps they use) stay in the kernel."""
        for fd in [*self.prog_fds.values(), *self.fds.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.prog_fds, self.fds = {}, {}
