//! Store tests on a real heed environment in a temporary directory: file layout, reopen, schema
//! migration and refusal, atomicity under injected failures, limits, history pruning, and equivalence
//! with the in-memory [`RoundBook`] over random operation sequences.

use super::render_metrics_body;
use super::*;
use crate::domain::Verdict;
use crate::rounds::testkit::{
    HOTKEYS, LIMIT, Op, SCORES, TIMES, hotkey, image, metrics, op, policy, rank, sub, topk, verdict,
};
use crate::rounds::{CommittedResult, RoundBook, SubmissionRecord};
use heed::types::{Bytes, SerdeJson, Str};
use proptest::prelude::*;
use std::path::PathBuf;
use tempfile::TempDir;

fn opts() -> StoreOptions {
    StoreOptions {
        map_size_bytes: 16 << 20,
        history_per_miner: 3,
        max_submissions: 4,
    }
}

fn fresh() -> (TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = Store::open(&path, opts()).unwrap();
    (dir, path, store)
}

/// Everything observable, for before/after comparisons.
#[derive(Debug, PartialEq)]
struct Observed {
    view: MetricsView,
    round: RoundState,
    pending: Vec<EvaluationTicket>,
    counts: SubmissionCounts,
    runs: Vec<Vec<RunRecord>>,
}

fn observe(store: &Store) -> Observed {
    Observed {
        view: store.metrics_view().unwrap(),
        round: store.round_state().unwrap(),
        pending: store.pending().unwrap(),
        counts: store.counts().unwrap(),
        runs: (0..HOTKEYS)
            .map(|i| store.runs_for(&hotkey(i), 100).unwrap())
            .collect(),
    }
}

fn stage_all(store: &Store, score: f64) {
    for t in store.pending().unwrap() {
        let out = store.stage_result(&t, metrics(&t, Verdict::Ok, score)).unwrap();
        assert_eq!(out, StageOutcome::Staged);
    }
}

fn run(h: u8, n: u64) -> RunRecord {
    RunRecord {
        run_id: format!("run-{h}-{n}"),
        hotkey: hotkey(h),
        image_ref: image(0).to_string(),
        generation: 1,
        round: 1,
        verdict: Verdict::Ok,
        reason: None,
        stage_times: BTreeMap::from([("pull".to_owned(), 1.5)]),
        metrics: None,
        started_at: n as f64,
        finished_at: n as f64 + 1.0,
        log_tail: Some(format!("log of run {n}")),
        notes: if n == 1 {
            vec!["a note survives the round trip".to_owned()]
        } else {
            Vec::new()
        },
        image_source: (n == 1).then(|| "pre_pulled".to_owned()),
    }
}

#[test]
fn run_and_image_records_of_older_versions_still_read() {
    let mut value = serde_json::to_value(run(1, 1)).unwrap();
    assert_eq!(value["image_source"], "pre_pulled");
    let object = value.as_object_mut().unwrap();
    object.remove("image_source");
    object.remove("notes");
    let old: RunRecord = serde_json::from_value(value).unwrap();
    assert_eq!((old.image_source, old.notes), (None, Vec::<String>::new()));
    let image: super::PulledImageRecord =
        serde_json::from_str(r#"{"image_id":"sha256:ab","size_bytes":7,"pulled_at":1.0,"last_used":2.0}"#)
            .unwrap();
    assert!(!image.pulled_ahead);
}

/// A populated store: two committed miners, one carried-over, a challenge set, runs.
fn populate(store: &Store) {
    store
        .upsert_submissions(&[sub(0, 0, 1.0), sub(1, 1, 2.0), sub(2, 2, 3.0)], 100.0)
        .unwrap();
    stage_all(store, 0.5);
    store
        .commit_round_if_complete(&topk(1, 3), &rank)
        .unwrap()
        .unwrap();
    store.set_challenge_set("set-2").unwrap();
    for n in 0..4 {
        store.record_run(&run(0, n)).unwrap();
    }
    store.record_run(&run(1, 9)).unwrap();
}

#[test]
fn store_is_send_sync_and_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Store>();
}

#[test]
fn data_file_is_exactly_the_given_path() {
    let (dir, path, store) = fresh();
    assert!(path.is_file(), "NOSUBDIR: the data file is the path itself");
    assert!(dir.path().join("state.db-lock").is_file());
    assert!(store.file_size_bytes() > 0);
    assert_eq!(store.path(), path.canonicalize().unwrap());
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["state.db", "state.db-lock"]);
}

#[test]
fn reopen_keeps_everything() {
    let (_dir, path, store) = fresh();
    populate(&store);
    let before = observe(&store);
    assert_eq!(before.round.number, 2);
    assert_eq!(before.round.challenge_set_hash.as_deref(), Some("set-2"));
    assert_eq!(before.view.rows.len(), 3);
    assert_eq!(before.view.rows.iter().filter(|r| r.carried_over).count(), 2);
    assert!(before.round.last_commit_at.is_some());
    store.close().unwrap();
    let store = Store::open(&path, opts()).unwrap();
    assert_eq!(observe(&store), before);
    // Counters continue where they were: a new image gets a fresh generation.
    let max_gen = before.pending.iter().map(|t| t.generation).max().unwrap();
    store.upsert_submissions(&[sub(3, 0, 4.0)], 200.0).unwrap();
    let t = store
        .pending()
        .unwrap()
        .into_iter()
        .find(|t| t.hotkey == hotkey(3))
        .unwrap();
    assert!(t.generation > max_gen);
}

#[test]
fn the_instance_id_is_random_per_file_and_survives_reopen() {
    let (_dir, path, store) = fresh();
    let id = store.instance_id().to_owned();
    assert_eq!(id.len(), 32);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{id}"
    );
    store.close().unwrap();
    let reopened = Store::open(&path, opts()).unwrap();
    assert_eq!(reopened.instance_id(), id);
    let (_other_dir, _other_path, other) = fresh();
    assert_ne!(other.instance_id(), id, "two stores share an instance id");
}

#[test]
fn missing_directory_and_directory_paths_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").join("state.db");
    let e = Store::open(&missing, opts()).unwrap_err();
    assert_eq!(e.reason(), "store_parent_missing");
    assert!(e.to_string().contains(&missing.display().to_string()), "{e}");
    assert!(!dir.path().join("nope").exists(), "the directory is not created");

    let e = Store::open(dir.path(), opts()).unwrap_err();
    assert_eq!(e.reason(), "store_path_is_directory");
}

#[test]
fn permission_errors_name_the_path() {
    let given = Path::new("/var/lib/talkheadd/state.db");
    let e = open_error(
        given,
        given,
        heed::Error::Io(io::Error::from(io::ErrorKind::PermissionDenied)),
    );
    assert_eq!(e.reason(), "store_not_writable");
    assert!(e.to_string().contains("/var/lib/talkheadd/state.db"), "{e}");
}

#[test]
fn a_sqlite_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.resize(16384, 7);
    std::fs::write(&path, &bytes).unwrap();
    let e = Store::open(&path, opts()).unwrap_err();
    assert_eq!(e.reason(), "store_not_state_file", "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    // The refusal released the path.
    assert_eq!(
        Store::open(&path, opts()).unwrap_err().reason(),
        "store_not_state_file"
    );
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    for bad in [
        StoreOptions {
            history_per_miner: 0,
            ..opts()
        },
        StoreOptions {
            max_submissions: 0,
            ..opts()
        },
        StoreOptions {
            map_size_bytes: 4096,
            ..opts()
        },
    ] {
        assert_eq!(
            Store::open(&path, bad).unwrap_err().reason(),
            "store_invalid_options"
        );
    }
    // An odd map size is rounded up, not refused.
    Store::open(
        &path,
        StoreOptions {
            map_size_bytes: (16 << 20) + 1,
            ..opts()
        },
    )
    .unwrap();
}

#[test]
fn second_open_in_the_same_process_is_refused() {
    let (dir, path, store) = fresh();
    let e = Store::open(&path, opts()).unwrap_err();
    assert_eq!(e.reason(), "store_already_open");
    assert!(e.to_string().contains("already open"), "{e}");
    // Another spelling of the same file is the same file.
    let dotted = dir.path().join(".").join("state.db");
    assert_eq!(
        Store::open(&dotted, opts()).unwrap_err().reason(),
        "store_already_open"
    );
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert_eq!(
        Store::open(&link, opts()).unwrap_err().reason(),
        "store_already_open"
    );
    // Clones share the one environment; close waits for the last one.
    let clone = store.clone();
    assert_eq!(store.close().unwrap_err().reason(), "store_in_use");
    clone.close().unwrap();
    let reopened = Store::open(&path, opts()).unwrap();
    drop(reopened);
    Store::open(&path, opts()).unwrap();
}

#[test]
fn migrates_a_hand_made_v0_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::File::create(&path).unwrap();
    let canonical = path.canonicalize().unwrap();
    let record = |h: u8, img: u8, generation: u64| SubmissionRecord {
        hotkey: hotkey(h),
        image_ref: image(img),
        submit_time: f64::from(h),
        generation,
        first_seen: 1.0,
        updated_at: 1.0,
    };
    {
        // v0: meta with only metrics_version; submissions and committed; no runs table.
        let env = open_env(&canonical, 16 << 20).unwrap();
        let mut wtxn = env.write_txn().unwrap();
        let meta: heed::Database<Str, Bytes> = env.create_database(&mut wtxn, Some("meta")).unwrap();
        meta.put(&mut wtxn, "metrics_version", &7u64.to_be_bytes())
            .unwrap();
        let subs: heed::Database<Str, SerdeJson<SubmissionRecord>> =
            env.create_database(&mut wtxn, Some("submissions")).unwrap();
        subs.put(&mut wtxn, hotkey(0).as_str(), &record(0, 0, 3)).unwrap();
        subs.put(&mut wtxn, hotkey(1).as_str(), &record(1, 1, 5)).unwrap();
        let committed: heed::Database<Str, SerdeJson<CommittedResult>> =
            env.create_database(&mut wtxn, Some("committed")).unwrap();
        let ticket = EvaluationTicket {
            hotkey: hotkey(0),
            image_ref: image(0),
            generation: 3,
            submit_time: 0.0,
            round: 1,
        };
        committed
            .put(
                &mut wtxn,
                hotkey(0).as_str(),
                &CommittedResult {
                    generation: 3,
                    evaluated_round: 1,
                    carried: false,
                    metrics: metrics(&ticket, Verdict::Ok, 0.8),
                },
            )
            .unwrap();
        wtxn.commit().unwrap();
        env.prepare_for_closing().wait();
    }
    let store = Store::open(&path, opts()).unwrap();
    let state = store.round_state().unwrap();
    assert_eq!((state.number, state.metrics_version), (1, 7));
    assert_eq!(state.challenge_set_hash, None);
    let view = store.metrics_view().unwrap();
    assert_eq!(view.rows.len(), 1);
    assert_eq!(view.rows[0].metrics.final_score, 0.8);
    // The generation counter starts above every stored generation.
    store.upsert_submissions(&[sub(2, 2, 9.0)], 10.0).unwrap();
    let new = store.pending().unwrap();
    assert_eq!(new.iter().find(|t| t.hotkey == hotkey(2)).unwrap().generation, 6);
    store.record_run(&run(0, 1)).unwrap();
    assert_eq!(store.runs_for(&hotkey(0), 10).unwrap().len(), 1);
    store.close().unwrap();
    let env = open_env(&canonical, 16 << 20).unwrap();
    let rtxn = env.read_txn().unwrap();
    let meta: heed::Database<Str, Bytes> = env.open_database(&rtxn, Some("meta")).unwrap().unwrap();
    assert_eq!(
        meta.get(&rtxn, "schema_version").unwrap(),
        Some(&SCHEMA_VERSION.to_be_bytes()[..])
    );
}

#[test]
fn a_newer_schema_is_refused_and_left_untouched() {
    let (_dir, path, store) = fresh();
    populate(&store);
    store.close().unwrap();
    {
        let env = open_env(&path.canonicalize().unwrap(), 16 << 20).unwrap();
        let mut wtxn = env.write_txn().unwrap();
        let meta: heed::Database<Str, Bytes> = env.open_database(&wtxn, Some("meta")).unwrap().unwrap();
        meta.put(&mut wtxn, "schema_version", &99u64.to_be_bytes())
            .unwrap();
        wtxn.commit().unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let e = Store::open(&path, opts()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("upgrade talkheadd"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_foreign_lmdb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.mdb");
    std::fs::File::create(&path).unwrap();
    {
        let env = open_env(&path.canonicalize().unwrap(), 16 << 20).unwrap();
        let mut wtxn = env.write_txn().unwrap();
        let _: heed::Database<Str, Str> = env.create_database(&mut wtxn, Some("x")).unwrap();
        wtxn.commit().unwrap();
    }
    assert_eq!(
        Store::open(&path, opts()).unwrap_err().reason(),
        "store_not_state_file"
    );
}

#[test]
fn a_batch_over_the_limit_writes_nothing() {
    let (_dir, path, store) = fresh();
    store
        .upsert_submissions(&[sub(0, 0, 1.0), sub(1, 0, 1.0), sub(2, 0, 1.0)], 1.0)
        .unwrap();
    let before = observe(&store);
    let bytes = std::fs::read(&path).unwrap();
    // Changes to known miners plus two new ones: 5 > 4, refused whole.
    let e = store
        .upsert_submissions(&[sub(0, 1, 5.0), sub(3, 0, 1.0), sub(4, 0, 1.0)], 2.0)
        .unwrap_err();
    assert!(matches!(e, StoreError::SubmissionLimit { limit: 4 }), "{e:?}");
    assert_eq!(e.reason(), "submission_limit");
    assert_eq!(observe(&store), before);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "not a single page written");
    // Duplicates of one new hotkey count once.
    store
        .upsert_submissions(&[sub(3, 0, 1.0), sub(3, 1, 1.0)], 3.0)
        .unwrap();
}

#[test]
fn history_keeps_exactly_the_newest_n_per_miner() {
    let (_dir, _path, store) = fresh();
    for n in 0..10 {
        store.record_run(&run(0, n)).unwrap();
        if n % 3 == 0 {
            store.record_run(&run(1, n)).unwrap();
        }
    }
    let ids = |h| -> Vec<String> {
        store
            .runs_for(&hotkey(h), 100)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    };
    assert_eq!(ids(0), ["run-0-9", "run-0-8", "run-0-7"]);
    assert_eq!(ids(1), ["run-1-9", "run-1-6", "run-1-3"]);
    assert_eq!(store.runs_for(&hotkey(0), 1).unwrap()[0].run_id, "run-0-9");
    assert!(store.runs_for(&hotkey(2), 10).unwrap().is_empty());
    // Exactly 3 + 3 keys remain in the table.
    let rtxn = store.rtxn().unwrap();
    assert_eq!(store.t().runs.len(&rtxn).unwrap(), 6);
}

#[test]
fn a_b_a_result_is_discarded() {
    let (_dir, _path, store) = fresh();
    store.upsert_submissions(&[sub(0, 0, 1.0)], 1.0).unwrap();
    let ticket = store.pending().unwrap().remove(0);
    store.upsert_submissions(&[sub(0, 1, 1.0)], 2.0).unwrap();
    store.upsert_submissions(&[sub(0, 0, 1.0)], 3.0).unwrap();
    let out = store
        .stage_result(&ticket, metrics(&ticket, Verdict::Ok, 0.9))
        .unwrap();
    assert!(
        matches!(
            out,
            StageOutcome::Discarded {
                reason: DiscardReason::StaleGeneration { .. }
            }
        ),
        "{out:?}"
    );
    assert_eq!(store.counts().unwrap().staged, 0);
    let fresh_ticket = store.pending().unwrap().remove(0);
    assert_ne!(fresh_ticket.generation, ticket.generation);
}

#[test]
fn removed_miners_leave_with_their_results_and_history() {
    let (_dir, _path, store) = fresh();
    populate(&store);
    let v = store.metrics_version().unwrap();
    let ticket = store.pending().unwrap().remove(0);
    assert_eq!(ticket.hotkey, hotkey(0));
    let r = store.remove_submissions(&[hotkey(0), hotkey(4)]).unwrap();
    assert_eq!(
        r,
        RemoveReport {
            removed: 1,
            metrics_version: v + 1
        }
    );
    assert!(store.runs_for(&hotkey(0), 10).unwrap().is_empty());
    assert_eq!(store.runs_for(&hotkey(1), 10).unwrap().len(), 1);
    assert!(
        store
            .metrics_view()
            .unwrap()
            .rows
            .iter()
            .all(|r| r.hotkey != hotkey(0))
    );
    let out = store
        .stage_result(&ticket, metrics(&ticket, Verdict::Ok, 0.9))
        .unwrap();
    assert_eq!(
        out,
        StageOutcome::Discarded {
            reason: DiscardReason::MinerGone
        }
    );
    // Re-added with the same image: a new generation, the old ticket stays stale.
    store.upsert_submissions(&[sub(0, 0, 1.0)], 500.0).unwrap();
    let out = store
        .stage_result(&ticket, metrics(&ticket, Verdict::Ok, 0.9))
        .unwrap();
    assert!(matches!(
        out,
        StageOutcome::Discarded {
            reason: DiscardReason::StaleGeneration { .. }
        }
    ));
    assert_eq!(store.remove_submissions(&[hotkey(4)]).unwrap().removed, 0);
}

#[test]
fn infra_errors_and_foreign_challenge_sets_are_refused() {
    let (_dir, _path, store) = fresh();
    store.upsert_submissions(&[sub(0, 0, 1.0)], 1.0).unwrap();
    let t = store.pending().unwrap().remove(0);
    let e = store
        .stage_result(&t, metrics(&t, Verdict::InfraError, 0.0))
        .unwrap_err();
    assert_eq!(e.reason(), "result_not_committable");
    assert!(e.to_string().contains(hotkey(0).as_str()), "{e}");
    assert_eq!(store.pending().unwrap().len(), 1);

    store.set_challenge_set("a").unwrap();
    store.set_challenge_set("a").unwrap();
    assert_eq!(
        store.set_challenge_set("b").unwrap_err().reason(),
        "challenge_set_mismatch"
    );
    stage_all(&store, 0.4);
    let c = store
        .commit_round_if_complete(&ReevaluatePolicy::All, &rank)
        .unwrap()
        .unwrap();
    assert_eq!((c.round, c.committed), (1, 1));
    assert_eq!(store.round_state().unwrap().challenge_set_hash, None);
    store.set_challenge_set("b").unwrap();
}

#[test]
fn an_aborted_commit_leaves_the_previous_state_intact() {
    for point in [
        "commit.after_clear_staged",
        "commit.after_put",
        "commit.before_counters",
    ] {
        let (_dir, path, store) = fresh();
        populate(&store);
        stage_all(&store, 0.7);
        let before = observe(&store);
        assert_eq!(before.counts.staged, 1);
        store.set_failpoint(Some(Box::new(move |p| {
            if p == point {
                Err(StoreError::Injected { point: p })
            } else {
                Ok(())
            }
        })));
        let e = store.commit_round_if_complete(&topk(1, 3), &rank).unwrap_err();
        assert!(matches!(e, StoreError::Injected { .. }), "{e:?}");
        assert_eq!(observe(&store), before, "{point}");
        store.close().unwrap();
        let store = Store::open(&path, opts()).unwrap();
        assert_eq!(observe(&store), before, "{point} after reopen");
        let c = store
            .commit_round_if_complete(&topk(1, 3), &rank)
            .unwrap()
            .unwrap();
        assert_eq!(c.round, 2);
    }
}

#[test]
fn an_aborted_upsert_leaves_the_previous_state_intact() {
    let (_dir, path, store) = fresh();
    populate(&store);
    let before = observe(&store);
    store.set_failpoint(Some(Box::new(|p| Err(StoreError::Injected { point: p }))));
    store
        .upsert_submissions(&[sub(0, 2, 1.0), sub(1, 1, 9.0), sub(3, 0, 1.0)], 300.0)
        .unwrap_err();
    store.close().unwrap();
    let store = Store::open(&path, opts()).unwrap();
    assert_eq!(observe(&store), before);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    /// The store applies exactly the decisions of the in-memory book (same plans, real LMDB).
    #[test]
    fn store_matches_the_round_book(
        policy in policy(),
        ops in prop::collection::vec(op(), 1..40),
        reopen_at in 0usize..40,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let o = StoreOptions { max_submissions: LIMIT, ..opts() };
        let mut store = Store::open(&path, o).unwrap();
        let mut book = RoundBook::new(LIMIT);
        let mut held: Vec<EvaluationTicket> = Vec::new();
        let mut now = 0.0;
        for (step, op) in ops.into_iter().enumerate() {
            now += 1.0;
            if step == reopen_at {
                store.close().unwrap();
                store = Store::open(&path, o).unwrap();
            }
            match op {
                Op::Upsert(batch) => {
                    let subs: Vec<_> = batch.iter().map(|&(h, i, t)| sub(h, i, TIMES[t as usize])).collect();
                    match (store.upsert_submissions(&subs, now), book.upsert(&subs, now)) {
                        (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                        (Err(StoreError::SubmissionLimit { .. }), Err(_)) => {}
                        (a, b) => return Err(TestCaseError::fail(format!("store {a:?} vs book {b:?}"))),
                    }
                }
                Op::Take(i) => {
                    let p = store.pending().unwrap();
                    if !p.is_empty() {
                        held.push(p[i % p.len()].clone());
                        if held.len() > 8 {
                            held.remove(0);
                        }
                    }
                }
                Op::Stage { ticket, verdict: v, score } => {
                    if !held.is_empty() {
                        let t = held[ticket % held.len()].clone();
                        let m = metrics(&t, verdict(v), SCORES[score]);
                        match (store.stage_result(&t, m.clone()), book.stage(&t, m)) {
                            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                            (Err(a), Err(b)) => prop_assert_eq!(a.reason(), b.reason()),
                            (a, b) => return Err(TestCaseError::fail(format!("store {a:?} vs book {b:?}"))),
                        }
                    }
                }
                Op::Commit => {
                    let a = store.commit_round_if_complete(&policy, &rank).unwrap();
                    let b = book.commit_if_complete(&policy, &rank, now);
                    prop_assert_eq!(a, b);
                }
                Op::Remove(h) => {
                    let r = store.remove_submissions(&[hotkey(h), hotkey(h)]).unwrap();
                    prop_assert_eq!(r.removed, book.remove(&[hotkey(h)]));
                    prop_assert_eq!(r.metrics_version, book.counters().metrics_version);
                }
                Op::SetChallenge(h) => {
                    let hash = format!("set{h}");
                    let a = store.set_challenge_set(&hash).map_err(|e| e.reason());
                    let b = book.set_challenge_set(&hash).map_err(|e| e.reason());
                    prop_assert_eq!(a, b);
                }
            }
            let view = store.metrics_view().unwrap();
            prop_assert_eq!(view.metrics_version, book.counters().metrics_version);
            // The /metrics body served from the stored JSON is byte-for-byte the decoded rows' body.
            let (json_version, served) = store
                .with_metrics_json(|v, rows| (v, render_metrics_body(rows).unwrap()))
                .unwrap();
            prop_assert_eq!(json_version, view.metrics_version);
            prop_assert_eq!(served, render_metrics_body(&view.rows).unwrap());
            prop_assert_eq!(view.rows, book.metrics_rows());
            prop_assert_eq!(store.pending().unwrap(), book.pending());
            let state = store.round_state().unwrap();
            prop_assert_eq!(state.number, book.counters().round);
            prop_assert_eq!(state.challenge_set_hash.as_ref(), book.counters().challenge_set_hash.as_ref());
            prop_assert_eq!(store.metrics_version().unwrap(), state.metrics_version);
            let counts = store.counts().unwrap();
            prop_assert_eq!(counts.submissions as usize, book.miners().count());
            prop_assert_eq!(counts.pending as usize, book.pending().len());
            prop_assert_eq!(counts.staged as usize, book.miners().filter(|m| m.staged.is_some()).count());
            prop_assert_eq!(counts.committed as usize, book.miners().filter(|m| m.committed.is_some()).count());
        }
    }
}

/// What an async caller of [`Store::blocking`] sees: the call's own error, or the hand-over's.
#[derive(Debug)]
enum CallerError {
    Store(StoreError),
    Worker(WorkerFailed),
}

impl From<WorkerFailed> for CallerError {
    fn from(e: WorkerFailed) -> Self {
        CallerError::Worker(e)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_runs_the_call_off_the_executor_and_returns_its_result() {
    let (_dir, _path, store) = fresh();
    let executor = std::thread::current().id();
    let (version, thread) = store
        .blocking(|s| {
            s.metrics_version()
                .map(|v| (v, std::thread::current().id()))
                .map_err(CallerError::Store)
        })
        .await
        .unwrap();
    assert_eq!(version, store.metrics_version().unwrap());
    assert_ne!(thread, executor, "the store call ran on the executor thread");
    // A write made by the call is seen through this handle: the call got a clone of the same store.
    store
        .blocking(|s| {
            s.upsert_submissions(&[sub(0, 0, 1.0)], 100.0)
                .map_err(CallerError::Store)
        })
        .await
        .unwrap();
    assert_eq!(store.counts().unwrap().submissions, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_passes_the_call_s_error_through_and_reports_a_panic_as_worker_failed() {
    let (_dir, _path, store) = fresh();
    let refused = store
        .blocking(|_| -> Result<(), _> {
            Err(CallerError::Store(StoreError::InvalidOptions {
                reason: "refused",
            }))
        })
        .await;
    assert!(
        matches!(
            refused,
            Err(CallerError::Store(StoreError::InvalidOptions {
                reason: "refused"
            }))
        ),
        "{refused:?}"
    );
    let panicked = store
        .blocking(|_| -> Result<(), CallerError> { panic!("store call panicked") })
        .await;
    match panicked {
        Err(CallerError::Worker(WorkerFailed(message))) => assert!(message.contains("panic"), "{message}"),
        other => panic!("expected WorkerFailed, got {other:?}"),
    }
    // The store is still usable after a call panicked.
    assert!(
        store
            .blocking(|s| s.metrics_version().map_err(CallerError::Store))
            .await
            .is_ok()
    );
}

/// `store.map_size_mb` bounds what the state file can hold. Read through the configuration loader and
/// opened the way the daemon opens it (daemon.rs builds [`StoreOptions`] from these three fields):
/// the smallest map the configuration accepts (16 MiB) fills up under 24 MiB of run history and
/// refuses the write that does not fit with [`StoreError::Full`], naming the key to raise, and keeps
/// what it had; a 64 MiB map takes the same writes.
#[test]
fn the_configured_map_size_bounds_what_the_state_file_holds() {
    const RUNS: u64 = 96;
    const LOG_BYTES: usize = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    // What `store.map_size_mb = mb` opens the store with (config::tests checks the mapping).
    let open = |mb: usize| -> Store {
        Store::open(
            &dir.path().join(format!("state-{mb}.db")),
            StoreOptions {
                map_size_bytes: mb << 20,
                history_per_miner: 1000,
                max_submissions: 100,
            },
        )
        .unwrap()
    };
    // 256 KiB of log per run, different for each so a run read back is the one written.
    let big_run = |n: u64| RunRecord {
        log_tail: Some(format!("{n:08}").repeat(LOG_BYTES / 8)),
        ..run(0, n)
    };

    let small = open(16);
    let mut written = 0;
    let full = loop {
        match small.record_run(&big_run(written)) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(
            written < RUNS,
            "{RUNS} runs of {LOG_BYTES} bytes fit in a 16 MiB map"
        );
    };
    assert!(written > 0, "not even one run fit: {full}");
    assert_eq!(full.reason(), "store_full", "{full}");
    let StoreError::Full { map_size, .. } = &full else {
        panic!("expected Full, got {full:?}")
    };
    assert_eq!(*map_size, 16 << 20);
    assert!(full.to_string().contains("raise store.map_size_mb"), "{full}");
    // The refused write left nothing behind and the earlier ones are intact.
    let kept = small.runs_for(&hotkey(0), 1000).unwrap();
    assert_eq!(kept.len() as u64, written);
    assert_eq!(kept[0], big_run(written - 1));

    let large = open(64);
    for n in 0..RUNS {
        large.record_run(&big_run(n)).unwrap();
    }
    assert_eq!(large.runs_for(&hotkey(0), 1000).unwrap().len() as u64, RUNS);
}
