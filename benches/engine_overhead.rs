//! Whole-system bench of the daemon's own overhead per challenge (the real release daemon, the real
//! Docker engine, images pulled from the local registry by digest): how long placing a task takes,
//! how late the daemon detects a result after the miner wrote it, and how far its measured inference
//! time is from the truth for a miner that sleeps a known time. Not criterion: every challenge is one
//! sample, taken from the daemon's `talkheadd::timing` debug lines (see `engine/timing.rs`). Needs what
//! the engine tests need (`tests/setup.sh`).
//!
//!     cargo bench -p talkheadd --bench engine_overhead
//!
//! `ENGINE_OVERHEAD_MINERS=M` (default 8) miners per kind, each through the 7 bundled challenges
//! (2 warm-ups + 5 scored); `ENGINE_OVERHEAD_SLEEP_MS=N` (default 200) the sleeping miner's time.
//!
//! Definitions (all per challenge):
//! - placement: staging face.png, audio.wav and task.json (host monotonic clock);
//! - detection latency: the daemon's detection time minus the miner-reported time taken just before
//!   it wrote and renamed `{id}.json` (both CLOCK_REALTIME of the same kernel);
//! - measured-time error: the host-measured inference time (task placed → result detected) minus the
//!   miner's known time (it answers exactly `delay_ms` after it saw the task, its video copied within
//!   that time). It includes the miner's own reaction (it polls task.json every `poll_us`, 500 µs
//!   here) and lateness; the miner's own task-seen → written interval is printed beside it to
//!   separate the two.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/images.rs"]
mod images;

use common::*;
use std::time::Duration;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One `challenge timing` line.
#[derive(Debug, Default, Clone)]
struct Sample {
    placement_us: f64,
    placed_unix: f64,
    detected_unix: f64,
    host_seconds: f64,
    seen_unix: f64,
    written_unix: f64,
}

fn field(line: &str, name: &str) -> Option<f64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()?.parse().ok()
}

fn samples(log: &str) -> Vec<Sample> {
    log.lines()
        .filter(|l| l.contains("challenge timing"))
        .filter_map(|l| {
            Some(Sample {
                placement_us: field(l, "placement_us")?,
                placed_unix: field(l, "placed_unix")?,
                detected_unix: field(l, "detected_unix")?,
                host_seconds: field(l, "host_seconds")?,
                seen_unix: field(l, "miner_task_seen_unix")?,
                written_unix: field(l, "miner_written_unix")?,
            })
        })
        .collect()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn report(what: &str, mut values: Vec<f64>, unit: &str) {
    let n = values.len();
    let p50 = percentile(&mut values, 50.0);
    let p99 = percentile(&mut values, 99.0);
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    println!("{what}: n={n} p50={p50:.3} {unit} p99={p99:.3} {unit} max={max:.3} {unit}");
}

/// One round of `refs` (one slot), returning the daemon's timing lines.
fn round(refs: &[String], seed: u8) -> Vec<Sample> {
    let setup = Setup::new("");
    let extra = bench_config(
        setup.dir.path(),
        "",
        "[docker]\nimage_cache_bytes = 0\n[gpu]\nvirtual = 1\n",
    );
    let setup = Setup { extra, ..setup };
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..refs.len())
        .map(|i| Signer::from_seed(seed + i as u8))
        .collect();
    let rows = numbered_submissions(&signers, refs);
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&rows)));
    assert_eq!(r.status, 200);
    d.wait_for_within("round 1 committed", Duration::from_secs(3600));
    let log = d.log();
    assert!(d.stop().success());
    let s = samples(&log);
    assert!(!s.is_empty(), "no timing lines in the daemon log:\n{log}");
    s
}

fn main() {
    let miners = env_u64("ENGINE_OVERHEAD_MINERS").unwrap_or(8);
    let sleep_ms = env_u64("ENGINE_OVERHEAD_SLEEP_MS").unwrap_or(200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let build = |delay: u64| -> Vec<String> {
        rt.block_on(async {
            let mut refs = Vec::new();
            for i in 0..miners {
                // Distinct digests (no duplicate verdicts) through a distinct start-up delay.
                let delay = delay.to_string();
                let startup = i.to_string();
                let pushed = images::build_and_push_miner_with(
                    images::Behaviour::Good,
                    &[
                        ("delay_ms", &delay),
                        ("startup_delay_ms", &startup),
                        ("poll_us", "500"),
                        ("report_times", "true"),
                    ],
                    &fixtures(),
                )
                .await
                .unwrap();
                refs.push(pushed.reference);
            }
            refs
        })
    };
    let instant = build(0);
    let sleeping = build(sleep_ms);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{miners} miners per kind x 7 challenges, host with {cpus} CPUs");

    let fast = round(&instant, 40);
    let slept = round(&sleeping, 80);
    let all: Vec<Sample> = fast.iter().chain(&slept).cloned().collect();
    report(
        "task placement (stage face, audio, task.json)",
        all.iter().map(|s| s.placement_us / 1000.0).collect(),
        "ms",
    );
    report(
        "result detection latency (detected - miner's write time)",
        all.iter()
            .map(|s| (s.detected_unix - s.written_unix) * 1000.0)
            .collect(),
        "ms",
    );
    report(
        &format!("measured-time error vs the {sleep_ms} ms truth (host time - sleep)"),
        slept
            .iter()
            .map(|s| s.host_seconds * 1000.0 - sleep_ms as f64)
            .collect(),
        "ms",
    );
    report(
        "  of which the miner's reaction (task placed -> miner saw it)",
        slept
            .iter()
            .map(|s| (s.seen_unix - s.placed_unix) * 1000.0)
            .collect(),
        "ms",
    );
    report(
        "  and the miner's own answer time beyond the sleep (seen -> written - sleep)",
        slept
            .iter()
            .map(|s| (s.written_unix - s.seen_unix) * 1000.0 - sleep_ms as f64)
            .collect(),
        "ms",
    );
}
