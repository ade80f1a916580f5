//! Log output: human-readable lines or JSON lines on stderr, filtered by `log.level` (overridable with
//! `RUST_LOG`). Never logs secrets or whole configurations.

use crate::config::{LogFormat, LogSettings};
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. `auto` and `journald` use plain lines (journald captures stderr).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match settings.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Auto | LogFormat::Plain | LogFormat::Journald => builder.try_init(),
    };
    if result.is_err() {
        eprintln!("talkheadd: a logger was already installed");
    }
}
