//! The evaluation engine: runs miner images through the file protocol ([`run`]), classifies how they
//! failed ([`verdicts`]), assembles their metrics ([`metrics`]), and drives the store's round semantics
//! ([`rounds_loop`]) with one run task per GPU slot ([`tasks`]: whatever way a task ends, its slot is
//! freed), dispatching only while the Docker engine answers and is swept ([`gate`]).
//!
//! Each tick of the loop is decided by the pure [`plan`] over a snapshot; its effects are
//! `dispatch` (where a run executes), `slots`, [`gate`], `challenge_set`, `prefetch` and
//! `evict`.
//!
//! [`oneshot`] runs one evaluation outside the loop, for `talkheadd evaluate`, and [`worker`] runs one
//! attempt of a cluster's evaluation with it, for `talkheadd worker`.

mod blocking;
pub mod calibration;
mod challenge_set;
mod dispatch;
pub mod duplicates;
mod evict;
pub mod executor;
pub mod gate;
pub mod metrics;
pub mod oneshot;
pub mod plan;
mod prefetch;
pub mod ray;
pub mod rounds_loop;
pub mod run;
mod slots;
pub mod tasks;
pub mod timing;
pub mod verdicts;
pub mod worker;
