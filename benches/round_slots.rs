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
//! challenges instead of the default 2 + 5.

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

fn round(refs: &[String], slots: u32, seed: u8) -> Duration {
    let setup = Setup::new("");
    let counts = env_u64("ROUND_SLOTS_SCORED")
        .map(|k| format!("warmup_count = 1\nscoring_count = {k}\n"))
        .unwrap_or_default();
    let extra = bench_config(setup.dir.path(), &counts, &format!("[gpu]\nvirtual = {slots}\n"));
    let setup = Setup { extra, ..setup };
    let mut d = Daemon::start(&setup);
    let signers: Vec<Signer> = (0..MINERS).map(|i| Signer::from_seed(seed + i as u8)).collect();
    let rows = numbered_submissions(&signers, refs);
    let started = Instant::now();
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&rows)));
    assert_eq!(r.status, 200);
    d.wait_for_within("round 1 committed", Duration::from_secs(1800));
    let took = started.elapsed();
    assert!(d.stop().success());
    took
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
    for slots in [1u32, 4] {
        for i in 0..repeat {
            let took = round(&refs, slots, 200 + (i as u8) * 20);
            println!("round_slots/{slots}_slots: {:.1} s", took.as_secs_f64());
        }
    }
}
