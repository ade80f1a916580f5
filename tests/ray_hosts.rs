//! A round across two GPU hosts of a real Ray cluster, one of which is lost mid-round: the head in this
//! network namespace, two GPU hosts in network (and UTS) namespaces of their own behind a bridge, each
//! raylet with two virtual GPU slots in `CUDA_VISIBLE_DEVICES` (the host's configuration in
//! `TALKHEADD_CONFIG`), the daemon as coordinator on the bridge (its workers' listener is what the
//! hosts reach), test miners built from this project's code and pushed to the local registry by
//! digest.
//!
//! Asserts that the Jobs API refuses a request without the cluster's token; that the round commits
//! with every miner's verdict although one host is lost while it runs an evaluation (every process in
//! its namespace killed at once, as a power cut): its evaluation is retried on the other host and the
//! miner is charged nothing, the lost attempt named in the history; that evaluations ran on both
//! hosts, never more than four at once (two hosts × two GPUs) and never two at once on one GPU of one
//! host; and that no container is left on the machine (the lost worker's container is reaped by a
//! later worker, which sees its process gone).
//!
//! Needs root (network namespaces), the Ray of `tests/setup.sh`, dockerd, the registry on
//! 127.0.0.1:5000, ffmpeg and opencv-data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/images.rs"]
mod images;
#[path = "common/ray.rs"]
mod ray;

use common::*;
use images::Behaviour;
use ray::RayHosts;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use talkheadd::cluster::ray_jobs::{RayError, RayJobs};

/// Longest the round may take.
const ROUND_LIMIT: Duration = Duration::from_secs(900);

/// A behaviour, its build options and the verdict it must get.
type Case = (Behaviour, &'static [(&'static str, &'static str)], &'static str);

/// Six miners; the slow ones keep the hosts busy long enough for one to be lost under a run.
const CASES: [Case; 6] = [
    (Behaviour::Good, &[], "ok"),
    (Behaviour::Slow, &[("delay_ms", "3000")], "ok"),
    (Behaviour::Static, &[], "ok"),
    (Behaviour::Slow, &[("delay_ms", "2500")], "ok"),
    (Behaviour::Crash, &[], "crashed"),
    (Behaviour::GarbageJson, &[], "bad_output"),
];

/// One run as its history note says: host, GPU, and when, on that host's clock.
#[derive(Debug, Clone, PartialEq)]
struct Placement {
    host: String,
    gpu: String,
    from: f64,
    to: f64,
}

/// `ran on host <h> GPU <g> (<model>) as Ray job <id>, from <t> to <t> (…)`.
fn placement(note: &str) -> Option<Placement> {
    let rest = note.strip_prefix("ran on host ")?;
    let (host, rest) = rest.split_once(" GPU ")?;
    let (gpu, rest) = rest.split_once(' ')?;
    let (_, times) = rest.split_once(", from ")?;
    let (from, rest) = times.split_once(" to ")?;
    let to = rest.split_whitespace().next()?;
    Some(Placement {
        host: host.to_owned(),
        gpu: gpu.to_owned(),
        from: from.parse().ok()?,
        to: to.parse().ok()?,
    })
}

/// The most runs of `runs` under way at one instant.
fn most_at_once(runs: &[Placement]) -> usize {
    let mut edges: Vec<(f64, i32)> = runs.iter().flat_map(|r| [(r.from, 1), (r.to, -1)]).collect();
    // An end and a start at the same instant do not overlap.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap()
}

#[test]
fn a_round_across_two_hosts_survives_losing_one_and_charges_no_miner_for_it() {
    let behaviours: Vec<_> = CASES.iter().map(|(b, o, _)| (*b, *o)).collect();
    let refs = images::build_and_push_all(&behaviours, &fixtures());
    let dir = tempfile::tempdir().unwrap();
    let host_config = ray::gpu_host_config(dir.path(), 2);
    let cluster = RayHosts::start(
        2,
        &["virtual-0", "virtual-1"],
        &[
            ("TALKHEADD_CONFIG", host_config.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ],
    );
    cluster.wait_for_gpus(4.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The Jobs API without the token is refused.
    let anonymous = RayJobs::new(&cluster.address, None).unwrap();
    assert!(
        matches!(rt.block_on(anonymous.list()), Err(RayError::Unauthorized { .. })),
        "the Jobs API answered without the token"
    );

    let setup = Setup::new("");
    let extra = format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\nchallenges_dir = \"{}\"\nwarmup_count = 1\nscoring_count = 2\n\
         ready_timeout_secs = 30\nchallenge_timeout_secs = 20\nwork_dir = \"{}\"\n{}",
        fixtures().display(),
        setup.dir.path().join("jobs").display(),
        ray::cluster_table(
            setup.dir.path(),
            &cluster.address,
            &cluster.token,
            &cluster.bridge_ip,
            "max_jobs = 8\nmax_attempts = 5\njob_cpus = 0.5\n"
        ),
    );
    let setup = Setup { extra, ..setup };
    let signers: Vec<Signer> = (0..CASES.len())
        .map(|i| Signer::from_seed(170 + i as u8))
        .collect();
    let miners: Vec<(String, String, f64)> = numbered_submissions(&signers, &refs)
        .into_iter()
        .map(|(hotkey, image, at)| (hotkey.to_owned(), image, at))
        .collect();
    let mut d = Daemon::start(&setup);
    submit(&d, &miners);

    // Host 1 is lost while a worker of its runs.
    let lost = &cluster.hosts[0];
    let deadline = Instant::now() + Duration::from_secs(180);
    while !RayHosts::processes(lost).into_iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"worker"))
    }) {
        assert!(
            Instant::now() < deadline,
            "no worker ever ran on {}:\n{}",
            lost.hostname,
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    RayHosts::kill(lost);

    d.wait_for_within("round 1 committed", ROUND_LIMIT);
    let metrics = metrics_by_hotkey(&d);
    for ((behaviour, _, expected), signer) in CASES.iter().zip(&signers) {
        let m = &metrics[&signer.hotkey];
        assert_eq!(m["verdict"], *expected, "{behaviour:?}: {m}\n{}", d.log());
    }
    let state = d.state.clone();
    assert!(d.stop().success());

    let mut runs = Vec::new();
    let mut not_charged = Vec::new();
    for signer in &signers {
        for record in runs_of(&state, &signer.hotkey)
            .into_iter()
            .filter(|r| r.round == 1)
        {
            if record.verdict.to_string() == "infra_error" {
                continue;
            }
            let placed: Vec<Placement> = record.notes.iter().filter_map(|n| placement(n)).collect();
            assert_eq!(placed.len(), 1, "{:?}", record.notes);
            runs.extend(placed);
            not_charged.extend(
                record
                    .notes
                    .iter()
                    .filter(|n| n.starts_with("not charged:"))
                    .cloned(),
            );
        }
    }
    assert!(
        not_charged.iter().any(|n| n.contains("without a report")),
        "no run names the attempt lost with the host: {not_charged:?}\n{runs:?}"
    );
    let hosts: BTreeMap<&str, usize> = runs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.host.as_str()).or_insert(0) += 1;
        m
    });
    assert!(hosts.contains_key("gpu-host-2"), "{hosts:?}");
    assert!(most_at_once(&runs) <= 4, "{runs:?}");
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            let same_gpu = a.host == b.host && a.gpu == b.gpu;
            assert!(
                !(same_gpu && a.from < b.to && b.from < a.to),
                "two runs at once on {} {}: {a:?} {b:?}",
                a.host,
                a.gpu
            );
        }
    }
    // The lost worker's container was reaped by a later worker, which saw its process gone.
    assert_eq!(managed_containers(), Vec::<String>::new());
    drop(cluster);
}

#[test]
fn placements_are_read_back_from_the_history_and_overlaps_counted() {
    let note = "ran on host gpu-host-1 GPU virtual-0 (virtual GPU slot) as Ray job talkheadd-e-a1, \
                from 10.500 to 12.000 (Unix seconds, that host's clock)";
    let p = placement(note).unwrap();
    assert_eq!(
        (p.host.as_str(), p.gpu.as_str(), p.from, p.to),
        ("gpu-host-1", "virtual-0", 10.5, 12.0)
    );
    let run = |from: f64, to: f64| Placement {
        host: "h".into(),
        gpu: "g".into(),
        from,
        to,
    };
    assert_eq!(most_at_once(&[run(0.0, 2.0), run(1.0, 3.0), run(2.0, 4.0)]), 2);
    assert_eq!(most_at_once(&[run(0.0, 1.0), run(1.0, 2.0)]), 1);
}
