//! Calibration results: the reference image's time on each GPU, stored with the round it ran in, so that
//! scores can be compared across hosts and GPU models. Kept in the `meta` table under one key
//! (`gpu_calibrations`: a JSON array, oldest first, bounded to [`KEPT_CALIBRATIONS`] entries), which
//! needs no new table and no schema migration. Owns only this key; the evaluation loop writes it and
//! the admin plane reads it. Calibrations never touch the miners' tables.

use super::tables::META;
use super::{Store, StoreError};
use crate::domain::Verdict;
use serde::{Deserialize, Serialize};

/// Meta key holding the calibrations.
const CALIBRATIONS_KEY: &str = "gpu_calibrations";
/// Calibrations kept: 64 rounds of 16 GPUs.
pub const KEPT_CALIBRATIONS: usize = 1024;

/// One calibration run on one GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationRecord {
    /// The round it ran in.
    pub round: u64,
    /// The GPU's UUID (`virtual-N` on virtual slots).
    pub gpu_uuid: String,
    /// The GPU's model.
    pub gpu_model: String,
    /// The reference image, as configured (`gpu.calibration_image`).
    pub image_ref: String,
    /// Its run id (container label).
    pub run_id: String,
    /// `ok`, or why the calibration failed (a miner verdict of the reference image, or `infra_error`).
    pub verdict: Verdict,
    /// Mean host-measured seconds per scored challenge; `None` when nothing was timed.
    pub seconds: Option<f64>,
    /// The host-measured seconds of each timed scored challenge.
    pub challenge_seconds: Vec<f64>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix time it was dispatched.
    pub started_at: f64,
    /// Unix time it finished.
    pub finished_at: f64,
}

impl Store {
    /// Add a calibration result, dropping the oldest beyond [`KEPT_CALIBRATIONS`].
    pub fn record_calibration(&self, record: &CalibrationRecord) -> Result<(), StoreError> {
        self.record_calibration_keeping(record, KEPT_CALIBRATIONS)
    }

    fn record_calibration_keeping(&self, record: &CalibrationRecord, keep: usize) -> Result<(), StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let mut all = read(self, &wtxn)?;
        all.push(record.clone());
        let excess = all.len().saturating_sub(keep);
        all.drain(..excess);
        let bytes = serde_json::to_vec(&all).map_err(|e| corrupt(Box::new(e)))?;
        t.meta
            .put(&mut wtxn, CALIBRATIONS_KEY, &bytes)
            .map_err(t.err("put", META, None))?;
        self.commit(wtxn, META)
    }

    /// The kept calibrations, oldest first; only those of `round` when given.
    pub fn calibrations(&self, round: Option<u64>) -> Result<Vec<CalibrationRecord>, StoreError> {
        let rtxn = self.rtxn()?;
        let mut all = read(self, &rtxn)?;
        if let Some(round) = round {
            all.retain(|c| c.round == round);
        }
        Ok(all)
    }
}

fn corrupt(source: Box<dyn std::error::Error + Send + Sync>) -> StoreError {
    StoreError::Corrupt {
        table: META,
        key: CALIBRATIONS_KEY.to_owned(),
        source,
    }
}

fn read(
    store: &Store,
    txn: &heed::RoTxn<'_, heed::WithoutTls>,
) -> Result<Vec<CalibrationRecord>, StoreError> {
    let t = store.t();
    match t
        .meta
        .get(txn, CALIBRATIONS_KEY)
        .map_err(t.err("get", META, None))?
    {
        None => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| corrupt(Box::new(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn record(round: u64, gpu: usize) -> CalibrationRecord {
        CalibrationRecord {
            round,
            gpu_uuid: format!("virtual-{gpu}"),
            gpu_model: "virtual GPU slot".into(),
            image_ref: format!("127.0.0.1:5000/calib@sha256:{}", "a".repeat(64)),
            run_id: format!("calib-{round}-{gpu}"),
            verdict: Verdict::Ok,
            seconds: Some(1.5),
            challenge_seconds: vec![1.0, 2.0],
            reason: None,
            started_at: 8.0,
            finished_at: 10.0,
        }
    }

    #[test]
    fn calibrations_are_kept_per_round_bounded_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let opts = || StoreOptions {
            map_size_bytes: 64 << 20,
            history_per_miner: 5,
            max_submissions: 10,
        };
        let store = Store::open(&path, opts()).unwrap();
        assert!(store.calibrations(None).unwrap().is_empty());
        store.record_calibration(&record(1, 0)).unwrap();
        store.record_calibration(&record(1, 1)).unwrap();
        let failed = CalibrationRecord {
            verdict: Verdict::InfraError,
            seconds: None,
            challenge_seconds: Vec::new(),
            reason: Some("pull failed".into()),
            ..record(2, 0)
        };
        store.record_calibration(&failed).unwrap();
        assert_eq!(
            store.calibrations(Some(1)).unwrap(),
            vec![record(1, 0), record(1, 1)]
        );
        assert_eq!(store.calibrations(Some(2)).unwrap(), vec![failed]);
        store.close().unwrap();

        let store = Store::open(&path, opts()).unwrap();
        assert_eq!(store.calibrations(None).unwrap().len(), 3);
        for round in 3..8 {
            store.record_calibration_keeping(&record(round, 0), 4).unwrap();
        }
        let all = store.calibrations(None).unwrap();
        let rounds: Vec<u64> = all.iter().map(|c| c.round).collect();
        assert_eq!(rounds, vec![4, 5, 6, 7], "the oldest are dropped first");
        store.close().unwrap();
    }
}
