//! Whole-system bench of the Ray scale-out: one round of 8 miners that take `RAY_ROUND_DELAY_MS`
//! (default 3000) per challenge, 1 warm-up + 2 scored each, from `POST /update` to "round 1
//! committed", three ways in the same run: the local path on 2 virtual GPU slots, the daemon as Ray
//! coordinator on 1 GPU host × 2 virtual GPUs, and on 2 hosts × 2 (hosts in network namespaces of
//! this machine, as `tests/ray_hosts.rs` builds them). Not criterion: a round takes minutes.
//!
//!     cargo bench -p talkheadd --profile dev --bench ray_round
//!
//! For each Ray round it also prints the per-evaluation overhead of dispatching through Ray, from the
//! runs' history (the coordinator's dispatch and staging against the worker's own start and end,
//! one clock here): dispatch → worker started (job submission, Ray's scheduling, the worker's process
//! start, its spec and challenge fetch) and worker finished → result staged (the uploads, the report,
//! the hand-over and the store). Needs root and what `tests/ray_hosts.rs` needs (`tests/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/images.rs"]
mod images;
#[path = "../tests/common/ray.rs"]
mod ray;

use common::*;
use images::Behaviour;
use ray::RayHosts;
use std::time::{Duration, Instant};

const MINERS: usize = 8;

/// One round on the daemon `setup` configures; its wall time, the daemon's state file and the miners.
fn round(setup: Setup, refs: &[String], seed: u8) -> (Duration, std::path::PathBuf, Vec<Signer>) {
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..MINERS).map(|i| Signer::from_seed(seed + i as u8)).collect();
    let rows = numbered_submissions(&signers, refs);
    let started = Instant::now();
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&rows)));
    assert_eq!(r.status, 200);
    d.wait_for_within("round 1 committed", Duration::from_secs(1800));
    let wall = started.elapsed();
    let state = d.state.clone();
    assert!(d.stop().success());
    // The setup's directory (and state file) lives until the caller has read it.
    std::mem::forget(setup);
    (wall, state, signers)
}

/// Mean seconds of (dispatch → worker start, worker end → staged) over the round's runs.
fn overheads(state: &std::path::Path, signers: &[Signer]) -> (f64, f64, usize) {
    let (mut before, mut after, mut n) = (0.0, 0.0, 0usize);
    for s in signers {
        for r in runs_of(state, &s.hotkey).into_iter().filter(|r| r.round == 1) {
            let Some((from, to)) = r.notes.iter().find_map(|note| {
                let (_, times) = note.strip_prefix("ran on host ")?.split_once(", from ")?;
                let (from, rest) = times.split_once(" to ")?;
                Some((
                    from.parse::<f64>().ok()?,
                    rest.split_whitespace().next()?.parse::<f64>().ok()?,
                ))
            }) else {
                continue;
            };
            before += from - r.started_at;
            after += r.finished_at - to;
            n += 1;
        }
    }
    (before / n.max(1) as f64, after / n.max(1) as f64, n)
}

fn ray_setup(cluster: &RayHosts) -> Setup {
    let setup = Setup::new("");
    let extra = format!(
        "{}{}",
        bench_config(setup.dir.path(), "warmup_count = 1\nscoring_count = 2\n", ""),
        ray::cluster_table(
            setup.dir.path(),
            &cluster.address,
            &cluster.token,
            &cluster.bridge_ip,
            "max_jobs = 8\njob_cpus = 0.5\n"
        ),
    );
    Setup { extra, ..setup }
}

fn main() {
    let delay: u64 = std::env::var("RAY_ROUND_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    // Eight distinct digests: the slow miner with eight delays a millisecond apart.
    let behaviours: Vec<(Behaviour, &[(&str, &str)])> = (0..MINERS as u64)
        .map(|i| {
            let ms: &'static str = Box::leak((delay + i).to_string().into_boxed_str());
            let options: &'static [(&'static str, &'static str)] = Box::leak(Box::new([("delay_ms", ms)]));
            (Behaviour::Slow, options)
        })
        .collect();
    let refs = images::build_and_push_all(&behaviours, &fixtures());
    let dir = tempfile::tempdir().unwrap();
    let host_config = ray::gpu_host_config(dir.path(), 2);
    let env = [
        ("TALKHEADD_CONFIG", host_config.to_str().unwrap()),
        ("RUST_LOG", "warn"),
    ];

    let local = Setup::new("");
    let extra = bench_config(
        local.dir.path(),
        "warmup_count = 1\nscoring_count = 2\n",
        "[gpu]\nvirtual = 2\n",
    );
    let (wall, _, _) = round(Setup { extra, ..local }, &refs, 60);
    println!(
        "local path, 2 virtual GPU slots: round {:.1} s",
        wall.as_secs_f64()
    );

    for hosts in [1usize, 2] {
        let cluster = RayHosts::start(hosts, &["virtual-0", "virtual-1"], &env);
        cluster.wait_for_gpus(2.0 * hosts as f64);
        let (wall, state, signers) = round(ray_setup(&cluster), &refs, 80 + 10 * hosts as u8);
        let (before, after, n) = overheads(&state, &signers);
        println!(
            "ray, {hosts} host(s) x 2 virtual GPUs: round {:.1} s; per evaluation ({n} runs): dispatch -> worker start {before:.2} s, worker end -> staged {after:.2} s",
            wall.as_secs_f64()
        );
    }
}
