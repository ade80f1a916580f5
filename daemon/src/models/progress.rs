//! Download progress: a progress bar when stderr is a terminal, plain lines otherwise (the journal, a
//! CI log), one every tenth of the file (or every 64 MiB when its size is unknown).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Bytes between plain lines when the size is unknown.
const UNKNOWN_STEP: u64 = 64 << 20;

/// The progress of one download.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts reporting a download of `label`, `total` bytes if known, `done` of them already there.
    pub fn start(label: &str, total: Option<u64>, done: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            } else {
                "{prefix} {bytes} {bytes_per_sec}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_owned());
            bar.set_position(done);
            bar
        });
        Progress {
            label: label.to_owned(),
            total,
            done,
            bar,
        }
    }

    /// `n` more bytes arrived.
    pub fn advance(&mut self, n: u64) {
        let before = self.done;
        self.done += n;
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None => {
                if let Some(line) = plain_line(&self.label, self.total, before, self.done) {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// The download ended (completely or not).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The plain line to print when a download goes from `before` to `now` bytes, if it crossed a step.
pub fn plain_line(label: &str, total: Option<u64>, before: u64, now: u64) -> Option<String> {
    match total {
        Some(total) if total > 0 => {
            let tenth = |b: u64| (u128::from(b.min(total)) * 10 / u128::from(total)) as u64;
            (tenth(now) > tenth(before)).then(|| {
                format!(
                    "{label}: {}% ({} of {})",
                    tenth(now) * 10,
                    human(now.min(total)),
                    human(total)
                )
            })
        }
        _ => (now / UNKNOWN_STEP > before / UNKNOWN_STEP).then(|| format!("{label}: {}", human(now))),
    }
}

/// A byte count for people: `141.1 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_come_once_per_tenth() {
        let lines: Vec<String> = [(0, 5), (5, 10), (10, 25), (25, 99), (99, 100)]
            .into_iter()
            .filter_map(|(b, n)| plain_line("m", Some(100), b, n))
            .collect();
        assert_eq!(
            lines,
            [
                "m: 10% (10 B of 100 B)",
                "m: 20% (25 B of 100 B)",
                "m: 90% (99 B of 100 B)",
                "m: 100% (100 B of 100 B)"
            ]
        );
        // A resumed download starts past zero: no line for what was already there.
        assert_eq!(plain_line("m", Some(100), 50, 55), None);
        assert_eq!(plain_line("m", None, 0, UNKNOWN_STEP - 1), None);
        assert_eq!(
            plain_line("m", None, UNKNOWN_STEP - 1, UNKNOWN_STEP),
            Some("m: 64.0 MiB".to_owned())
        );
        // More than announced never reads past 100%.
        assert_eq!(plain_line("m", Some(100), 100, 150), None);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(147_951_465), "141.1 MiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
