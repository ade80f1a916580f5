//! A miner's submission as the validator sends it to `POST /update`: hotkey, digest-pinned image and
//! submission time, already validated.

use super::{Hotkey, ImageRef};
use serde::{Deserialize, Serialize};

/// One validated submission.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The miner's SS58 hotkey.
    pub hotkey: Hotkey,
    /// The digest-pinned image to evaluate.
    pub image_ref: ImageRef,
    /// Unix seconds at which the miner submitted (finite, non-negative); orders `/metrics` and breaks ties.
    pub submit_time: f64,
}
