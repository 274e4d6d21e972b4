"""A seccomp filter for step programs: no new namespaces, no mounts, no kernel keys, no memfds.

A program runs without capabilities in namespaces of its own, but an unprivileged process may
still create a user namespace, and inside it mount an unbounded tmpfs (memory no limit counts) or
take apart its own mounts. Kernel keys are shared by every process of a host uid, so they would be
a channel between programs. A memfd is a file in memory outside every size limit. Blocking
these system calls closes all four; scientific code uses none of them. `clone3` answers ENOSYS
(its flags sit in memory a filter cannot read), and the C library then falls back to `clone`,
whose flags the filter checks.

System calls of another ABI (32-bit `int 0x80`, x32) are refused outright: their numbers differ.
The filter is installed after the sandbox is set up and is inherited across `execve`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data; arg 0's low word (little endian)
_X32_BIT = 0x40000000
#: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

# Refused with EPERM: namespaces, mounts (old and new API), kernel keys.
_DENIED: tuple[str, ...] = ("unshare", "setns", "mount", "umount2", "pivot_root", "add_key", "request_key", "keyctl")
_DENIED += ("open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr")

# Answered ENOSYS, which libraries take as "not on this kernel" and fall back from: `clone3` (to
# `clone`), and memory-backed files (to files in the size-capped scratch), whose pages no
# address-space limit counts.
_UNSUPPORTED = ("clone3", "memfd_create", "memfd_secret")


@dataclass(frozen=True)
class _Abi:
    audit_arch: int
    numbers: dict[str, int]


_NEW_MOUNT_API = {"open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433}
_COMMON = {**_NEW_MOUNT_API, "clone3": 435, "mount_setattr": 442, "memfd_secret": 447}
ABIS = {
    "x86_64": _Abi(
        0xC000003E,
        {"clone": 56, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155}
        | {"add_key": 248, "request_key": 249, "keyctl": 250, "memfd_create": 319, **_COMMON},
    ),
    "aarch64": _Abi(
        0xC00000B7,
        {"clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41}
        | {"add_key": 217, "request_key": 218, "keyctl": 219, "memfd_create": 279, **_COMMON},
    ),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def program(machine: str) -> bytes:
    """The filter as classic BPF for `machine` (`os.uname().machine`).

    Raises:
        OSError: no filter is known for this machine; the sandbox cannot be set up here.
    """
    abi = ABIS.get(machine)
    if abi is None:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {machine!r}: the sandbox supports {', '.join(ABIS)}")
    deny = _insn(_RET, _RET_ERRNO | errno.EPERM)
    denied = [abi.numbers[name] for name in _DENIED]
    # Layout: checks, then the shared endings [allow, deny, enosys]; jumps are relative.
    checks: list[tuple[int, int, str, str]] = []  # (code, k, on true, on false)
    checks.append((_JEQ, abi.audit_arch, "next", "deny"))
    checks.append((_JGE, _X32_BIT, "deny", "next"))
    checks += [(_JEQ, nr, "deny", "next") for nr in denied]
    checks += [(_JEQ, abi.numbers[name], "enosys", "next") for name in _UNSUPPORTED]
    checks.append((_JEQ, abi.numbers["clone"], "next", "allow"))
    checks.append((_JSET, NAMESPACE_FLAGS, "deny", "allow"))
    loads = {0: _OFFSET_ARCH, 1: _OFFSET_NR, len(checks) - 1: _OFFSET_ARG0}  # a load before these checks
    body: list[tuple[int, int, str, str] | int] = []
    for i, check in enumerate(checks):
        if i in loads:
            body.append(loads[i])
        body.append(check)
    end = len(body)  # index of "allow"; "deny" and "enosys" follow it
    targets = {"allow": end, "deny": end + 1, "enosys": end + 2}
    code = b""
    for i, item in enumerate(body):
        if isinstance(item, int):
            code += _insn(_LD_ABS, item)
            continue
        op, k, on_true, on_false = item
        jump_true = 0 if on_true == "next" else targets[on_true] - i - 1
        jump_false = 0 if on_false == "next" else targets[on_false] - i - 1
        code += _insn(op, k, jump_true, jump_false)
    return code + _insn(_RET, _RET_ALLOW) + deny + _insn(_RET, _RET_ERRNO | errno.ENOSYS)


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Install the filter on this process (and everything it starts). Needs no_new_privs set.

    Raises:
        OSError: the kernel refused the filter, or none is known for this machine.
    """
    code = program(os.uname().machine)
    buffer = ctypes.create_string_buffer(code, len(code))
    prog = _Fprog(len(code) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {os.strerror(err)}")
