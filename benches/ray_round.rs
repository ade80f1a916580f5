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

/// Seconds of (dispatch → worker start, worker end → staged) of each of the round's runs.
fn overheads(state: &std::path::Path, signers: &[Signer]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
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
            out.push((from - r.started_at, r.finished_at - to));
        }
    }
    out
}

/// Seconds from dispatch to staged result of each of the round's runs.
fn run_seconds(state: &std::path::Path, signers: &[Signer]) -> Vec<f64> {
    signers
        .iter()
        .flat_map(|s| runs_of(state, &s.hotkey))
        .filter(|r| r.round == 1)
        .map(|r| r.finished_at - r.started_at)
        .collect()
}

/// `mean (min–max)` of `values`.
fn spread(values: impl Iterator<Item = f64>) -> String {
    let v: Vec<f64> = values.collect();
    let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{mean:.2} s ({min:.2}–{max:.2})")
}

/// A coordinator of `cluster` with one job slot per GPU: a run is dispatched when a GPU is free, so
/// its dispatch → worker start is Ray's and the worker's overhead, not a wait for a GPU.
fn ray_setup(cluster: &RayHosts, gpus: usize) -> Setup {
    let setup = Setup::new("");
    let extra = format!(
        "{}{}",
        bench_config(setup.dir.path(), "warmup_count = 1\nscoring_count = 2\n", ""),
        ray::cluster_table(
            setup.dir.path(),
            &cluster.address,
            &cluster.token,
            &cluster.bridge_ip,
            &format!("max_jobs = {gpus}\njob_cpus = 0.5\n")
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
    let (wall, state, signers) = round(Setup { extra, ..local }, &refs, 60);
    let local_run = run_seconds(&state, &signers);
    println!(
        "local path, 2 virtual GPU slots: round {:.1} s; per evaluation, dispatch -> staged {}",
        wall.as_secs_f64(),
        spread(local_run.iter().copied())
    );
    let local_mean = local_run.iter().sum::<f64>() / local_run.len().max(1) as f64;

    for hosts in [1usize, 2] {
        let cluster = RayHosts::start(hosts, &["virtual-0", "virtual-1"], &env);
        cluster.wait_for_gpus(2.0 * hosts as f64);
        let (wall, state, signers) = round(ray_setup(&cluster, 2 * hosts), &refs, 80 + 10 * hosts as u8);
        let runs = overheads(&state, &signers);
        let whole = run_seconds(&state, &signers);
        let mean = whole.iter().sum::<f64>() / whole.len().max(1) as f64;
        println!(
            "ray, {hosts} host(s) x 2 virtual GPUs: round {:.1} s; per evaluation ({} runs): dispatch -> staged {} \
             ({:.2}x the local path's), of which dispatch -> worker start {} and worker end -> staged {}",
            wall.as_secs_f64(),
            runs.len(),
            spread(whole.iter().copied()),
            mean / local_mean,
            spread(runs.iter().map(|r| r.0)),
            spread(runs.iter().map(|r| r.1)),
        );
    }
}
