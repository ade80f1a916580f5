//! The miner image cache: images the daemon pulled stay on the host after their run, within
//! `docker.image_cache_bytes`, and the least recently used are removed when the cache is over budget.
//!
//! Owns the bookkeeping around pulls: what the daemon pulled (recorded by digest-pinned reference in
//! the store's `images` table), which images are in use by runs or wanted by the next submissions
//! (pinned: never evicted), and one pull at a time per image (a pre-pull and the run that needs the
//! image share it). It never touches an image it did not pull: an image already on the host and not
//! recorded is used as it is and left alone, and nothing is ever pruned host-wide. Pull failures are
//! not classified here; [`super::pull`] does that and the run decides the verdict.

use super::image_lru::{CachedImage, plan_eviction};
use super::{Engine, PulledImage, RuntimeError};
use crate::clock::Clock;
use crate::domain::ImageRef;
use crate::store::{PulledImageRecord, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Where the image a run uses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// Pulled now.
    Pulled,
    /// Already in the cache (pulled earlier by this daemon, or ahead of the run).
    Cached,
    /// Already on the host but not pulled by this daemon: used, never removed.
    Foreign,
}

impl Provenance {
    /// For logs and the run record.
    pub fn as_str(self) -> &'static str {
        match self {
            Provenance::Pulled => "pulled",
            Provenance::Cached => "cached",
            Provenance::Foreign => "foreign",
        }
    }
}

#[derive(Default)]
struct State {
    /// Runs using each image (by pinned reference).
    pins: HashMap<String, usize>,
    /// Images wanted by the next submissions (pre-pulled or about to be).
    upcoming: HashSet<String>,
    /// One pull at a time per image.
    pulls: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// The cache. Cheap to share behind an `Arc`.
pub struct ImageCache {
    engine: Engine,
    store: Store,
    budget: u64,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<State>>,
    /// One eviction at a time (it reads the records, then removes).
    evicting: tokio::sync::Mutex<()>,
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

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn store_err(e: StoreError) -> RuntimeError {
    RuntimeError::Api {
        call: "image cache store",
        reason: e.to_string(),
    }
}

async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| RuntimeError::Api {
            call: "image cache task",
            reason: e.to_string(),
        })?
        .map_err(store_err)
}

impl ImageCache {
    /// A cache of at most `budget` bytes of idle images on `engine`, recorded in `store`.
    pub fn new(engine: Engine, store: Store, budget: u64, clock: Arc<dyn Clock>) -> ImageCache {
        ImageCache {
            engine,
            store,
            budget,
            clock,
            state: Arc::default(),
            evicting: tokio::sync::Mutex::new(()),
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

    /// Make `image` available locally: from the cache, as found on the host, or pulled now (one
    /// attempt bounded by `timeout`; the caller retries). The digest is verified in every case.
    pub async fn acquire(
        &self,
        image: &ImageRef,
        timeout: Duration,
    ) -> Result<(PulledImage, Provenance), RuntimeError> {
        let pinned = image.pinned();
        let gate = lock(&self.state).pulls.entry(pinned.clone()).or_default().clone();
        let result = {
            let _one_pull = gate.lock().await;
            self.acquire_locked(image, &pinned, timeout).await
        };
        drop(gate);
        // The map holds the only reference once nobody waits on it.
        lock(&self.state).pulls.retain(|_, g| Arc::strong_count(g) > 1);
        result
    }

    async fn acquire_locked(
        &self,
        image: &ImageRef,
        pinned: &str,
        timeout: Duration,
    ) -> Result<(PulledImage, Provenance), RuntimeError> {
        let now = self.clock.now_unix();
        if let Some(local) = self.engine.local(image).await? {
            let (store, key) = (self.store.clone(), pinned.to_owned());
            let ours = blocking(move || store.touch_pulled_image(&key, now)).await?;
            let provenance = if ours {
                Provenance::Cached
            } else {
                Provenance::Foreign
            };
            return Ok((local, provenance));
        }
        let pulled = self.engine.pull(image, timeout).await?;
        let record = PulledImageRecord {
            image_id: pulled.id.clone(),
            size_bytes: pulled.size_bytes,
            pulled_at: now,
            last_used: now,
        };
        let (store, key) = (self.store.clone(), pinned.to_owned());
        blocking(move || store.record_pulled_image(&key, &record)).await?;
        Ok((pulled, Provenance::Pulled))
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
        match self.acquire(image, timeout).await {
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

    /// Bytes of images the daemon pulled and still holds.
    pub async fn usage(&self) -> Result<u64, RuntimeError> {
        let store = self.store.clone();
        let images = blocking(move || store.pulled_images()).await?;
        Ok(images
            .iter()
            .map(|(_, r)| r.size_bytes)
            .fold(0, u64::saturating_add))
    }

    /// Remove least-recently-used idle images the daemon pulled until the cache fits its budget.
    /// Returns the references removed. An image a container still uses is kept (tried again later).
    pub async fn evict(&self) -> Result<Vec<String>, RuntimeError> {
        let _one = self.evicting.lock().await;
        let store = self.store.clone();
        let records = blocking(move || store.pulled_images()).await?;
        let images: Vec<CachedImage> = records
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
        let mut removed = Vec::new();
        for pinned in plan_eviction(&images, self.budget, &protected) {
            if self.remove_recorded(&pinned).await? {
                removed.push(pinned);
            }
        }
        Ok(removed)
    }

    /// Remove `image` now if the daemon pulled it and no other run uses it (an image refused after
    /// its pull). The caller's own pin is allowed.
    pub async fn discard(&self, image: &ImageRef) -> Result<bool, RuntimeError> {
        let pinned = image.pinned();
        let _one = self.evicting.lock().await;
        if lock(&self.state).pins.get(&pinned).copied().unwrap_or(0) > 1 {
            return Ok(false);
        }
        let (store, key) = (self.store.clone(), pinned.clone());
        if blocking(move || store.pulled_image(&key)).await?.is_none() {
            return Ok(false);
        }
        self.remove_recorded(&pinned).await
    }

    async fn remove_recorded(&self, pinned: &str) -> Result<bool, RuntimeError> {
        match self.engine.remove_image(pinned).await? {
            super::docker::Removal::Removed | super::docker::Removal::Missing => {
                let (store, key) = (self.store.clone(), pinned.to_owned());
                blocking(move || store.forget_pulled_image(&key)).await?;
                tracing::info!(image = %pinned, "removed a cached miner image");
                Ok(true)
            }
            super::docker::Removal::InUse => {
                tracing::info!(image = %pinned, "cached image still used by a container; kept for now");
                Ok(false)
            }
        }
    }
}
