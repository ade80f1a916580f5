//! How the evaluation loop's effects reach the store and the challenge sources without blocking the
//! runtime (each call on a blocking thread), and the one error type of a loop step ([`LoopError`]).

use crate::challenges::{ChallengeError, ChallengeSet};
use crate::store::{Store, StoreError, WorkerFailed};

/// Why a loop step failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The challenges could not be obtained.
    #[error("challenges: {0}")]
    Challenges(ChallengeError),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<WorkerFailed> for LoopError {
    fn from(e: WorkerFailed) -> LoopError {
        LoopError::Internal(e.to_string())
    }
}

/// Run a store operation on a blocking thread ([`Store::blocking`], the one way async code calls the
/// store).
pub(super) async fn blocking<T: Send + 'static>(
    store: &Store,
    op: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, LoopError> {
    store.blocking(move |s| op(s).map_err(LoopError::Store)).await
}

/// Load a challenge set (directory reads, decoding) on a blocking thread.
pub(super) async fn blocking_challenges(
    op: impl FnOnce() -> Result<ChallengeSet, ChallengeError> + Send + 'static,
) -> Result<ChallengeSet, LoopError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| LoopError::Internal(e.to_string()))?
        .map_err(LoopError::Challenges)
}
