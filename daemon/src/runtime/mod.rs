//! Running miner images: the engine client ([`docker`]), the classification of pull failures
//! ([`pull`]), the image cache ([`images`], planned by [`image_lru`]), the hardened container spec
//! ([`spec`]) and the miner file protocol ([`job`]).
//!
//! Everything a miner's image or container produces is hostile; this layer never trusts an exit code,
//! a log line or a file without classifying it, and never charges the miner for the host's failures.

pub mod docker;
pub mod image_lru;
pub mod images;
pub mod job;
pub mod pull;
pub mod spec;

pub use docker::{ContainerOutcome, Engine, PulledImage, RUN_LABEL, Removal, RuntimeError};
pub use images::{ImageCache, Provenance};
pub use pull::PullFailure;
