//! The daemon as a Ray coordinator (`[cluster] engine = "ray"`) end to end: a token-authenticated Ray
//! head on the loopback whose raylet hands out this host's two virtual GPU slots (the GPU host's own
//! configuration in `TALKHEADD_CONFIG`, as `ray start` on a GPU host has it), the real daemon in ray
//! mode (no Docker engine or GPU of its own asked for: its runs execute as Ray jobs of `talkheadd
//! worker`), test miners built from this project's code and pushed to the local registry by digest.
//!
//! Asserts that a round of six miners commits with every miner's verdict, and the good and static
//! miners' scores equal to what `talkheadd evaluate` gives the same images on this host; that the
//! workers' containers had no network and a read-only input; that a job stopped from outside mid-run
//! (what a lost host looks like to the coordinator) costs the miner nothing: its evaluation is retried
//! as a new attempt and the history names the lost one; that no job is left on the cluster and no
//! container on the host; and that a coordinator stopped mid-round and started again finishes the
//! round, stopping its earlier jobs and numbering new attempts after them (no attempt runs twice).
//!
//! Needs the Ray of `tests/setup.sh`, dockerd, the registry on 127.0.0.1:5000, ffmpeg and opencv-data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/images.rs"]
mod images;
#[path = "common/ray.rs"]
mod ray;

use common::*;
use images::Behaviour;
use ray::RayHead;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use talkheadd::cluster::job::parse_submission_id;
use talkheadd::cluster::ray_jobs::{JobStatus, RayJobs};

const WARMUPS: usize = 1;
const SCORED: usize = 2;
/// Longest a round of the test miners may take on two virtual GPUs.
const ROUND_LIMIT: Duration = Duration::from_secs(600);

/// A behaviour, its build options and the verdict it must get.
type Case = (Behaviour, &'static [(&'static str, &'static str)], &'static str);

const CASES: [Case; 6] = [
    (Behaviour::Good, &[], "ok"),
    (Behaviour::Static, &[], "ok"),
    (Behaviour::Crash, &[], "crashed"),
    (Behaviour::GarbageJson, &[], "bad_output"),
    (Behaviour::Network, &[("targets", "1.1.1.1:53")], "ok"),
    (Behaviour::WriteInput, &[], "ok"),
];

/// The coordinator's tables: the fixture challenges, the counts every host must share, the Ray
/// engine with the head's token in a 0600 file and the workers' listener on a free loopback port.
fn coordinator_config(dir: &Path, head: &RayHead) -> String {
    format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\nchallenges_dir = \"{}\"\nwarmup_count = {WARMUPS}\nscoring_count = {SCORED}\n\
         ready_timeout_secs = 30\nchallenge_timeout_secs = 20\nwork_dir = \"{}\"\n\
         [docker]\nhost = \"unix:///nonexistent/docker.sock\"\n{}",
        fixtures().display(),
        dir.join("jobs").display(),
        ray::cluster_table(
            dir,
            &head.address,
            &head.token,
            "127.0.0.1",
            "max_jobs = 4\nmax_attempts = 3\njob_cpus = 0.5\n"
        ),
    )
}

/// Block until Ray runs one of this coordinator's jobs; its submission id.
fn a_running_job(rt: &tokio::runtime::Runtime, client: &RayJobs) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = rt.block_on(client.list()).unwrap();
        if let Some(id) = jobs
            .iter()
            .filter(|j| j.status == JobStatus::Running)
            .find_map(|j| j.submission_id.clone())
        {
            return id;
        }
        assert!(Instant::now() < deadline, "no job ever ran: {jobs:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `(challenge id, quality)` of each scored challenge as `talkheadd evaluate` scores `image` on this
/// host with the GPU host's configuration (quality is deterministic; time and VRAM are measured).
fn evaluated_locally(image: &str, config: &Path) -> Vec<(String, f64)> {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(["evaluate", "--json", "--image", image, "--challenges"])
        .arg(fixtures())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    qualities(&report["metrics"])
}

/// `(challenge id, quality)` of each scored challenge of a metrics document.
fn qualities(metrics: &serde_json::Value) -> Vec<(String, f64)> {
    metrics["challenge_metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["challenge_id"].as_str().unwrap().to_owned(),
                c["quality_score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_ray_coordinator_commits_a_round_as_the_local_path_scores_it_and_survives_lost_jobs_and_a_restart() {
    let behaviours: Vec<_> = CASES.iter().map(|(b, o, _)| (*b, *o)).collect();
    let refs = images::build_and_push_all(&behaviours, &fixtures());
    let dir = tempfile::tempdir().unwrap();
    let host_config = ray::gpu_host_config(dir.path(), 2);
    let head = RayHead::start(
        &["virtual-0", "virtual-1"],
        &[
            ("TALKHEADD_CONFIG", host_config.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ],
    );
    let client = head.client();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let setup = Setup::new("");
    let extra = coordinator_config(setup.dir.path(), &head);
    let setup = Setup { extra, ..setup };
    let signers: Vec<Signer> = (0..CASES.len())
        .map(|i| Signer::from_seed(140 + i as u8))
        .collect();
    let miners: Vec<(String, String, f64)> = numbered_submissions(&signers, &refs)
        .into_iter()
        .map(|(hotkey, image, at)| (hotkey.to_owned(), image, at))
        .collect();

    // First process: a job is lost mid-run, then the coordinator is stopped mid-round.
    let d = Daemon::start(&setup);
    assert!(
        d.log().contains("Ray cluster reachable"),
        "the coordinator did not reach Ray:\n{}",
        d.log()
    );
    submit(&d, &miners);
    let lost = a_running_job(&rt, &client);
    assert!(rt.block_on(client.stop(&lost)).unwrap(), "{lost} was not stopped");
    let (lost_evaluation, lost_attempt) = parse_submission_id(&lost)
        .map(|(e, a)| (e.to_owned(), a))
        .unwrap();
    // The lost attempt is followed by the next one of the same evaluation.
    let retry = format!("talkheadd-{lost_evaluation}-a{}", lost_attempt + 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !d.log().contains(&retry) {
        assert!(Instant::now() < deadline, "no retry {retry}:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // The retry's result is staged by this process, its history naming the lost job.
    let lost_hotkey = signers
        .iter()
        .find(|s| lost_evaluation.contains(&hex::encode(Sha256::digest(s.hotkey.as_bytes()))[..16]))
        .map(|s| s.hotkey.clone())
        .unwrap();
    let staged = format!("miner_hotkey={lost_hotkey}");
    while !d
        .log()
        .lines()
        .any(|l| l.contains(&staged) && l.contains("result staged"))
    {
        assert!(
            Instant::now() < deadline + ROUND_LIMIT,
            "the retry was never staged:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let in_flight = a_running_job(&rt, &client);
    let state = d.state.clone();
    assert!(d.stop().success());
    // Stopping the coordinator stopped its jobs.
    let jobs = rt.block_on(client.list()).unwrap();
    let stopped = jobs
        .iter()
        .find(|j| j.submission_id.as_deref() == Some(in_flight.as_str()));
    assert!(
        stopped.is_none_or(|j| j.status.is_terminal()),
        "a job outlived its coordinator: {stopped:?}"
    );
    let before_restart: BTreeSet<String> = jobs.iter().filter_map(|j| j.submission_id.clone()).collect();

    // Second process: the round finishes; no attempt number is used twice.
    let mut d = Daemon::start(&setup);
    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let log = d.log();
    let submitted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Ray job submitted"))
        .filter_map(|l| l.split("job=").nth(1)?.split_whitespace().next())
        .collect();
    for id in &submitted {
        assert!(
            !before_restart.contains(*id),
            "{id} was submitted again after the restart"
        );
    }
    let metrics = metrics_by_hotkey(&d);
    for ((behaviour, _, expected), signer) in CASES.iter().zip(&signers) {
        let m = &metrics[&signer.hotkey];
        assert_eq!(m["verdict"], *expected, "{behaviour:?}: {m}\n{}", d.log());
        if *expected == "ok" {
            assert_eq!(
                m["challenge_metrics"].as_array().unwrap().len(),
                SCORED,
                "{behaviour:?}"
            );
        } else {
            assert_eq!(m["final_score"], 0.0, "{behaviour:?}");
        }
    }
    // The same qualities as the local path gives the same images.
    for i in [0, 1] {
        let local = evaluated_locally(&refs[i], &host_config);
        let remote = qualities(&metrics[&signers[i].hotkey]);
        assert_eq!(local.len(), remote.len());
        for ((lid, lq), (rid, rq)) in local.iter().zip(&remote) {
            assert_eq!(lid, rid);
            assert!(
                (lq - rq).abs() < 1e-9,
                "{:?} {lid}: {rq} through Ray, {lq} locally",
                CASES[i].0
            );
        }
    }
    let good = metrics[&signers[0].hotkey]["final_score"].as_f64().unwrap();
    let flat = metrics[&signers[1].hotkey]["final_score"].as_f64().unwrap();
    assert!(good > flat && flat >= 0.0, "good {good}, static {flat}");

    // The coordinator counts its attempts (since this process started: the miners left after the
    // restart, and the next round's so far).
    let prom = String::from_utf8(d.request(&HttpRequest::new("GET", "/prometheus")).body).unwrap();
    let attempts = |outcome: &str| -> i64 {
        let line = format!("talkheadd_cluster_attempts{{outcome=\"{outcome}\"}} ");
        prom.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("no {line} in\n{prom}"))
            .parse()
            .unwrap()
    };
    assert!(
        attempts("reported") >= 1 && attempts("submitted") >= attempts("reported"),
        "{prom}"
    );
    assert!(
        prom.contains("talkheadd_cluster_jobs{state=\"RUNNING\"}"),
        "{prom}"
    );

    // The next round has started meanwhile: stopping the coordinator stops its jobs, and nothing
    // is left running on the cluster nor on the host.
    assert!(d.stop().success());
    let left: Vec<_> = rt
        .block_on(client.list())
        .unwrap()
        .into_iter()
        .filter(|j| !j.status.is_terminal())
        .collect();
    assert!(left.is_empty(), "jobs left running: {left:?}");
    assert_eq!(managed_containers(), Vec::<String>::new());

    // Where each evaluation ran, what was not charged, and the containers' confinement.
    let mut lost_seen = false;
    for (i, signer) in signers.iter().enumerate() {
        let notes: Vec<String> = runs_of(&state, &signer.hotkey)
            .into_iter()
            .flat_map(|r| r.notes)
            .collect();
        let logs = run_logs(&state, &signer.hotkey);
        assert!(
            notes
                .iter()
                .any(|n| n.contains("ran on host") && n.contains("GPU virtual-")),
            "{:?}: {notes:?}",
            CASES[i].0
        );
        lost_seen |= notes
            .iter()
            .any(|n| n.starts_with("not charged:") && n.contains(&lost));
        match CASES[i].0 {
            Behaviour::Network => assert!(
                logs.contains("unreachable") && !logs.contains("REACHED"),
                "{logs}"
            ),
            Behaviour::WriteInput => assert!(
                logs.contains("input_writable=false") || logs.contains("\"input_writable\":false"),
                "{logs}"
            ),
            _ => {}
        }
    }
    assert!(lost_seen, "no history names the lost job {lost}");
}
