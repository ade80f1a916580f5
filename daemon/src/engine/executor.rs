//! The executor seam: where a miner's evaluation executes once the loop has placed it on a slot.
//!
//! Everything above the seam (store, rounds, staging through the generation check, commit, `/metrics`,
//! the admin plane, events) is the same whichever executor runs; everything below it (pull by digest,
//! the hardened container, timing, VRAM, analysis and scoring) is [`run_evaluation`], on this host
//! ([`LocalExecutor`]) or on a cluster's GPU host through `talkheadd worker` (the Ray executor,
//! [`super::ray`]).

use super::run::{RunEnv, RunOutcome, RunReport, RunRequest, run_evaluation};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs one evaluation and says how it ended. An executor never stages anything: the caller records
/// the outcome (and stages a result through the generation check) the same way for every executor.
pub trait Executor: Send + Sync {
    /// Evaluate `req`; on `cancel` stop what runs and return an infrastructure outcome.
    fn evaluate<'a>(
        &'a self,
        req: RunRequest<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, (RunOutcome, RunReport)>;

    /// Whether runs need this host's Docker engine (the loop then dispatches only while it answers,
    /// pulls images ahead and sweeps containers); a remote executor's hosts have their own.
    fn uses_local_engine(&self) -> bool;

    /// A one-line description for the start-up log.
    fn describe(&self) -> String;
}

/// This host's GPU slots: the embedded default.
pub struct LocalExecutor {
    env: Arc<RunEnv>,
}

impl LocalExecutor {
    /// Runs on `env`'s Docker engine.
    pub fn new(env: Arc<RunEnv>) -> LocalExecutor {
        LocalExecutor { env }
    }
}

impl Executor for LocalExecutor {
    fn evaluate<'a>(
        &'a self,
        req: RunRequest<'a>,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, (RunOutcome, RunReport)> {
        Box::pin(run_evaluation(&self.env, req, cancel))
    }

    fn uses_local_engine(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "local".to_owned()
    }
}
