//! systemd integration: notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`) and socket
//! activation (`LISTEN_PID` / `LISTEN_FDS` / `LISTEN_FDNAMES`).
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`, no `LISTEN_FDS`) every function here is a
//! no-op or returns nothing, so the daemon runs the same in a terminal. The environment is only read,
//! never unset: unsetting variables in a multi-threaded process is a data race, and later notifications
//! must keep working.
//!
//! The variables are read by the `sd-notify` crate, with libsystemd's rules: `listen_fds_with_names`
//! (`LISTEN_PID` must be our pid, one name per descriptor or none at all, every descriptor marked
//! `FD_CLOEXEC` so that the daemon's children, ffmpeg and prlimit, do not inherit its listening
//! sockets) and `watchdog_enabled` (`WATCHDOG_PID`, when present, must be our pid). What this module
//! adds is ownership: socket activation hands us file descriptors 3, 4, ... that systemd opened for
//! us, and turning such a number into an owned descriptor is the one place in the daemon that needs
//! `unsafe`; it happens once, behind a [`OnceLock`], after each descriptor has been checked to be an
//! open socket, and each is then handed out by name at most once.
//!
//! Must not: block, fail the daemon (a failed notification is logged and dropped), or hand the same
//! descriptor out twice.

use sd_notify::NotifyState;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The `FileDescriptorName=` of the admin socket in `talkheadd.socket`.
pub const ADMIN_FD_NAME: &str = "admin";

/// The name libsystemd (and `sd-notify`) reports for a descriptor when `LISTEN_FDNAMES` is absent.
pub const UNNAMED_FD: &str = "unknown";

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Readiness: the store is open and listeners are live.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Update the one-line status shown by `systemctl status`.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Pet the watchdog (`WATCHDOG=1`). Call it from the loop whose liveness matters (the scheduler tick),
/// at least every [`watchdog_interval`]. A no-op when systemd runs no watchdog for this process.
pub fn watchdog() {
    if watchdog_interval().is_some() {
        notify(&[NotifyState::Watchdog]);
    }
}

/// How often to call [`watchdog`]: half of `WATCHDOG_USEC` (as sd_watchdog_enabled(3) advises), or
/// `None` when no watchdog applies to this process (`WATCHDOG_PID` names another one, or the interval
/// is absent, malformed or zero). Read once and cached.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(|| {
        sd_notify::watchdog_enabled()
            .filter(|usec| !usec.is_zero())
            .map(|usec| usec / 2)
    })
}

/// Descriptors received from systemd and not yet taken, in `LISTEN_FDS` order.
fn inherited() -> &'static Mutex<Vec<(String, OwnedFd)>> {
    static FDS: OnceLock<Mutex<Vec<(String, OwnedFd)>>> = OnceLock::new();
    FDS.get_or_init(|| Mutex::new(adopt_listen_fds()))
}

/// Read the variables and take ownership of the descriptors they describe. Runs once (behind
/// [`inherited`]'s `OnceLock`).
fn adopt_listen_fds() -> Vec<(String, OwnedFd)> {
    // sd-notify checks LISTEN_PID against our pid (variables inherited by a child describe nothing),
    // pairs the descriptors with LISTEN_FDNAMES (or UNNAMED_FD) and sets FD_CLOEXEC on each.
    let described = match sd_notify::listen_fds_with_names() {
        Ok(described) => described,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring malformed socket-activation variables");
            return Vec::new();
        }
    };
    let mut adopted = Vec::with_capacity(described.len());
    for (fd, name) in described {
        // Only adopt what is really an open socket: a stale or forged LISTEN_FDS must not make us
        // close (on drop) a descriptor that belongs to something else.
        let is_socket = nix::sys::stat::fstat(fd).is_ok_and(|st| {
            nix::sys::stat::SFlag::from_bits_truncate(st.st_mode) & nix::sys::stat::SFlag::S_IFMT
                == nix::sys::stat::SFlag::S_IFSOCK
        });
        if !is_socket {
            tracing::warn!(fd, name = %name, "LISTEN_FDS names a descriptor that is not an open socket; ignored");
            continue;
        }
        adopted.push((name, own_inherited_fd(fd)));
    }
    adopted
}

/// Wrap a descriptor systemd passed us.
#[allow(unsafe_code)]
fn own_inherited_fd(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is one of the descriptors systemd opened for this process: sd-notify checked that
    // `LISTEN_PID` equals our pid and `fd` lies in `LISTEN_FDS_START .. LISTEN_FDS_START + LISTEN_FDS`
    // (it could set FD_CLOEXEC on it, so it is open), and it was just checked
    // to be an open socket. Nothing else in the process owns it: the daemon never refers to
    // descriptors by number, and this function is only called from `adopt_listen_fds`, which runs once
    // behind a `OnceLock`, so each descriptor gets exactly one owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Take every socket systemd passed us that has not been taken yet, by `FileDescriptorName=`. When
/// several share a name the first is returned and the rest are closed (with a warning).
pub fn listen_fds_by_name() -> HashMap<String, OwnedFd> {
    let taken = match inherited().lock() {
        Ok(mut fds) => std::mem::take(&mut *fds),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    let mut out = HashMap::with_capacity(taken.len());
    for (name, fd) in taken {
        if out.contains_key(&name) {
            tracing::warn!(name = %name, "several inherited sockets share this name; closing the extra one");
            continue;
        }
        out.insert(name, fd);
    }
    out
}

fn take_named(name: &str) -> Option<OwnedFd> {
    let mut fds = match inherited().lock() {
        Ok(fds) => fds,
        Err(poisoned) => poisoned.into_inner(),
    };
    let i = fds.iter().position(|(n, _)| n == name)?;
    Some(fds.remove(i).1)
}

/// The inherited Unix stream listener named `name` (e.g. [`ADMIN_FD_NAME`]), in non-blocking mode so
/// it can be handed to `tokio::net::UnixListener::from_std`. `None` when systemd passed no socket of
/// that name (not socket-activated: bind the configured path instead). A descriptor of that name that
/// is not a listening Unix stream socket is closed and reported.
pub fn take_unix_listener(name: &str) -> Option<std::os::unix::net::UnixListener> {
    let fd = take_named(name)?;
    match check_listener(&fd, nix::sys::socket::AddressFamily::Unix) {
        Ok(()) => {
            let listener = std::os::unix::net::UnixListener::from(fd);
            nonblocking(listener.set_nonblocking(true), name);
            Some(listener)
        }
        Err(problem) => {
            tracing::warn!(
                name,
                problem,
                "inherited socket is not a Unix stream listener; closed"
            );
            None
        }
    }
}

/// The inherited TCP listener named `name`, non-blocking (for `tokio::net::TcpListener::from_std`).
/// `None` when there is none; a descriptor of that name that is not a listening TCP socket is closed.
pub fn take_tcp_listener(name: &str) -> Option<std::net::TcpListener> {
    let fd = take_named(name)?;
    let inet = check_listener(&fd, nix::sys::socket::AddressFamily::Inet);
    let inet6 = check_listener(&fd, nix::sys::socket::AddressFamily::Inet6);
    match inet.or(inet6) {
        Ok(()) => {
            let listener = std::net::TcpListener::from(fd);
            nonblocking(listener.set_nonblocking(true), name);
            Some(listener)
        }
        Err(problem) => {
            tracing::warn!(name, problem, "inherited socket is not a TCP listener; closed");
            None
        }
    }
}

fn nonblocking(result: std::io::Result<()>, name: &str) {
    if let Err(e) = result {
        tracing::warn!(name, error = %e, "cannot make an inherited socket non-blocking");
    }
}

/// A listening stream socket of `family`.
fn check_listener(fd: &OwnedFd, family: nix::sys::socket::AddressFamily) -> Result<(), &'static str> {
    use nix::sys::socket::{SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
    let ty = getsockopt(fd, sockopt::SockType).map_err(|_| "not a socket")?;
    if ty != SockType::Stream {
        return Err("not a stream socket");
    }
    if !getsockopt(fd, sockopt::AcceptConn).map_err(|_| "cannot query SO_ACCEPTCONN")? {
        return Err("not listening");
    }
    let addr: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(|_| "getsockname failed")?;
    if addr.family() != Some(family) {
        return Err("wrong address family");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The variables are only read once per process (and setting them in a multi-threaded test
    //! process would race), so each case runs this test binary again, as systemd would start the
    //! daemon: `sh` puts a Unix listener at descriptor 3 and a TCP listener at 4, sets `LISTEN_PID`
    //! (or `WATCHDOG_PID`) to its own pid when the case says `self`, and execs the binary, which runs
    //! only [`activated_process`]. That test reads what to expect from the environment and checks
    //! what the module hands out.

    use super::*;
    use std::os::fd::AsFd;
    use std::process::{Command, Stdio};

    /// Set in the re-executed binary: [`activated_process`] does nothing without it.
    const CHILD: &str = "TALKHEADD_SYSTEMD_TEST_CHILD";
    /// What [`activated_process`] must find: `named`, `unnamed`, `wrong_kind` or `none`.
    const EXPECT_SOCKETS: &str = "TALKHEADD_SYSTEMD_TEST_SOCKETS";
    /// The watchdog interval it must find, in milliseconds, or `none`.
    const EXPECT_WATCHDOG_MS: &str = "TALKHEADD_SYSTEMD_TEST_WATCHDOG_MS";
    /// Where the parent bound the Unix listener, and the TCP listener's port.
    const UNIX_PATH: &str = "TALKHEADD_SYSTEMD_TEST_UNIX_PATH";
    const TCP_PORT: &str = "TALKHEADD_SYSTEMD_TEST_TCP_PORT";

    /// The variables a case may set; everything else of them is removed from the child's environment.
    const SYSTEMD_VARS: [&str; 6] = [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "NOTIFY_SOCKET",
    ];

    /// Descriptor 0 (the Unix listener) to 3 and descriptor 2 (the TCP listener) to 4, stdin from
    /// /dev/null and stderr to stdout, `self` replaced by the shell's pid (which `exec` keeps), then the
    /// test binary ($0) running only the child test.
    const SCRIPT: &str = r#"exec 3<&0 4<&2 </dev/null 2>&1
[ "$LISTEN_PID" = self ] && LISTEN_PID=$$
[ "$WATCHDOG_PID" = self ] && WATCHDOG_PID=$$
exec "$0" --exact systemd::tests::activated_process --nocapture --test-threads 1"#;

    /// Runs [`activated_process`] in a fresh process started like systemd starts the daemon, with
    /// `env` (of [`SYSTEMD_VARS`]) and the expectations; fails with the child's output if it does.
    fn run_activated(env: &[(&str, &str)], sockets: &str, watchdog_ms: &str) {
        let dir = tempfile::tempdir().unwrap();
        let unix_path = dir.path().join("admin.sock");
        let unix = std::os::unix::net::UnixListener::bind(&unix_path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port().to_string();
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(SCRIPT)
            .arg(std::env::current_exe().unwrap());
        for var in SYSTEMD_VARS {
            command.env_remove(var);
        }
        command
            .envs(env.iter().copied())
            .env(CHILD, "1")
            .env(EXPECT_SOCKETS, sockets)
            .env(EXPECT_WATCHDOG_MS, watchdog_ms)
            .env(UNIX_PATH, &unix_path)
            .env(TCP_PORT, &port)
            .stdin(Stdio::from(OwnedFd::from(unix)))
            .stderr(Stdio::from(OwnedFd::from(tcp)))
            .stdout(Stdio::piped());
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{env:?}: the activated process failed:\n{text}"
        );
        // The filter matched: the checks ran (a renamed test would otherwise pass vacuously).
        assert!(
            text.contains("1 passed"),
            "{env:?}: the child test did not run:\n{text}"
        );
    }

    /// The child's half (a no-op in the ordinary test run).
    #[test]
    fn activated_process() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let expect = |var| std::env::var(var).unwrap();
        let watchdog = match expect(EXPECT_WATCHDOG_MS).as_str() {
            "none" => None,
            ms => Some(Duration::from_millis(ms.parse().unwrap())),
        };
        assert_eq!(watchdog_interval(), watchdog, "watchdog interval");

        let cloexec = |fd: &dyn AsFd| {
            let flags = nix::fcntl::fcntl(fd.as_fd().as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
            nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
        };
        let nonblocking = |fd: &dyn AsFd| {
            let flags = nix::fcntl::fcntl(fd.as_fd().as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
            nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK)
        };
        let unix_path = std::path::PathBuf::from(expect(UNIX_PATH));
        let port: u16 = expect(TCP_PORT).parse().unwrap();
        match expect(EXPECT_SOCKETS).as_str() {
            "named" => {
                // Names map to their descriptors, each checked for its kind, non-blocking for tokio,
                // close-on-exec for the daemon's children; each is handed out once.
                let admin = take_unix_listener(ADMIN_FD_NAME).expect("the admin socket");
                let addr = admin.local_addr().unwrap();
                assert_eq!(addr.as_pathname(), Some(unix_path.as_path()));
                let http = take_tcp_listener("http").expect("the http socket");
                assert_eq!(http.local_addr().unwrap().port(), port);
                for fd in [&admin as &dyn AsFd, &http] {
                    assert!(cloexec(fd), "inherited sockets are close-on-exec");
                    assert!(nonblocking(fd), "inherited sockets are non-blocking");
                }
                assert!(take_unix_listener(ADMIN_FD_NAME).is_none());
                assert!(take_tcp_listener("http").is_none());
                assert!(listen_fds_by_name().is_empty());
            }
            "unnamed" => {
                // Without LISTEN_FDNAMES both are "unknown": the first (descriptor 3, the Unix
                // listener) is kept, the second closed.
                let mut fds = listen_fds_by_name();
                assert_eq!(fds.len(), 1, "{fds:?}");
                let fd = fds.remove(UNNAMED_FD).expect("named unknown");
                let unix = std::os::unix::net::UnixListener::from(fd);
                assert_eq!(
                    unix.local_addr().unwrap().as_pathname(),
                    Some(unix_path.as_path())
                );
                assert!(take_unix_listener(ADMIN_FD_NAME).is_none());
            }
            "wrong_kind" => {
                // A name given to the other kind of socket: refused (and closed), not misused.
                assert!(
                    take_tcp_listener("http").is_none(),
                    "descriptor 3 is a Unix socket"
                );
                assert!(take_unix_listener(ADMIN_FD_NAME).is_none(), "descriptor 4 is TCP");
                assert!(listen_fds_by_name().is_empty());
            }
            "none" => {
                // Nothing adopted, and the descriptors left as they were: open, not ours to close.
                assert!(listen_fds_by_name().is_empty());
                assert!(take_unix_listener(ADMIN_FD_NAME).is_none());
                for fd in [LISTEN_FDS_START, LISTEN_FDS_START + 1] {
                    assert!(nix::sys::stat::fstat(fd).is_ok(), "descriptor {fd} was closed");
                }
            }
            other => panic!("unknown expectation {other}"),
        }
    }

    #[test]
    fn names_map_to_the_passed_descriptors() {
        // As systemd starts talkheadd.service with talkheadd.socket: both sockets named.
        let env = [
            ("LISTEN_PID", "self"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "admin:http"),
            ("WATCHDOG_USEC", "30000000"),
            ("WATCHDOG_PID", "self"),
        ];
        run_activated(&env, "named", "15000");
    }

    #[test]
    fn missing_names_are_unknown() {
        // Without WATCHDOG_PID the watchdog applies to the process (libsystemd's rule).
        let env = [
            ("LISTEN_PID", "self"),
            ("LISTEN_FDS", "2"),
            ("WATCHDOG_USEC", "2000000"),
        ];
        run_activated(&env, "unnamed", "1000");
    }

    #[test]
    fn a_name_on_the_wrong_kind_of_socket_is_refused() {
        let env = [
            ("LISTEN_PID", "self"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "http:admin"),
        ];
        run_activated(&env, "wrong_kind", "none");
    }

    #[test]
    fn variables_for_another_process_are_ignored() {
        // A child that inherited the daemon's variables: another pid in LISTEN_PID and WATCHDOG_PID.
        let env = [
            ("LISTEN_PID", "1"),
            ("LISTEN_FDS", "2"),
            ("LISTEN_FDNAMES", "admin:http"),
            ("WATCHDOG_USEC", "30000000"),
            ("WATCHDOG_PID", "1"),
        ];
        run_activated(&env, "none", "none");
    }

    #[test]
    fn malformed_variables_are_ignored() {
        let cases: [&[(&str, &str)]; 3] = [
            // A name count that is not the descriptor count; a zero watchdog interval.
            &[
                ("LISTEN_PID", "self"),
                ("LISTEN_FDS", "2"),
                ("LISTEN_FDNAMES", "admin"),
                ("WATCHDOG_USEC", "0"),
            ],
            // Not numbers.
            &[
                ("LISTEN_PID", "seven"),
                ("LISTEN_FDS", "2"),
                ("WATCHDOG_USEC", "soon"),
            ],
            &[
                ("LISTEN_PID", "self"),
                ("LISTEN_FDS", "-1"),
                ("WATCHDOG_USEC", "30000000"),
                ("WATCHDOG_PID", "x"),
            ],
        ];
        for env in cases {
            let watchdog = if env.contains(&("WATCHDOG_PID", "x")) {
                // sd-notify ignores an unreadable WATCHDOG_PID, as libsystemd does not: the watchdog
                // then applies to the process. Harmless (systemd writes a number), but pinned here.
                "15000"
            } else {
                "none"
            };
            run_activated(env, "none", watchdog);
        }
    }

    #[test]
    fn nothing_inherited_in_the_test_process() {
        // cargo test is not socket-activated: nothing to take, and taking is idempotent.
        assert!(take_unix_listener(ADMIN_FD_NAME).is_none());
        assert!(take_tcp_listener("http").is_none());
        assert!(listen_fds_by_name().is_empty());
    }
}
