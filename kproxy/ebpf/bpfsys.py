"""bpf(2) for the running daemon: map elements (one and in batches), cgroup attachment, and the
kernel's enum values it needs (uapi/linux/bpf.h, stable ABI).

Why not bcc's wrappers: importing bcc maps libbcc and its LLVM (about 65 MB resident before
anything is compiled, 150 MB more after a compile). The daemon keeps only the loaded programs'
and maps' file descriptors (compiler.py compiles in a child process and hands them over), and
works on them with these calls.
"""

from __future__ import annotations

import ctypes as ct
import os
import platform

SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}.get(platform.machine(), 321)
# enum bpf_cmd
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
PROG_ATTACH, PROG_DETACH = 8, 9
MAP_UPDATE_BATCH = 26
NOEXIST = 1  # BPF_NOEXIST: update only if absent
# enum bpf_attach_type, by the names bcc's BPFAttachType gives them
# (tests/unit/test_deploy_uninstall.py checks them against bcc's).
ATTACH_TYPES = {"CGROUP_INET4_CONNECT": 10, "CGROUP_INET6_CONNECT": 11, "CGROUP_UDP4_SENDMSG": 14,
                "CGROUP_UDP6_SENDMSG": 15, "CGROUP_UDP4_RECVMSG": 19, "CGROUP_UDP6_RECVMSG": 20,
                "CGROUP_INET4_GETPEERNAME": 29, "CGROUP_INET6_GETPEERNAME": 30}

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def call(cmd: int, attr: ct.Array) -> int:
    """bpf(cmd, attr); OSError with the kernel's errno on failure."""
    res = _libc.syscall(ct.c_long(SYS_BPF), ct.c_long(cmd), attr, ct.c_uint(ct.sizeof(attr)))
    if res < 0:
        err = ct.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def _put(attr: ct.Array, off: int, value: int, ctype: type = ct.c_uint32) -> None:
    ct.memmove(ct.byref(attr, off), ct.byref(ctype(value)), ct.sizeof(ctype))


def _elem_attr(fd: int, key: ct._CData, value: ct._CData | None, flags: int = 0) -> ct.Array:
    """union bpf_attr for the element commands: map_fd, key, value | next_key, flags."""
    attr = (ct.c_uint8 * 32)()
    _put(attr, 0, fd)
    _put(attr, 8, ct.addressof(key), ct.c_uint64)
    if value is not None:
        _put(attr, 16, ct.addressof(value), ct.c_uint64)
    _put(attr, 24, flags, ct.c_uint64)
    return attr


def update(fd: int, key: ct._CData, value: ct._CData, flags: int = 0) -> None:
    call(MAP_UPDATE_ELEM, _elem_attr(fd, key, value, flags))


def lookup(fd: int, key: ct._CData, value: ct._CData) -> bool:
    """Fills `value`; False when the key is absent."""
    try:
        call(MAP_LOOKUP_ELEM, _elem_attr(fd, key, value))
    except FileNotFoundError:
        return False
    return True


def delete(fd: int, key: ct._CData) -> bool:
    """False when the key was absent."""
    try:
        call(MAP_DELETE_ELEM, _elem_attr(fd, key, None))
    except FileNotFoundError:
        return False
    return True


def next_key(fd: int, key: ct._CData | None, out: ct._CData) -> bool:
    """The key after `key` (None: the first) into `out`; False at the end."""
    attr = (ct.c_uint8 * 32)()
    _put(attr, 0, fd)
    if key is not None:
        _put(attr, 8, ct.addressof(key), ct.c_uint64)
    _put(attr, 16, ct.addressof(out), ct.c_uint64)
    try:
        call(MAP_GET_NEXT_KEY, attr)
    except FileNotFoundError:
        return False
    return True


def update_batch(fd: int, keys: ct.Array, values: ct.Array, count: int) -> int:
    """Write `count` entries in one call, in array order; how many were written (all, or the
    ones before the first failure, whose OSError is raised with `.done` set)."""
    attr = (ct.c_uint8 * 56)()  # the batch member: in/out_batch, keys, values, count, map_fd, elem_flags, flags
    _put(attr, 16, ct.addressof(keys), ct.c_uint64)
    _put(attr, 24, ct.addressof(values), ct.c_uint64)
    _put(attr, 32, count)
    _put(attr, 36, fd)
    try:
        call(MAP_UPDATE_BATCH, attr)
    except OSError as e:
        e.done = ct.c_uint32.from_buffer(attr, 32).value  # type: ignore[attr-defined]
        raise
    return count


def attach_cgroup(cgroup_fd: int, prog_fd: int, attach_type: int) -> None:
    """BPF_PROG_ATTACH without flags: the one program of this type on the cgroup, replacing the
    previous one atomically (so a restarted daemon never leaves a gap)."""
    attr = (ct.c_uint8 * 20)()
    for off, val in ((0, cgroup_fd), (4, prog_fd), (8, attach_type)):
        _put(attr, off, val)
    call(PROG_ATTACH, attr)


def detach_cgroup(cgroup_fd: int, prog_fd: int, attach_type: int) -> None:
    attr = (ct.c_uint8 * 16)()
    for off, val in ((0, cgroup_fd), (4, prog_fd), (8, attach_type)):
        _put(attr, off, val)
    call(PROG_DETACH, attr)
