//! Serialising `GET /metrics` for 1,024 miners × 5 scored challenges (target: under 5 ms). The gateway
//! caches the body per `metrics_version`, so this is the cost paid once per committed change.
//!
//! Two figures: `metrics_body_1024_miners_x5` renders decoded rows held in memory (every number
//! re-encoded); `metrics_body_from_store_1024_miners_x5` is what the gateway really does after a
//! commit: one LMDB read transaction on a real store file, each miner's stored metrics JSON copied
//! verbatim into the body ([`talkheadd::store::Store::with_metrics_json`]).
//!
//! `metrics_body_1024_miners_x5_without_debug` is the in-memory shape before each entry got its
//! `debug` object, measured in the same run so that the cost of `debug` is read under the same load.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use talkheadd::domain::metrics::{ChallengeDebug, ChallengeMetrics, EfficiencyMetrics};
use talkheadd::domain::{EvaluationMetrics, Hotkey, ImageRef, Submission, Verdict};
use talkheadd::rounds::ReevaluatePolicy;
use talkheadd::scoring::{IdentityMode, ScoringProfile};
use talkheadd::store::{MetricsRow, Store, StoreOptions};

const MINERS: usize = 1024;

fn efficiency(i: f64) -> EfficiencyMetrics {
    EfficiencyMetrics {
        peak_vram_gb: Some(8.0 + i / 100.0),
        inference_time_sec: Some(10.0 + i / 50.0),
        time_norm: 0.083,
        vram_norm: 0.25,
        efficiency_factor: 0.963,
        cap_violation: false,
        cap_multiplier: 1.0,
        time_missing: false,
        vram_missing: false,
    }
}

fn rows(n: usize) -> Vec<MetricsRow> {
    (0..n)
        .map(|i| {
            let mut pk = [0u8; 32];
            pk[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let image = ImageRef::parse(&format!(
                "registry.example:5000/miner{i}/talkhead:v1@sha256:{:064x}",
                i
            ))
            .unwrap();
            let f = i as f64;
            let mut metrics =
                EvaluationMetrics::failed(Verdict::Ok, "", image.as_str(), 1.7e9 + f, 1.7e9 + f, 5);
            metrics.error = None;
            metrics.final_score = 0.5 + f / 4096.0;
            metrics.quality_score = 0.52;
            metrics.efficiency = efficiency(f);
            metrics.run_id = format!("run-{i:08}");
            metrics.challenge_metrics = (0..5)
                .map(|c| ChallengeMetrics {
                    challenge_id: format!("challenge-{}", c + 2),
                    success: true,
                    video_url: None,
                    verdict: Verdict::Ok,
                    identity: Some(0.81),
                    lipsync: Some(0.62),
                    audio: Some(0.74),
                    video: Some(0.55),
                    temporal: Some(0.66),
                    penalty: Some(0.05),
                    wer: Some(0.12),
                    quality_score: Some(0.52),
                    final_score: Some(0.5),
                    efficiency: Some(efficiency(f)),
                    host_time_sec: None,
                    peak_vram_gb: None,
                    inference_time_sec: None,
                    error: None,
                    debug: Some(ChallengeDebug {
                        sync_c: 0.71,
                        sync_d: 0.12,
                        face_detect_ratio: 0.9875,
                        identity_mode: IdentityMode::FallbackHistogram,
                        face_detect_gate_applied: false,
                        face_backend: "haar".to_owned(),
                        asr_backend: "none".to_owned(),
                        analysis_time_sec: 0.412 + f / 1e4,
                        scoring_profile: ScoringProfile::Hardened,
                        picture_mismatches: Vec::new(),
                    }),
                })
                .collect();
            MetricsRow {
                hotkey: Hotkey::from_public_key(pk),
                image_ref: image,
                submit_time: 1.7e9 + f,
                metrics,
                carried_over: false,
            }
        })
        .collect()
}

/// A real store file holding `rows` as one committed round.
fn committed_store(rows: &[MetricsRow], dir: &std::path::Path) -> Store {
    let store = Store::open(&dir.join("state.db"), StoreOptions::default()).unwrap();
    let batch: Vec<Submission> = rows
        .iter()
        .map(|r| Submission {
            hotkey: r.hotkey.clone(),
            image_ref: r.image_ref.clone(),
            submit_time: r.submit_time,
        })
        .collect();
    store.upsert_submissions(&batch, 1.8e9).unwrap();
    for ticket in store.pending().unwrap() {
        let row = rows.iter().find(|r| r.hotkey == ticket.hotkey).unwrap();
        let mut metrics = row.metrics.clone();
        metrics.round = ticket.round;
        store.stage_result(&ticket, metrics).unwrap();
    }
    let identity = |inputs: &[talkheadd::store::RankInput<'_>]| (0..inputs.len()).collect();
    let commit = store
        .commit_round_if_complete(&ReevaluatePolicy::All, &identity)
        .unwrap();
    assert!(commit.is_some(), "the round must commit");
    store
}

fn bench(c: &mut Criterion) {
    let rows = rows(MINERS);
    let size = talkheadd::service::render_metrics_body(&rows).unwrap().len();
    println!("metrics body for {MINERS} miners x 5 challenges: {size} bytes");
    c.bench_function("metrics_body_1024_miners_x5", |b| {
        b.iter(|| talkheadd::service::render_metrics_body(black_box(&rows)).unwrap())
    });
    let mut bare = rows.clone();
    for row in &mut bare {
        for entry in &mut row.metrics.challenge_metrics {
            entry.debug = None;
        }
    }
    let size = talkheadd::service::render_metrics_body(&bare).unwrap().len();
    println!("the same without debug: {size} bytes");
    c.bench_function("metrics_body_1024_miners_x5_without_debug", |b| {
        b.iter(|| talkheadd::service::render_metrics_body(black_box(&bare)).unwrap())
    });

    let dir = tempfile::tempdir().unwrap();
    let store = committed_store(&rows, dir.path());
    let served = |store: &Store| {
        store
            .with_metrics_json(|_, rows| talkheadd::service::render_metrics_body(rows).unwrap())
            .unwrap()
    };
    // The served body says exactly what rendering the same store's decoded rows says.
    let decoded = talkheadd::service::render_metrics_body(&store.metrics_view().unwrap().rows).unwrap();
    let as_value = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let body = served(&store);
    assert_eq!(as_value(&body), as_value(&decoded));
    println!(
        "served from the store: {} bytes (decoded and re-rendered: {} bytes)",
        body.len(),
        decoded.len()
    );
    c.bench_function("metrics_body_from_store_1024_miners_x5", |b| {
        b.iter(|| served(black_box(&store)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
