//! systemd integration: notifications (`READY=1`, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`) and socket
//! activation (`LISTEN_PID` / `LISTEN_FDS` / `LISTEN_FDNAMES`).
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`, no `LISTEN_FDS`) every function here is a
//! no-op or returns nothing, so the daemon runs the same in a terminal. The environment is only read,
//! never unset: unsetting variables in a multi-threaded process is a data race, and later notifications
//! must keep working.
//!
//! Socket activation hands us file descriptors 3, 4, ... that systemd opened for us. Turning such a
//! number into an owned descriptor is the one place in the daemon that needs `unsafe`; it happens once,
//! behind a [`OnceLock`], after the variables have been checked against our own pid and each descriptor
//! has been checked to be an open socket. Everything else (parsing the variables, the watchdog interval)
//! is a pure function over strings, tested without touching the process environment.
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

/// The name libsystemd reports for a descriptor when `LISTEN_FDNAMES` is absent.
pub const UNNAMED_FD: &str = "unknown";

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
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
/// `None` when no watchdog applies to this process. Read once and cached.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(|| {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
    })
}

/// Pure part of [`watchdog_interval`], with libsystemd's rules: `WATCHDOG_USEC` must be a positive
/// number; `WATCHDOG_PID`, when present, must be our pid (when absent the watchdog applies to us).
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Why the socket-activation variables were ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenFdsError {
    /// `LISTEN_PID` or `LISTEN_FDS` is not a number.
    #[error("{var} is not a number: '{value}'")]
    NotANumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// `LISTEN_FDNAMES` names a different number of descriptors than `LISTEN_FDS` counts.
    #[error("LISTEN_FDNAMES has {names} names for {fds} descriptors")]
    NameCount {
        /// Names given.
        names: usize,
        /// Descriptors counted.
        fds: usize,
    },
    /// An absurd descriptor count.
    #[error("LISTEN_FDS = {0} is out of range")]
    TooMany(u64),
}

/// Pure part of socket activation: which descriptors (numbers and names) the variables describe, with
/// sd_listen_fds_with_names(3)'s rules. Variables meant for another process (`LISTEN_PID` differs, as
/// in a child that inherited them) or absent variables describe no descriptors. Without
/// `LISTEN_FDNAMES` every descriptor is called [`UNNAMED_FD`].
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    my_pid: u32,
) -> Result<Vec<(RawFd, String)>, ListenFdsError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let number = |var: &'static str, value: &str| {
        value
            .trim()
            .parse::<u64>()
            .map_err(|_| ListenFdsError::NotANumber {
                var,
                value: value.to_owned(),
            })
    };
    if number("LISTEN_PID", pid)? != u64::from(my_pid) {
        return Ok(Vec::new());
    }
    let count = number("LISTEN_FDS", fds)?;
    // systemd caps a unit at a few thousand descriptors; anything near RawFd::MAX is garbage.
    if count > 4096 {
        return Err(ListenFdsError::TooMany(count));
    }
    let count = count as usize;
    if count == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = match listen_fdnames {
        Some(names) => names.split(':').map(str::to_owned).collect(),
        None => vec![UNNAMED_FD.to_owned(); count],
    };
    if names.len() != count {
        return Err(ListenFdsError::NameCount {
            names: names.len(),
            fds: count,
        });
    }
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name))
        .collect())
}

/// Descriptors received from systemd and not yet taken, in `LISTEN_FDS` order.
fn inherited() -> &'static Mutex<Vec<(String, OwnedFd)>> {
    static FDS: OnceLock<Mutex<Vec<(String, OwnedFd)>>> = OnceLock::new();
    FDS.get_or_init(|| Mutex::new(adopt_listen_fds()))
}

/// Read the variables and take ownership of the descriptors they describe. Runs once (behind
/// [`inherited`]'s `OnceLock`).
fn adopt_listen_fds() -> Vec<(String, OwnedFd)> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let described = match parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    ) {
        Ok(d) => d,
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
        let owned = own_inherited_fd(fd);
        // systemd passes the descriptors without FD_CLOEXEC; the daemon's children (ffmpeg, prlimit)
        // must not inherit its listening sockets.
        if let Err(e) = nix::fcntl::fcntl(
            owned.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        ) {
            tracing::warn!(fd, error = %e, "cannot set FD_CLOEXEC on an inherited socket");
        }
        adopted.push((name, owned));
    }
    adopted
}

/// Wrap a descriptor systemd passed us.
#[allow(unsafe_code)]
fn own_inherited_fd(fd: RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is one of the descriptors systemd opened for this process: `LISTEN_PID` equals our
    // pid and `fd` lies in `LISTEN_FDS_START .. LISTEN_FDS_START + LISTEN_FDS`, and it was just checked
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
    use super::*;

    #[test]
    fn watchdog_is_half_the_interval_for_this_pid() {
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(15))
        );
        // libsystemd: without WATCHDOG_PID the watchdog applies to the process.
        assert_eq!(
            parse_watchdog(Some("2000000"), None, 42),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn watchdog_for_another_process_or_malformed_is_off() {
        assert_eq!(parse_watchdog(Some("30000000"), Some("41"), 42), None);
        assert_eq!(parse_watchdog(None, Some("42"), 42), None);
        assert_eq!(parse_watchdog(Some("0"), Some("42"), 42), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 42), None);
        assert_eq!(parse_watchdog(Some("1000"), Some("x"), 42), None);
    }

    #[test]
    fn listen_env_with_names() {
        let fds = parse_listen_env(Some("7"), Some("2"), Some("admin:http"), 7).unwrap();
        assert_eq!(fds, vec![(3, "admin".to_owned()), (4, "http".to_owned())]);
    }

    #[test]
    fn listen_env_without_names_is_unknown() {
        let fds = parse_listen_env(Some("7"), Some("1"), None, 7).unwrap();
        assert_eq!(fds, vec![(3, UNNAMED_FD.to_owned())]);
    }

    #[test]
    fn listen_env_for_another_pid_or_absent_is_empty() {
        assert!(
            parse_listen_env(Some("8"), Some("2"), Some("a:b"), 7)
                .unwrap()
                .is_empty()
        );
        assert!(parse_listen_env(None, Some("2"), None, 7).unwrap().is_empty());
        assert!(parse_listen_env(Some("7"), None, None, 7).unwrap().is_empty());
        assert!(
            parse_listen_env(Some("7"), Some("0"), Some(""), 7)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_listen_env(Some("7"), Some("0"), None, 7)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn listen_env_malformed_is_an_error() {
        assert!(matches!(
            parse_listen_env(Some("seven"), Some("1"), None, 7),
            Err(ListenFdsError::NotANumber {
                var: "LISTEN_PID",
                ..
            })
        ));
        assert!(matches!(
            parse_listen_env(Some("7"), Some("-1"), None, 7),
            Err(ListenFdsError::NotANumber {
                var: "LISTEN_FDS",
                ..
            })
        ));
        assert_eq!(
            parse_listen_env(Some("7"), Some("2"), Some("admin"), 7),
            Err(ListenFdsError::NameCount { names: 1, fds: 2 })
        );
        assert_eq!(
            parse_listen_env(Some("7"), Some("100000"), None, 7),
            Err(ListenFdsError::TooMany(100000))
        );
    }

    #[test]
    fn nothing_inherited_in_the_test_process() {
        // cargo test is not socket-activated: nothing to take, and taking is idempotent.
        assert!(take_unix_listener(ADMIN_FD_NAME).is_none());
        assert!(take_tcp_listener("http").is_none());
        assert!(listen_fds_by_name().is_empty());
    }
}
