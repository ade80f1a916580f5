//! The daemon's event log: what the evaluation engine did, in order, for the admin plane's `watch`
//! stream and `status`. Owns sequence numbering, a bounded in-memory backlog that lets a client resume
//! where it left off, and the live board of what each GPU is running.
//!
//! Publishing never blocks and never fails: a slow watcher lags and is told how many events it
//! missed, it never holds the engine up.

use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;

/// Events kept for clients that resume (`watch --after SEQ`).
pub const BACKLOG: usize = 4096;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// An evaluation began on a GPU.
    RunStarted {
        /// Run id.
        run_id: String,
        /// Miner.
        hotkey: String,
        /// Image reference (digest-pinned).
        image: String,
        /// GPU (UUID or `virtual-N`).
        gpu: String,
        /// Round number.
        round: u64,
        /// Challenges the run will go through (warm-ups included).
        challenges: u32,
    },
    /// A run moved to another stage (`pull`, `start`, `ready`, `challenges`, `analysis`).
    StageChanged {
        /// Run id.
        run_id: String,
        /// New stage.
        stage: String,
    },
    /// One challenge finished (successfully or not).
    ChallengeFinished {
        /// Run id.
        run_id: String,
        /// 1-based position among the run's challenges.
        index: u32,
        /// Challenges in the run.
        total: u32,
        /// Challenge id.
        challenge_id: String,
        /// Whether it counts for the score (false: warm-up).
        scored: bool,
        /// Host-measured seconds, when it answered.
        seconds: Option<f64>,
        /// `None` when it produced an output; the failure reason otherwise.
        failure: Option<String>,
    },
    /// A run ended with a verdict (`infra_error` included: it is retried).
    Verdict {
        /// Run id.
        run_id: String,
        /// Miner.
        hotkey: String,
        /// The verdict's wire name.
        verdict: String,
        /// Why, for anything but `ok`.
        reason: Option<String>,
        /// Final score, for a staged result.
        score: Option<f64>,
    },
    /// A round was committed: `/metrics` changed.
    RoundCommitted {
        /// The round that closed.
        round: u64,
        /// Miners committed.
        committed: u64,
        /// The new `metrics_version`.
        metrics_version: u64,
    },
    /// A GPU was taken out of service (faults) or put back.
    GpuStateChanged {
        /// GPU.
        gpu: String,
        /// `available`, `drained`, `quarantined`.
        state: String,
        /// Why.
        reason: Option<String>,
    },
}

/// One numbered event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Increasing sequence number; a client resumes after the last one it saw. Each daemon instance
    /// starts numbering at its start time in microseconds, so numbers never repeat across restarts.
    pub seq: u64,
    /// Unix time it was published.
    pub at_unix: f64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What one GPU is doing right now, derived from the events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveRun {
    /// Run id.
    pub run_id: String,
    /// Miner.
    pub hotkey: String,
    /// GPU.
    pub gpu: String,
    /// Current stage.
    pub stage: String,
    /// Challenges finished so far.
    pub challenges_done: u32,
    /// Challenges in the run.
    pub challenges_total: u32,
    /// Unix time it started.
    pub started_at: f64,
}

/// The scheduler's latest decision, as `talkheadctl status` shows it: the gist of the evaluation loop's
/// last tick and every pending miner it held back, and every free GPU it left idle, with why.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SchedulerNote {
    /// Unix time of the tick.
    pub at_unix: f64,
    /// What the tick came to (e.g. "runs placed", "paused", "waiting for the Docker engine").
    pub summary: String,
    /// (miner hotkey, why it was not dispatched).
    pub held: Vec<(String, String)>,
    /// (GPU, why it takes nothing).
    pub idle: Vec<(String, String)>,
}

/// A subscription: the backlog the client asked for, then live events.
pub struct Subscription {
    /// Events after the requested sequence number that were still in the backlog.
    pub backlog: Vec<Event>,
    /// Events older than the backlog that the client asked for but can no longer get.
    pub missed: u64,
    /// Live events after the backlog, with no gap and no repeat.
    pub live: broadcast::Receiver<Event>,
}

struct Inner {
    /// Sequence numbers of this instance are above it.
    base: u64,
    next_seq: u64,
    backlog: VecDeque<Event>,
    board: BTreeMap<String, ActiveRun>,
    scheduler: Option<SchedulerNote>,
}

/// The event bus (cheap to clone; all clones share one log).
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Event>,
    clock: Arc<dyn crate::clock::Clock>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

impl EventBus {
    /// An empty log, numbering from the clock's time in microseconds.
    pub fn new(clock: Arc<dyn crate::clock::Clock>) -> EventBus {
        let base = (clock.now_unix().max(0.0) * 1e6) as u64;
        let (tx, _) = broadcast::channel(BACKLOG);
        EventBus {
            inner: Arc::new(Mutex::new(Inner {
                base,
                next_seq: base + 1,
                backlog: VecDeque::with_capacity(BACKLOG),
                board: BTreeMap::new(),
                scheduler: None,
            })),
            tx,
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections cannot panic half-way; a poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record and broadcast an event; returns its sequence number.
    pub fn publish(&self, kind: EventKind) -> u64 {
        let at_unix = self.clock.now_unix();
        let mut inner = self.lock();
        let seq = inner.next_seq;
        inner.next_seq += 1;
        update_board(&mut inner.board, &kind, at_unix);
        let event = Event { seq, at_unix, kind };
        if inner.backlog.len() == BACKLOG {
            inner.backlog.pop_front();
        }
        inner.backlog.push_back(event.clone());
        // Sent under the lock so that `subscribe` sees every event exactly once: either in the backlog
        // it copies or on the channel it joins. No receiver is not an error.
        let _ = self.tx.send(event);
        seq
    }

    /// Events after `after_seq` (0, or a number from an earlier instance: everything still kept), then
    /// live ones.
    pub fn subscribe(&self, after_seq: u64) -> Subscription {
        let inner = self.lock();
        let live = self.tx.subscribe();
        let oldest = inner.backlog.front().map_or(inner.next_seq, |e| e.seq);
        let backlog: Vec<Event> = inner
            .backlog
            .iter()
            .filter(|e| e.seq > after_seq)
            .cloned()
            .collect();
        // What an earlier instance published is gone with it; only this instance's losses are counted.
        let from = after_seq.max(inner.base);
        let missed = oldest.saturating_sub(from + 1);
        Subscription {
            backlog,
            missed,
            live,
        }
    }

    /// The last sequence number published (the instance's base when none yet).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// What every busy GPU is running, by GPU.
    pub fn board(&self) -> Vec<ActiveRun> {
        self.lock().board.values().cloned().collect()
    }

    /// Record the scheduler's latest decision (replacing the previous one; not an event: the loop
    /// decides several times a second when busy, and only the latest matters).
    pub fn set_scheduler(&self, note: SchedulerNote) {
        self.lock().scheduler = Some(note);
    }

    /// The scheduler's latest decision, once it has made one.
    pub fn scheduler(&self) -> Option<SchedulerNote> {
        self.lock().scheduler.clone()
    }
}

/// Keep the live board in step with the events (pure; unit-tested).
fn update_board(board: &mut BTreeMap<String, ActiveRun>, kind: &EventKind, at_unix: f64) {
    match kind {
        EventKind::RunStarted {
            run_id,
            hotkey,
            gpu,
            challenges,
            ..
        } => {
            board.insert(
                gpu.clone(),
                ActiveRun {
                    run_id: run_id.clone(),
                    hotkey: hotkey.clone(),
                    gpu: gpu.clone(),
                    stage: "pull".into(),
                    challenges_done: 0,
                    challenges_total: *challenges,
                    started_at: at_unix,
                },
            );
        }
        EventKind::StageChanged { run_id, stage } => {
            if let Some(run) = board.values_mut().find(|r| &r.run_id == run_id) {
                run.stage.clone_from(stage);
            }
        }
        EventKind::ChallengeFinished { run_id, index, .. } => {
            if let Some(run) = board.values_mut().find(|r| &r.run_id == run_id) {
                run.challenges_done = *index;
            }
        }
        EventKind::Verdict { run_id, .. } => board.retain(|_, r| &r.run_id != run_id),
        EventKind::RoundCommitted { .. } | EventKind::GpuStateChanged { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FixedClock;

    fn bus() -> EventBus {
        EventBus::new(Arc::new(FixedClock::new(1000.0)))
    }

    fn stage(run: &str, stage: &str) -> EventKind {
        EventKind::StageChanged {
            run_id: run.into(),
            stage: stage.into(),
        }
    }

    fn started(run: &str, gpu: &str) -> EventKind {
        EventKind::RunStarted {
            run_id: run.into(),
            hotkey: "hk".into(),
            image: "img".into(),
            gpu: gpu.into(),
            round: 1,
            challenges: 3,
        }
    }

    #[test]
    fn sequence_numbers_start_above_the_start_time_and_increase() {
        let bus = bus();
        let base = 1_000_000_000;
        assert_eq!(bus.last_seq(), base);
        assert_eq!(bus.publish(stage("r", "pull")), base + 1);
        assert_eq!(bus.publish(stage("r", "start")), base + 2);
        assert_eq!(bus.last_seq(), base + 2);
        // A later instance numbers above every number of this one.
        let later = EventBus::new(Arc::new(FixedClock::new(1001.0)));
        assert!(later.publish(stage("r", "x")) > bus.last_seq());
    }

    #[test]
    fn resuming_gets_the_backlog_then_live_events_without_gap_or_repeat() {
        let bus = bus();
        let first = bus.publish(stage("r", "a"));
        let second = bus.publish(stage("r", "b"));
        let third = bus.publish(stage("r", "c"));
        let mut sub = bus.subscribe(first);
        assert_eq!(sub.missed, 0);
        assert_eq!(
            sub.backlog.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![second, third]
        );
        let fourth = bus.publish(stage("r", "d"));
        let live = sub.live.try_recv().expect("live event");
        assert_eq!(live.seq, fourth);
        assert!(sub.live.try_recv().is_err());
    }

    #[test]
    fn a_client_behind_the_backlog_is_told_how_many_it_missed() {
        let bus = bus();
        let base = bus.last_seq();
        for _ in 0..(BACKLOG + 10) {
            bus.publish(stage("r", "x"));
        }
        let sub = bus.subscribe(base + 5);
        // Events base+6..=base+10 were dropped from the backlog (the oldest kept is base+11).
        assert_eq!(sub.missed, 5);
        assert_eq!(sub.backlog.first().map(|e| e.seq), Some(base + 11));
        assert_eq!(sub.backlog.len(), BACKLOG);
        let fresh = bus.subscribe(bus.last_seq());
        assert!(fresh.backlog.is_empty());
        assert_eq!(fresh.missed, 0);
        // A new client (0) or one of an earlier instance is told only of this instance's losses.
        assert_eq!(bus.subscribe(0).missed, 10);
    }

    #[test]
    fn the_board_follows_a_run_from_start_to_verdict() {
        let bus = bus();
        bus.publish(started("r1", "virtual-0"));
        bus.publish(started("r2", "virtual-1"));
        bus.publish(stage("r1", "challenges"));
        bus.publish(EventKind::ChallengeFinished {
            run_id: "r1".into(),
            index: 2,
            total: 3,
            challenge_id: "c".into(),
            scored: true,
            seconds: Some(1.0),
            failure: None,
        });
        let board = bus.board();
        assert_eq!(board.len(), 2);
        assert_eq!(board[0].run_id, "r1");
        assert_eq!(board[0].stage, "challenges");
        assert_eq!(board[0].challenges_done, 2);
        assert_eq!(board[1].stage, "pull");
        bus.publish(EventKind::Verdict {
            run_id: "r1".into(),
            hotkey: "hk".into(),
            verdict: "ok".into(),
            reason: None,
            score: Some(0.5),
        });
        let board = bus.board();
        assert_eq!(board.len(), 1);
        assert_eq!(board[0].run_id, "r2");
    }

    #[test]
    fn events_serialise_with_a_kind_tag() {
        let bus = bus();
        let mut sub = bus.subscribe(0);
        bus.publish(stage("r", "ready"));
        let e = sub.live.try_recv().expect("event");
        let json = serde_json::to_value(&e).expect("json");
        assert_eq!(json["kind"], "stage_changed");
        assert_eq!(json["seq"], 1_000_000_001u64);
        assert_eq!(json["stage"], "ready");
    }
}
