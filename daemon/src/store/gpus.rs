//! Operator GPU drain state, persisted so a drained GPU stays drained across restarts. Stored in the
//! `meta` table under one key (`gpu_drained`: a JSON array of GPU UUIDs or `virtual-N`), which needs no
//! new table and no schema migration. Owns only this key; the evaluation loop reads it before placing
//! runs and the admin plane writes it. It does not check that the GPU exists (a drained GPU that is
//! later removed from the host simply never matters).

use super::tables::META;
use super::{Store, StoreError};
use std::collections::BTreeSet;

/// Meta key holding the drained set.
const DRAINED_KEY: &str = "gpu_drained";

impl Store {
    /// Mark `gpu` (UUID or `virtual-N`) drained or back in service, in one transaction. Returns
    /// whether anything changed. A drained GPU finishes its current run and takes no new one.
    pub fn set_gpu_drained(&self, gpu: &str, drained: bool) -> Result<bool, StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let mut set = read_drained(self, &wtxn)?;
        let changed = if drained {
            set.insert(gpu.to_owned())
        } else {
            set.remove(gpu)
        };
        if changed {
            let bytes = serde_json::to_vec(&set).map_err(|e| StoreError::Corrupt {
                table: META,
                key: DRAINED_KEY.to_owned(),
                source: Box::new(e),
            })?;
            t.meta
                .put(&mut wtxn, DRAINED_KEY, &bytes)
                .map_err(t.err("put", META, None))?;
            self.commit(wtxn, META)?;
        }
        Ok(changed)
    }

    /// The GPUs drained by the operator.
    pub fn drained_gpus(&self) -> Result<BTreeSet<String>, StoreError> {
        let rtxn = self.rtxn()?;
        read_drained(self, &rtxn)
    }
}

fn read_drained(
    store: &Store,
    txn: &heed::RoTxn<'_, heed::WithoutTls>,
) -> Result<BTreeSet<String>, StoreError> {
    let t = store.t();
    match t.meta.get(txn, DRAINED_KEY).map_err(t.err("get", META, None))? {
        None => Ok(BTreeSet::new()),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            table: META,
            key: DRAINED_KEY.to_owned(),
            source: Box::new(e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;

    fn opts() -> StoreOptions {
        StoreOptions {
            map_size_bytes: 16 << 20,
            history_per_miner: 10,
            max_submissions: 10,
        }
    }

    #[test]
    fn drain_is_idempotent_reports_changes_and_survives_a_reopen() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().map_err(|e| StoreError::Corrupt {
            table: META,
            key: String::new(),
            source: Box::new(e),
        })?;
        let path = dir.path().join("state.db");
        let store = Store::open(&path, opts())?;
        assert!(store.drained_gpus()?.is_empty());
        assert!(store.set_gpu_drained("virtual-1", true)?);
        assert!(!store.set_gpu_drained("virtual-1", true)?, "already drained");
        assert!(store.set_gpu_drained("GPU-x", true)?);
        assert!(store.set_gpu_drained("GPU-x", false)?);
        assert!(!store.set_gpu_drained("GPU-x", false)?);
        store.close()?;
        let store = Store::open(&path, opts())?;
        assert_eq!(store.drained_gpus()?, BTreeSet::from(["virtual-1".to_owned()]));
        Ok(())
    }
}
