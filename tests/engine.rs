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
use std::path::Path;
use std::time::Duration;
use talkheadd::domain::Hotkey;

/// The tests share the host's Docker engine and look at its labelled containers: one at a time.
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Longest a whole round of the test miners may take.
const ROUND_LIMIT: Duration = Duration::from_secs(900);

/// The test daemon's evaluation config. The image cache is off (every image is removed after its run,
/// as the tests' images are throw-away) unless `docker` sets `image_cache_bytes`.
fn engine_config(dir: &Path) -> String {
    engine_config_with(dir, "image_cache_bytes = 0\n")
}

fn engine_config_with(dir: &Path, docker: &str) -> String {
    format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\nchallenges_dir = \"{}\"\nready_timeout_secs = 30\nchallenge_timeout_secs = 10\n\
         pull_timeout_secs = 120\nwork_dir = \"{}\"\n\
         [docker]\npull_attempts = 2\n{}[gpu]\nvirtual = 1\n\
         [container]\ncpus = 1.0\nmemory_bytes = 536870912\nshm_bytes = 67108864\ntmp_bytes = 67108864\n\
         var_tmp_bytes = 16777216\noutput_bytes = 67108864\n",
        fixtures().display(),
        dir.join("jobs").display(),
        docker
    )
}

fn build(behaviours: &[(Behaviour, &[(&str, &str)])]) -> Vec<String> {
    images::build_and_push_all(behaviours, &fixtures())
}

/// A miner behaviour, its build options and the verdict it must get.
type Case = (Behaviour, &'static [(&'static str, &'static str)], &'static str);

/// `plant=<id>:<audio sha256>,...` for every fixture challenge: the test miner writes each challenge's
/// real answer into `/output` while it loads, before any task exists, and then answers nothing.
fn plant_every_answer() -> &'static [(&'static str, &'static str)] {
    let pairs: Vec<String> = images::challenges(&fixtures())
        .unwrap()
        .into_iter()
        .map(|(id, dir)| format!("{id}:{}", images::sha256_file(&dir.join("audio.wav")).unwrap()))
        .collect();
    let plant: &'static str = Box::leak(pairs.join(",").into_boxed_str());
    Box::leak(Box::new([("plant", plant)]))
}

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

#[test]
fn answers_planted_before_their_task_never_count_and_a_kill_while_loading_names_the_daemons_reason() {
    let _engine = exclusive();
    let planted = plant_every_answer();
    let flood: &[(&str, &str)] = &[("flood_entries", "10001"), ("ready", "never")];
    let refs = build(&[(Behaviour::Good, planted), (Behaviour::Good, flood)]);
    let setup = Setup::new("");
    let extra = engine_config(setup.dir.path());
    let setup = Setup { extra, ..setup };
    let mut d = Daemon::start(&setup);
    let (planter, flooder) = (Signer::from_seed(130), Signer::from_seed(131));
    submit(
        &d,
        &[
            (planter.hotkey.clone(), refs[0].clone(), 1000.0),
            (flooder.hotkey.clone(), refs[1].clone(), 1001.0),
        ],
    );
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let metrics = metrics_by_hotkey(&d);
    let log = d.log();

    // Every challenge's answer sat in /output before the first task was placed, and the miner never
    // answered a task: the placement removed them, and the warm-up timed out.
    let m = &metrics[&planter.hotkey];
    assert_eq!(m["verdict"], "challenge_timeout", "{m}\n{log}");
    assert_eq!(m["final_score"], 0.0, "{m}");
    let error = m["error"].as_str().unwrap();
    assert!(error.contains("warm-up challenge-0 failed"), "{error}");

    // 10,001 entries in /output while loading: the quota watcher killed it before ready.txt, and the
    // verdict says so (not "crashed", which the kill's exit would read as).
    let m = &metrics[&flooder.hotkey];
    assert_eq!(m["verdict"], "output_quota_exceeded", "{m}\n{log}");
    let error = m["error"].as_str().unwrap();
    assert!(
        error.contains("more than 10000 entries") && error.contains("the daemon killed the container"),
        "{error}"
    );
    assert!(d.stop().success());
}

/// Open the state file the daemon will use (creating it) and read its instance id: the daemon labels
/// its containers `talkhead.instance=<id>`.
fn instance_of(state: &Path) -> String {
    let store = open_state(state);
    let id = store.instance_id().to_owned();
    store.close().unwrap();
    id
}

/// This instance's evaluation containers (other tests and daemons share the engine).
fn labelled_containers(instance: &str) -> Vec<String> {
    containers_labelled(&["talkhead.run".into(), format!("talkhead.instance={instance}")])
}

#[test]
fn sigkill_mid_evaluation_leaves_no_orphan_reruns_it_and_loses_nothing_committed() {
    let _engine = exclusive();
    let refs = build(&[(Behaviour::Good, &[]), (Behaviour::Slow, &[("delay_ms", "2500")])]);
    let setup = Setup::new("");
    let extra = engine_config(setup.dir.path());
    let setup = Setup { extra, ..setup };
    let (good, slow) = (Signer::from_seed(90), Signer::from_seed(91));

    let instance = instance_of(&setup.dir.path().join("state.db"));
    // Another daemon's evaluation container on the same engine: ours must never touch it.
    let foreign_instance = format!("foreign-{}", std::process::id());
    let created = std::process::Command::new("docker")
        .args([
            "create",
            "--label",
            "talkhead.run=run-foreign",
            "--label",
            "talkhead.managed=true",
        ])
        .args([
            "--label",
            &format!("talkhead.instance={foreign_instance}"),
            "--network",
            "none",
        ])
        .arg(&refs[0])
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let foreign = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    struct Remove(String);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", &self.0])
                .output();
        }
    }
    let _foreign_guard = Remove(foreign.clone());

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
    let orphans = labelled_containers(&instance);
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
        labelled_containers(&instance),
        orphans,
        "the container outlives a SIGKILLed daemon"
    );
    drop(d);

    // Restart: the orphan is gone before READY=1, the committed round is still served unchanged, and
    // the interrupted evaluation runs again until round 2 commits.
    let mut d = Daemon::start(&setup);
    assert!(
        !labelled_containers(&instance).contains(&orphans[0]),
        "orphan container survived the restart"
    );
    // Our reconciliation never touched it. (Its presence is not asserted: daemons of older versions
    // sharing this engine reap every `talkhead.run` container, which is what this label fixes.)
    assert!(
        !d.log().contains(&foreign),
        "reconciliation touched another instance's container:\n{}",
        d.log()
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

#[test]
fn a_clean_stop_mid_evaluation_removes_every_container_it_created() {
    let _engine = exclusive();
    let refs = build(&[(Behaviour::Hang, &[])]);
    let setup = Setup::new("");
    // evaluation.work_dir elsewhere than the tests' usual `jobs`: the job directories go there.
    let work_dir = setup.dir.path().join("elsewhere").join("work");
    let extra = engine_config(setup.dir.path()).replace(
        &format!("work_dir = \"{}\"", setup.dir.path().join("jobs").display()),
        &format!("work_dir = \"{}\"", work_dir.display()),
    );
    assert!(extra.contains("elsewhere"), "{extra}");
    let setup = Setup { extra, ..setup };
    let instance = instance_of(&setup.dir.path().join("state.db"));
    let mut d = Daemon::start(&setup);
    let miner = Signer::from_seed(92);
    submit(&d, &[(miner.hotkey.clone(), refs[0].clone(), 1000.0)]);
    // The container is up and being timed on a challenge it will never answer.
    d.wait_for_within(&format!("{} ready on", miner.hotkey), ROUND_LIMIT);
    assert_eq!(labelled_containers(&instance).len(), 1);
    let jobs: Vec<_> = std::fs::read_dir(&work_dir).unwrap().flatten().collect();
    assert_eq!(jobs.len(), 1, "one job directory under evaluation.work_dir");
    assert!(jobs[0].path().join("input").is_dir() && jobs[0].path().join("output").is_dir());
    assert!(!setup.dir.path().join("jobs").exists());
    let state = d.state.clone();
    let log_path = d.dir.join(format!("daemon-{}.log", d.addr.port()));
    // SIGTERM, as systemd stops the unit: the daemon exits cleanly, and only once its container is gone.
    assert!(d.stop().success());
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(
        labelled_containers(&instance),
        Vec::<String>::new(),
        "a container outlived the clean stop\n{log}"
    );
    assert_eq!(
        std::fs::read_dir(&work_dir).unwrap().count(),
        0,
        "the interrupted run's job directory is removed"
    );
    // The interrupted evaluation was the host's doing: nothing was committed or charged for it.
    let store = open_state(&state);
    let runs = store
        .runs_for(&Hotkey::parse(&miner.hotkey).unwrap(), 20)
        .unwrap();
    store.close().unwrap();
    assert!(
        runs.iter()
            .all(|r| r.verdict == talkheadd::domain::Verdict::InfraError),
        "{runs:?}"
    );
}

/// Whether the engine holds an image under `reference`.
fn image_present(reference: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", reference])
        .output()
        .unwrap()
        .status
        .success()
}

fn docker_cli(args: &[&str]) {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Index of the first log line containing every one of `needles`.
fn log_line(log: &str, needles: &[&str]) -> Option<usize> {
    log.lines().position(|l| needles.iter().all(|n| l.contains(n)))
}

#[test]
fn the_image_cache_evicts_the_least_recently_used_pulls_ahead_and_leaves_foreign_images_alone() {
    let _engine = exclusive();
    // Four distinct images of about the same size (only their miner.conf differs).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed: Vec<images::PushedMiner> = rt.block_on(async {
        let mut out = Vec::new();
        for delay in ["11", "12", "13", "14"] {
            out.push(
                images::build_and_push_miner_with(Behaviour::Slow, &[("delay_ms", delay)], &fixtures())
                    .await
                    .unwrap(),
            );
        }
        out
    });
    let refs: Vec<String> = pushed.iter().map(|p| p.reference.clone()).collect();
    let largest = pushed.iter().map(|p| p.image_bytes).max().unwrap();
    assert!(largest > 0);
    // Two images fit, three do not.
    let budget = largest * 5 / 2;
    // The fourth is on the host before the daemon starts: not the daemon's to remove.
    docker_cli(&["pull", &refs[3]]);
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            // By id and forced: every reference goes, the daemon's cache markers included.
            for r in &self.0 {
                let id = std::process::Command::new("docker")
                    .args(["image", "inspect", "--format", "{{.Id}}", r])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .unwrap_or_default();
                if !id.is_empty() {
                    let _ = std::process::Command::new("docker")
                        .args(["rmi", "-f", &id])
                        .output();
                }
            }
        }
    }
    let _cleanup = Cleanup(refs.clone());
    for r in &refs[..3] {
        assert!(!image_present(r), "{r} is already local");
    }

    let setup = Setup::new("");
    let extra = engine_config_with(
        setup.dir.path(),
        &format!("image_cache_bytes = {budget}\nprepull_ahead = 1\n"),
    );
    let setup = Setup { extra, ..setup };
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..4).map(|i| Signer::from_seed(150 + i)).collect();
    let miners: Vec<(String, String, f64)> = numbered_submissions(&signers, &refs)
        .into_iter()
        .map(|(h, r, t)| (h.to_owned(), r, t))
        .collect();
    submit(&d, &miners);
    // One slot runs them in submission order. Look at the engine while the last one runs: round 2
    // (which re-evaluates everyone, pulling the first image again) cannot have begun.
    d.wait_for_within(&format!("{} ready on", signers[3].hotkey), ROUND_LIMIT);
    // Evictions run beside the next dispatch, once a run's slot is free.
    d.wait_for_within("image cache: removed 1 least recently used", ROUND_LIMIT);
    // With the third image pulled ahead the cache held three images, one over budget, and the least
    // recently used (the first) went; the rest fit.
    let evicted = !image_present(&refs[0]);
    let kept = image_present(&refs[1]) && image_present(&refs[2]);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let metrics = metrics_by_hotkey(&d);
    for s in &signers {
        assert_eq!(metrics[&s.hotkey]["verdict"], "ok", "{}", metrics[&s.hotkey]);
    }
    let log = d.log();
    let state = d.state.clone();
    assert!(d.stop().success());
    assert!(evicted, "the least recently used image was not evicted:\n{log}");
    assert!(kept, "cached images were removed:\n{log}");
    assert!(
        log.contains(&format!("removed a cached miner image image={}", refs[0])),
        "{log}"
    );
    // The image that was on the host before is used as it is and never removed, over budget or not.
    assert!(
        image_present(&refs[3]),
        "an image the daemon did not pull was removed:\n{log}"
    );
    assert!(
        !log.contains(&format!("removed a cached miner image image={}", refs[3])),
        "{log}"
    );

    // Pre-pull: while the first miner ran, the second's image was pulled ahead, before its own run
    // started, and its run found it pulled ahead instead of pulling.
    let ahead = log_line(
        &log,
        &["image pulled ahead of its run", &refs[1], "source=\"pulled\""],
    )
    .unwrap_or_else(|| panic!("the second image was not pulled ahead:\n{log}"));
    let started = log_line(&log, &["evaluation started", &signers[1].hotkey])
        .unwrap_or_else(|| panic!("no run of the second miner:\n{log}"));
    assert!(ahead < started, "pulled ahead only after its run started:\n{log}");
    assert!(
        log_line(
            &log,
            &["image ready", "image_source=\"pre_pulled\"", &signers[1].hotkey]
        )
        .is_some(),
        "the second run pulled its image itself:\n{log}"
    );
    // The foreign image: pulled ahead as found on the host, and its run says so.
    assert!(
        log_line(
            &log,
            &["image ready", "image_source=\"foreign\"", &signers[3].hotkey]
        )
        .is_some(),
        "{log}"
    );
    // Each round-1 run records where its image came from.
    let store = open_state(&state);
    let sources: Vec<Option<String>> = signers
        .iter()
        .map(|s| {
            let runs = store.runs_for(&Hotkey::parse(&s.hotkey).unwrap(), 20).unwrap();
            runs.into_iter()
                .find(|r| r.round == 1)
                .and_then(|r| r.image_source)
        })
        .collect();
    store.close().unwrap();
    let expected = ["pulled", "pre_pulled", "pre_pulled", "foreign"].map(|s| Some(s.to_owned()));
    assert_eq!(sources, expected, "{log}");
}

/// What the test's Subnet API serves on `GET /challenge`.
#[derive(Clone)]
enum ApiReply {
    /// 200 with this JSON body.
    Json(String),
    /// 200 announcing a body larger than any accepted payload (only a few bytes follow).
    Oversized,
}

/// What the test's Subnet API saw.
#[derive(Default)]
struct ApiSeen {
    requests: usize,
    /// Failures of the signature check, as `(status, reason)`.
    refused: Vec<String>,
}

/// A plain HTTP/1.1 Subnet API on loopback: checks every request's signed headers with the
/// daemon's own verifier (only `allowed` may call), then sends the current reply.
struct SubnetApi {
    addr: std::net::SocketAddr,
    reply: std::sync::Arc<std::sync::Mutex<ApiReply>>,
    seen: std::sync::Arc<std::sync::Mutex<ApiSeen>>,
}

impl SubnetApi {
    fn start(allowed: talkheadd::domain::Hotkey, reply: ApiReply) -> SubnetApi {
        use std::io::{BufRead, BufReader, Write};
        use talkheadd::api::auth::{AuthPolicy, Authenticator};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = std::sync::Arc::new(std::sync::Mutex::new(reply));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(ApiSeen::default()));
        let auth = Authenticator::new(AuthPolicy {
            allowed: [allowed].into_iter().collect(),
            max_skew_secs: 60,
            replay_capacity: 1000,
            require_signature: true,
        });
        let (r, s) = (reply.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                let mut headers = hyper::HeaderMap::new();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(
                            hyper::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                            v.trim().parse().unwrap(),
                        );
                    }
                }
                let checked = auth.check_headers(&hyper::Method::GET, &path, None, &headers, now() as f64);
                {
                    let mut seen = s.lock().unwrap();
                    seen.requests += 1;
                    if path != "/challenge" {
                        seen.refused.push(format!("path {path}"));
                    }
                    if let Err(e) = &checked {
                        seen.refused.push(format!("{} {}", e.status(), e.reason()));
                    }
                }
                let response = match (checked, r.lock().unwrap().clone()) {
                    (Err(e), _) => format!(
                        "HTTP/1.1 {} refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        e.status().as_u16()
                    )
                    .into_bytes(),
                    (Ok(_), ApiReply::Json(body)) => {
                        let mut out = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        out.extend_from_slice(body.as_bytes());
                        out
                    }
                    (Ok(_), ApiReply::Oversized) => b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n[".to_vec(),
                };
                let _ = stream.write_all(&response);
            }
        });
        SubnetApi { addr, reply, seen }
    }

    fn set(&self, reply: ApiReply) {
        *self.reply.lock().unwrap() = reply;
    }
}

/// The bundled challenges as a `/challenge` payload (objects with base64 media); `edit` may spoil it.
fn challenge_payload(edit: impl Fn(usize, &mut serde_json::Map<String, serde_json::Value>)) -> String {
    use base64::Engine as _;
    let b64 =
        |p: std::path::PathBuf| base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let items: Vec<serde_json::Value> = dirs
        .iter()
        .enumerate()
        .map(|(i, dir)| {
            let mut item = serde_json::Map::new();
            item.insert("challenge_id".into(), format!("api-{i}").into());
            item.insert(
                "text".into(),
                std::fs::read_to_string(dir.join("text.txt"))
                    .unwrap_or_default()
                    .into(),
            );
            item.insert("face_base64".into(), b64(dir.join("face.png")).into());
            item.insert("audio_base64".into(), b64(dir.join("audio.wav")).into());
            edit(i, &mut item);
            serde_json::Value::Object(item)
        })
        .collect();
    serde_json::json!({ "challenges": items }).to_string()
}

#[test]
fn subnet_api_challenges_are_fetched_signed_validated_and_evaluated() {
    let _engine = exclusive();
    let refs = build(&[(Behaviour::Good, &[])]);
    let seed = [77u8; 32];
    let executor = talkheadd::challenges::Signer::from_mini_secret(&seed).unwrap();
    let hotkey = executor.hotkey().clone();
    let setup = Setup::new("");
    // The executor's hotkey file (bittensor's JSON), mode 0600 as the daemon demands.
    let key = setup.dir.path().join("hotkey.json");
    std::fs::write(
        &key,
        serde_json::json!({"secretSeed": format!("0x{}", hex::encode(seed)), "ss58Address": hotkey.to_string()})
            .to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let api = SubnetApi::start(hotkey, ApiReply::Oversized);
    let extra = engine_config(setup.dir.path()).replace(
        &format!("challenges_dir = \"{}\"\n", fixtures().display()),
        &format!(
            "subnet_api_url = \"http://{}\"\nsigning_key_file = \"{}\"\n",
            api.addr,
            key.display()
        ),
    );
    assert!(extra.contains("subnet_api_url"), "{extra}");
    let setup = Setup { extra, ..setup };
    let instance = instance_of(&setup.dir.path().join("state.db"));
    let miner = Signer::from_seed(170);

    // Hostile payloads: each is refused as a whole, with its reason, and no round starts on it.
    let hostile: Vec<(ApiReply, &str)> = vec![
        (ApiReply::Oversized, "payload_too_large"),
        (
            ApiReply::Json(challenge_payload(|i, item| {
                if i == 0 {
                    item.insert("face_path".into(), "/etc/shadow".into());
                }
            })),
            "host_path_refused",
        ),
        (
            ApiReply::Json(challenge_payload(|i, item| {
                if i == 1 {
                    item.insert("challenge_id".into(), "../../etc".into());
                }
            })),
            "invalid_id",
        ),
        (
            ApiReply::Json(challenge_payload(|i, item| {
                if i == 2 {
                    item.insert("face_base64".into(), "bm90IGFuIGltYWdlIGF0IGFsbA==".into());
                }
            })),
            "invalid_media",
        ),
    ];
    for (reply, reason) in hostile {
        api.set(reply);
        let mut d = Daemon::start(&setup);
        submit(&d, &[(miner.hotkey.clone(), refs[0].clone(), 1000.0)]);
        let status = d.wait_for_within(
            &format!("cannot obtain the round's challenges ({reason})"),
            ROUND_LIMIT,
        );
        let log = d.log();
        assert!(!log.contains("challenge set fixed"), "{status}\n{log}");
        assert!(!log.contains("evaluation started"), "{status}\n{log}");
        assert!(labelled_containers(&instance).is_empty());
        assert!(d.stop().success());
    }

    // A valid payload: the miner is evaluated on the API's challenges and the round commits.
    api.set(ApiReply::Json(challenge_payload(|_, _| {})));
    let mut d = Daemon::start(&setup);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let metrics = metrics_by_hotkey(&d);
    let m = &metrics[&miner.hotkey];
    assert_eq!(m["verdict"], "ok", "{m}\n{}", d.log());
    let ids: Vec<&str> = m["challenge_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["challenge_id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|id| id.starts_with("api-")),
        "{ids:?}"
    );
    assert!(d.stop().success());
    let seen = api.seen.lock().unwrap();
    assert!(seen.requests >= 5, "{} requests", seen.requests);
    assert!(
        seen.refused.is_empty(),
        "badly signed requests: {:?}",
        seen.refused
    );
}

/// A dockerd of the test's own (own data root, exec root, pid file, socket and containerd
/// namespace, no bridge, no iptables), so that restarting it disturbs nobody else on the host.
struct PrivateDockerd {
    root: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateDockerd {
    fn start() -> PrivateDockerd {
        // Short: the socket path must fit sun_path.
        let root = tempfile::Builder::new()
            .prefix("thd-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut d = PrivateDockerd { root, child: None };
        d.launch();
        d
    }

    fn socket(&self) -> String {
        format!("unix://{}/d.sock", self.root.path().display())
    }

    fn launch(&mut self) {
        let r = self.root.path();
        let ns = format!("thd{}", std::process::id());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(r.join("dockerd.log"))
            .unwrap();
        let child = std::process::Command::new("dockerd")
            .arg("--data-root")
            .arg(r.join("data"))
            .arg("--exec-root")
            .arg(r.join("exec"))
            .arg("--pidfile")
            .arg(r.join("d.pid"))
            .args([
                "-H",
                &self.socket(),
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ])
            .args([
                "--containerd-namespace",
                &ns,
                "--containerd-plugins-namespace",
                &format!("{ns}p"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Ready when it answers; bounded.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let ok = std::process::Command::new("docker")
                .args(["-H", &self.socket(), "version"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private dockerd did not start: {}",
                std::fs::read_to_string(r.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait for it to exit (it stops its containers first).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            child.wait().unwrap();
        }
    }

    fn containers(&self, label: &str) -> Vec<String> {
        let out = std::process::Command::new("docker")
            .args([
                "-H",
                &self.socket(),
                "ps",
                "-aq",
                "--filter",
                &format!("label={label}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn a_dockerd_restart_mid_evaluation_is_infra_error_retried_and_never_the_miners_fault() {
    let _engine = exclusive();
    let refs = build(&[(Behaviour::Slow, &[("delay_ms", "2000")])]);
    let mut dockerd = PrivateDockerd::start();
    let setup = Setup::new("");
    let extra = engine_config_with(
        setup.dir.path(),
        &format!("image_cache_bytes = 0\nhost = \"{}\"\n", dockerd.socket()),
    );
    let setup = Setup { extra, ..setup };
    let instance = instance_of(&setup.dir.path().join("state.db"));
    let miner = Signer::from_seed(180);
    let mut d = Daemon::start(&setup);
    submit(&d, &[(miner.hotkey.clone(), refs[0].clone(), 1000.0)]);
    d.wait_for_within(&format!("{} ready on", miner.hotkey), ROUND_LIMIT);

    // dockerd goes away mid-evaluation and comes back.
    dockerd.stop();
    dockerd.launch();

    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let metrics = metrics_by_hotkey(&d);
    let m = &metrics[&miner.hotkey];
    assert_eq!(m["verdict"], "ok", "{m}\n{}", d.log());
    let log = d.log();
    let state = d.state.clone();
    assert!(d.stop().success());
    assert!(
        dockerd
            .containers(&format!("talkhead.instance={instance}"))
            .is_empty(),
        "containers left behind in the restarted engine"
    );

    // The interrupted run is recorded as infra_error (the host's failure), then the retry scored.
    let store = open_state(&state);
    let runs = store
        .runs_for(&Hotkey::parse(&miner.hotkey).unwrap(), 20)
        .unwrap();
    store.close().unwrap();
    let verdicts: Vec<String> = runs.iter().map(|r| r.verdict.to_string()).collect();
    assert!(
        verdicts.contains(&"infra_error".to_owned()),
        "{verdicts:?}\n{log}"
    );
    assert!(verdicts.contains(&"ok".to_owned()), "{verdicts:?}");
    assert!(
        !verdicts.iter().any(|v| v == "crashed"),
        "the restart was charged to the miner: {verdicts:?}\n{log}"
    );
}
