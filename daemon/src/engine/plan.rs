//! What the evaluation loop does on one tick, decided by a pure function over a [`Snapshot`]: which
//! tickets are settled without a run (duplicates), which slot takes the round's calibration, which
//! tickets run on which slots, whether the round commits, and how long to wait before looking again.
//! Every ticket held back is recorded with why in the [`TickOutcome`].
//!
//! Pure: no tokio, no Docker, no store, no clock of its own (`now` is in the snapshot). Facts that cost
//! an effect to learn (whether the Docker engine answers and is swept, the round's challenge set) are
//! asked for with [`Plan::Need`] only when the decision depends on them, so the loop pings the engine or
//! fetches challenges exactly when it did before this module existed; it then plans again with the
//! answer. *Where* a dispatched run executes (a local GPU slot today) is the dispatch effect's business,
//! not this module's: a [`Action::Dispatch`] only names a slot index and a ticket.

use super::duplicates::{self, DuplicateAction};
use crate::config::DuplicatePolicy;
use crate::domain::{EvaluationMetrics, ImageRef};
use crate::gpu::placement::{SlotView, choose_model, place};
use crate::rounds::EvaluationTicket;
use crate::store::MinerView;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// How long the loop idles without a wake-up before it looks again.
pub const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Shortest wait for a backed-off miner, so that an expiring backoff does not spin the loop.
pub const MIN_BACKOFF_WAIT: Duration = Duration::from_millis(100);

/// Everything one tick's decision depends on.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The loop's monotonic clock.
    pub now: Instant,
    /// Wall-clock time (duplicate results are stamped with it).
    pub now_unix: f64,
    /// The operator paused evaluation.
    pub paused: bool,
    /// The open round's pending tickets, in the store's fair order.
    pub pending: Vec<EvaluationTicket>,
    /// The GPU slots, by index.
    pub slots: Vec<SlotState>,
    /// Run tasks in flight (miners' runs and calibrations).
    pub tasks: usize,
    /// Miners backed off after an infrastructure failure: when they may run again.
    pub backoff: BTreeMap<String, Instant>,
    /// The engine gate.
    pub engine: EngineView,
    /// The round's challenge set, as far as this tick knows.
    pub challenges: ChallengesView,
    /// Whether a challenge set is held in memory (a round is under way in this process).
    pub set_in_memory: bool,
    /// The open round, when the loop read it (it does with nothing pending, nothing running and a set in
    /// memory: the round may need calibrating before it commits).
    pub open_round: Option<u64>,
    /// `gpu.calibration_image`, with the calibrations known for a round.
    pub calibration: Option<CalibrationState>,
    /// What `evaluation.duplicates` needs.
    pub duplicates: DuplicateFacts,
    /// `gpu.same_model_per_round`.
    pub same_model_per_round: bool,
    /// The model the open round is pinned to, if one was chosen.
    pub round_model: Option<(u64, String)>,
    /// `docker.prepull_ahead`.
    pub prepull_ahead: usize,
}

/// One GPU slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// GPU UUID.
    pub uuid: String,
    /// GPU model (marketing name).
    pub model: String,
    /// Drained by the operator.
    pub drained: bool,
    /// Not quarantined.
    pub usable: bool,
    /// The run it executes, if any.
    pub busy: Option<BusyState>,
}

impl SlotState {
    fn in_service(&self) -> bool {
        !self.drained && self.usable
    }
}

/// The run a slot executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyState {
    /// The miner, or [`super::calibration::CALIBRATION`].
    pub hotkey: String,
    /// Its image digest: two runs of one digest never overlap (every run removes its image).
    pub digest: String,
}

/// The engine gate as the tick sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineView {
    /// Not asked yet this tick (its backoff is over, or it was open).
    Unchecked,
    /// The engine answers and nothing is left to sweep.
    Open,
    /// Closed: nothing starts before `wait` is over.
    Closed {
        /// Until the next attempt.
        wait: Duration,
        /// Why.
        why: GateHold,
    },
}

/// Why the engine gate is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateHold {
    /// The Docker engine does not answer.
    Unreachable,
    /// Leftover containers could not be swept yet.
    SweepFailed,
}

/// The round's challenge set as the tick sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengesView {
    /// Not obtained yet this tick.
    Unknown,
    /// Obtained.
    Ready,
    /// Could not be obtained; look again after `retry`.
    Unavailable {
        /// Until the next attempt.
        retry: Duration,
    },
}

/// `gpu.calibration_image` and the GPUs calibrated (stored or running) for `round`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalibrationState {
    /// The calibration image's digest.
    pub digest: String,
    /// The round `done` is for.
    pub round: u64,
    /// GPU UUIDs calibrated this round.
    pub done: HashSet<String>,
}

/// What the duplicate-digest rule needs.
#[derive(Debug, Clone)]
pub struct DuplicateFacts {
    /// `evaluation.duplicates`.
    pub policy: DuplicatePolicy,
    /// `evaluation.scoring_count`.
    pub scoring_count: u32,
    /// Every miner (read only when something is pending).
    pub miners: Vec<MinerView>,
}

/// The decision.
#[derive(Debug, Clone)]
pub enum Plan {
    /// The decision depends on a fact that costs an effect: obtain it, put it in the snapshot and plan
    /// again.
    Need(Need),
    /// What to do.
    Decided(Decision),
}

/// A fact [`plan`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Ping the engine and sweep what must be swept ([`Snapshot::engine`]).
    Engine,
    /// Fix or load the round's challenge set ([`Snapshot::challenges`]).
    Challenges,
}

/// The actions of a tick, applied in order, then [`Decision::next`].
#[derive(Debug, Clone)]
pub struct Decision {
    /// What to do, in order.
    pub actions: Vec<Action>,
    /// What to do after the actions.
    pub next: Next,
    /// What was decided and why.
    pub outcome: TickOutcome,
}

/// One effect to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stage these metrics for the ticket without running anything (a duplicate digest).
    Settle {
        /// The ticket.
        ticket: EvaluationTicket,
        /// `duplicate` (first_wins) or the original's result (share).
        metrics: Box<EvaluationMetrics>,
    },
    /// The round is measured on this GPU model from now on (`gpu.same_model_per_round`).
    PinModel {
        /// The round.
        round: u64,
        /// The model.
        model: String,
    },
    /// Start the round's calibration on this slot (after its pre-run check).
    Calibrate {
        /// The slot index.
        slot: usize,
        /// The round.
        round: u64,
    },
    /// Start this ticket's run on this slot (after its pre-run check).
    Dispatch {
        /// The slot index.
        slot: usize,
        /// The ticket.
        ticket: EvaluationTicket,
    },
    /// Pull these images ahead of their runs (an empty list withdraws the protection of earlier ones).
    Prefetch {
        /// In the order they will run, at most `docker.prepull_ahead`.
        images: Vec<ImageRef>,
    },
    /// Tell `systemctl status` what the round is doing.
    ReportStatus {
        /// The round.
        round: u64,
        /// Pending tickets.
        pending: usize,
        /// No slot took anything and nothing runs: every slot is drained or quarantined.
        no_slot_in_service: bool,
    },
    /// Commit the round if it is complete, provided no run is in flight once the earlier actions are
    /// applied (a calibration whose pre-run check failed did not start). A round committed makes the
    /// tick go again at once instead of [`Decision::next`].
    Commit,
}

/// After the actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Plan again at once (something changed the pending set).
    Again,
    /// Idle up to this long, until woken or until a run finishes.
    Wait(Duration),
}

/// What a tick decided and why, for tests and operators.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickOutcome {
    /// Why the tick ends the way it does.
    pub why: Why,
    /// Pending tickets that were not dispatched, each with its reason.
    pub held: Vec<HeldTicket>,
    /// Free slots that take nothing, each with its reason.
    pub idle_slots: Vec<(usize, SlotHold)>,
}

impl TickOutcome {
    /// The reason a miner's ticket was held back this tick, if it was.
    pub fn held_reason(&self, hotkey: &str) -> Option<&Hold> {
        self.held.iter().find(|h| h.hotkey == hotkey).map(|h| &h.reason)
    }

    fn hold(&mut self, ticket: &EvaluationTicket, reason: Hold) {
        self.held.push(HeldTicket {
            hotkey: ticket.hotkey.to_string(),
            reason,
        });
    }
}

/// The gist of a tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Why {
    /// Evaluation is paused.
    #[default]
    Paused,
    /// Duplicate digests were settled: look again at once.
    Settled,
    /// Nothing pending; runs (or calibrations) are in flight.
    Finishing,
    /// Nothing pending, nothing running: the round commits.
    Committing,
    /// Nothing pending and nothing to commit.
    Idle,
    /// Everything pending is running or backed off.
    BackedOff,
    /// The engine gate is closed.
    EngineGate(GateHold),
    /// The round's challenges cannot be obtained.
    ChallengesUnavailable,
    /// Runs were placed (possibly none, for lack of a slot).
    Placed,
}

/// A ticket held back.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldTicket {
    /// The miner.
    pub hotkey: String,
    /// Why.
    pub reason: Hold,
}

/// Why a pending ticket was not dispatched.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// Evaluation is paused.
    Paused,
    /// The miner's run is in flight.
    Running,
    /// Backed off after an infrastructure failure, until then.
    BackedOff(Instant),
    /// A shared digest waiting for its original's result (`share`).
    WaitingForOriginal(String),
    /// The engine gate is closed.
    EngineGate(GateHold),
    /// The round's challenges cannot be obtained.
    ChallengesUnavailable,
    /// A run of the same image digest is in flight or placed before it.
    SameDigest,
    /// Only slots of the round's model take runs, and none of them is free.
    OtherModel(String),
    /// No free slot in service.
    NoFreeSlot,
}

/// Why a free slot takes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotHold {
    /// Drained by the operator.
    Drained,
    /// Quarantined.
    Quarantined,
    /// Not of the round's model.
    OtherModel,
}

impl std::fmt::Display for GateHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GateHold::Unreachable => "the Docker engine does not answer",
            GateHold::SweepFailed => "leftover containers are not swept yet",
        })
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Paused => f.write_str("paused"),
            Why::Settled => f.write_str("duplicate digests settled"),
            Why::Finishing => f.write_str("nothing pending; runs finishing"),
            Why::Committing => f.write_str("nothing pending; the round commits"),
            Why::Idle => f.write_str("idle: nothing pending"),
            Why::BackedOff => f.write_str("everything pending is running or backed off"),
            Why::EngineGate(why) => write!(f, "waiting: {why}"),
            Why::ChallengesUnavailable => f.write_str("waiting: the round's challenges are unavailable"),
            Why::Placed => f.write_str("runs placed"),
        }
    }
}

impl Hold {
    /// Why, for people; `now` turns a backoff into the time left.
    pub fn describe(&self, now: Instant) -> String {
        match self {
            Hold::Paused => "paused".to_owned(),
            Hold::Running => "running".to_owned(),
            Hold::BackedOff(until) => format!(
                "backed off after an infrastructure failure ({:.0} s left)",
                until.saturating_duration_since(now).as_secs_f64()
            ),
            Hold::WaitingForOriginal(of) => format!("waiting for the original submission ({of})"),
            Hold::EngineGate(why) => format!("waiting: {why}"),
            Hold::ChallengesUnavailable => "waiting: the round's challenges are unavailable".to_owned(),
            Hold::SameDigest => "a run of the same image digest goes first".to_owned(),
            Hold::OtherModel(model) => format!("the round is measured on {model}; none of those is free"),
            Hold::NoFreeSlot => "no free GPU".to_owned(),
        }
    }
}

impl std::fmt::Display for SlotHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotHold::Drained => "drained",
            SlotHold::Quarantined => "quarantined",
            SlotHold::OtherModel => "not the round's GPU model",
        })
    }
}

impl TickOutcome {
    /// What `talkheadctl status` shows of this tick: the gist, held miners and idle slots (named by
    /// their GPU's UUID from `slots`) in words, stamped `now_unix`.
    pub fn note(&self, slots: &[SlotState], now: Instant, now_unix: f64) -> crate::events::SchedulerNote {
        crate::events::SchedulerNote {
            at_unix: now_unix,
            summary: self.why.to_string(),
            held: self
                .held
                .iter()
                .map(|h| (h.hotkey.clone(), h.reason.describe(now)))
                .collect(),
            idle: self
                .idle_slots
                .iter()
                .map(|(i, why)| {
                    let gpu = slots
                        .get(*i)
                        .map_or_else(|| format!("slot {i}"), |s| s.uuid.clone());
                    (gpu, why.to_string())
                })
                .collect(),
        }
    }
}

/// Decide one tick.
pub fn plan(s: &Snapshot) -> Plan {
    let mut out = TickOutcome::default();
    note_idle_slots(s, &mut out);
    if s.paused {
        for t in &s.pending {
            out.hold(t, Hold::Paused);
        }
        out.why = Why::Paused;
        return decided(Vec::new(), Next::Wait(IDLE_RECHECK), out);
    }
    if s.pending.is_empty() {
        return between_rounds(s, out);
    }
    let running: HashSet<&str> = s
        .slots
        .iter()
        .filter_map(|rt| rt.busy.as_ref().map(|b| b.hotkey.as_str()))
        .collect();
    let mut ready = Vec::new();
    for t in &s.pending {
        if running.contains(t.hotkey.as_str()) {
            out.hold(t, Hold::Running);
        } else if let Some(until) = s.backoff.get(t.hotkey.as_str()).filter(|u| **u > s.now) {
            out.hold(t, Hold::BackedOff(*until));
        } else {
            ready.push(t);
        }
    }
    // `evaluation.duplicates`: settled without a run; the pending set changes, so look again at once.
    let d = &s.duplicates;
    let mut settle = Vec::new();
    let mut to_run = Vec::new();
    for t in ready {
        match duplicates::plan(d.policy, &d.miners, t, d.scoring_count, s.now_unix) {
            DuplicateAction::Run => to_run.push(t),
            DuplicateAction::Wait { original } => out.hold(t, Hold::WaitingForOriginal(original.to_string())),
            DuplicateAction::Reject(metrics) | DuplicateAction::Copy(metrics) => {
                settle.push(Action::Settle {
                    ticket: t.clone(),
                    metrics,
                })
            }
        }
    }
    if !settle.is_empty() {
        out.why = Why::Settled;
        return decided(settle, Next::Again, out);
    }
    if to_run.is_empty() {
        // The earliest backoff to end (any miner's: one may become pending meanwhile).
        let next = s.backoff.values().filter(|u| **u > s.now).min();
        let wait = next.map_or(IDLE_RECHECK, |t| {
            t.saturating_duration_since(s.now).max(MIN_BACKOFF_WAIT)
        });
        out.why = Why::BackedOff;
        return decided(Vec::new(), Next::Wait(wait), out);
    }
    match &s.engine {
        EngineView::Unchecked => return Plan::Need(Need::Engine),
        EngineView::Closed { wait, why } => {
            for t in to_run {
                out.hold(t, Hold::EngineGate(why.clone()));
            }
            out.why = Why::EngineGate(why.clone());
            return decided(Vec::new(), Next::Wait(*wait), out);
        }
        EngineView::Open => {}
    }
    match s.challenges {
        ChallengesView::Unknown => return Plan::Need(Need::Challenges),
        ChallengesView::Unavailable { retry } => {
            for t in to_run {
                out.hold(t, Hold::ChallengesUnavailable);
            }
            out.why = Why::ChallengesUnavailable;
            return decided(Vec::new(), Next::Wait(retry), out);
        }
        ChallengesView::Ready => {}
    }
    let round = to_run.first().map_or(0, |t| t.round);
    let mut slots = s.slots.clone();
    let mut actions = Vec::new();
    calibrate(s, round, &mut slots, &mut actions);
    // One run per image digest at a time, calibrations included.
    let mut digests: HashSet<String> = slots
        .iter()
        .filter_map(|rt| rt.busy.as_ref().map(|b| b.digest.clone()))
        .collect();
    let mut runnable = Vec::new();
    for t in to_run {
        if digests.insert(t.image_ref.digest()) {
            runnable.push(t);
        } else {
            out.hold(t, Hold::SameDigest);
        }
    }
    let views: Vec<SlotView<'_>> = slots
        .iter()
        .map(|rt| SlotView {
            model: rt.model.as_str(),
            in_service: rt.in_service(),
            busy: rt.busy.is_some(),
        })
        .collect();
    let model = model_for(s, round, &views, &mut actions);
    let placements = place(runnable.len(), &views, model.as_deref());
    let calibrations = actions
        .iter()
        .filter(|a| matches!(a, Action::Calibrate { .. }))
        .count();
    let placed: HashSet<usize> = placements.iter().map(|p| p.ticket).collect();
    for p in &placements {
        if let Some(t) = runnable.get(p.ticket) {
            actions.push(Action::Dispatch {
                slot: p.slot,
                ticket: (*t).clone(),
            });
        }
    }
    let used: HashSet<usize> = placements.iter().map(|p| p.slot).collect();
    let other_model_free = model.as_deref().filter(|m| {
        views
            .iter()
            .enumerate()
            .any(|(i, v)| v.free() && v.model != *m && !used.contains(&i))
    });
    let waiting: Vec<&EvaluationTicket> = runnable
        .iter()
        .enumerate()
        .filter(|(i, _)| !placed.contains(i))
        .map(|(_, t)| *t)
        .collect();
    for t in &waiting {
        let reason = match other_model_free {
            Some(m) => Hold::OtherModel(m.to_owned()),
            None => Hold::NoFreeSlot,
        };
        out.hold(t, reason);
    }
    if let Some(m) = &model {
        for (i, v) in views.iter().enumerate() {
            if v.free() && v.model != m && !used.contains(&i) {
                out.idle_slots.push((i, SlotHold::OtherModel));
            }
        }
    }
    // Pre-pulls only beside runs in flight: with nothing running the next run pulls at once anyway.
    let in_flight = s.tasks + calibrations + placements.len();
    let images = if in_flight == 0 {
        Vec::new()
    } else {
        let mut seen = HashSet::new();
        waiting
            .iter()
            .map(|t| t.image_ref.clone())
            .filter(|i| seen.insert(i.pinned()))
            .take(s.prepull_ahead)
            .collect()
    };
    actions.push(Action::Prefetch { images });
    actions.push(Action::ReportStatus {
        round,
        pending: s.pending.len(),
        no_slot_in_service: placements.is_empty() && s.tasks + calibrations == 0,
    });
    out.why = Why::Placed;
    decided(actions, Next::Wait(IDLE_RECHECK), out)
}

/// Nothing pending: calibrate what the round still needs (only with nothing in flight), then commit.
fn between_rounds(s: &Snapshot, mut out: TickOutcome) -> Plan {
    let mut actions = Vec::new();
    if s.tasks == 0
        && s.set_in_memory
        && let (Some(cal), Some(round)) = (&s.calibration, s.open_round)
    {
        // A GPU that was busy (or shared the calibration image) while miners were placed has its
        // calibration now, before the round commits.
        let done = done_for(cal, round);
        if s.slots.iter().any(|rt| due(rt, done)) {
            match &s.engine {
                EngineView::Unchecked => return Plan::Need(Need::Engine),
                EngineView::Closed { wait, why } => {
                    out.why = Why::EngineGate(why.clone());
                    return decided(Vec::new(), Next::Wait(*wait), out);
                }
                EngineView::Open => {}
            }
        }
        let mut slots = s.slots.clone();
        calibrate(s, round, &mut slots, &mut actions);
    }
    if s.tasks > 0 {
        out.why = Why::Finishing;
        return decided(actions, Next::Wait(IDLE_RECHECK), out);
    }
    out.why = if actions.is_empty() {
        Why::Committing
    } else {
        Why::Finishing
    };
    actions.push(Action::Commit);
    decided(actions, Next::Wait(IDLE_RECHECK), out)
}

/// With `gpu.calibration_image`, the round's calibration on the first free slot in service that has not
/// had it, unless that image already runs somewhere (so at most one starts per tick). `slots` is updated
/// with the slot taken.
fn calibrate(s: &Snapshot, round: u64, slots: &mut [SlotState], actions: &mut Vec<Action>) {
    let Some(cal) = &s.calibration else { return };
    let done = done_for(cal, round);
    let image_busy = slots
        .iter()
        .any(|rt| rt.busy.as_ref().is_some_and(|b| b.digest == cal.digest));
    if image_busy {
        return;
    }
    let Some((i, rt)) = slots.iter_mut().enumerate().find(|(_, rt)| due(rt, done)) else {
        return;
    };
    rt.busy = Some(BusyState {
        hotkey: super::calibration::CALIBRATION.to_owned(),
        digest: cal.digest.clone(),
    });
    actions.push(Action::Calibrate { slot: i, round });
}

/// The GPUs calibrated for `round` (none when the state is for another round).
fn done_for(cal: &CalibrationState, round: u64) -> Option<&HashSet<String>> {
    (cal.round == round).then_some(&cal.done)
}

/// Whether the slot is free, in service and not calibrated this round.
fn due(rt: &SlotState, done: Option<&HashSet<String>>) -> bool {
    rt.busy.is_none() && rt.in_service() && done.is_none_or(|d| !d.contains(&rt.uuid))
}

/// The model this round is measured on when `gpu.same_model_per_round` pins one: the pinned one while
/// a slot of it is in service, else the majority's ([`choose_model`]), pinned with an action.
fn model_for(s: &Snapshot, round: u64, views: &[SlotView<'_>], actions: &mut Vec<Action>) -> Option<String> {
    if !s.same_model_per_round {
        return None;
    }
    let pinned = s
        .round_model
        .as_ref()
        .filter(|(r, m)| *r == round && views.iter().any(|v| v.in_service && v.model == m))
        .map(|(_, m)| m.clone());
    let model = pinned.or_else(|| choose_model(views).map(str::to_owned))?;
    if s.round_model
        .as_ref()
        .is_none_or(|(r, m)| *r != round || *m != model)
    {
        actions.push(Action::PinModel {
            round,
            model: model.clone(),
        });
    }
    Some(model)
}

fn note_idle_slots(s: &Snapshot, out: &mut TickOutcome) {
    for (i, rt) in s.slots.iter().enumerate() {
        if rt.busy.is_some() {
            continue;
        }
        if rt.drained {
            out.idle_slots.push((i, SlotHold::Drained));
        } else if !rt.usable {
            out.idle_slots.push((i, SlotHold::Quarantined));
        }
    }
}

fn decided(actions: Vec<Action>, next: Next, outcome: TickOutcome) -> Plan {
    Plan::Decided(Decision {
        actions,
        next,
        outcome,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
