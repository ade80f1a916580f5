//! # talkheadd
//!
//! The evaluation executor of the Talkhead subnet as a production daemon. Miners submit Docker images
//! (pinned by digest) that turn a face image and a speech clip into a talking-head video; talkheadd keeps
//! the table of submissions, evaluates every image on the round's challenges, scores the outputs and
//! commits results round by round for the validator process to read.
//!
//! ## Architecture
//!
//! ```text
//! POST /update ─► api::http ─► rounds (pure decisions) ─► store (LMDB, one decision = one txn)
//!                                                          │
//!            evaluation engine (later issues) ─► scoring (pure) ─► rounds::stage / commit
//!                                                          │
//! GET /metrics ◄─ api::http ◄─ store: committed metrics, metrics_version (ETag)
//! ```
//!
//! - [`config`] turns TOML fragments and the reference's environment variables into validated
//!   [`config::Settings`]; nothing downstream sees an `Option` that config could have settled.
//! - [`domain`] holds the validated value types every layer shares: SS58 hotkeys, digest-pinned image
//!   references, verdicts and the metrics document served by `/metrics`.
//! - [`rounds`] is the round state machine (upserts, staging, commits, carry-over policy) as pure
//!   functions over records; [`store`] applies its decisions to LMDB transactionally.
//! - [`scoring`] is pure arithmetic: per-challenge quality, efficiency, aggregation, ranking.
//! - [`api`] is the hyper gateway (and, later, the admin plane) with one error → status mapping.
//!
//! ## Threat model
//!
//! The host also holds the validator's keys. Everything a miner controls (its image, what its container
//! writes) and everything that arrives over the network (HTTP bodies and headers, challenge payloads) is
//! hostile. HTTP callers are authenticated by sr25519 signatures from an allow-list of *public* hotkeys, so
//! the executor never needs a private key; bodies are bounded while streaming and validated whole before
//! anything is stored. Infrastructure failures are never charged to a miner.

pub mod admin;
pub mod analysis;
pub mod api;
pub mod challenges;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod engine;
pub mod events;
pub mod gpu;
pub mod logging;
pub mod rounds;
pub mod runtime;
pub mod scoring;
pub mod service;
pub mod store;
pub mod systemd;

/// What this binary was built as: the profile, and the commit when the build sets `TALKHEADD_BUILD`
/// (the package build does).
pub const BUILD: &str = match option_env!("TALKHEADD_BUILD") {
    Some(build) => build,
    None if cfg!(debug_assertions) => "debug build",
    None => "release build",
};
