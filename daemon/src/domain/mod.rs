//! Validated value types shared by every layer: miner hotkeys, digest-pinned image references, verdicts,
//! submissions and the metrics document that `GET /metrics` serves.
//!
//! Types here are parsed once at the edge (HTTP, config, store decoding) and are valid by construction;
//! this module does no I/O and knows nothing of LMDB, HTTP or Docker.

pub mod hotkey;
pub mod image_ref;
pub mod metrics;
pub mod signing;
pub mod submission;
pub mod task;
pub mod text;
pub mod verdict;

pub use hotkey::Hotkey;
pub use image_ref::ImageRef;
pub use metrics::EvaluationMetrics;
pub use submission::Submission;
pub use verdict::Verdict;
