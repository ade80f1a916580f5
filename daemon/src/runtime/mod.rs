//! Running miner images: the engine client ([`docker`]), the classification of pull failures
//! ([`pull`]) and, later, the hardened container spec and the miner file protocol.
//!
//! Everything a miner's image or container produces is hostile; this layer never trusts an exit code,
//! a log line or a file without classifying it, and never charges the miner for the host's failures.

pub mod docker;
pub mod job;
pub mod pull;
pub mod spec;

pub use docker::{ContainerOutcome, Engine, PulledImage, RUN_LABEL, RuntimeError};
pub use pull::PullFailure;
