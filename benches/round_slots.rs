//! Whole-daemon bench: the wall time of one round of 8 instantly answering miners on 1 versus 4
//! virtual GPU slots (the real daemon, the real Docker engine, images pulled from the local registry
//! by digest), from `POST /update` to "round 1 committed". Not criterion: one round takes tens of
//! seconds, so each configuration runs `ROUND_SLOTS_REPEAT` times (default 1) and every figure is
//! printed. Needs what the engine tests need (`tests/setup.sh`).
//!
//!     cargo bench -p talkheadd --bench round_slots
//!
//! `ROUND_SLOTS_DELAY_MS=N` makes every miner take N ms per challenge (a miner whose time is GPU
//! inference rather than the host's analysis); `ROUND_SLOTS_SCORED=K` evaluates 1 warm-up + K scored
//! challenges instead of the default 2 + 5; `ROUND_SLOTS_SLOTS=4` measures only that configuration.
//!
//! With each round it prints the daemon's CPU use over the round, from `/proc/<pid>/stat`: its own
//! (utime + stime: the scheduler, Docker API calls, the file protocol, the analysis in-process) and its
//! waited-for children's (cutime + cstime: ffprobe/ffmpeg). The miners' containers are not its children.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/images.rs"]
mod images;

use common::*;
use std::time::{Duration, Instant};

const MINERS: usize = 8;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What one round cost.
struct RoundCost {
    wall: Duration,
    /// The daemon's own CPU seconds (user + system) over the round.
    own_cpu: f64,
    /// CPU seconds of its children that ended during the round (ffprobe, ffmpeg).
    children_cpu: f64,
}

/// `/proc` reports CPU times in USER_HZ ticks, which the kernel ABI fixes at 100 per second.
const USER_HZ: f64 = 100.0;

/// (own, children) CPU seconds of `pid` so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis, where
    // field 3 (state) has index 0, so utime/stime/cutime/cstime (fields 14-17) have 11-14.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap())
        .collect();
    ((f[0] + f[1]) / USER_HZ, (f[2] + f[3]) / USER_HZ)
}

fn round(refs: &[String], slots: u32, seed: u8) -> RoundCost {
    let setup = Setup::new("");
    let counts = env_u64("ROUND_SLOTS_SCORED")
        .map(|k| format!("warmup_count = 1\nscoring_count = {k}\n"))
        .unwrap_or_default();
    let extra = bench_config(setup.dir.path(), &counts, &format!("[gpu]\nvirtual = {slots}\n"));
    let setup = Setup { extra, ..setup };
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..MINERS).map(|i| Signer::from_seed(seed + i as u8)).collect();
    let rows = numbered_submissions(&signers, refs);
    let (own0, children0) = cpu_seconds(d.pid());
    let started = Instant::now();
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&rows)));
    assert_eq!(r.status, 200);
    d.wait_for_within("round 1 committed", Duration::from_secs(1800));
    let wall = started.elapsed();
    let (own1, children1) = cpu_seconds(d.pid());
    assert!(d.stop().success());
    RoundCost {
        wall,
        own_cpu: own1 - own0,
        children_cpu: children1 - children0,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that names neither configuration skips this bench.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refs: Vec<String> = rt.block_on(async {
        let mut refs = Vec::new();
        for i in 0..MINERS {
            // Distinct digests (no duplicate verdicts); a delay of i ms is "instant".
            let delay = (env_u64("ROUND_SLOTS_DELAY_MS").unwrap_or(0) + i as u64).to_string();
            let pushed = images::build_and_push_miner_with(
                images::Behaviour::Good,
                &[("delay_ms", &delay)],
                &fixtures(),
            )
            .await
            .unwrap();
            refs.push(pushed.reference);
        }
        refs
    });
    let repeat: usize = std::env::var("ROUND_SLOTS_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "round of {MINERS} miners taking {} ms per challenge, host with {cpus} CPUs",
        env_u64("ROUND_SLOTS_DELAY_MS").unwrap_or(0)
    );
    let only = env_u64("ROUND_SLOTS_SLOTS").and_then(|n| u32::try_from(n).ok());
    for slots in [1u32, 4].into_iter().filter(|s| only.is_none_or(|o| o == *s)) {
        for i in 0..repeat {
            let cost = round(&refs, slots, 200 + (i as u8) * 20);
            let wall = cost.wall.as_secs_f64();
            println!(
                "round_slots/{slots}_slots: {wall:.1} s; daemon CPU {:.2} s own ({:.1} % of one core), {:.2} s in ffprobe/ffmpeg children",
                cost.own_cpu,
                100.0 * cost.own_cpu / wall,
                cost.children_cpu
            );
        }
    }
}
