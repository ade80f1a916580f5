//! The image cache's eviction, as an effect of the evaluation loop: a background task trims the cache
//! each time a run hands its slot back (never inside a run's task: a run's GPU slot is free before its
//! image may be removed), and one bounded last trim at shutdown.

use crate::runtime::ImageCache;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Longest the last image cache eviction may hold up a stop.
const FINAL_EVICTION: Duration = Duration::from_secs(10);

/// Trims the image cache each time it is woken, one eviction at a time. Wake-ups during an eviction
/// coalesce into one more; failures are only logged (the next wake-up tries again).
pub(super) async fn evictor(images: Arc<ImageCache>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        match images.evict().await {
            Ok(removed) if !removed.is_empty() => {
                crate::systemd::status(&format!(
                    "image cache: removed {} least recently used image(s)",
                    removed.len()
                ));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "image cache eviction failed; tried again after the next run")
            }
        }
    }
}

/// One last trim for the runs that ended since the last one (bounded: an engine that hangs must not
/// hold up the stop; what is left is trimmed after the next run).
pub(super) async fn final_eviction(images: &ImageCache) {
    match tokio::time::timeout(FINAL_EVICTION, images.evict()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "image cache eviction at shutdown failed"),
        Err(_) => tracing::warn!(?FINAL_EVICTION, "image cache eviction at shutdown cut short"),
    }
}
