//! Untrusted text made safe to echo (in JSON answers, verdict reasons, logs and tables): one set of
//! rules for every place that repeats what a miner, a registry, a client or a tool wrote.

/// `text` as one line of printable ASCII (and the cut mark `…`) of at most `max_chars` characters: line
/// breaks and tabs become spaces, every other control, format (bidi overrides, zero-width) or
/// non-ASCII character becomes `?`, surrounding blanks are trimmed, and a cut is marked with a trailing `…` (counted in
/// `max_chars`).
pub fn echo(text: &str, max_chars: usize) -> String {
    let cut = text.trim().chars().nth(max_chars).is_some();
    let keep = if cut {
        max_chars.saturating_sub(1)
    } else {
        max_chars
    };
    let mut out: String = text
        .trim()
        .chars()
        .take(keep)
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            // The cut mark passes, so text echoed twice keeps the first cut's mark.
            c if c.is_ascii_graphic() || c == ' ' || c == '…' => c,
            _ => '?',
        })
        .collect();
    out.truncate(out.trim_end().len());
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::echo;

    #[test]
    fn one_printable_ascii_line_bounded_and_marked_when_cut() {
        assert_eq!(echo("  exited\nwith\tcode 3\r\n", 100), "exited with code 3");
        assert_eq!(echo("a\u{1b}[31mb", 100), "a?[31mb");
        // Bidi override, zero-width space, non-ASCII letters: never echoed as themselves.
        assert_eq!(echo("x\u{202e}y\u{200b}zé", 100), "x?y?z?");
        assert_eq!(echo(&"y".repeat(10), 10), "y".repeat(10));
        let cut = echo(&"x".repeat(11), 10);
        assert_eq!(cut, format!("{}…", "x".repeat(9)));
        assert_eq!(cut.chars().count(), 10);
        // Echoed again, inside a longer reason: the first cut stays marked.
        assert_eq!(echo(&format!("reason: {cut}"), 100), format!("reason: {cut}"));
        assert_eq!(echo("", 10), "");
    }
}
