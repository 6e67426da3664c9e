"""The sandbox's supervisor, a stdlib-only script run as `python -I -S jail.py CONFIG_JSON` in the run's
temporary folder (which holds harness.py and candidate.py). It shuts the program in, runs harness.py, and
exits as the program did: its exit code, or its signal raised on itself.

In a new user namespace that maps only the caller's own uid (so nothing is gained outside it), it makes new
mount, network and pid namespaces and forks the child that becomes the program:
- network: the new namespace has one loopback device, down: nothing is reachable, 127.0.0.1 included;
- processes: the program is process 1 of its own pid namespace, sees and signals nothing outside it, and
  whatever it starts dies with it;
- files: the `hide` folders (the project, its data, the home folder) are covered by empty tmpfs mounts, but
  for the interpreter's own files (`keep`); then every mount is read-only, and /tmp, the program's working
  folder, is a fresh tmpfs of `file_bytes` that vanishes with it.
Then the child drops every capability, sets no_new_privs, installs a seccomp filter that refuses new
processes and sockets (RLIMIT_NPROC does not bind uid 0, which a container's grader often is), sets its
resource limits and execs the harness. Where user namespaces are refused (some kernels and container
runtimes), the child runs without them in the run's folder, with the same limits and filter.

The child's first line on stderr names the guards that hold: "sandbox-guards: netns pidns ...". A guard
that cannot be set once the namespaces exist ends the run with exit code 125 rather than run without it.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys
from typing import Any, NoReturn

SETUP_FAILED = 125

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MOUNT_ATTR_RDONLY, AT_FDCWD, AT_RECURSIVE = 1, -100, 0x8000
SYS_MOUNT_SETATTR = 442  # one number on every architecture (Linux 5.12+)
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 22, 24, 38
SECCOMP_MODE_FILTER, SECCOMP_RET_ALLOW, SECCOMP_RET_EPERM = 2, 0x7FFF0000, 0x00050000 | 1

SECCOMP_RET_ENOSYS = 0x00050000 | 38
CLONE_THREAD = 0x00010000
SYSCALLS = {  # audit arch, clone, clone3, then the calls refused: fork, vfork (where they exist), sockets
    "x86_64": (0xC000003E, 56, 435, [57, 58, 41, 53]),
    "aarch64": (0xC00000B7, 220, 435, [198, 199]),
}
X32_SYSCALL_BIT = 0x40000000

libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _checked(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encoded = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _checked(libc.mount(*encoded[:3], ctypes.c_ulong(flags), encoded[3]), f"mount {target}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_namespaces() -> bool:
    """New user, mount, network and pid namespaces (the pid one for the next child); False if refused."""
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return False
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    return True


def _cover(folder: str, options: str, kept: dict[str, int]) -> None:
    """A fresh tmpfs over `folder`, with the kept folders under it mounted back at their own paths."""
    _mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, options)
    for path, fd in kept.items():
        if path.startswith(folder.rstrip("/") + "/"):
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)


def shut_in_files(config: dict[str, Any], files: dict[str, bytes]) -> None:
    """Hide the `hide` folders but the `keep` ones, make every mount read-only, and put `files` in a fresh
    /tmp, the working folder. Needs the mount namespace, and the pid one for a /proc of its own."""
    _mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here shows outside
    kept = {path: os.open(path, os.O_PATH) for path in config["keep"]}  # reachable once covered
    for folder in sorted(config["hide"], key=len):
        if os.path.isdir(folder):  # else under a folder hidden already
            _cover(folder, "size=1m,mode=0755", kept)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # this pid namespace's processes only
    attr = MountAttr(attr_set=MOUNT_ATTR_RDONLY)
    _checked(
        libc.syscall(
            ctypes.c_long(SYS_MOUNT_SETATTR),
            ctypes.c_long(AT_FDCWD),
            b"/",
            ctypes.c_uint(AT_RECURSIVE),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "read-only mounts",
    )
    size = config["limits"]["file_bytes"] + 2**20  # room for the program's own files
    _cover("/tmp", f"size={size},mode=0700", kept)  # what is mounted back stays read-only
    for name, data in files.items():
        with open(f"/tmp/{name}", "wb") as f:
            f.write(data)
    os.chdir("/tmp")


def drop_capabilities() -> None:
    """Empty the bounding set, so the exec'd program has no capability, even as uid 0 of its namespace."""
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1
    _checked(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def refuse_processes_and_sockets() -> bool:
    """A seccomp filter: no new process (fork, vfork, clone without CLONE_THREAD: EPERM) and no socket;
    threads are let through (clone3 answers ENOSYS, so the C library creates them with clone), bounded by
    the memory limit (each takes a stack). Calls of another ABI (x32, 32-bit) fail. False where the
    machine is not known."""
    known = SYSCALLS.get(platform.machine())
    if known is None:
        return False
    arch, clone, clone3, refused = known
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    arch_offset, nr_offset, flags_offset = 4, 0, 16  # in struct seccomp_data; flags: args[0]'s low word
    # (label, code, jump if true, jump if false, k); jumps name a later label, None is the next one.
    program: list[tuple[str | None, int, str | None, str | None, int]] = [
        (None, ld, None, None, arch_offset),
        (None, jeq, None, "deny", arch),
        (None, ld, None, None, nr_offset),
        *([(None, jge, "deny", None, X32_SYSCALL_BIT)] if platform.machine() == "x86_64" else []),
        (None, jeq, "clone", None, clone),
        (None, jeq, "enosys", None, clone3),
        *[(None, jeq, "deny", None, number) for number in refused],
        (None, ret, None, None, SECCOMP_RET_ALLOW),
        ("clone", ld, None, None, flags_offset),
        (None, jset, "thread", "deny", CLONE_THREAD),
        ("thread", ret, None, None, SECCOMP_RET_ALLOW),
        ("enosys", ret, None, None, SECCOMP_RET_ENOSYS),
        ("deny", ret, None, None, SECCOMP_RET_EPERM),
    ]
    at = {label: i for i, (label, *_) in enumerate(program) if label}

    def offset(i: int, label: str | None) -> int:
        return 0 if label is None else at[label] - i - 1

    code = b"".join(
        struct.pack("HBBI", op, offset(i, yes), offset(i, no), k)
        for i, (_, op, yes, no, k) in enumerate(program)
    )
    buffer = ctypes.create_string_buffer(code)
    fprog = SockFprog(len(program), ctypes.cast(buffer, ctypes.c_void_p))
    _checked(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")
    return True


def set_limits(limits: dict[str, int]) -> None:
    for limit, value in [
        (resource.RLIMIT_CPU, limits["cpu_seconds"]),  # soft = hard: the kernel's SIGKILL, which even
        (resource.RLIMIT_AS, limits["memory_bytes"]),  # a pid namespace's process 1 cannot ignore
        (resource.RLIMIT_NPROC, 1),
        (resource.RLIMIT_FSIZE, limits["file_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"]),
        (resource.RLIMIT_CORE, 0),
    ]:
        resource.setrlimit(limit, (value, value))


def child(config: dict[str, Any], files: dict[str, bytes], namespaced: bool) -> NoReturn:
    try:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # killing the supervisor kills the program
        guards = ["rlimits", "nocaps"]
        if namespaced:
            shut_in_files(config, files)
            guards = ["netns", "pidns", "hidden", "readonly", *guards]
        else:
            os.chdir(config["work"])
        drop_capabilities()
        if refuse_processes_and_sockets():
            guards.append("seccomp")
        os.write(2, f"sandbox-guards: {' '.join(guards)}\n".encode())
        set_limits(config["limits"])
        python = config["python"]
        os.execv(python, [python, "-I", "-B", "harness.py"])
    except Exception as exc:
        os.write(2, f"sandbox: {exc}\n".encode(errors="replace"))
        os._exit(SETUP_FAILED)


def main() -> NoReturn:
    try:
        config = json.loads(sys.argv[1])
        files = {}
        for name in ("harness.py", "candidate.py"):  # read before /tmp, where they may be, is covered
            with open(os.path.join(config["work"], name), "rb") as f:
                files[name] = f.read()
        namespaced = enter_namespaces()
    except Exception as exc:  # the namespaces half made, or no Linux: run nothing
        os.write(2, f"sandbox: {exc}\n".encode(errors="replace"))
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        child(config, files, namespaced)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
