//! The `/metrics` body rendered from the store's rows (docs/reference.md#metrics-shape): the committed
//! metrics JSON as stored, or decoded rows, give the same bytes.

use super::{MetricsRow, StoredMetricsRow};

/// A `/metrics` row, decoded ([`MetricsRow`]) or as stored ([`StoredMetricsRow`]).
pub trait MetricsBodyRow {
    /// The miner's SS58 address.
    fn hotkey(&self) -> &str;
    /// Its image reference.
    fn image_ref(&self) -> &str;
    /// Its submission time.
    fn submit_time(&self) -> f64;
    /// Whether its metrics were carried over from an earlier round.
    fn carried_over(&self) -> bool;
    /// Append its metrics' JSON document to `out`.
    fn write_metrics(&self, out: &mut Vec<u8>) -> Result<(), sonic_rs::Error>;
}

impl MetricsBodyRow for MetricsRow {
    fn hotkey(&self) -> &str {
        self.hotkey.as_str()
    }
    fn image_ref(&self) -> &str {
        self.image_ref.as_str()
    }
    fn submit_time(&self) -> f64 {
        self.submit_time
    }
    fn carried_over(&self) -> bool {
        self.carried_over
    }
    fn write_metrics(&self, out: &mut Vec<u8>) -> Result<(), sonic_rs::Error> {
        sonic_rs::to_writer(out, &self.metrics)
    }
}

impl MetricsBodyRow for StoredMetricsRow<'_> {
    fn hotkey(&self) -> &str {
        &self.hotkey
    }
    fn image_ref(&self) -> &str {
        &self.image_ref
    }
    fn submit_time(&self) -> f64 {
        self.submit_time
    }
    fn carried_over(&self) -> bool {
        self.carried_over
    }
    /// Verbatim: the text is what the store itself wrote when the round committed.
    fn write_metrics(&self, out: &mut Vec<u8>) -> Result<(), sonic_rs::Error> {
        out.extend_from_slice(self.metrics.as_bytes());
        Ok(())
    }
}

/// Serialise `/metrics` rows in the reference's shape (`MinerMetricsResponse`: `hotkey`, `image_ref`,
/// `submit_time`, `metrics`, plus the additive `carried_over` when true). The gateway passes the rows
/// as stored ([`Store::with_metrics_json`]), each miner's metrics JSON copied verbatim, so a body for
/// 1,024 miners costs a copy of the text, not a parse and re-encoding of every number; decoded
/// metrics are written with sonic-rs (the same serde impls as the store's serde_json).
pub fn render_metrics_body<R: MetricsBodyRow>(rows: &[R]) -> Result<Vec<u8>, sonic_rs::Error> {
    // ~3.6 KiB per miner with 5 challenges and their debug: one allocation instead of a dozen doublings of megabytes.
    let mut out = Vec::with_capacity(64 + rows.len() * 4096);
    out.push(b'[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"hotkey\":");
        sonic_rs::to_writer(&mut out, row.hotkey())?;
        out.extend_from_slice(b",\"image_ref\":");
        sonic_rs::to_writer(&mut out, row.image_ref())?;
        out.extend_from_slice(b",\"submit_time\":");
        sonic_rs::to_writer(&mut out, &row.submit_time())?;
        out.extend_from_slice(b",\"metrics\":");
        row.write_metrics(&mut out)?;
        if row.carried_over() {
            out.extend_from_slice(b",\"carried_over\":true");
        }
        out.push(b'}');
    }
    out.push(b']');
    Ok(out)
}
