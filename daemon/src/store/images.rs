//! The `images` table: which miner images this daemon pulled itself (by digest-pinned reference), how
//! big they are and when each was last used. The image cache ([`crate::runtime::images`]) evicts only
//! what is recorded here, so images the daemon did not pull (the operator's, another daemon's, a
//! base image) are never touched.
//!
//! The table was added after schema version 2 without a version bump: an older binary ignores it and
//! removes its images after each run, which leaves at worst a stale record that the next eviction
//! forgets (removing a missing image succeeds).

use super::tables::IMAGES;
use super::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// One image the daemon pulled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PulledImageRecord {
    /// Local image id (`sha256:…` of the config).
    pub image_id: String,
    /// Size on disk as the engine reports it (shared layers are counted in every image using them).
    pub size_bytes: u64,
    /// Unix time of the pull.
    pub pulled_at: f64,
    /// Unix time a run last used it (or of the pull).
    pub last_used: f64,
    /// Pulled ahead of its run and not used by a run since (absent in records of older versions).
    #[serde(default)]
    pub pulled_ahead: bool,
}

impl Store {
    /// Record (or refresh) an image the daemon pulled, by its digest-pinned reference.
    pub fn record_pulled_image(&self, pinned: &str, record: &PulledImageRecord) -> Result<(), StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        t.images
            .put(&mut wtxn, pinned, record)
            .map_err(t.err("put", IMAGES, None))?;
        self.commit(wtxn, IMAGES)
    }

    /// Mark a recorded image as used at `now`; `false` when the daemon did not pull it.
    pub fn touch_pulled_image(&self, pinned: &str, now: f64) -> Result<bool, StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let Some(mut record) = t.images.get(&wtxn, pinned).map_err(t.err("get", IMAGES, None))? else {
            return Ok(false);
        };
        record.last_used = now;
        t.images
            .put(&mut wtxn, pinned, &record)
            .map_err(t.err("put", IMAGES, None))?;
        self.commit(wtxn, IMAGES)?;
        Ok(true)
    }

    /// The record of one image, if the daemon pulled it.
    pub fn pulled_image(&self, pinned: &str) -> Result<Option<PulledImageRecord>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        t.images.get(&rtxn, pinned).map_err(t.err("get", IMAGES, None))
    }

    /// Every image the daemon pulled and has not removed, by pinned reference.
    pub fn pulled_images(&self) -> Result<Vec<(String, PulledImageRecord)>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        let mut out = Vec::new();
        for item in t.images.iter(&rtxn).map_err(t.err("iter", IMAGES, None))? {
            let (key, record) = item.map_err(t.err("iter", IMAGES, None))?;
            out.push((key.to_owned(), record));
        }
        Ok(out)
    }

    /// Forget an image once it was removed from the engine; `false` if it was not recorded.
    pub fn forget_pulled_image(&self, pinned: &str) -> Result<bool, StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let removed = t
            .images
            .delete(&mut wtxn, pinned)
            .map_err(t.err("delete", IMAGES, None))?;
        self.commit(wtxn, IMAGES)?;
        Ok(removed)
    }
}
