//! How the evaluation loop's effects reach the store and the challenge sources without blocking the
//! runtime (each call on a blocking thread), and the one error type of a loop step ([`LoopError`]).

use crate::challenges::{ChallengeError, ChallengeSet};
use crate::store::StoreError;

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

/// Run a store operation on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, LoopError> {
    tokio::task::spawn_blocking(op)
        .await
        .map_err(|e| LoopError::Internal(e.to_string()))?
        .map_err(LoopError::Store)
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
