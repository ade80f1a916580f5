#!/usr/bin/env python3
"""Runs a command under the process-level confinement of systemd/talkheadd.service, without systemd.

usage: tests/unit_sandbox.py [--unit FILE] -- COMMAND [ARGS...]

What systemd would apply to the daemon and everything it starts, as far as a process can apply it to
itself before exec (all of it is inherited by children):

- NoNewPrivileges=yes                    prctl(PR_SET_NO_NEW_PRIVS)
- MemoryDenyWriteExecute=yes             prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): the kernel's own
                                         W^X, which systemd uses where the kernel has it (Linux >= 6.3;
                                         on an older kernel a warning says it is not reproduced)
- SystemCallArchitectures=native         only the native audit arch passes the filter
- SystemCallFilter= (every line of the unit, in order) with SystemCallErrorNumber=EPERM
                                         a libseccomp filter: the allow-list minus the deny-lists, the
                                         groups expanded by `systemd-analyze syscall-filter`, anything
                                         else failing with EPERM

Used by tests/run.sh to run the `onnx` face backend's test binary (ONNX Runtime loaded at run time,
its thread pool, its allocator) as the packaged service would: a library that needs a filtered call
or writable-executable memory fails here the way it would under systemd. Namespaces, mounts and
capabilities (ProtectSystem=, PrivateTmp=, ...) are not reproduced: they decide what a process may
see, not which calls it may make, and the daemon's own tests cover its paths.

Standard library only (ctypes against Debian's libseccomp2, a dependency of docker.io).
"""

import ctypes
import ctypes.util
import os
import re
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_ALLOW = 0x7FFF0000
EPERM = 1


def scmp_act_errno(errno):
    return 0x00050000 | (errno & 0x0000FFFF)


def unit_settings(unit_path):
    """The `SystemCallFilter=` lines in order, and the error number, from the unit file."""
    filters, errno_name = [], None
    with open(unit_path, encoding="utf-8") as unit:
        for line in unit:
            line = line.strip()
            if line.startswith("SystemCallFilter="):
                filters.append(line.split("=", 1)[1].strip())
            elif line.startswith("SystemCallErrorNumber="):
                errno_name = line.split("=", 1)[1].strip()
    if not filters:
        sys.exit(f"unit_sandbox: no SystemCallFilter= in {unit_path}")
    if errno_name != "EPERM":
        sys.exit(f"unit_sandbox: SystemCallErrorNumber={errno_name} is not handled (EPERM is)")
    return filters


_groups = {}


def expand(name):
    """The system calls of a name: a call itself, or every call of a group, recursively."""
    if not name.startswith("@"):
        return {name}
    if name not in _groups:
        listing = subprocess.run(
            ["systemd-analyze", "syscall-filter", name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        members = set()
        for line in listing.splitlines()[1:]:
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            members |= expand(entry)
        if not members:
            sys.exit(f"unit_sandbox: systemd-analyze knows no group {name}")
        _groups[name] = members
    return _groups[name]


def allowed_calls(filters):
    """systemd's semantics: the first line decides allow-list or deny-list; later lines add to the
    allow-list, or with `~` take away from it."""
    allowed = None
    for spec in filters:
        deny = spec.startswith("~")
        names = set()
        for word in re.split(r"\s+", spec.lstrip("~").strip()):
            if word:
                names |= expand(word)
        if allowed is None:
            if deny:
                sys.exit("unit_sandbox: a deny-list first is not handled (the unit allow-lists)")
            allowed = names
        elif deny:
            allowed -= names
        else:
            allowed |= names
    return allowed


def confine(allowed):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"unit_sandbox: PR_SET_NO_NEW_PRIVS failed: {os.strerror(ctypes.get_errno())}")
    w_x = libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) == 0
    if not w_x:
        # Kernels before 6.3: systemd falls back to a seccomp filter on the mmap/mprotect flags, which
        # is not reproduced here; say so rather than pretend.
        print(
            "unit_sandbox: WARNING: this kernel has no PR_SET_MDWE "
            f"({os.strerror(ctypes.get_errno())}): MemoryDenyWriteExecute= is NOT reproduced",
            file=sys.stderr,
        )
    path = ctypes.util.find_library("seccomp")
    if path is None:
        sys.exit("unit_sandbox: libseccomp is missing (apt-get install libseccomp2)")
    seccomp = ctypes.CDLL(path)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = seccomp.seccomp_init(scmp_act_errno(EPERM))
    if not ctx:
        sys.exit("unit_sandbox: seccomp_init failed")
    # A new filter matches the native architecture only: SystemCallArchitectures=native.
    added = 0
    for name in sorted(allowed):
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue  # a call this architecture does not have
        if seccomp.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0) == 0:
            added += 1
    if seccomp.seccomp_load(ctx) != 0:
        sys.exit("unit_sandbox: seccomp_load failed")
    return added, w_x


def main():
    args = sys.argv[1:]
    unit = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "systemd", "talkheadd.service")
    if args[:1] == ["--unit"]:
        unit, args = args[1], args[2:]
    if args[:1] != ["--"] or len(args) < 2:
        sys.exit(__doc__.split("\n\n")[1])
    command = args[1:]
    allowed = allowed_calls(unit_settings(unit))
    for needed in ("execve", "prlimit64", "clone3", "mmap", "mprotect"):
        if needed not in allowed:
            sys.exit(f"unit_sandbox: the filter would not allow {needed}: check the group expansion")
    added, w_x = confine(allowed)
    print(
        f"unit_sandbox: {added} system calls allowed, EPERM for the rest, "
        f"{'W^X' if w_x else 'no W^X'}, no new privileges: "
        f"{' '.join(command)}",
        file=sys.stderr,
        flush=True,
    )
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
