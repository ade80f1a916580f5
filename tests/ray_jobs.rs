//! The Ray Jobs client against a real Ray head (`ray start --head`, token authentication on), as the
//! coordinator of `[cluster] engine = "ray"` will use it: submit with a derived submission id, find
//! the job again, a taken id recognised, the attempt's token reaching the entrypoint, a GPU UUID
//! handed out per job, stop, delete, a failing entrypoint, and every refusal classified (no token, a
//! wrong token, an unreachable head).
//!
//! Needs the Ray that `tests/setup.sh` installs (`/opt/talkhead-test/ray-venv`, or the `ray` program
//! named by `TALKHEADD_TEST_RAY`). The head runs on the loopback with two fake GPU UUIDs in
//! `CUDA_VISIBLE_DEVICES` (no GPU is used: nothing here runs CUDA).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/ray.rs"]
mod ray;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::free_port;
use ray::RayHead;
use talkheadd::cluster::job::{self, JobRequest, RuntimeEnv, TOKEN_ENV};
use talkheadd::cluster::ray_jobs::{JobDetails, JobStatus, RayError, RayJobs};

/// The fake GPUs the head's raylet hands out.
const GPU_UUIDS: [&str; 2] = [
    "GPU-00000000-0000-0000-0000-00000000000a",
    "GPU-00000000-0000-0000-0000-00000000000b",
];

/// A job request running `entrypoint` with `gpus` GPUs and the attempt token `token`.
fn request(submission_id: &str, entrypoint: &str, gpus: f64, token: &str) -> JobRequest {
    JobRequest {
        entrypoint: entrypoint.to_owned(),
        submission_id: submission_id.to_owned(),
        entrypoint_num_gpus: gpus,
        entrypoint_num_cpus: 0.5,
        entrypoint_resources: BTreeMap::new(),
        runtime_env: RuntimeEnv {
            env_vars: BTreeMap::from([(TOKEN_ENV.to_owned(), token.to_owned())]),
        },
        metadata: BTreeMap::from([("test".to_owned(), "ray_jobs".to_owned())]),
    }
}

/// Polls the job until `done` says so (Ray has no way to wait for a state change), at most 90 s.
async fn poll(client: &RayJobs, id: &str, done: impl Fn(&JobDetails) -> bool) -> JobDetails {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let job = client
            .job(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} unknown"));
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "{id} never got there: {job:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_real_ray_head_runs_stops_and_forgets_jobs_and_refuses_strangers() {
    let head = RayHead::start(&GPU_UUIDS, &[]);
    let client = head.client();
    let version = client.version().await.unwrap();
    assert!(!version.ray_version.is_empty(), "{version:?}");

    // Strangers: no token, a wrong token, nobody listening.
    let anonymous = RayJobs::new(&head.address, None).unwrap();
    assert!(
        matches!(
            anonymous.list().await,
            Err(RayError::Unauthorized { status: 401, .. })
        ),
        "{:?}",
        anonymous.list().await
    );
    let wrong = RayJobs::new(&head.address, Some("not-the-token".into())).unwrap();
    let refused = wrong
        .submit(&request("talkheadd-stranger-a1", "true", 0.0, "x"))
        .await;
    assert!(
        matches!(refused, Err(RayError::Unauthorized { status: 403, .. })),
        "{refused:?}"
    );
    assert!(client.job("talkheadd-stranger-a1").await.unwrap().is_none());
    let nobody = RayJobs::new(&format!("http://127.0.0.1:{}", free_port()), None).unwrap();
    let e = nobody.version().await.unwrap_err();
    assert!(
        matches!(e, RayError::Unreachable { .. }) && e.is_transient(),
        "{e:?}"
    );

    // The attempt's token reaches the entrypoint, which gets one of the head's GPU UUIDs.
    let id = job::submission_id("e0", 1).unwrap();
    let script = format!("sh -c 'test \"${TOKEN_ENV}\" = secret-e0 && echo gpu=$CUDA_VISIBLE_DEVICES'");
    client
        .submit(&request(&id, &script, 1.0, "secret-e0"))
        .await
        .unwrap();
    let done = poll(&client, &id, |j| j.status.is_terminal()).await;
    assert_eq!(
        (done.status, done.driver_exit_code),
        (JobStatus::Succeeded, Some(0)),
        "{done:?}"
    );
    let logs = client.logs(&id).await.unwrap().unwrap();
    let gpu = logs
        .lines()
        .find_map(|l| l.strip_prefix("gpu="))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(GPU_UUIDS.contains(&gpu), "{gpu:?} in {logs}");

    // The same submission id again: recognised, not a second job.
    let again = client.submit(&request(&id, "true", 0.0, "x")).await;
    assert_eq!(again, Err(RayError::AlreadyExists(id.clone())));
    let ours: Vec<_> = client
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter_map(|j| j.submission_id)
        .filter(|s| job::parse_submission_id(s).is_some())
        .collect();
    assert_eq!(ours, vec![id.clone()]);

    // Two GPUs: two one-GPU jobs run, the third waits; the cluster's usage says so.
    let sleepers: Vec<String> = (2..5).map(|a| job::submission_id("e1", a).unwrap()).collect();
    for s in &sleepers {
        client.submit(&request(s, "sleep 600", 1.0, "x")).await.unwrap();
    }
    for s in &sleepers[..2] {
        poll(&client, s, |j| j.status == JobStatus::Running).await;
    }
    let waiting = client.job(&sleepers[2]).await.unwrap().unwrap();
    assert_eq!(waiting.status, JobStatus::Pending, "{waiting:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The usage report lags the scheduler by a heartbeat.
        let gpus = client.resources().await.unwrap().get("GPU").copied();
        if gpus.is_some_and(|g| g.total == 2.0 && g.free() == 0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "GPU usage never reached 2/2: {gpus:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Stop: running and pending alike end STOPPED; an ended job cannot be stopped, only deleted.
    for s in &sleepers {
        assert!(client.stop(s).await.unwrap(), "{s}");
    }
    for s in &sleepers {
        let stopped = poll(&client, s, |j| j.status.is_terminal()).await;
        assert_eq!(stopped.status, JobStatus::Stopped, "{stopped:?}");
    }
    assert!(!client.stop(&sleepers[0]).await.unwrap());
    assert!(client.delete(&sleepers[0]).await.unwrap());
    assert!(client.job(&sleepers[0]).await.unwrap().is_none());
    assert!(!client.delete(&sleepers[0]).await.unwrap());
    assert!(!client.stop("talkheadd-nobody-a1").await.unwrap());

    // A failing entrypoint: FAILED with its exit code.
    let failing = job::submission_id("e2", 1).unwrap();
    client
        .submit(&request(&failing, "sh -c 'exit 3'", 0.0, "x"))
        .await
        .unwrap();
    let failed = poll(&client, &failing, |j| j.status.is_terminal()).await;
    assert_eq!(
        (failed.status, failed.driver_exit_code),
        (JobStatus::Failed, Some(3)),
        "{failed:?}"
    );
}
