//! The test miner's images against the real Docker engine and the local registry: the `good` and
//! `crash` images are built FROM scratch, pushed, pulled back by digest, and run the way the daemon
//! runs miners (no network, read-only root, an unprivileged user, `/input` read-only, `/output` the
//! only writable mount); `good` must answer a challenge with a decodable MP4 carrying the challenge
//! audio, and `crash` must exit with code 3.
//!
//! Needs dockerd and the registry on 127.0.0.1:5000 (`tests/setup.sh` starts both), ffprobe, and
//! the challenge fixtures (`../shared/fixtures/challenges`, or `TALKHEAD_CHALLENGES_DIR`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/images.rs"]
mod images;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use futures_util::FutureExt;
use images::Behaviour;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest wait for the miner to become ready, answer, or exit.
const WAIT: Duration = Duration::from_secs(30);
/// How often files and container states are looked at.
const POLL: Duration = Duration::from_millis(10);
/// The challenge the containers are given.
const CHALLENGE: &str = "challenge-2";

fn challenges_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TALKHEAD_CHALLENGES_DIR") {
        return PathBuf::from(dir);
    }
    let root = images::repo_root().unwrap();
    root.join("../shared/fixtures/challenges")
}

/// Containers created by a test, removed at the end whatever happened.
#[derive(Default)]
struct Containers(Vec<String>);

impl Containers {
    async fn remove_all(&self, docker: &Docker) {
        for id in &self.0 {
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            if let Err(e) = docker.remove_container(id, Some(options)).await {
                eprintln!("removing container {id}: {e}");
            }
        }
    }
}

/// A job directory the way the daemon lays it out: `input/` (read-only in the container, readable by
/// any user) and `output/` (mode 0777, the only writable mount).
struct Job {
    _dir: tempfile::TempDir,
    input: PathBuf,
    output: PathBuf,
}

fn new_job() -> Job {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (input, output) = (dir.path().join("input"), dir.path().join("output"));
    for (path, mode) in [(&input, 0o755), (&output, 0o777)] {
        std::fs::create_dir(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    Job {
        _dir: dir,
        input,
        output,
    }
}

/// Places a challenge: face and audio first, then `task.json` through a rename.
fn place_task(job: &Job, challenge: &Path, id: &str) {
    for name in ["face.png", "audio.wav"] {
        let to = job.input.join(name);
        std::fs::copy(challenge.join(name), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let task = serde_json::json!({
        "challenge_id": id, "text": "", "seed": 7, "fps": 25, "resolution": 512, "max_seconds": 5
    });
    let tmp = job.input.join(".task.json.tmp");
    std::fs::write(&tmp, task.to_string()).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, job.input.join("task.json")).unwrap();
}

/// Creates and starts a hardened container for `image` over `job`.
async fn start_miner(docker: &Docker, containers: &mut Containers, image: &str, job: &Job) -> String {
    let host_config = HostConfig {
        network_mode: Some("none".to_owned()),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        binds: Some(vec![
            format!("{}:/input:ro", job.input.display()),
            format!("{}:/output:rw", job.output.display()),
        ]),
        tmpfs: Some(HashMap::from([(
            "/tmp".to_owned(),
            "rw,nosuid,nodev,noexec,size=64m".to_owned(),
        )])),
        memory: Some(512 << 20),
        pids_limit: Some(64),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        user: Some("65534:65534".to_owned()),
        network_disabled: Some(true),
        labels: Some(HashMap::from([(
            "talkhead.test".to_owned(),
            "miner_images".to_owned(),
        )])),
        host_config: Some(host_config),
        ..Default::default()
    };
    let name = format!(
        "talkhead-test-miner-{}-{}",
        std::process::id(),
        containers.0.len()
    );
    let created = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .unwrap();
    containers.0.push(created.id.clone());
    docker.start_container(&created.id, None).await.unwrap();
    created.id
}

/// Waits for a file; on timeout, fails with the container's logs.
async fn wait_for_file(docker: &Docker, container: &str, path: &Path) -> Duration {
    let started = Instant::now();
    while !path.exists() {
        if started.elapsed() > WAIT {
            panic!(
                "{} did not appear within {WAIT:?}; logs:\n{}",
                path.display(),
                logs(docker, container).await
            );
        }
        tokio::time::sleep(POLL).await;
    }
    started.elapsed()
}

/// The container's stdout and stderr.
async fn logs(docker: &Docker, container: &str) -> String {
    use futures_util::StreamExt;
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .build();
    let mut stream = docker.logs(container, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
    }
    text
}

/// Waits for the container to stop and returns its exit code.
async fn wait_exit(docker: &Docker, container: &str) -> i64 {
    let started = Instant::now();
    loop {
        let state = docker
            .inspect_container(container, None)
            .await
            .unwrap()
            .state
            .unwrap();
        if state.running != Some(true) {
            return state.exit_code.unwrap();
        }
        if started.elapsed() > WAIT {
            panic!(
                "{container} still running after {WAIT:?}; logs:\n{}",
                logs(docker, container).await
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type,codec_name,width,height,r_frame_rate:format=duration",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (Debian's ffmpeg) must be installed");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn duration_of(probe: &serde_json::Value) -> f64 {
    probe["format"]["duration"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miner_images_push_pull_by_digest_and_run_hardened() {
    let docker = images::docker().await.unwrap();
    let mut containers = Containers::default();
    let mut pulled = Vec::new();
    let outcome = AssertUnwindSafe(scenario(&docker, &mut containers, &mut pulled))
        .catch_unwind()
        .await;
    containers.remove_all(&docker).await;
    for reference in &pulled {
        let _ = images::remove_local_image(&docker, reference).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(docker: &Docker, containers: &mut Containers, pulled: &mut Vec<String>) {
    let dir = challenges_dir();
    let started = Instant::now();
    let good = images::build_and_push_miner_with(Behaviour::Good, &[], &dir)
        .await
        .unwrap();
    let crash = images::build_and_push_miner_with(Behaviour::Crash, &[], &dir)
        .await
        .unwrap();
    eprintln!(
        "built and pushed good and crash in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for miner in [&good, &crash] {
        let (name, digest) = miner.reference.split_once('@').unwrap();
        assert!(
            name.starts_with("127.0.0.1:5000/talkhead-test/"),
            "{}",
            miner.reference
        );
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{}",
            miner.reference
        );
        // The builder removed its local copy: this pull is a real one.
        assert!(
            docker.inspect_image(&miner.reference).await.is_err(),
            "{} is still local",
            miner.reference
        );
        pulled.push(miner.reference.clone());
        let took = images::pull(docker, &miner.reference).await.unwrap();
        let image = docker.inspect_image(&miner.reference).await.unwrap();
        assert!(
            image.repo_digests.unwrap_or_default().contains(&miner.reference),
            "pulled image does not carry {}",
            miner.reference
        );
        eprintln!(
            "{}: {} KiB, build {:.2} s, push {:.2} s, pull {:.2} s",
            miner.reference,
            miner.image_bytes / 1024,
            miner.build_time.as_secs_f64(),
            miner.push_time.as_secs_f64(),
            took.as_secs_f64()
        );
    }

    // `good` answers a challenge with a real video.
    let challenge = dir.join(CHALLENGE);
    let job = new_job();
    let id = "miner-images-good";
    let container = start_miner(docker, containers, &good.reference, &job).await;
    let ready = wait_for_file(docker, &container, &job.output.join("ready.txt")).await;
    place_task(&job, &challenge, id);
    let answered = wait_for_file(docker, &container, &job.output.join(format!("{id}.json"))).await;
    eprintln!("good: ready after {ready:?}, answered {answered:?} after the task");
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.output.join(format!("{id}.json"))).unwrap()).unwrap();
    assert_eq!(
        result,
        serde_json::json!({"success": true}),
        "logs:\n{}",
        logs(docker, &container).await
    );
    let video = job.output.join(format!("{id}.mp4"));
    assert!(std::fs::symlink_metadata(&video).unwrap().file_type().is_file());
    let probe = ffprobe(&video);
    let streams = probe["streams"].as_array().unwrap();
    let kinds: Vec<&str> = streams
        .iter()
        .map(|s| s["codec_type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"video") && kinds.contains(&"audio"), "{probe}");
    let video_stream = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    assert_eq!(video_stream["codec_name"], "h264", "{probe}");
    assert_eq!(
        (video_stream["width"].as_u64(), video_stream["height"].as_u64()),
        (Some(512), Some(512))
    );
    assert_eq!(video_stream["r_frame_rate"], "25/1", "{probe}");
    let audio_seconds = duration_of(&ffprobe(&challenge.join("audio.wav")));
    let video_seconds = duration_of(&probe);
    assert!(
        (video_seconds - audio_seconds).abs() <= 0.2,
        "video lasts {video_seconds} s, the audio {audio_seconds} s"
    );
    // It ran as the unprivileged user it was given, and logged its events.
    let log = logs(docker, &container).await;
    assert!(
        log.contains("start behaviour=good") && log.contains("uid=65534"),
        "{log}"
    );

    // `crash` exits with code 3 on its first task.
    let job = new_job();
    let container = start_miner(docker, containers, &crash.reference, &job).await;
    wait_for_file(docker, &container, &job.output.join("ready.txt")).await;
    place_task(&job, &challenge, "miner-images-crash");
    assert_eq!(
        wait_exit(docker, &container).await,
        3,
        "logs:\n{}",
        logs(docker, &container).await
    );
    assert!(!job.output.join("miner-images-crash.json").exists());
}
