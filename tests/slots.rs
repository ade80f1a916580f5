//! Several virtual GPU slots evaluating in parallel against the real Docker engine: the runs of a
//! round overlap (proved from the recorded start and finish times, not by sleeping), each container
//! sees only its own slot's assignment (`TALKHEAD_GPU_SLOT`, no GPU device), every run records the
//! slot it used, and a drained slot takes no run. With `gpu.virtual_cuda_version`, an image whose
//! `NVIDIA_REQUIRE_CUDA` the slot cannot meet is refused before its container exists; with
//! `gpu.calibration_image`, each slot evaluates the reference image once per round, on its own, and
//! the time is stored with the round.
//!
//! Needs dockerd, the registry on 127.0.0.1:5000, ffmpeg and opencv-data (`tests/setup.sh`). No GPU:
//! these names must not contain the GPU-test prefix the test command skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/images.rs"]
mod images;

use common::*;
use images::Behaviour;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use talkheadd::domain::Hotkey;
use talkheadd::store::{RunRecord, Store, StoreOptions};

/// The tests share the host's Docker engine: one at a time.
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

const ROUND_LIMIT: Duration = Duration::from_secs(900);

fn config(dir: &Path, slots: u32) -> String {
    config_with(dir, slots, "")
}

/// [`config`] with more `[gpu]` keys.
fn config_with(dir: &Path, slots: u32, gpu: &str) -> String {
    format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\nchallenges_dir = \"{}\"\nwarmup_count = 1\nscoring_count = 2\nready_timeout_secs = 60\nchallenge_timeout_secs = 20\n\
         pull_timeout_secs = 120\nwork_dir = \"{}\"\n\
         [docker]\npull_attempts = 2\n[gpu]\nvirtual = {slots}\n{gpu}\
         [container]\ncpus = 1.0\nmemory_bytes = 536870912\nshm_bytes = 67108864\ntmp_bytes = 67108864\n\
         var_tmp_bytes = 16777216\noutput_bytes = 67108864\n",
        fixtures().display(),
        dir.join("jobs").display()
    )
}

/// `n` distinct images (distinct digests, so no duplicate verdicts) that report their environment
/// and take `delay_ms` per challenge.
fn images(n: usize, delay_ms: u32) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut refs = Vec::new();
        for i in 0..n {
            let delay = (delay_ms + i as u32).to_string();
            let pushed =
                images::build_and_push_miner_with(Behaviour::GpuEnv, &[("delay_ms", &delay)], &fixtures())
                    .await
                    .unwrap();
            refs.push(pushed.reference);
        }
        refs
    })
}

fn opts() -> StoreOptions {
    StoreOptions {
        map_size_bytes: 64 << 20,
        history_per_miner: 20,
        max_submissions: 100,
    }
}

/// The runs of round 1 (round 2 starts at once, re-evaluating everyone, and is cut short by the stop).
fn runs(state: &Path, hotkeys: &[String]) -> Vec<RunRecord> {
    let store = Store::open(state, opts()).unwrap();
    let mut out = Vec::new();
    for h in hotkeys {
        out.extend(
            store
                .runs_for(&Hotkey::parse(h).unwrap(), 20)
                .unwrap()
                .into_iter()
                .filter(|r| r.round == 1),
        );
    }
    store.close().unwrap();
    out
}

fn submit_all(d: &Daemon, signers: &[Signer], refs: &[String]) {
    let rows = numbered_submissions(signers, refs);
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&rows)));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn slot_of(run: &RunRecord) -> String {
    run.metrics
        .as_ref()
        .and_then(|m| m.gpu.as_ref())
        .map(|g| g.uuid.clone())
        .unwrap_or_default()
}

#[test]
fn virtual_slots_run_a_round_concurrently_and_each_container_sees_only_its_slot() {
    let _engine = ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let refs = images(4, 400);
    let setup = Setup::new("");
    let setup = Setup {
        extra: config(setup.dir.path(), 4),
        ..setup
    };
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..4).map(|i| Signer::from_seed(150 + i)).collect();
    submit_all(&d, &signers, &refs);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let state = d.state.clone();
    assert!(d.stop().success());

    let hotkeys: Vec<String> = signers.iter().map(|s| s.hotkey.clone()).collect();
    let runs = runs(&state, &hotkeys);
    let summary: Vec<_> = runs
        .iter()
        .map(|r| {
            (
                r.hotkey.to_string(),
                r.verdict.to_string(),
                r.reason.clone(),
                r.started_at,
                r.finished_at,
            )
        })
        .collect();
    assert_eq!(runs.len(), 4, "one run per miner: {summary:#?}");
    let slots: BTreeSet<String> = runs.iter().map(slot_of).collect();
    assert_eq!(
        slots,
        (0..4).map(|i| format!("virtual-{i}")).collect::<BTreeSet<_>>(),
        "each miner on its own slot"
    );
    for run in &runs {
        assert_eq!(run.verdict.to_string(), "ok", "{run:#?}");
        let slot = slot_of(run);
        let tail = run.log_tail.clone().unwrap_or_default();
        assert!(
            tail.contains(&format!("env TALKHEAD_GPU_SLOT={slot}")),
            "{slot}: {tail}"
        );
        assert!(tail.contains("env NVIDIA_VISIBLE_DEVICES=void"), "{tail}");
        for other in slots.iter().filter(|s| **s != slot) {
            assert!(!tail.contains(&format!("={other}")), "{slot} saw {other}: {tail}");
        }
        let m = run.metrics.as_ref().unwrap();
        let vram = m.measurement.as_ref().map(|p| p.vram);
        assert_eq!(
            vram,
            Some(talkheadd::domain::metrics::MeasurementSource::Unavailable)
        );
        assert!(m.efficiency.vram_missing, "virtual slots flag VRAM as missing");
    }
    // All four were in flight at once: the last start precedes the first finish.
    let last_start = runs.iter().map(|r| r.started_at).fold(f64::MIN, f64::max);
    let first_finish = runs.iter().map(|r| r.finished_at).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_finish,
        "runs did not overlap: last start {last_start}, first finish {first_finish}: {:?}",
        runs.iter()
            .map(|r| (r.started_at, r.finished_at))
            .collect::<Vec<_>>()
    );
}

#[test]
fn virtual_slots_a_drained_slot_takes_no_run() {
    let _engine = ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let refs = images(2, 100);
    let setup = Setup::new("");
    let setup = Setup {
        extra: config(setup.dir.path(), 2),
        ..setup
    };
    // Drain virtual-1 before the daemon starts: the drain is persisted in the store.
    let state = setup.dir.path().join("state.db");
    let store = Store::open(&state, opts()).unwrap();
    assert!(store.set_gpu_drained("virtual-1", true).unwrap());
    store.close().unwrap();

    let mut d = Daemon::start(&setup);
    assert_eq!(d.state, state, "the harness's state path");
    let signers: Vec<Signer> = (0..2).map(|i| Signer::from_seed(160 + i)).collect();
    submit_all(&d, &signers, &refs);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    assert!(d.stop().success());
    let hotkeys: Vec<String> = signers.iter().map(|s| s.hotkey.clone()).collect();
    let runs = runs(&state, &hotkeys);
    let summary: Vec<_> = runs
        .iter()
        .map(|r| {
            (
                slot_of(r),
                r.verdict.to_string(),
                r.reason.clone(),
                r.started_at,
                r.finished_at,
            )
        })
        .collect();
    assert_eq!(runs.len(), 2, "{summary:#?}");
    for run in &runs {
        assert_eq!(slot_of(run), "virtual-0", "{run:#?}");
    }
    let (a, b) = (&runs[0], &runs[1]);
    assert!(
        a.finished_at <= b.started_at || b.finished_at <= a.started_at,
        "one slot in service: runs must not overlap"
    );
}

/// Image options declaring a CUDA requirement.
fn requiring(requirement: &str, delay_ms: u32) -> Vec<(String, String)> {
    vec![
        ("env.NVIDIA_REQUIRE_CUDA".to_owned(), requirement.to_owned()),
        ("delay_ms".to_owned(), delay_ms.to_string()),
    ]
}

fn image_with(behaviour: Behaviour, options: &[(String, String)]) -> String {
    let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(images::build_and_push_miner_with(
            behaviour,
            &options,
            &fixtures(),
        ))
        .unwrap()
        .reference
}

/// Round 1 of one miner per image (hotkeys from `seed`) on `slots` virtual slots with more `[gpu]`
/// keys; the set-up (holding the state directory), the state file and the hotkeys once it committed
/// and the daemon stopped.
fn round_one(slots: u32, gpu: &str, seed: u8, refs: &[String]) -> (Setup, std::path::PathBuf, Vec<String>) {
    let setup = Setup::new("");
    let setup = Setup {
        extra: config_with(setup.dir.path(), slots, gpu),
        ..setup
    };
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..refs.len())
        .map(|i| Signer::from_seed(seed + i as u8))
        .collect();
    submit_all(&d, &signers, refs);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let state = d.state.clone();
    assert!(d.stop().success());
    (setup, state, signers.iter().map(|s| s.hotkey.clone()).collect())
}

fn calibrations(state: &Path, round: u64) -> Vec<talkheadd::store::CalibrationRecord> {
    let store = Store::open(state, opts()).unwrap();
    let out = store.calibrations(Some(round)).unwrap();
    store.close().unwrap();
    out
}

#[test]
fn virtual_slots_refuse_an_image_whose_cuda_requirement_the_driver_cannot_meet() {
    let _engine = ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let impossible = image_with(Behaviour::Good, &requiring("cuda>=99.0", 5));
    let malformed = image_with(Behaviour::Good, &requiring("cuda>=banana", 6));
    let met = image_with(
        Behaviour::Good,
        &requiring("cuda>=12.0 brand=tesla,driver>=470,driver<471", 7),
    );
    // The impossible image is also the calibration image: its refusal is stored as a failed
    // calibration and changes nothing for the miners.
    let gpu = format!("virtual_cuda_version = \"12.4\"\ncalibration_image = \"{impossible}\"\n");
    let (_setup, state, hotkeys) = round_one(2, &gpu, 170, &[impossible.clone(), malformed, met]);
    let runs = runs(&state, &hotkeys);
    assert_eq!(runs.len(), 3, "{runs:#?}");
    let of = |i: usize| runs.iter().find(|r| r.hotkey.as_str() == hotkeys[i]).unwrap();
    let refused = of(0);
    assert_eq!(
        refused.verdict.to_string(),
        "gpu_arch_unsupported",
        "{refused:#?}"
    );
    let reason = refused.reason.clone().unwrap_or_default();
    for part in [
        "needs cuda>=99.0",
        "CUDA 12.4",
        "compute capability unknown",
        "virtual-",
    ] {
        assert!(reason.contains(part), "{part:?} not in {reason}");
    }
    assert!(
        !refused.stage_times.contains_key("ready"),
        "no container was started: {refused:#?}"
    );
    let malformed = of(1);
    assert_eq!(malformed.verdict.to_string(), "ok", "{malformed:#?}");
    assert!(
        malformed
            .notes
            .iter()
            .any(|n| n.contains("malformed") && n.contains("banana")),
        "the run record says the requirement was not trusted: {:?}",
        malformed.notes
    );
    let met = of(2);
    assert_eq!(met.verdict.to_string(), "ok", "{met:#?}");
    assert!(met.notes.is_empty(), "{:?}", met.notes);

    let cal = calibrations(&state, 1);
    assert_eq!(cal.len(), 2, "one calibration per slot: {cal:#?}");
    for c in &cal {
        assert_eq!(c.verdict.to_string(), "gpu_arch_unsupported", "{c:#?}");
        assert_eq!(c.seconds, None);
        assert_eq!(c.image_ref, impossible);
    }
}

#[test]
fn virtual_slots_calibrate_each_slot_once_per_round_never_beside_another_run() {
    let _engine = ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let reference = image_with(Behaviour::Good, &[("delay_ms".to_owned(), "300".to_owned())]);
    let refs = images(2, 50);
    let gpu = format!("calibration_image = \"{reference}\"\n");
    let (_setup, state, hotkeys) = round_one(2, &gpu, 180, &refs);

    let cal = calibrations(&state, 1);
    let slots: BTreeSet<String> = cal.iter().map(|c| c.gpu_uuid.clone()).collect();
    assert_eq!(cal.len(), 2, "once per slot: {cal:#?}");
    assert_eq!(slots, ["virtual-0", "virtual-1"].map(String::from).into());
    for c in &cal {
        assert_eq!(c.verdict.to_string(), "ok", "{c:#?}");
        assert_eq!(c.gpu_model, "virtual GPU slot");
        assert!(c.run_id.starts_with("calib-"), "{}", c.run_id);
        // 2 scored challenges, each answered after the image's 300 ms delay, timed on the host.
        assert_eq!(c.challenge_seconds.len(), 2, "{c:#?}");
        assert!(c.challenge_seconds.iter().all(|s| *s >= 0.3), "{c:#?}");
        let mean = c.challenge_seconds.iter().sum::<f64>() / 2.0;
        assert_eq!(c.seconds, Some(mean));
    }
    let runs = runs(&state, &hotkeys);
    assert_eq!(runs.len(), 2, "{runs:#?}");
    let apart = |a: (f64, f64), b: (f64, f64)| a.1 <= b.0 || b.1 <= a.0;
    for run in &runs {
        assert_eq!(run.verdict.to_string(), "ok", "{run:#?}");
        // Never beside the calibration on its GPU.
        let slot = slot_of(run);
        let c = cal.iter().find(|c| c.gpu_uuid == slot).unwrap();
        assert!(
            apart((run.started_at, run.finished_at), (c.started_at, c.finished_at)),
            "{slot}: miner {:?} overlaps its calibration {:?}",
            (run.started_at, run.finished_at),
            (c.started_at, c.finished_at)
        );
    }
    // One image, one run at a time: the daemon removes an image when its run ends.
    assert!(
        apart(
            (cal[0].started_at, cal[0].finished_at),
            (cal[1].started_at, cal[1].finished_at)
        ),
        "{cal:#?}"
    );
}
