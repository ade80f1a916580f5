#!/usr/bin/env python3
"""A tiny stand-in for systemd's service manager side of sd_notify(3), for tests.

Runs COMMAND the way a Type=notify unit with WatchdogSec= would, and checks the daemon's side of the
protocol:

  1. binds a Unix datagram socket and starts COMMAND with NOTIFY_SOCKET, WATCHDOG_USEC and
     WATCHDOG_PID=<the daemon's pid> (the harness forks and the child execs COMMAND, so the pid is known
     before exec; wrappers such as `setpriv` exec in place and keep it; `runuser`/`sudo` fork and would
     not);
  2. accepts notifications only from that pid (NotifyAccess=main), using SO_PASSCRED;
  3. waits for READY=1 (and a STATUS= line) within --ready-timeout;
  4. watches WATCHDOG=1 for --observe seconds: at least two, no gap longer than WATCHDOG_USEC
     (--watchdog=require fails otherwise, --watchdog=warn only reports it);
  5. sends SIGTERM, expects STOPPING=1 and exit status 0 within --stop-timeout.

Prints every message in order with its time since start, then PASS or FAIL lines; exits 0 when all
required checks pass, 1 otherwise, 2 on usage errors. The daemon's stdout/stderr are passed through.

Usage: notify_harness.py [options] -- COMMAND [ARG...]
"""

import argparse
import array
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--watchdog-usec", type=int, default=2_000_000, help="WATCHDOG_USEC to set (default 2 s)")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for READY=1")
    p.add_argument("--observe", type=float, default=None,
                   help="seconds to watch WATCHDOG=1 after READY=1 (default 2.5 x WATCHDOG_USEC)")
    p.add_argument("--stop-timeout", type=float, default=45.0, help="seconds from SIGTERM to exit (TimeoutStopSec)")
    p.add_argument("--watchdog", choices=["require", "warn"], default="require",
                   help="whether missing or late WATCHDOG=1 fails the run")
    p.add_argument("--socket-mode", default="0777",
                   help="mode of the notify socket (the daemon may run as another user)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("no COMMAND given (put it after --)")
    if args.observe is None:
        args.observe = 2.5 * args.watchdog_usec / 1e6
    return args


class Harness:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.messages = []  # (seconds since start, pid, text)
        self.failures = []
        self.warnings = []
        self.dir = tempfile.mkdtemp(prefix="notify-harness-")
        os.chmod(self.dir, 0o755)
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        os.chmod(self.path, int(args.socket_mode, 8))
        self.pid = None
        self.status = None  # wait status once reaped

    def now(self):
        return time.monotonic() - self.start

    def spawn(self):
        pid = os.fork()
        if pid == 0:  # child: become the daemon
            try:
                env = dict(os.environ)
                env["NOTIFY_SOCKET"] = self.path
                env["WATCHDOG_USEC"] = str(self.args.watchdog_usec)
                env["WATCHDOG_PID"] = str(os.getpid())
                # Not inherited: the daemon must not see the harness' socket as a listen fd.
                for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                    env.pop(var, None)
                self.sock.close()
                os.execvpe(self.args.command[0], self.args.command, env)
            except BaseException as e:  # noqa: BLE001 - report anything, then leave without cleanup
                print(f"notify_harness: exec {self.args.command[0]}: {e}", file=sys.stderr)
                os._exit(127)
        self.pid = pid
        print(f"notify_harness: started pid {pid}: {' '.join(self.args.command)}", flush=True)

    def reap(self, block=False):
        if self.status is not None:
            return True
        pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        if pid == self.pid:
            self.status = status
            return True
        return False

    def receive(self, timeout):
        """Read datagrams for up to `timeout` seconds (returns early when the daemon exits)."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            ready, _, _ = select.select([self.sock], [], [], min(remaining, 0.1))
            if ready:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
                sender = None
                for level, kind, payload in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                        sender = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
                text = data.decode("utf-8", "replace")
                if sender != self.pid:
                    # NotifyAccess=main: systemd would drop it too.
                    self.warnings.append(f"ignored notification from pid {sender} (not the main pid): {text!r}")
                    continue
                for line in text.splitlines():
                    if line:
                        self.messages.append((self.now(), sender, line))
                        got.append((self.now(), line))
            elif self.reap():
                # Drain what is left, then stop waiting.
                while select.select([self.sock], [], [], 0)[0]:
                    data = self.sock.recv(4096).decode("utf-8", "replace")
                    for line in data.splitlines():
                        if line:
                            self.messages.append((self.now(), self.pid, line))
                            got.append((self.now(), line))
                return got

    def seen(self, prefix):
        return [t for t, _, m in self.messages if m.startswith(prefix)]

    def run(self):
        a = self.args
        self.spawn()
        # 1. READY=1
        deadline = time.monotonic() + a.ready_timeout
        while not self.seen("READY=1") and time.monotonic() < deadline and self.status is None:
            self.receive(min(0.5, max(0.0, deadline - time.monotonic())))
        if not self.seen("READY=1"):
            self.failures.append(
                "no READY=1 within %.0f s%s" % (a.ready_timeout, self.exit_note()))
            return self.finish()
        if not self.seen("STATUS="):
            self.failures.append("READY=1 came without any STATUS= line")
        ready_at = self.seen("READY=1")[0]

        # 2. WATCHDOG=1 keep-alives
        self.receive(a.observe)
        if self.status is not None:
            self.failures.append("daemon exited before SIGTERM" + self.exit_note())
            return self.finish()
        pets = [t for t in self.seen("WATCHDOG=1") if t >= ready_at - 1e-3]
        limit = a.watchdog_usec / 1e6
        problem = None
        if len(pets) < 2:
            problem = "%d WATCHDOG=1 in %.1f s after READY=1 (WATCHDOG_USEC=%d: expected one every %.1f s)" % (
                len(pets), a.observe, a.watchdog_usec, limit / 2)
        else:
            points = [ready_at] + pets + [self.now()]
            gap = max(b - a_ for a_, b in zip(points, points[1:]))
            if gap > limit:
                problem = "a %.2f s gap between watchdog keep-alives exceeds WATCHDOG_USEC (%.1f s)" % (gap, limit)
        if problem:
            (self.failures if a.watchdog == "require" else self.warnings).append(problem)

        # 3. SIGTERM -> STOPPING=1 -> exit 0
        sent = self.now()
        os.kill(self.pid, signal.SIGTERM)
        self.messages.append((sent, None, "(harness) SIGTERM"))
        deadline = time.monotonic() + a.stop_timeout
        while self.status is None and time.monotonic() < deadline:
            self.receive(min(0.5, max(0.0, deadline - time.monotonic())))
        if self.status is None:
            self.failures.append("still running %.0f s after SIGTERM (TimeoutStopSec); killed" % a.stop_timeout)
            os.kill(self.pid, signal.SIGKILL)
            self.reap(block=True)
        if not [t for t in self.seen("STOPPING=1") if t >= sent]:
            self.failures.append("no STOPPING=1 after SIGTERM")
        if not (os.WIFEXITED(self.status) and os.WEXITSTATUS(self.status) == 0):
            self.failures.append("did not exit 0 after SIGTERM" + self.exit_note())
        return self.finish()

    def exit_note(self):
        if self.status is None:
            return ""
        if os.WIFEXITED(self.status):
            return f" (exit status {os.WEXITSTATUS(self.status)})"
        return f" (killed by signal {os.WTERMSIG(self.status)})"

    def finish(self):
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reap(block=True)
        print("notify_harness: messages, in order:")
        for t, pid, m in self.messages:
            print(f"  {t:7.3f}s  {m}")
        print(f"notify_harness: daemon ended{self.exit_note()}")
        for w in self.warnings:
            print(f"notify_harness: WARNING: {w}")
        for f in self.failures:
            print(f"notify_harness: FAIL: {f}")
        if not self.failures:
            print("notify_harness: PASS")
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self.dir)
        except OSError:
            pass
        return 0 if not self.failures else 1


def main(argv):
    args = parse_args(argv)
    return Harness(args).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
