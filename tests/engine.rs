//! The evaluation engine end to end: the real daemon, a real Docker engine, miner images built from
//! the project's own test miner, pushed to the local registry and submitted by digest through
//! `POST /update`; every verdict and hostile behaviour is checked in what `/metrics` and the run
//! history say, and a SIGKILL mid-evaluation leaves no orphan and loses nothing committed.
//!
//! Needs dockerd, the registry on 127.0.0.1:5000, ffmpeg and opencv-data (`tests/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/images.rs"]
mod images;

use common::*;
use images::Behaviour;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use talkheadd::domain::Hotkey;
use talkheadd::store::{Store, StoreOptions};

/// The tests share the host's Docker engine and look at its labelled containers: one at a time.
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Longest a whole round of the test miners may take.
const ROUND_LIMIT: Duration = Duration::from_secs(900);

fn engine_config(dir: &Path) -> String {
    format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\nchallenges_dir = \"{}\"\nready_timeout_secs = 30\nchallenge_timeout_secs = 10\n\
         pull_timeout_secs = 120\nwork_dir = \"{}\"\n\
         [docker]\npull_attempts = 2\n[gpu]\nvirtual = 1\n\
         [container]\ncpus = 1.0\nmemory_bytes = 536870912\nshm_bytes = 67108864\ntmp_bytes = 67108864\n\
         var_tmp_bytes = 16777216\noutput_bytes = 67108864\n",
        fixtures().display(),
        dir.join("jobs").display()
    )
}

fn build(behaviours: &[(Behaviour, &[(&str, &str)])]) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut refs = Vec::new();
        for (b, options) in behaviours {
            let pushed = images::build_and_push_miner_with(*b, options, &fixtures())
                .await
                .unwrap();
            refs.push(pushed.reference);
        }
        refs
    })
}

fn submit(d: &Daemon, miners: &[(String, String, f64)]) {
    let rows: Vec<(&str, String, f64)> = miners
        .iter()
        .map(|(h, i, t)| (h.as_str(), i.clone(), *t))
        .collect();
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&rows)));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn metrics_by_hotkey(d: &Daemon) -> BTreeMap<String, serde_json::Value> {
    let r = d.request(&HttpRequest::new("GET", "/metrics"));
    assert_eq!(r.status, 200);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["hotkey"].as_str().unwrap().to_owned(), row["metrics"].clone()))
        .collect()
}

fn run_logs(state: &Path, hotkey: &str) -> String {
    let store = Store::open(
        state,
        StoreOptions {
            map_size_bytes: 64 << 20,
            history_per_miner: 20,
            max_submissions: 100,
        },
    )
    .unwrap();
    let runs = store.runs_for(&Hotkey::parse(hotkey).unwrap(), 20).unwrap();
    store.close().unwrap();
    runs.iter()
        .filter_map(|r| r.log_tail.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A miner behaviour, its build options and the verdict it must get.
type Case = (Behaviour, &'static [(&'static str, &'static str)], &'static str);

#[test]
fn every_behaviour_gets_its_verdict_and_hostile_miners_touch_nothing() {
    let _engine = exclusive();
    let cases: Vec<Case> = vec![
        (Behaviour::Good, &[], "ok"),
        (Behaviour::Static, &[], "ok"),
        (Behaviour::Slow, &[("delay_ms", "1500")], "ok"),
        (Behaviour::Crash, &[], "crashed"),
        (Behaviour::Hang, &[], "challenge_timeout"),
        (Behaviour::Hang, &[("ready", "never")], "ready_timeout"),
        (Behaviour::Oom, &[], "host_oom"),
        (Behaviour::GarbageJson, &[], "bad_output"),
        (Behaviour::SymlinkOutput, &[], "bad_output"),
        (Behaviour::FillOutput, &[], "output_quota_exceeded"),
        (Behaviour::Network, &[("targets", "1.1.1.1:53")], "ok"),
        (Behaviour::WriteInput, &[], "ok"),
        (Behaviour::GpuEnv, &[], "ok"),
        (Behaviour::Error, &[], "cuda_oom"),
    ];
    let refs = build(&cases.iter().map(|(b, o, _)| (*b, *o)).collect::<Vec<_>>());
    let setup = Setup::new("");
    let extra = engine_config(setup.dir.path());
    let setup = Setup { extra, ..setup };
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..cases.len())
        .map(|i| Signer::from_seed(100 + i as u8))
        .collect();
    let miners: Vec<(String, String, f64)> = signers
        .iter()
        .zip(&refs)
        .enumerate()
        .map(|(i, (s, r))| (s.hotkey.clone(), r.clone(), 1000.0 + i as f64))
        .collect();
    submit(&d, &miners);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);

    let metrics = metrics_by_hotkey(&d);
    for ((behaviour, _, expected), signer) in cases.iter().zip(&signers) {
        let m = &metrics[&signer.hotkey];
        assert_eq!(
            m["verdict"],
            *expected,
            "{behaviour:?}: {m}\ndaemon log:\n{}",
            d.log()
        );
        if *expected == "ok" {
            assert!(m.get("error").is_none(), "{behaviour:?}: {m}");
            assert_eq!(
                m["challenge_metrics"].as_array().unwrap().len(),
                5,
                "{behaviour:?}"
            );
        } else {
            assert_eq!(m["final_score"], 0.0, "{behaviour:?}");
            assert!(
                m["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{behaviour:?}: {m}"
            );
        }
    }
    // Each scored entry says how it was analysed, and how long that took, after the miner was timed.
    let good = &metrics[&signers[0].hotkey];
    for entry in good["challenge_metrics"].as_array().unwrap() {
        let debug = &entry["debug"];
        assert_eq!(debug["face_backend"], "haar", "{entry}");
        assert_eq!(debug["asr_backend"], "none", "{entry}");
        assert_eq!(debug["identity_mode"], "fallback_histogram", "{entry}");
        assert!(
            debug["sync_c"].is_f64() && debug["face_detect_gate_applied"].is_boolean(),
            "{entry}"
        );
        let took = debug["analysis_time_sec"].as_f64().unwrap();
        let stage = &good["stage_times"][format!("analysis:{}", entry["challenge_id"].as_str().unwrap())];
        assert!(took > 0.0 && stage.as_f64() == Some(took), "{entry} vs {stage}");
    }
    let score = |b: usize| metrics[&signers[b].hotkey]["final_score"].as_f64().unwrap();
    assert!(
        score(0) > 0.0,
        "the good miner must score: {}",
        metrics[&signers[0].hotkey]
    );
    assert!(
        score(1) < score(0),
        "a static face must score below a talking one ({} vs {})",
        score(1),
        score(0)
    );
    let slow_time = metrics[&signers[2].hotkey]["efficiency"]["inference_time_sec"]
        .as_f64()
        .unwrap();
    let good_time = metrics[&signers[0].hotkey]["efficiency"]["inference_time_sec"]
        .as_f64()
        .unwrap();
    assert!(
        (1.5..2.5).contains(&slow_time),
        "slow miner measured {slow_time}s for a 1.5 s delay"
    );
    assert!(good_time < 1.0, "good miner measured {good_time}s");
    let crash = metrics[&signers[3].hotkey]["error"].as_str().unwrap();
    assert!(crash.contains("code 3"), "{crash}");
    let symlink = metrics[&signers[8].hotkey].to_string();
    assert!(symlink.contains("not a regular file"), "{symlink}");
    assert!(
        d.log().contains("output quota exceeded"),
        "quota watcher did not act"
    );

    let state = d.state.clone();
    assert!(d.stop().success());
    let network = run_logs(&state, &signers[10].hotkey);
    assert!(
        network.contains("unreachable") && !network.contains("REACHED"),
        "{network}"
    );
    let input = run_logs(&state, &signers[11].hotkey);
    assert!(
        input.contains("input_writable=false") || input.contains("\"input_writable\":false"),
        "{input}"
    );
    let env = run_logs(&state, &signers[12].hotkey);
    assert!(env.contains("NVIDIA_VISIBLE_DEVICES=void"), "{env}");
    assert!(
        !env.contains("/nonexistent.so"),
        "LD_PRELOAD from the image survived: {env}"
    );
}

fn labelled_containers() -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", "label=talkhead.run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn sigkill_mid_evaluation_leaves_no_orphan_reruns_it_and_loses_nothing_committed() {
    let _engine = exclusive();
    let refs = build(&[(Behaviour::Good, &[]), (Behaviour::Slow, &[("delay_ms", "2500")])]);
    let setup = Setup::new("");
    let extra = engine_config(setup.dir.path());
    let setup = Setup { extra, ..setup };
    let (good, slow) = (Signer::from_seed(90), Signer::from_seed(91));

    // Round 1: the good miner alone, committed.
    let mut d = Daemon::start(&setup);
    submit(&d, &[(good.hotkey.clone(), refs[0].clone(), 1000.0)]);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let before = d.request(&HttpRequest::new("GET", "/metrics"));
    let etag = before.header("etag").unwrap().to_owned();
    assert_eq!(before.json().as_array().unwrap().len(), 1);

    // Round 2 re-evaluates both; kill the daemon while the slow miner's container runs.
    submit(&d, &[(slow.hotkey.clone(), refs[1].clone(), 1001.0)]);
    d.wait_for_within(&format!("{} ready on", slow.hotkey), ROUND_LIMIT);
    let orphans = labelled_containers();
    assert_eq!(
        orphans.len(),
        1,
        "expected the slow miner's container: {orphans:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    d.child.wait().unwrap();
    assert_eq!(
        labelled_containers(),
        orphans,
        "the container outlives a SIGKILLed daemon"
    );
    drop(d);

    // Restart: the orphan is gone before READY=1, the committed round is still served unchanged, and
    // the interrupted evaluation runs again until round 2 commits.
    let mut d = Daemon::start(&setup);
    assert!(
        !labelled_containers().contains(&orphans[0]),
        "orphan container survived the restart"
    );
    let after = d.request(&HttpRequest::new("GET", "/metrics"));
    assert_eq!(after.header("etag"), Some(etag.as_str()));
    assert_eq!(
        after.body, before.body,
        "committed metrics changed across the crash"
    );
    d.wait_for_within("round 2 committed", ROUND_LIMIT);
    let metrics = metrics_by_hotkey(&d);
    assert_eq!(
        metrics[&slow.hotkey]["verdict"], "ok",
        "{}",
        metrics[&slow.hotkey]
    );
    assert_eq!(metrics[&good.hotkey]["verdict"], "ok");
    assert!(
        d.log().contains("removed an orphaned evaluation container"),
        "{}",
        d.log()
    );
    assert!(d.stop().success());
}
