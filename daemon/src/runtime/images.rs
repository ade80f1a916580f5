//! The miner image cache: images the daemon pulled stay on the host after their run, within
//! `docker.image_cache_bytes`, and the least recently used are removed when the cache is over budget.
//!
//! Owns the bookkeeping around pulls: what the daemon pulled, which images are in use by runs or wanted
//! by the next submissions (pinned: never evicted), and one pull or removal at a time per image (a
//! pre-pull, the run that needs the image and an eviction share one gate). It never touches an image it
//! did not pull, and nothing is ever pruned host-wide. Pull failures are not classified here;
//! [`super::pull`] does that and the run decides the verdict.
//!
//! Ownership lives on the engine, not only in the store: after each pull the daemon adds a private
//! marker tag, `talkheadd-cache/<instance id>:<sha256 of the pinned reference>`, and an image is removed
//! only while that marker and the pinned reference name the same local image as the store's record
//! (`images` table: size, last use). The record never outlives the image: whenever the daemon finds the
//! pinned reference gone (acquire, usage, eviction) it forgets the record and drops its marker, and a
//! record whose marker is gone (the operator's `docker rmi -f`, `docker image prune -a`) is forgotten
//! without removing anything, so an image the operator pulled again is theirs.
//!
//! Residual edge: a plain `docker rmi <repository@digest>` only untags while the marker still holds the
//! image; if the same digest is pulled again outside the daemon before the daemon looks at that image
//! (it looks before every pull ahead, every run of the image and every eviction), the marker is still
//! there and the image still counts as the daemon's. The operator's pull then found the daemon's copy
//! on disk (nothing was downloaded), so what would be removed is that copy. Images cached by a talkheadd
//! from before markers carry none and are left alone (their records are forgotten).
//!
//! Evictions are planned from the records, then each victim is removed under its image's gate after
//! checking again that no run pinned it and the pre-pull does not want it: a run that asks for the
//! image meanwhile waits for the removal to finish, then pulls it again.

use super::image_lru::{CachedImage, plan_eviction};
use super::pull::PullLedger;
use super::{Engine, PulledImage, RuntimeError};
use crate::clock::Clock;
use crate::domain::ImageRef;
use crate::store::{PulledImageRecord, Store, StoreError, WorkerFailed};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The repository (under which the instance id follows) of the daemon's ownership markers.
pub const MARKER_REPOSITORY: &str = "talkheadd-cache";

/// The marker reference (`repo:tag`) that says `pinned` was pulled by the daemon instance `instance`.
/// The tag hashes the whole pinned reference: two repositories holding the same digest get two markers.
pub fn marker_for(instance: &str, pinned: &str) -> (String, String) {
    (
        format!("{MARKER_REPOSITORY}/{instance}"),
        hex::encode(Sha256::digest(pinned.as_bytes())),
    )
}

/// Where the image a run uses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Pulled now.
    Pulled,
    /// Already in the cache: pulled by this daemon for an earlier run.
    Cached,
    /// Pulled ahead of this run (while other evaluations ran) and not used by a run since.
    PrePulled,
    /// Already on the host but not pulled by this daemon: used, never removed.
    Foreign,
}

impl Provenance {
    /// For logs and the run record (`image_source`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::Pulled => "pulled",
            Provenance::Cached => "cached",
            Provenance::PrePulled => "pre_pulled",
            Provenance::Foreign => "foreign",
        }
    }
}

/// Who asks for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Run,
    Ahead,
}

#[derive(Default)]
struct State {
    /// Runs using each image (by pinned reference).
    pins: HashMap<String, usize>,
    /// Images wanted by the next submissions (pre-pulled or about to be).
    upcoming: HashSet<String>,
    /// One pull or removal at a time per image.
    gates: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl State {
    fn protected(&self, pinned: &str) -> bool {
        self.pins.get(pinned).is_some_and(|n| *n > 0) || self.upcoming.contains(pinned)
    }
}

/// The cache. Cheap to share behind an `Arc`.
pub struct ImageCache {
    engine: Engine,
    store: Store,
    budget: u64,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<State>>,
    /// One eviction at a time (it plans from the records, then removes victim by victim, each
    /// checked again under its gate).
    evicting: tokio::sync::Mutex<()>,
    /// Which registries serve pulls, and which images keep failing on the host's side.
    ledger: Mutex<PullLedger>,
}

/// Keeps an image from being evicted while a run uses it; released on drop.
pub struct ImagePin {
    state: Arc<Mutex<State>>,
    pinned: String,
}

impl Drop for ImagePin {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        if let Some(n) = state.pins.get_mut(&self.pinned) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.pins.remove(&self.pinned);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn store_err(e: StoreError) -> RuntimeError {
    RuntimeError::Api {
        call: "image cache store",
        reason: e.to_string(),
    }
}

/// The image cache is the runtime's only user of the store: a store call that never returned (see
/// [`Store::blocking`]) is this engine-side failure.
impl From<WorkerFailed> for RuntimeError {
    fn from(e: WorkerFailed) -> Self {
        RuntimeError::Api {
            call: "image cache task",
            reason: e.0,
        }
    }
}

impl ImageCache {
    /// A call of the cache's own store, through [`Store::blocking`], with its failure as the runtime's.
    async fn stored<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        self.store.blocking(move |s| op(s).map_err(store_err)).await
    }

    /// A cache of at most `budget` bytes of idle images on `engine`, recorded in `store`.
    pub fn new(engine: Engine, store: Store, budget: u64, clock: Arc<dyn Clock>) -> ImageCache {
        ImageCache {
            engine,
            store,
            budget,
            clock,
            state: Arc::default(),
            evicting: tokio::sync::Mutex::new(()),
            ledger: Mutex::default(),
        }
    }

    /// Keep `image` from eviction until the pin is dropped (take it before pulling).
    pub fn pin(&self, image: &ImageRef) -> ImagePin {
        let pinned = image.pinned();
        *lock(&self.state).pins.entry(pinned.clone()).or_insert(0) += 1;
        ImagePin {
            state: self.state.clone(),
            pinned,
        }
    }

    /// The images the next submissions will need: protected from eviction, replacing the last set.
    pub fn set_upcoming(&self, images: &[ImageRef]) {
        lock(&self.state).upcoming = images.iter().map(ImageRef::pinned).collect();
    }

    /// Run `op` holding `pinned`'s gate (one pull or removal of an image at a time).
    async fn gated<T>(&self, pinned: &str, op: impl AsyncFnOnce() -> T) -> T {
        let gate = lock(&self.state)
            .gates
            .entry(pinned.to_owned())
            .or_default()
            .clone();
        let result = {
            let _one = gate.lock().await;
            op().await
        };
        drop(gate);
        // The map holds the only reference once nobody waits on it.
        lock(&self.state).gates.retain(|_, g| Arc::strong_count(g) > 1);
        result
    }

    fn marker_ref(&self, pinned: &str) -> String {
        let (repo, tag) = marker_for(self.engine.instance(), pinned);
        format!("{repo}:{tag}")
    }

    async fn record(&self, pinned: &str) -> Result<Option<PulledImageRecord>, RuntimeError> {
        let key = pinned.to_owned();
        self.stored(move |s| s.pulled_image(&key)).await
    }

    async fn forget(&self, pinned: &str) -> Result<(), RuntimeError> {
        let key = pinned.to_owned();
        self.stored(move |s| s.forget_pulled_image(&key))
            .await
            .map(|_| ())
    }

    /// Make `image` available locally: from the cache, as found on the host, or pulled now (one
    /// attempt bounded by `timeout`; the caller retries). The digest is verified in every case.
    pub async fn acquire(
        &self,
        image: &ImageRef,
        timeout: Duration,
    ) -> Result<(PulledImage, Provenance), RuntimeError> {
        self.acquire_for(image, timeout, Purpose::Run).await
    }

    async fn acquire_for(
        &self,
        image: &ImageRef,
        timeout: Duration,
        purpose: Purpose,
    ) -> Result<(PulledImage, Provenance), RuntimeError> {
        let pinned = image.pinned();
        self.gated(&pinned, async || {
            self.acquire_gated(image, &pinned, timeout, purpose).await
        })
        .await
    }

    async fn acquire_gated(
        &self,
        image: &ImageRef,
        pinned: &str,
        timeout: Duration,
        purpose: Purpose,
    ) -> Result<(PulledImage, Provenance), RuntimeError> {
        let now = self.clock.now_unix();
        let record = self.record(pinned).await?;
        if let Some(local) = self.engine.local(image).await? {
            let marker = self.engine.image_id(&self.marker_ref(pinned)).await?;
            if marker.as_deref() != Some(local.id.as_str()) {
                if record.is_some() {
                    self.forget(pinned).await?;
                    tracing::info!(image = %pinned, "a cached image no longer carries the daemon's marker (removed and pulled again outside it): no longer the daemon's");
                }
                return Ok((local, Provenance::Foreign));
            }
            // Marked: the daemon's (re-recorded if it stopped between the marker and the record).
            let ahead = record.as_ref().is_some_and(|r| r.pulled_ahead);
            let record = PulledImageRecord {
                image_id: local.id.clone(),
                size_bytes: local.size_bytes,
                pulled_at: record.map_or(now, |r| r.pulled_at),
                last_used: now,
                // Until a run uses it.
                pulled_ahead: ahead && purpose == Purpose::Ahead,
            };
            let key = pinned.to_owned();
            self.stored(move |s| s.record_pulled_image(&key, &record)).await?;
            let provenance = if ahead && purpose == Purpose::Run {
                Provenance::PrePulled
            } else {
                Provenance::Cached
            };
            return Ok((local, provenance));
        }
        if record.is_some() {
            self.forget_absent(pinned).await?;
        }
        let pulled = self.engine.pull(image, timeout).await?;
        lock(&self.ledger).pulled(image);
        let (repo, tag) = marker_for(self.engine.instance(), pinned);
        if let Err(e) = self.engine.tag(&pulled.id, &repo, &tag).await {
            // Unmarked, it would never be removed: undo the pull (the caller retries).
            let _ = self.engine.remove_image(pinned).await;
            return Err(e);
        }
        let record = PulledImageRecord {
            image_id: pulled.id.clone(),
            size_bytes: pulled.size_bytes,
            pulled_at: now,
            last_used: now,
            pulled_ahead: purpose == Purpose::Ahead,
        };
        let key = pinned.to_owned();
        self.stored(move |s| s.record_pulled_image(&key, &record)).await?;
        Ok((pulled, Provenance::Pulled))
    }

    /// The pinned reference of a recorded image is gone (removed outside the daemon): drop the
    /// daemon's marker (which deletes the image if nothing else names it, as the operator meant) and
    /// forget the record. `false` when the marker is still used by a container (tried again later).
    async fn forget_absent(&self, pinned: &str) -> Result<bool, RuntimeError> {
        if self.engine.remove_image(&self.marker_ref(pinned)).await? == super::docker::Removal::InUse {
            return Ok(false);
        }
        self.forget(pinned).await?;
        tracing::info!(image = %pinned, "a cached image was removed outside the daemon; its record is forgotten");
        Ok(true)
    }

    /// A run spent all its pull attempts of `image` on failures of the host's side, the last being
    /// `last_error`; `vouched` are `docker.allowed_registries`. `Some(reason)` once its registry's
    /// unreachability is the miner's doing ([`PullLedger`]), `None` while it is retried as the host's.
    pub fn pull_exhausted(&self, image: &ImageRef, last_error: &str, vouched: &[String]) -> Option<String> {
        let now = self.clock.now_unix();
        lock(&self.ledger).exhausted(image, now, last_error, vouched)
    }

    /// Pull `image` ahead of its run if the cache has room; failures are only logged (the run's own
    /// pull decides the verdict). Returns where the image came from, or `None` when skipped.
    pub async fn prefetch(&self, image: &ImageRef, timeout: Duration) -> Option<Provenance> {
        match self.usage().await {
            Ok(used) if used < self.budget => {}
            Ok(used) => {
                tracing::debug!(image = %image.pinned(), used, budget = self.budget, "image cache full; not pulling ahead");
                return None;
            }
            Err(e) => {
                tracing::debug!(error = %e, "image cache unreadable; not pulling ahead");
                return None;
            }
        }
        match self.acquire_for(image, timeout, Purpose::Ahead).await {
            Ok((_, provenance)) => {
                tracing::info!(image = %image.pinned(), source = provenance.as_str(), "image pulled ahead of its run");
                Some(provenance)
            }
            Err(e) => {
                tracing::info!(image = %image.pinned(), error = %e, "pulling ahead failed; the run will pull it itself");
                None
            }
        }
    }

    /// The records of images the daemon pulled whose pinned reference is still on the host; the
    /// others are forgotten on the way. An image whose gate is held (a pull or removal in progress) is
    /// taken as it is recorded.
    async fn present_records(&self) -> Result<Vec<(String, PulledImageRecord)>, RuntimeError> {
        let records = self.stored(|s| s.pulled_images()).await?;
        let mut present = Vec::with_capacity(records.len());
        for (pinned, record) in records {
            let gate = lock(&self.state).gates.get(&pinned).cloned();
            if gate.is_some() {
                present.push((pinned, record));
                continue;
            }
            let gone = self
                .gated(&pinned, async || match self.engine.image_id(&pinned).await {
                    Ok(Some(_)) => Ok(false),
                    Ok(None) => self.forget_absent(&pinned).await,
                    Err(e) => Err(e),
                })
                .await?;
            if !gone {
                present.push((pinned, record));
            }
        }
        Ok(present)
    }

    /// Bytes of images the daemon pulled and still holds.
    pub async fn usage(&self) -> Result<u64, RuntimeError> {
        let images = self.present_records().await?;
        Ok(images
            .iter()
            .map(|(_, r)| r.size_bytes)
            .fold(0, u64::saturating_add))
    }

    /// Remove least-recently-used idle images the daemon pulled until the cache fits its budget.
    /// Returns the references removed. An image a container still uses is kept (tried again later).
    pub async fn evict(&self) -> Result<Vec<String>, RuntimeError> {
        let _one = self.evicting.lock().await;
        let mut removed = Vec::new();
        for pinned in self.plan().await? {
            if self.remove_victim(&pinned).await? {
                removed.push(pinned);
            }
        }
        Ok(removed)
    }

    /// Hold off evictions until the guard is dropped.
    #[cfg(test)]
    pub(crate) async fn hold_evictions(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.evicting.lock().await
    }

    /// What [`ImageCache::evict`] would remove now, least recently used first.
    pub async fn plan(&self) -> Result<Vec<String>, RuntimeError> {
        let images: Vec<CachedImage> = self
            .present_records()
            .await?
            .into_iter()
            .map(|(pinned, r)| CachedImage {
                pinned,
                size_bytes: r.size_bytes,
                last_used: r.last_used,
            })
            .collect();
        let protected: HashSet<String> = {
            let state = lock(&self.state);
            state.pins.keys().chain(&state.upcoming).cloned().collect()
        };
        Ok(plan_eviction(&images, self.budget, &protected))
    }

    /// Remove one planned victim, unless a run pinned it or the pre-pull wants it since the plan:
    /// checked under its gate, which is held across the removal so that a run acquiring the image
    /// meanwhile waits, then pulls it again.
    pub async fn remove_victim(&self, pinned: &str) -> Result<bool, RuntimeError> {
        self.gated(pinned, async || {
            if lock(&self.state).protected(pinned) {
                tracing::debug!(image = %pinned, "eviction skipped: the image was taken since the plan");
                return Ok(false);
            }
            self.remove_owned(pinned).await
        })
        .await
    }

    /// Remove `image` now if the daemon pulled it and no other run uses it (an image refused after
    /// its pull). The caller's own pin is allowed.
    pub async fn discard(&self, image: &ImageRef) -> Result<bool, RuntimeError> {
        let pinned = image.pinned();
        // Under the image's gate only: a run never waits for an eviction of other images.
        self.gated(&pinned, async || {
            if lock(&self.state).pins.get(&pinned).copied().unwrap_or(0) > 1 {
                return Ok(false);
            }
            self.remove_owned(&pinned).await
        })
        .await
    }

    /// Remove a recorded image if it is still the daemon's (called under its gate): the pinned
    /// reference, the marker and the record name one local image and no container uses it.
    async fn remove_owned(&self, pinned: &str) -> Result<bool, RuntimeError> {
        let Some(record) = self.record(pinned).await? else {
            return Ok(false);
        };
        let Some(id) = self.engine.image_id(pinned).await? else {
            self.forget_absent(pinned).await?;
            return Ok(false);
        };
        let marker = self.marker_ref(pinned);
        if self.engine.image_id(&marker).await?.as_deref() != Some(id.as_str()) || record.image_id != id {
            self.forget(pinned).await?;
            tracing::warn!(image = %pinned, "not removed: the image no longer carries the daemon's marker (removed and pulled again outside it)");
            return Ok(false);
        }
        if self.engine.image_in_use(&id).await? {
            tracing::info!(image = %pinned, "cached image still used by a container; kept for now");
            return Ok(false);
        }
        // The pinned reference first: with the marker still there it only untags, and a failure
        // leaves an image that is still marked and recorded.
        for reference in [pinned, marker.as_str()] {
            if self.engine.remove_image(reference).await? == super::docker::Removal::InUse {
                tracing::info!(image = %pinned, "cached image still used by a container; kept for now");
                return Ok(false);
            }
        }
        self.forget(pinned).await?;
        tracing::info!(image = %pinned, "removed a cached miner image");
        Ok(true)
    }
}

#[cfg(test)]
#[path = "images_tests.rs"]
mod tests;
