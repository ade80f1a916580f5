//! `talkheadd worker` end to end against the cluster listener: the real binary started as Ray would
//! start it (arguments naming only the coordinator, the evaluation and the attempt; the token in
//! `TALKHEADD_ATTEMPT_TOKEN`, the GPU in `CUDA_VISIBLE_DEVICES`), a real Docker engine, the project's
//! test miner pushed to the local registry by digest, and the listener in this process over real TCP.
//!
//! Asserts that the worker fetches the fixture challenges through the listener, runs the attempt as
//! `talkheadd evaluate` does (the same verdict and the same quality per challenge), uploads every
//! scored video with its hash and a report the listener accepts; that a host without a GPU for the job
//! reports `infra_error` (never the miner's) with the reason; and that a worker with another
//! attempt's token delivers nothing; and that a worker removes the containers workers gone from its
//! host left (not those of live ones) before it runs.
//!
//! Needs dockerd, the registry on 127.0.0.1:5000, ffmpeg and opencv-data (`tests/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/images.rs"]
mod images;

use common::*;
use images::Behaviour;
use sha2::{Digest, Sha256};
use std::path::Path;
use talkheadd::cluster::attempts::SharedSettings;
use talkheadd::cluster::job::TOKEN_ENV;
use talkheadd::cluster::token::AttemptToken;
use talkheadd::domain::verdict::Verdict;

const WARMUPS: usize = 1;
const SCORED: usize = 2;

/// The listener over the fixture challenges.
struct Coordinator {
    listener: cluster::Listener,
    image: String,
    /// The settings every host must share ([WARMUPS] warm-ups, [SCORED] scored challenges).
    shared: SharedSettings,
    _dir: tempfile::TempDir,
}

async fn coordinator(image: &str) -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let listener = cluster::listen(&fixtures(), &dir.path().join("inbox"), 64 << 20, 4 << 20).await;
    let config = small_evaluation_config(dir.path(), WARMUPS, SCORED);
    Coordinator {
        listener,
        image: image.to_owned(),
        shared: cluster::shared_settings(Some(&config)),
        _dir: dir,
    }
}

impl Coordinator {
    fn issue(&self, evaluation: &str, attempt: u32) -> AttemptToken {
        self.issue_with(evaluation, attempt, self.shared.clone())
    }

    fn issue_with(&self, evaluation: &str, attempt: u32, shared: SharedSettings) -> AttemptToken {
        let files = cluster::spec_files(&fixtures());
        self.listener
            .issue_with(evaluation, attempt, &self.image, &files, shared)
    }

    /// `talkheadd worker` for the attempt, as Ray's job would run it; its exit code and output.
    async fn worker(
        &self,
        config: &Path,
        evaluation: &str,
        attempt: u32,
        token: &str,
        gpu: Option<&str>,
    ) -> (Option<i32>, String) {
        let mut cmd = tokio::process::Command::new(bin());
        cmd.arg("--config")
            .arg(config)
            .args([
                "worker",
                "--coordinator",
                &self.listener.url,
                "--evaluation",
                evaluation,
            ])
            .args(["--attempt", &attempt.to_string()])
            .env(TOKEN_ENV, token)
            .env("RUST_LOG", "warn")
            .env_remove("CUDA_VISIBLE_DEVICES");
        if let Some(gpu) = gpu {
            cmd.env("CUDA_VISIBLE_DEVICES", gpu);
        }
        let out = cmd.output().await.unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    }
}

/// `docker` with `args`; its trimmed standard output (it must succeed).
fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A stopped evaluation container of `image` labelled as a worker `instance`'s run `run`; its id.
fn plant_container(image: &str, instance: &str, run: &str) -> String {
    docker(&[
        "create",
        "--label",
        &format!("talkhead.run={run}"),
        "--label",
        "talkhead.managed=true",
        "--label",
        &format!("talkhead.instance={instance}"),
        image,
    ])
}

fn container_exists(id: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", id])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_its_attempt_as_evaluate_does_and_its_report_is_accepted() {
    let image = images::build_and_push_miner_with(Behaviour::Good, &[], &fixtures())
        .await
        .unwrap()
        .reference;
    let dir = tempfile::tempdir().unwrap();
    // This host scores one more challenge than the coordinator: the coordinator's count wins.
    let config = small_evaluation_config(dir.path(), WARMUPS, SCORED + 1);
    let mut c = coordinator(&image).await;

    // A host whose analysis backend differs from the coordinator's cannot make comparable scores:
    // infra_error naming the key, before anything is pulled.
    let mut onnx = c.shared.clone();
    onnx.face_backend = "onnx".into();
    let token = c.issue_with("e-backend", 1, onnx);
    let (code, out) = c.worker(&config, "e-backend", 1, token.expose(), Some("0")).await;
    assert_eq!(code, Some(0), "{out}");
    let report = c.listener.accepted.recv().await.unwrap().report;
    assert_eq!(report.verdict, Verdict::InfraError);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("analysis.face.backend"),
        "{report:?}"
    );

    // A host that names no GPU for the job: infra_error with the reason, never the miner's.
    let token = c.issue("e-nogpu", 1);
    let (code, out) = c.worker(&config, "e-nogpu", 1, token.expose(), None).await;
    assert_eq!(code, Some(0), "{out}");
    let report = c.listener.accepted.recv().await.unwrap().report;
    assert_eq!(report.verdict, Verdict::InfraError);
    assert!(
        report.reason.as_deref().unwrap().contains("CUDA_VISIBLE_DEVICES"),
        "{report:?}"
    );
    assert!(report.metrics.is_none() && report.videos.is_empty());

    // Another attempt's token: nothing is delivered.
    let other = c.issue("e-other", 1);
    let (code, out) = c.worker(&config, "e-good", 1, other.expose(), Some("0")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unauthorized"), "{out}");
    assert!(c.listener.accepted.try_recv().is_err());

    // Containers left on this host: one by a worker that is gone (the pid of this test process with
    // another start time: what a reused pid looks like), one by a live worker (this process).
    let live = talkheadd::engine::worker::worker_instance();
    let (pid, start) = live.trim_start_matches("worker-").split_once('-').unwrap();
    let gone = format!("worker-{pid}-{}", start.parse::<u64>().unwrap() + 1);
    let orphan = plant_container(&image, &gone, "orphan");
    let alive = plant_container(&image, &live, "alive");

    // The good miner on the host's (virtual) GPU 0.
    let token = c.issue("e-good", 1);
    let (code, out) = c.worker(&config, "e-good", 1, token.expose(), Some("0")).await;
    assert_eq!(code, Some(0), "{out}");
    // The gone worker's container was reaped before the run; the live worker's was left alone.
    assert!(!container_exists(&orphan), "{out}");
    assert!(container_exists(&alive), "{out}");
    docker(&["rm", "-f", &alive]);
    docker(&["rmi", &image]);
    let accepted = c.listener.accepted.recv().await.unwrap();
    let report = &accepted.report;
    assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
    assert_eq!(report.gpu.uuid, "virtual-0");
    let metrics = report.metrics.as_ref().unwrap();
    assert_eq!(metrics.challenge_metrics.len(), SCORED);
    assert!(metrics.final_score > 0.0);
    assert_eq!(report.videos.len(), SCORED);
    for (video, challenge) in report.videos.iter().zip(&metrics.challenge_metrics) {
        assert_eq!(video.name, format!("{}.mp4", challenge.challenge_id));
        let bytes = std::fs::read(accepted.dir.join(&video.name)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), video.sha256);
    }
    assert!(
        report.stage_times.contains_key("pull"),
        "{:?}",
        report.stage_times
    );

    // The same image through `talkheadd evaluate` on this host (which scores one challenge more): the
    // same verdict and qualities.
    let out = tokio::process::Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["evaluate", "--json", "--image", &image, "--challenges"])
        .arg(fixtures())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let local: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let local = &local["metrics"]["challenge_metrics"];
    for (i, remote) in metrics.challenge_metrics.iter().enumerate() {
        assert_eq!(local[i]["challenge_id"], remote.challenge_id.as_str());
        let q = local[i]["quality_score"].as_f64().unwrap();
        assert!(
            (q - remote.quality_score.unwrap()).abs() < 1e-9,
            "{q} vs {remote:?}"
        );
    }
}
