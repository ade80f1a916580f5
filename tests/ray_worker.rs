//! Ray places a real `talkheadd worker`: a token-authenticated Ray head on the loopback whose raylet
//! hands out this host's two virtual GPU slots as its GPUs (`CUDA_VISIBLE_DEVICES=virtual-0,virtual-1`,
//! and the host's configuration in `TALKHEADD_CONFIG`, as a GPU host runs `ray start`), a job
//! submitted as the coordinator describes it (`cluster::job`: the entrypoint names only the worker
//! command, the listener's URL, the evaluation and the attempt; the token travels in the job's
//! environment), the test miner pushed to the local registry by digest, and the cluster listener in
//! this process. The job succeeds, the worker ran on the GPU Ray gave it, and its report with every
//! scored video is accepted.
//!
//! Needs the Ray of `tests/setup.sh`, dockerd, the registry on 127.0.0.1:5000, ffmpeg and opencv-data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/images.rs"]
mod images;
#[path = "common/ray.rs"]
mod ray;

use common::*;
use images::Behaviour;
use ray::RayHead;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use talkheadd::cluster::job::{self, JobRequest, RuntimeEnv, TOKEN_ENV};
use talkheadd::cluster::ray_jobs::JobStatus;
use talkheadd::domain::verdict::Verdict;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ray_places_the_worker_on_a_slot_it_hands_out_and_the_report_is_accepted() {
    let image = images::build_and_push_miner_with(Behaviour::Good, &[], &fixtures())
        .await
        .unwrap()
        .reference;
    let dir = tempfile::tempdir().unwrap();
    // The GPU host's own configuration: two virtual slots, named as Ray hands them out.
    let config = ray::gpu_host_config(dir.path(), 2);
    let head = RayHead::start(
        &["virtual-0", "virtual-1"],
        &[
            ("TALKHEADD_CONFIG", config.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ],
    );
    let mut listener = cluster::listen(&fixtures(), &dir.path().join("inbox"), 64 << 20, 4 << 20).await;
    let files = cluster::spec_files(&fixtures());
    let token = listener.issue("e-ray", 1, &image, &files, Some(&config));

    let request = JobRequest {
        entrypoint: job::entrypoint(bin(), &listener.url, "e-ray", 1).unwrap(),
        submission_id: job::submission_id("e-ray", 1).unwrap(),
        entrypoint_num_gpus: 1.0,
        entrypoint_num_cpus: 1.0,
        entrypoint_resources: BTreeMap::new(),
        runtime_env: RuntimeEnv {
            env_vars: BTreeMap::from([(TOKEN_ENV.to_owned(), token.expose().to_owned())]),
        },
        metadata: BTreeMap::new(),
    };
    let client = head.client();
    client.submit(&request).await.unwrap();
    let id = request.submission_id.clone();
    let deadline = Instant::now() + Duration::from_secs(240);
    let job = loop {
        let job = client.job(&id).await.unwrap().unwrap();
        if job.status.is_terminal() {
            break job;
        }
        assert!(Instant::now() < deadline, "the job never ended: {job:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let logs = client.logs(&id).await.ok().flatten().unwrap_or_default();
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}\n{logs}");

    let accepted = listener
        .accepted
        .try_recv()
        .expect("the worker's report was accepted");
    let report = &accepted.report;
    assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
    assert!(
        ["virtual-0", "virtual-1"].contains(&report.gpu.uuid.as_str()),
        "{report:?}"
    );
    let metrics = report.metrics.as_ref().unwrap();
    assert_eq!(metrics.challenge_metrics.len(), 2);
    assert_eq!(report.videos.len(), 2);
    for video in &report.videos {
        let bytes = std::fs::read(accepted.dir.join(&video.name)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), video.sha256);
    }
}
