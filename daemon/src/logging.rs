//! Log output: human-readable lines or JSON lines on stderr, or native journald entries, filtered by
//! `log.level` (overridable with `RUST_LOG`). Never logs secrets or whole configurations.
//!
//! Under journald every span and event field becomes a journal field of the same name upper-cased
//! (`run_id` becomes `RUN_ID`), without a prefix, so `journalctl -u talkheadd RUN_ID=...` works; the
//! names the daemon uses for that are listed in [`JOURNAL_FIELDS`]. `log.format = "auto"` picks
//! journald when stderr is connected to the journal (`JOURNAL_STREAM` names stderr's device and inode)
//! or the process is a systemd service (`INVOCATION_ID` is set), and plain lines otherwise. When the
//! journald socket cannot be reached, logs fall back to plain lines on stderr.

use crate::config::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The structured fields operators filter on, as `(tracing field name, journald field name)`. The
/// journald name is the tracing name upper-cased; this table is the contract with the README.
pub const JOURNAL_FIELDS: &[(&str, &str)] = &[
    ("run_id", "RUN_ID"),
    ("miner_hotkey", "MINER_HOTKEY"),
    ("image_digest", "IMAGE_DIGEST"),
    ("gpu_uuid", "GPU_UUID"),
    ("verdict", "VERDICT"),
    ("round", "ROUND"),
];

/// Where log records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Human-readable lines on stderr.
    Plain,
    /// JSON lines on stderr.
    Json,
    /// Native journald entries.
    Journald,
}

/// What the process knows about its surroundings, for [`choose_output`].
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// `JOURNAL_STREAM` (`<device>:<inode>` of the journal stream systemd connected).
    pub journal_stream: Option<String>,
    /// `INVOCATION_ID` (set by systemd for every service invocation).
    pub invocation_id: Option<String>,
    /// Device and inode of stderr, when `fstat` works.
    pub stderr: Option<(u64, u64)>,
}

impl Surroundings {
    /// Read them from this process.
    pub fn current() -> Surroundings {
        use std::os::fd::AsRawFd;
        Surroundings {
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            invocation_id: std::env::var("INVOCATION_ID").ok(),
            stderr: nix::sys::stat::fstat(std::io::stderr().as_raw_fd())
                .ok()
                .map(|st| (st.st_dev, st.st_ino)),
        }
    }
}

/// Whether `JOURNAL_STREAM` (`"<dev>:<ino>"`, decimal) names the given device and inode: systemd sets
/// it for the stream it connected, and a child that redirected stderr must not be mistaken for it.
pub fn journal_stream_is(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Pick the output for a configured format (pure: the surroundings are passed in).
pub fn choose_output(format: LogFormat, env: &Surroundings) -> Output {
    match format {
        LogFormat::Plain => Output::Plain,
        LogFormat::Json => Output::Json,
        LogFormat::Journald => Output::Journald,
        LogFormat::Auto => {
            let stream = match (&env.journal_stream, env.stderr) {
                (Some(js), Some((dev, ino))) => journal_stream_is(js, dev, ino),
                _ => false,
            };
            let service = env.invocation_id.as_deref().is_some_and(|v| !v.is_empty());
            if stream || service {
                Output::Journald
            } else {
                Output::Plain
            }
        }
    }
}

/// The log filter: `RUST_LOG` (`rust_log`, its value when set and Unicode) when it parses, else
/// `log.level` (`level`), else `info`. Pure: the caller reads the environment.
fn filter_for(level: &str, rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Install the global subscriber.
pub fn init(settings: &LogSettings) {
    let filter = || {
        let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
        filter_for(&settings.level, rust_log.as_deref())
    };
    let plain = || {
        tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .try_init()
            .is_ok()
    };
    let installed = match choose_output(settings.format, &Surroundings::current()) {
        Output::Plain => plain(),
        Output::Json => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .json()
            .try_init()
            .is_ok(),
        Output::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                // No prefix: `run_id` becomes RUN_ID, not F_RUN_ID. The identifier is fixed so that
                // `journalctl -t talkheadd` works whatever argv[0] was.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("talkheadd".to_owned());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init()
                    .is_ok()
            }
            Err(e) => {
                let ok = plain();
                tracing::warn!(error = %e, "journald socket unavailable: logging plain lines to stderr");
                ok
            }
        },
    };
    if !installed {
        eprintln!("talkheadd: a logger was already installed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(js: Option<&str>, inv: Option<&str>, stderr: Option<(u64, u64)>) -> Surroundings {
        Surroundings {
            journal_stream: js.map(str::to_owned),
            invocation_id: inv.map(str::to_owned),
            stderr,
        }
    }

    #[test]
    fn journal_stream_must_name_stderr() {
        assert!(journal_stream_is("64769:123456", 64769, 123456));
        assert!(!journal_stream_is("64769:123456", 64769, 1));
        assert!(!journal_stream_is("64769", 64769, 123456));
        assert!(!journal_stream_is("x:y", 0, 0));
    }

    #[test]
    fn auto_uses_journald_under_systemd_only() {
        let terminal = env(None, None, Some((1, 2)));
        assert_eq!(choose_output(LogFormat::Auto, &terminal), Output::Plain);
        let stream = env(Some("1:2"), None, Some((1, 2)));
        assert_eq!(choose_output(LogFormat::Auto, &stream), Output::Journald);
        // A child whose stderr was redirected away from the journal stream.
        let redirected = env(Some("1:2"), None, Some((1, 3)));
        assert_eq!(choose_output(LogFormat::Auto, &redirected), Output::Plain);
        let service = env(None, Some("0123abcd"), None);
        assert_eq!(choose_output(LogFormat::Auto, &service), Output::Journald);
        assert_eq!(
            choose_output(LogFormat::Auto, &env(None, Some(""), None)),
            Output::Plain
        );
    }

    #[test]
    fn explicit_formats_win() {
        let service = env(Some("1:2"), Some("x"), Some((1, 2)));
        assert_eq!(choose_output(LogFormat::Plain, &service), Output::Plain);
        assert_eq!(choose_output(LogFormat::Json, &service), Output::Json);
        assert_eq!(
            choose_output(LogFormat::Journald, &env(None, None, None)),
            Output::Journald
        );
    }

    /// Whether a subscriber filtered by `filter` records an event of `level` from this module
    /// (target `talkheadd::logging::tests`).
    fn records(filter: EnvFilter, level: tracing::Level) -> bool {
        let subscriber = tracing_subscriber::registry().with(filter);
        tracing::subscriber::with_default(subscriber, || match level {
            tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
            tracing::Level::INFO => tracing::enabled!(tracing::Level::INFO),
            tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
            tracing::Level::TRACE => tracing::enabled!(tracing::Level::TRACE),
        })
    }

    #[test]
    fn log_level_applies_unless_rust_log_is_set() {
        use tracing::Level;
        // RUST_LOG unset: log.level decides.
        let f = || filter_for("warn", None);
        assert!(records(f(), Level::WARN));
        assert!(!records(f(), Level::INFO));
        let f = || filter_for("talkheadd=debug", None);
        assert!(records(f(), Level::DEBUG));
        assert!(!records(f(), Level::TRACE));
        // RUST_LOG set: it wins over log.level, both ways.
        let f = || filter_for("warn", Some("talkheadd=trace"));
        assert!(records(f(), Level::TRACE));
        assert_eq!(f().to_string(), "talkheadd=trace");
        let f = || filter_for("talkheadd=debug", Some("error"));
        assert!(records(f(), Level::ERROR));
        assert!(!records(f(), Level::WARN));
        // A RUST_LOG that does not parse is ignored, and an impossible level (validation refuses it)
        // falls back to info.
        let f = || filter_for("warn", Some("talkheadd=loud"));
        assert!(records(f(), Level::WARN) && !records(f(), Level::INFO));
        let f = || filter_for("talkheadd=loud", None);
        assert!(records(f(), Level::INFO) && !records(f(), Level::DEBUG));
    }

    #[test]
    fn journal_field_names_are_the_upper_cased_tracing_names() {
        for (tracing_name, journal_name) in JOURNAL_FIELDS {
            assert_eq!(tracing_name.to_ascii_uppercase(), *journal_name);
        }
    }
}
