//! The tick's decisions, on hand-built snapshots and a stepped clock: no Docker, no store, no runtime.

use super::*;
use crate::domain::{Hotkey, Verdict};
use crate::rounds::{MinerState, SubmissionRecord};
use crate::store::MinerView;

const CALIB: char = 'e';

fn image(d: char) -> ImageRef {
    ImageRef::parse(&format!("r.example/m@sha256:{}", d.to_string().repeat(64))).unwrap()
}

fn key(i: u8) -> String {
    Hotkey::from_public_key([i; 32]).to_string()
}

/// Miner `i`'s ticket for round 1, image digest `d`.
fn ticket(i: u8, d: char) -> EvaluationTicket {
    EvaluationTicket {
        hotkey: Hotkey::from_public_key([i; 32]),
        image_ref: image(d),
        generation: 1,
        submit_time: f64::from(i),
        round: 1,
    }
}

fn slot(i: usize, model: &str) -> SlotState {
    SlotState {
        uuid: format!("GPU-{i}"),
        model: model.into(),
        drained: false,
        usable: true,
        busy: None,
    }
}

fn busy(hotkey: &str, d: char) -> Option<BusyState> {
    Some(BusyState {
        hotkey: hotkey.into(),
        digest: image(d).digest(),
    })
}

/// `n` free slots of one model, the engine open, the round's challenges ready, nothing pending.
fn snapshot(now: Instant, n: usize) -> Snapshot {
    Snapshot {
        now,
        now_unix: 1_000.0,
        paused: false,
        pending: Vec::new(),
        slots: (0..n).map(|i| slot(i, "H100")).collect(),
        tasks: 0,
        backoff: BTreeMap::new(),
        engine: EngineView::Open,
        challenges: ChallengesView::Ready,
        set_in_memory: true,
        open_round: Some(1),
        calibration: None,
        duplicates: DuplicateFacts {
            policy: DuplicatePolicy::FirstWins,
            scoring_count: 5,
            miners: Vec::new(),
        },
        same_model_per_round: false,
        round_model: None,
        prepull_ahead: 2,
    }
}

fn calibration(done: &[&str]) -> Option<CalibrationState> {
    Some(CalibrationState {
        digest: image(CALIB).digest(),
        round: 1,
        done: done.iter().map(|s| (*s).to_owned()).collect(),
    })
}

fn decide(s: &Snapshot) -> Decision {
    match plan(s) {
        Plan::Decided(d) => d,
        Plan::Need(n) => panic!("the plan asked for {n:?}"),
    }
}

/// The `(slot, miner)` of each dispatch, in order.
fn dispatches(d: &Decision) -> Vec<(usize, String)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Dispatch { slot, ticket } => Some((*slot, ticket.hotkey.to_string())),
            _ => None,
        })
        .collect()
}

fn calibrations(d: &Decision) -> Vec<usize> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Calibrate { slot, .. } => Some(*slot),
            _ => None,
        })
        .collect()
}

fn commits(d: &Decision) -> bool {
    d.actions.iter().any(|a| matches!(a, Action::Commit))
}

fn prefetched(d: &Decision) -> Vec<ImageRef> {
    d.actions
        .iter()
        .find_map(|a| match a {
            Action::Prefetch { images } => Some(images.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn a_free_slot_takes_a_pending_ticket() {
    let mut s = snapshot(Instant::now(), 1);
    s.pending = vec![ticket(1, 'a')];
    let d = decide(&s);
    assert_eq!(dispatches(&d), vec![(0, key(1))]);
    assert!(!commits(&d));
    assert_eq!(d.next, Next::Wait(IDLE_RECHECK));
    assert_eq!(d.outcome.why, Why::Placed);
    assert!(d.outcome.held.is_empty(), "{:?}", d.outcome.held);
    assert!(d.actions.contains(&Action::ReportStatus {
        round: 1,
        pending: 1,
        no_slot_in_service: false
    }));
}

#[test]
fn the_engine_and_the_challenges_are_asked_for_only_when_something_could_run() {
    let mut s = snapshot(Instant::now(), 1);
    s.engine = EngineView::Unchecked;
    s.challenges = ChallengesView::Unknown;
    // Nothing pending and no calibration: the round commits without a ping.
    assert!(commits(&decide(&s)));
    s.pending = vec![ticket(1, 'a')];
    assert!(matches!(plan(&s), Plan::Need(Need::Engine)));
    s.engine = EngineView::Open;
    assert!(matches!(plan(&s), Plan::Need(Need::Challenges)));
    s.challenges = ChallengesView::Ready;
    assert_eq!(dispatches(&decide(&s)), vec![(0, key(1))]);
}

#[test]
fn a_drained_or_quarantined_slot_takes_nothing() {
    let mut s = snapshot(Instant::now(), 2);
    s.slots[0].drained = true;
    s.slots[1].usable = false;
    s.pending = vec![ticket(1, 'a')];
    let d = decide(&s);
    assert!(dispatches(&d).is_empty());
    assert_eq!(d.outcome.held_reason(&key(1)), Some(&Hold::NoFreeSlot));
    assert_eq!(
        d.outcome.idle_slots,
        vec![(0, SlotHold::Drained), (1, SlotHold::Quarantined)]
    );
    assert!(d.actions.contains(&Action::ReportStatus {
        round: 1,
        pending: 1,
        no_slot_in_service: true
    }));
    // The other slot back in service takes it.
    s.slots[1].usable = true;
    assert_eq!(dispatches(&decide(&s)), vec![(1, key(1))]);
}

#[test]
fn a_closed_engine_gate_waits_its_backoff_and_dispatches_nothing() {
    let t0 = Instant::now();
    let mut s = snapshot(t0, 1);
    s.pending = vec![ticket(1, 'a')];
    s.engine = EngineView::Closed {
        wait: Duration::from_secs(4),
        why: GateHold::Unreachable,
    };
    let d = decide(&s);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.next, Next::Wait(Duration::from_secs(4)));
    assert_eq!(d.outcome.why, Why::EngineGate(GateHold::Unreachable));
    assert_eq!(
        d.outcome.held_reason(&key(1)),
        Some(&Hold::EngineGate(GateHold::Unreachable))
    );
    // A failed sweep holds the same way.
    s.engine = EngineView::Closed {
        wait: Duration::from_secs(8),
        why: GateHold::SweepFailed,
    };
    assert_eq!(decide(&s).next, Next::Wait(Duration::from_secs(8)));
}

#[test]
fn a_paused_loop_dispatches_nothing() {
    let mut s = snapshot(Instant::now(), 1);
    s.paused = true;
    s.pending = vec![ticket(1, 'a')];
    s.calibration = calibration(&[]);
    let d = decide(&s);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.next, Next::Wait(IDLE_RECHECK));
    assert_eq!(d.outcome.why, Why::Paused);
    assert_eq!(d.outcome.held_reason(&key(1)), Some(&Hold::Paused));
    // Not even a round commit.
    s.pending.clear();
    assert!(decide(&s).actions.is_empty());
}

#[test]
fn unavailable_challenges_wait_their_retry() {
    let mut s = snapshot(Instant::now(), 1);
    s.pending = vec![ticket(1, 'a')];
    s.challenges = ChallengesView::Unavailable {
        retry: Duration::from_secs(45),
    };
    let d = decide(&s);
    assert!(d.actions.is_empty());
    assert_eq!(d.next, Next::Wait(Duration::from_secs(45)));
    assert_eq!(d.outcome.held_reason(&key(1)), Some(&Hold::ChallengesUnavailable));
}

#[test]
fn calibration_comes_before_dispatch_on_a_slot_not_calibrated_this_round() {
    let mut s = snapshot(Instant::now(), 2);
    s.pending = vec![ticket(1, 'a'), ticket(2, 'b')];
    s.calibration = calibration(&[]);
    let d = decide(&s);
    assert_eq!(calibrations(&d), vec![0]);
    assert_eq!(dispatches(&d), vec![(1, key(1))]);
    let first = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Calibrate { .. }));
    let dispatch = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Dispatch { .. }));
    assert!(first < dispatch, "{:?}", d.actions);
    assert_eq!(d.outcome.held_reason(&key(2)), Some(&Hold::NoFreeSlot));
    // Slot 0 calibrated (stored or running): both slots take miners.
    s.calibration = calibration(&["GPU-0", "GPU-1"]);
    let d = decide(&s);
    assert!(calibrations(&d).is_empty());
    assert_eq!(dispatches(&d), vec![(0, key(1)), (1, key(2))]);
    // Calibrations stored for another round do not count for this one.
    s.calibration = Some(CalibrationState {
        round: 0,
        ..calibration(&["GPU-0", "GPU-1"]).unwrap()
    });
    assert_eq!(calibrations(&decide(&s)), vec![0]);
}

#[test]
fn a_calibration_never_runs_beside_another_run_of_its_image() {
    let mut s = snapshot(Instant::now(), 3);
    s.calibration = calibration(&["GPU-0"]);
    s.slots[0].busy = busy("calibration", CALIB);
    s.tasks = 1;
    s.pending = vec![ticket(1, 'a')];
    let d = decide(&s);
    assert!(calibrations(&d).is_empty(), "{:?}", d.actions);
    assert_eq!(dispatches(&d), vec![(1, key(1))]);
    // A miner who submitted the calibration image waits for the calibration to end.
    s.pending = vec![ticket(2, CALIB)];
    let d = decide(&s);
    assert_eq!(d.outcome.held_reason(&key(2)), Some(&Hold::SameDigest));
    assert!(dispatches(&d).is_empty());
    // And one calibration starts per tick, however many slots are due.
    s.slots[0].busy = None;
    s.tasks = 0;
    s.pending = vec![ticket(1, 'a')];
    s.calibration = calibration(&[]);
    let d = decide(&s);
    assert_eq!(calibrations(&d), vec![0]);
    assert_eq!(dispatches(&d), vec![(1, key(1))]);
}

#[test]
fn nothing_pending_and_nothing_running_commits_the_round() {
    let mut s = snapshot(Instant::now(), 2);
    let d = decide(&s);
    assert_eq!(d.actions, vec![Action::Commit]);
    assert_eq!(d.outcome.why, Why::Committing);
    // The round's last run still in flight: no commit yet.
    s.slots[0].busy = busy(&key(1), 'a');
    s.tasks = 1;
    let d = decide(&s);
    assert!(d.actions.is_empty());
    assert_eq!(
        (d.next, d.outcome.why),
        (Next::Wait(IDLE_RECHECK), Why::Finishing)
    );
}

#[test]
fn a_round_is_calibrated_before_it_commits() {
    let mut s = snapshot(Instant::now(), 2);
    s.calibration = calibration(&["GPU-0"]);
    s.engine = EngineView::Unchecked;
    // A calibration is due: the engine is asked first.
    assert!(matches!(plan(&s), Plan::Need(Need::Engine)));
    s.engine = EngineView::Closed {
        wait: Duration::from_secs(2),
        why: GateHold::Unreachable,
    };
    let d = decide(&s);
    assert!(
        d.actions.is_empty(),
        "no commit while a calibration waits for the engine"
    );
    assert_eq!(d.next, Next::Wait(Duration::from_secs(2)));
    s.engine = EngineView::Open;
    let d = decide(&s);
    // The commit only applies if the calibration did not start (its pre-run check failed).
    assert_eq!(
        d.actions,
        vec![Action::Calibrate { slot: 1, round: 1 }, Action::Commit]
    );
    // Every GPU calibrated: straight to the commit, no ping.
    s.engine = EngineView::Unchecked;
    s.calibration = calibration(&["GPU-0", "GPU-1"]);
    assert_eq!(decide(&s).actions, vec![Action::Commit]);
    // Without the round's set in memory (a restart between rounds) nothing is calibrated.
    s.calibration = calibration(&[]);
    s.set_in_memory = false;
    assert_eq!(decide(&s).actions, vec![Action::Commit]);
}

#[test]
fn the_same_model_rule_pins_the_majority_model_and_holds_the_rest() {
    let mut s = snapshot(Instant::now(), 3);
    s.slots[0].model = "A100".into();
    s.same_model_per_round = true;
    s.pending = vec![ticket(1, 'a'), ticket(2, 'b'), ticket(3, 'c')];
    let d = decide(&s);
    assert!(d.actions.contains(&Action::PinModel {
        round: 1,
        model: "H100".into()
    }));
    assert_eq!(dispatches(&d), vec![(1, key(1)), (2, key(2))]);
    assert_eq!(
        d.outcome.held_reason(&key(3)),
        Some(&Hold::OtherModel("H100".into()))
    );
    assert!(d.outcome.idle_slots.contains(&(0, SlotHold::OtherModel)));
    // Pinned already: kept (no new pin) while a slot of it is in service, even a busy one.
    s.round_model = Some((1, "H100".into()));
    s.slots[1].busy = busy(&key(1), 'a');
    s.slots[2].busy = busy(&key(2), 'b');
    s.tasks = 2;
    s.pending = vec![ticket(1, 'a'), ticket(2, 'b'), ticket(3, 'c')];
    let d = decide(&s);
    assert!(!d.actions.iter().any(|a| matches!(a, Action::PinModel { .. })));
    assert!(dispatches(&d).is_empty());
    assert_eq!(
        d.outcome.held_reason(&key(3)),
        Some(&Hold::OtherModel("H100".into()))
    );
    // Its slots all drained: the round moves to the model still in service.
    s.slots[1].drained = true;
    s.slots[2].drained = true;
    let d = decide(&s);
    assert!(d.actions.contains(&Action::PinModel {
        round: 1,
        model: "A100".into()
    }));
    assert_eq!(dispatches(&d), vec![(0, key(3))]);
}

#[test]
fn when_nothing_can_happen_the_wait_is_the_earliest_backoff() {
    let t0 = Instant::now();
    let mut s = snapshot(t0, 1);
    s.pending = vec![ticket(1, 'a')];
    s.backoff = BTreeMap::from([
        (key(1), t0 + Duration::from_secs(7)),
        // Not pending now, but it may be by then.
        (key(9), t0 + Duration::from_secs(3)),
    ]);
    s.engine = EngineView::Unchecked;
    let d = decide(&s);
    assert!(d.actions.is_empty());
    assert_eq!(d.next, Next::Wait(Duration::from_secs(3)));
    assert_eq!(d.outcome.why, Why::BackedOff);
    assert_eq!(
        d.outcome.held_reason(&key(1)),
        Some(&Hold::BackedOff(t0 + Duration::from_secs(7)))
    );
    // Clock stepped past the other's backoff: 4 s left for this one.
    s.now = t0 + Duration::from_secs(3);
    assert_eq!(decide(&s).next, Next::Wait(Duration::from_secs(4)));
    // Almost over: never a busy loop.
    s.now = t0 + Duration::from_millis(6_990);
    assert_eq!(decide(&s).next, Next::Wait(MIN_BACKOFF_WAIT));
    // Over: it runs (once the engine is asked).
    s.now = t0 + Duration::from_secs(7);
    assert!(matches!(plan(&s), Plan::Need(Need::Engine)));
    s.engine = EngineView::Open;
    assert_eq!(dispatches(&decide(&s)), vec![(0, key(1))]);
    // No backoff at all and nothing ready: the idle recheck.
    s.backoff.clear();
    s.slots[0].busy = busy(&key(1), 'a');
    s.tasks = 1;
    let d = decide(&s);
    assert_eq!(d.next, Next::Wait(IDLE_RECHECK));
    assert_eq!(d.outcome.held_reason(&key(1)), Some(&Hold::Running));
}

#[test]
fn one_run_per_digest_and_the_next_images_are_pulled_ahead() {
    let mut s = snapshot(Instant::now(), 2);
    s.prepull_ahead = 2;
    s.pending = vec![
        ticket(1, 'a'),
        ticket(2, 'a'),
        ticket(3, 'b'),
        ticket(4, 'c'),
        ticket(5, 'd'),
        ticket(6, 'd'),
    ];
    // No miner views: the duplicate rule lets every ticket run, so only the digest rule holds some.
    let d = decide(&s);
    assert_eq!(dispatches(&d), vec![(0, key(1)), (1, key(3))]);
    assert_eq!(d.outcome.held_reason(&key(2)), Some(&Hold::SameDigest));
    assert_eq!(d.outcome.held_reason(&key(6)), Some(&Hold::SameDigest));
    assert_eq!(prefetched(&d), vec![image('c'), image('d')]);
    // Nothing running after the tick (no slot): nothing is pulled ahead.
    s.slots.iter_mut().for_each(|rt| rt.drained = true);
    assert!(prefetched(&decide(&s)).is_empty());
}

#[test]
fn a_duplicate_digest_is_settled_without_a_run_and_the_tick_goes_again() {
    let view = |i: u8, d: char| MinerView {
        pending: true,
        state: MinerState {
            record: SubmissionRecord {
                hotkey: Hotkey::from_public_key([i; 32]),
                image_ref: image(d),
                submit_time: f64::from(i),
                generation: 1,
                first_seen: f64::from(i),
                updated_at: f64::from(i),
            },
            staged: None,
            committed: None,
        },
    };
    let mut s = snapshot(Instant::now(), 2);
    s.engine = EngineView::Unchecked;
    s.pending = vec![ticket(1, 'a'), ticket(2, 'a')];
    s.duplicates.miners = vec![view(1, 'a'), view(2, 'a')];
    let d = decide(&s);
    assert_eq!(d.next, Next::Again);
    assert_eq!(d.outcome.why, Why::Settled);
    let [Action::Settle { ticket, metrics }] = d.actions.as_slice() else {
        panic!("{:?}", d.actions)
    };
    assert_eq!(ticket.hotkey.to_string(), key(2));
    assert_eq!(metrics.verdict, Verdict::Duplicate);
    // `share`: the copy waits for its original's result; the original runs.
    s.duplicates.policy = DuplicatePolicy::Share;
    assert!(matches!(plan(&s), Plan::Need(Need::Engine)));
    s.engine = EngineView::Open;
    let d = decide(&s);
    assert_eq!(dispatches(&d), vec![(0, key(1))]);
    assert_eq!(
        d.outcome.held_reason(&key(2)),
        Some(&Hold::WaitingForOriginal(key(1)))
    );
}

#[test]
fn the_ticks_note_says_in_words_who_was_held_and_which_idle_gpu() {
    let now = Instant::now();
    let mut s = snapshot(now, 2);
    s.slots[1].drained = true;
    s.pending = vec![ticket(1, 'a'), ticket(2, 'b'), ticket(3, 'c')];
    s.backoff.insert(key(3), now + Duration::from_secs(90));
    let d = decide(&s);
    let note = d.outcome.note(&s.slots, now, s.now_unix);
    assert_eq!(note.summary, "runs placed");
    assert_eq!(note.at_unix, 1_000.0);
    // Miner 1 takes the one GPU in service; miner 2 waits for it, miner 3 is backed off.
    assert_eq!(dispatches(&d), vec![(0, key(1))]);
    let held: BTreeMap<String, String> = note.held.into_iter().collect();
    assert_eq!(held.get(&key(2)).map(String::as_str), Some("no free GPU"));
    assert_eq!(
        held.get(&key(3)).map(String::as_str),
        Some("backed off after an infrastructure failure (90 s left)")
    );
    assert!(!held.contains_key(&key(1)));
    assert_eq!(note.idle, vec![("GPU-1".to_owned(), "drained".to_owned())]);

    s.paused = true;
    let paused = decide(&s).outcome.note(&s.slots, now, s.now_unix);
    assert_eq!(paused.summary, "paused");
    assert!(paused.held.iter().all(|(_, why)| why == "paused"), "{paused:?}");
}
