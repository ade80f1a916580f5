//! Pre-pulls: while evaluations run, the images of the next waiting submissions (which ones is
//! [`super::plan`]'s decision) are pulled beside them, protected from eviction. A failed pull decides
//! nothing: the run pulls again and classifies the failure itself.

use crate::domain::ImageRef;
use crate::runtime::ImageCache;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// The pulls in flight and the images pulled ahead (or being pulled) this round.
#[derive(Default)]
pub(super) struct Prefetches {
    pulls: JoinSet<()>,
    pulled: HashSet<String>,
}

impl Prefetches {
    /// Protect `next` from eviction and start pulling those not pulled yet this round, at most
    /// `ahead` at a time.
    pub(super) fn pull(
        &mut self,
        images: &Arc<ImageCache>,
        next: Vec<ImageRef>,
        ahead: usize,
        timeout: Duration,
    ) {
        images.set_upcoming(&next);
        for image in next {
            if self.pulls.len() >= ahead || !self.pulled.insert(image.pinned()) {
                continue;
            }
            let images = images.clone();
            self.pulls.spawn(async move {
                images.prefetch(&image, timeout).await;
            });
        }
    }

    /// A new round: its images are pulled again when they come up.
    pub(super) fn new_round(&mut self) {
        self.pulled.clear();
    }

    /// Forget the pulls that ended.
    pub(super) fn reap(&mut self) {
        while self.pulls.try_join_next().is_some() {}
    }

    /// Stop: abort the pulls in flight and await them (their handles on the store must be gone before
    /// it closes).
    pub(super) fn abort(&mut self) {
        self.pulls.abort_all();
    }

    /// Await the aborted pulls.
    pub(super) async fn join(&mut self) {
        while self.pulls.join_next().await.is_some() {}
    }
}
