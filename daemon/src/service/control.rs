//! Controls of the evaluation loop (pause/resume, wake-up) that the HTTP gateway and the admin plane
//! hold through [`super::Service`], and the loop in [`crate::engine`] obeys. Defined here, below the
//! engine, so that the surfaces never depend on the engine itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Shared controls of the loop (pause/resume, wake-up), for the HTTP gateway and the admin plane.
#[derive(Clone, Default)]
pub struct LoopControl {
    wake: Arc<Notify>,
    paused: Arc<AtomicBool>,
}

impl LoopControl {
    /// Look for work now (new submissions arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stop starting new evaluations (running ones finish).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Start evaluating again.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Whether evaluation is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Resolves at the next [`LoopControl::wake`] or [`LoopControl::resume`] (or at once if one came
    /// since the last wait): what the loop waits on between ticks.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::LoopControl;

    #[tokio::test]
    async fn a_wake_before_the_wait_is_not_lost_and_resume_wakes_too() {
        let control = LoopControl::default();
        let loop_side = control.clone();
        control.wake();
        // notify_one stores a permit: the loop that was busy when the submission came still sees it.
        loop_side.notified().await;
        control.pause();
        assert!(loop_side.is_paused());
        control.resume();
        assert!(!loop_side.is_paused());
        loop_side.notified().await;
    }
}
