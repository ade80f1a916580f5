//! Human output: aligned tables and key/value blocks, colour only when asked or on a terminal.

use comfy_table::{Table, presets::NOTHING};
use std::fmt::Write as _;

/// Colour decisions for one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    /// Emit ANSI colour.
    pub color: bool,
}

impl Style {
    /// A verdict, green when ok, red otherwise.
    pub fn verdict(&self, v: &str) -> String {
        if !self.color || v.is_empty() {
            return v.to_owned();
        }
        let code = match v {
            "ok" => "32",
            "infra_error" => "33",
            _ => "31",
        };
        format!("\u{1b}[{code}m{v}\u{1b}[0m")
    }

    /// A heading.
    pub fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\u{1b}[1m{s}\u{1b}[0m")
        } else {
            s.to_owned()
        }
    }
}

/// An aligned table without borders.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    for row in rows {
        t.add_row(row);
    }
    // comfy-table pads every line to the table width; scripts and snapshots want no trailing spaces.
    t.to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `key: value` lines, keys aligned.
pub fn pairs(items: &[(&str, String)]) -> String {
    let width = items.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in items {
        let _ = writeln!(out, "{k:<width$}  {v}");
    }
    out
}

/// Seconds as `1h02m03s`, `4m05s` or `6.7s`.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "-".into();
    }
    let whole = secs as u64;
    match whole {
        0..60 => format!("{secs:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m{:02}s", whole / 3600, (whole % 3600) / 60, whole % 60),
    }
}

/// A score with four decimals, or `-`.
pub fn score(s: Option<f64>) -> String {
    s.map_or_else(|| "-".into(), |s| format!("{s:.4}"))
}

/// A hotkey shortened for tables (`5Grw…utQY`); `--json` has the whole one.
pub fn short_key(k: &str) -> String {
    if k.len() <= 12 {
        return k.to_owned();
    }
    format!("{}…{}", &k[..4], &k[k.len() - 4..])
}

/// Unix time as UTC `YYYY-MM-DD HH:MM:SS`, or `-`.
pub fn timestamp(unix: f64) -> String {
    if !(unix.is_finite() && unix > 0.0) {
        return "-".into();
    }
    let secs = unix as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm): no date crate for one formatter.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(duration(6.72), "6.7s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(3723.0), "1h02m03s");
        assert_eq!(timestamp(0.0), "-");
        assert_eq!(timestamp(1_700_000_000.0), "2023-11-14 22:13:20");
        assert_eq!(timestamp(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(
            short_key("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"),
            "5Grw…utQY"
        );
        assert_eq!(score(None), "-");
        assert_eq!(score(Some(0.61514)), "0.6151");
        let t = table(&["a", "bb"], vec![vec!["x".into(), "y".into()]]);
        assert!(!t.lines().any(|l| l.ends_with(' ')), "{t:?}");
        assert!(t.starts_with(" A"), "{t:?}");
    }
}
