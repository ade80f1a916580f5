//! The run tasks in flight and which slot and run each one holds, so that a slot is freed whatever way
//! its task ends. A task that returns hands back its own result; a task that panics (or is aborted)
//! leaves only a [`tokio::task::JoinError`], and the slot, run and miner it held are recovered here from
//! the task id. Without this a panicking run would keep its GPU slot busy until the daemon restarts.
//!
//! Owns no policy: what a lost run means (an `infra_error`, never the miner's fault) is decided by the
//! evaluation loop from the [`Ended::Lost`] it gets.

use std::collections::HashMap;
use std::future::Future;
use tokio::task::{Id, JoinError, JoinSet};

/// What a task holds while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Held<K> {
    /// The slot index it occupies.
    pub slot: usize,
    /// Its run id.
    pub run_id: String,
    /// What the loop needs to account for the run if the task is lost (the ticket, the kind of run).
    pub key: K,
}

/// How a task ended.
#[derive(Debug)]
pub enum Ended<T, K> {
    /// It returned its result.
    Returned(T),
    /// It panicked or was cancelled: what it held, and why (the panic message when there is one).
    Lost {
        /// What the task held.
        held: Held<K>,
        /// The panic message, or "cancelled".
        reason: String,
    },
}

/// A [`JoinSet`] that remembers what each task holds.
pub struct RunTasks<T, K> {
    set: JoinSet<T>,
    held: HashMap<Id, Held<K>>,
}

impl<T: Send + 'static, K> Default for RunTasks<T, K> {
    fn default() -> Self {
        RunTasks {
            set: JoinSet::new(),
            held: HashMap::new(),
        }
    }
}

impl<T: Send + 'static, K> RunTasks<T, K> {
    /// Spawn `task`, holding `held` until it ends.
    pub fn spawn(&mut self, held: Held<K>, task: impl Future<Output = T> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.held.insert(handle.id(), held);
    }

    /// Whether no task is in flight.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Number of tasks in flight.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// A task that has already ended, if any (never waits).
    pub fn try_next(&mut self) -> Option<Ended<T, K>> {
        let joined = self.set.try_join_next_with_id()?;
        self.settle(joined)
    }

    /// The next task to end; `None` when none is in flight.
    pub async fn next(&mut self) -> Option<Ended<T, K>> {
        loop {
            let joined = self.set.join_next_with_id().await?;
            if let Some(ended) = self.settle(joined) {
                return Some(ended);
            }
        }
    }

    fn settle(&mut self, joined: Result<(Id, T), JoinError>) -> Option<Ended<T, K>> {
        match joined {
            Ok((id, value)) => {
                self.held.remove(&id);
                Some(Ended::Returned(value))
            }
            Err(e) => {
                // Every spawned task is in `held`; a missing entry would be a task this type did not
                // spawn, which cannot happen, so there is nothing to free.
                let held = self.held.remove(&e.id())?;
                Some(Ended::Lost {
                    held,
                    reason: lost_reason(e),
                })
            }
        }
    }
}

/// The panic message of a lost task, bounded by the caller's one-line rule.
fn lost_reason(e: JoinError) -> String {
    if e.is_cancelled() {
        return "the run task was cancelled".to_owned();
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_owned());
    format!("the run task panicked: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(slot: usize, run: &str) -> Held<&'static str> {
        Held {
            slot,
            run_id: run.to_owned(),
            key: "miner",
        }
    }

    #[tokio::test]
    async fn a_panicking_task_gives_back_the_slot_and_run_it_held() {
        let mut tasks: RunTasks<usize, &'static str> = RunTasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(held(0, "run-a"), async move {
            // Ends only after the panicking one, so the order of endings is known.
            let _ = rx.await;
            7
        });
        tasks.spawn(held(3, "run-b"), async { panic!("index out of bounds") });
        assert_eq!(tasks.len(), 2);
        match tasks.next().await.unwrap() {
            Ended::Lost { held, reason } => {
                assert_eq!((held.slot, held.run_id.as_str()), (3, "run-b"));
                assert!(reason.contains("panicked: index out of bounds"), "{reason}");
            }
            Ended::Returned(v) => panic!("the panicking task ended first, got {v}"),
        }
        tx.send(()).unwrap();
        assert!(matches!(tasks.next().await, Some(Ended::Returned(7))));
        assert!(tasks.is_empty());
        assert!(tasks.held.is_empty(), "nothing stays held");
        assert!(tasks.next().await.is_none());
    }

    #[tokio::test]
    async fn a_formatted_panic_message_is_kept_and_try_next_never_waits() {
        let mut tasks: RunTasks<(), &'static str> = RunTasks::default();
        assert!(tasks.try_next().is_none());
        let n = 5;
        tasks.spawn(held(1, "run-c"), async move { panic!("slot {n} gone") });
        let ended = tasks.next().await.unwrap();
        let Ended::Lost { held, reason } = ended else {
            panic!("expected a lost task")
        };
        assert_eq!(held.slot, 1);
        assert_eq!(reason, "the run task panicked: slot 5 gone");
    }
}
