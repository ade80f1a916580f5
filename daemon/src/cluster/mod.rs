//! Placing evaluations on the GPUs of other hosts through Ray (`[cluster] engine = "ray"`).
//!
//! Owns what the coordinator says to a Ray cluster and how: the client of Ray's Job Submission REST
//! API ([`ray_jobs`]: submit, look up, list, stop and delete jobs, token-authenticated) and the pure
//! rules for what a job may carry ([`job`]: its submission id, derived from the evaluation and the
//! attempt so that a restarted coordinator finds its jobs instead of starting duplicates, and an
//! entrypoint that names only the worker command, the coordinator's URL, the evaluation id and the
//! attempt number — nothing a miner chose ever reaches the shell command Ray runs), and the
//! per-attempt bearer tokens the workers present ([`token`]: random, kept only as a hash, checked in
//! constant time), which of a worker host's GPU slots a job was given ([`worker_gpu`]), and the book of
//! issued attempts the cluster listener consults ([`attempts`]: who may fetch what, and whether a
//! report may still be accepted), and what a worker uploads and the checks it must pass ([`report`]), and the worker's client of the
//! coordinator's listener ([`coordinator`]: fetch the spec and the files, verified; upload the videos
//! and the report).
//!
//! Must not: decide which evaluation runs where (the engine does), or trust what Ray answers beyond
//! its documented shape (bodies are bounded and parsed strictly; a surprise is an infrastructure
//! error, never a miner's).

pub mod attempts;
pub mod coordinator;
pub mod job;
pub mod ray_jobs;
pub mod report;
pub mod token;
pub mod worker_gpu;
