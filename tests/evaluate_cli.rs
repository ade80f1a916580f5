//! `talkheadd evaluate` end to end: the real binary, a real Docker engine and the project's own test
//! miner pushed to the local registry by digest; a good image exits 0 with its scored challenges, a
//! crashing one 65 with its verdict, a tag-only reference 2, SIGTERM mid-run 1; no container of the
//! command's instance is left behind in any case.
//!
//! Needs dockerd, the registry on 127.0.0.1:5000, ffmpeg and opencv-data (`tests/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/images.rs"]
mod images;

use common::*;
use images::Behaviour;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// One evaluation at a time: they share the host's Docker engine and its two cores.
static ENGINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ENGINE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Warm-ups and scored challenges the tests run (of the seven fixtures), to keep each run short.
const WARMUPS: usize = 1;
const SCORED: usize = 2;

/// A configuration with one virtual GPU slot and small container limits, in `dir`.
fn config(dir: &Path) -> PathBuf {
    small_evaluation_config(dir, WARMUPS, SCORED)
}

fn pushed(behaviour: Behaviour) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(images::build_and_push_miner_with(behaviour, &[], &fixtures()))
        .unwrap()
        .reference
}

fn evaluate(config: &Path, image: &str) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--config")
        .arg(config)
        .args(["evaluate", "--json", "--image", image, "--challenges"])
        .arg(fixtures())
        .env("RUST_LOG", "warn");
    cmd
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", output_text(out)))
}

/// Containers (running or not) that carry every label filter in `labels` (`key` or `key=value`):
/// (id, labels).
async fn containers(labels: &[String]) -> Vec<(String, std::collections::HashMap<String, String>)> {
    let docker = images::docker().await.unwrap();
    let filters = std::collections::HashMap::from([("label".to_owned(), labels.to_vec())]);
    let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(options))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
        .collect()
}

/// Containers labelled with `instance`.
fn containers_of(instance: &str) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let labelled = rt.block_on(containers(&[format!("talkhead.instance={instance}")]));
    labelled.into_iter().map(|(id, _)| id).collect()
}

/// The `talkhead.instance` of a container of `talkheadd evaluate` (its run label starts with
/// `evaluate-`), once one exists.
fn evaluate_container_instance(limit: Duration) -> Option<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    while started.elapsed() < limit {
        for (_, labels) in rt.block_on(containers(&["talkhead.run".to_owned()])) {
            if labels
                .get("talkhead.run")
                .is_some_and(|r| r.starts_with("evaluate-"))
            {
                return labels.get("talkhead.instance").cloned();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// Push `behaviour`'s image and evaluate it with `--json` in a fresh directory, expecting `code`:
/// (the image, the directory, the command's output, its report).
fn evaluated(behaviour: Behaviour, code: i32) -> (String, tempfile::TempDir, Output, serde_json::Value) {
    let image = pushed(behaviour);
    let dir = tempfile::tempdir().unwrap();
    let out = evaluate(&config(dir.path()), &image).output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{}", output_text(&out));
    let r = report(&out);
    (image, dir, out, r)
}

fn assert_no_container_left(r: &serde_json::Value) {
    let instance = r["instance"].as_str().unwrap();
    assert_eq!(instance.len(), 32, "{r}");
    assert_eq!(
        containers_of(instance),
        Vec::<String>::new(),
        "containers left by {instance}"
    );
}

#[test]
fn a_good_image_exits_0_with_every_scored_challenge_timed_and_scored() {
    let _engine = exclusive();
    let (image, dir, _, r) = evaluated(Behaviour::Good, 0);
    assert_eq!(r["verdict"], "ok", "{r}");
    assert!(r["reason"].is_null(), "{r}");
    assert_eq!(
        (r["exit_code"].as_u64(), r["image_ref"].as_str()),
        (Some(0), Some(image.as_str()))
    );
    assert_eq!(r["gpu"]["uuid"], "virtual-0");
    assert_eq!(r["image_source"], "pulled");
    assert_eq!(r["vram_sources"].as_array().unwrap().len(), SCORED, "{r}");
    for stage in ["pull", "ready", "challenges"] {
        assert!(r["stage_times"][stage].as_f64().is_some(), "{stage}: {r}");
    }
    let m = &r["metrics"];
    assert_eq!(m["verdict"], "ok");
    assert_eq!(m["run_id"], r["run_id"]);
    assert!(m["final_score"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["efficiency"]["efficiency_factor"].as_f64().is_some(), "{m}");
    assert_eq!(m["measurement"]["time"], "host_clock");
    let entries = m["challenge_metrics"].as_array().unwrap();
    assert_eq!(entries.len(), SCORED, "{m}");
    for e in entries {
        assert_eq!(e["verdict"], "ok", "{e}");
        assert!(
            e["efficiency"]["inference_time_sec"].as_f64().unwrap() > 0.0,
            "{e}"
        );
        for component in [
            "identity",
            "lipsync",
            "audio",
            "video",
            "temporal",
            "quality_score",
        ] {
            assert!(e[component].as_f64().is_some(), "{component}: {e}");
        }
    }
    assert_no_container_left(&r);
    // The image it pulled is removed again: nothing of the run stays on the host.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let docker = rt.block_on(images::docker()).unwrap();
    assert!(
        rt.block_on(docker.inspect_image(&image)).is_err(),
        "{image} still on the host"
    );

    // The table says the same for people.
    let out = Command::new(bin())
        .arg("--config")
        .arg(config(dir.path()))
        .args(["evaluate", "--image", &image, "--challenges"])
        .arg(fixtures())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "verdict",
        "ok",
        "final_score",
        "efficiency",
        "virtual-0",
        "challenge-1",
        "lipsync",
    ] {
        assert!(table.contains(needle), "{needle} missing from:\n{table}");
    }
}

#[test]
fn a_crashing_image_exits_65_with_its_verdict() {
    let _engine = exclusive();
    let (_, _, out, r) = evaluated(Behaviour::Crash, 65);
    assert_eq!(
        (r["verdict"].as_str(), r["exit_code"].as_u64()),
        (Some("crashed"), Some(65)),
        "{r}"
    );
    assert!(r["reason"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_eq!(r["metrics"]["verdict"], "crashed");
    assert_eq!(r["metrics"]["final_score"], 0.0);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("crashed"),
        "{}",
        output_text(&out)
    );
    assert_no_container_left(&r);
}

#[test]
fn a_tag_only_reference_or_a_missing_slot_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = evaluate(&config(dir.path()), "127.0.0.1:5000/talkhead-test/good:latest")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("not pinned by digest"),
        "{}",
        output_text(&out)
    );
    assert!(out.stdout.is_empty());

    let pinned = format!("127.0.0.1:5000/talkhead-test/good@sha256:{DIGEST_A}");
    let out = evaluate(&config(dir.path()), &pinned)
        .args(["--gpu", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(output_text(&out).contains("--gpu 1"), "{}", output_text(&out));
}

#[test]
fn sigterm_cancels_the_run_and_removes_its_container() {
    let _engine = exclusive();
    let image = pushed(Behaviour::Hang);
    let dir = tempfile::tempdir().unwrap();
    let child = evaluate(&config(dir.path()), &image)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let instance = evaluate_container_instance(Duration::from_secs(120));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let instance = instance.unwrap_or_else(|| panic!("no evaluate container seen: {}", output_text(&out)));
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let r = report(&out);
    assert_eq!(r["instance"], instance.as_str());
    assert_eq!(r["verdict"], "infra_error", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("interrupted by SIGTERM"),
        "{r}"
    );
    assert_no_container_left(&r);
}
