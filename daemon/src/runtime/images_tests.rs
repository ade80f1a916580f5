//! The image cache against the real Docker engine and the local registry (127.0.0.1:5000,
//! `tests/setup.sh`): each test pushes its own throw-away images, so the images it removes or keeps are
//! known to be only its own.

use super::*;
use crate::runtime::pull::PullFailure;
use std::process::Command;

const REGISTRY: &str = "127.0.0.1:5000";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn present(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .output()
        .unwrap()
        .status
        .success()
}

/// A one-file FROM-scratch image with unique content, pushed to the local registry and absent from the
/// engine afterwards; removed again (every reference) when dropped.
struct Probe {
    image: ImageRef,
}

impl Probe {
    fn push(name: &str) -> Probe {
        let dir = tempfile::tempdir().unwrap();
        let unique = format!("{name} {:?} {}", std::time::SystemTime::now(), std::process::id());
        std::fs::write(dir.path().join("f"), unique).unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
        let tag = format!("{REGISTRY}/talkheadd-cache-test/{name}:t");
        docker(&["build", "-q", "-t", &tag, &dir.path().display().to_string()]);
        docker(&["push", "-q", &tag]);
        let digest = docker(&["image", "inspect", "--format", "{{index .RepoDigests 0}}", &tag]);
        let id = docker(&["image", "inspect", "--format", "{{.Id}}", &tag]);
        docker(&["rmi", "-f", &id]);
        let image = ImageRef::parse(&digest).unwrap();
        assert!(!present(&image.pinned()));
        Probe { image }
    }

    fn pinned(&self) -> String {
        self.image.pinned()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let id = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", &self.pinned()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if !id.is_empty() {
            let _ = Command::new("docker").args(["rmi", "-f", &id]).output();
        }
    }
}

/// A cache with room for nothing idle, on a fresh store.
async fn cache(dir: &std::path::Path) -> ImageCache {
    let store = Store::open_small(&dir.join("state.db"));
    let engine = Engine::connect("unix:///var/run/docker.sock", store.instance_id())
        .await
        .unwrap();
    ImageCache::new(engine, store, 0, Arc::new(crate::clock::SystemClock))
}

const PULL: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_victim_pinned_or_wanted_after_the_plan_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let probe = Probe::push("race");
    let (_, source) = cache.acquire(&probe.image, PULL).await.unwrap();
    assert_eq!(source, Provenance::Pulled);
    let marker = cache.marker_ref(&probe.pinned());
    assert!(present(&marker), "the daemon's pull carries its marker");

    // Planned while idle; then a run pins it before the removal: kept.
    assert_eq!(cache.plan().await.unwrap(), vec![probe.pinned()]);
    let pin = cache.pin(&probe.image);
    assert!(!cache.remove_victim(&probe.pinned()).await.unwrap());
    assert!(present(&probe.pinned()), "removed under a run that pinned it");
    drop(pin);
    // The pre-pull wants it now: kept.
    cache.set_upcoming(std::slice::from_ref(&probe.image));
    assert!(!cache.remove_victim(&probe.pinned()).await.unwrap());
    assert!(present(&probe.pinned()));
    // Nobody wants it: removed, marker and record with it.
    cache.set_upcoming(&[]);
    assert!(cache.remove_victim(&probe.pinned()).await.unwrap());
    assert!(!present(&probe.pinned()) && !present(&marker));
    assert_eq!(cache.usage().await.unwrap(), 0);
    // A run asking for it again pulls it again.
    let (_, source) = cache.acquire(&probe.image, PULL).await.unwrap();
    assert_eq!(source, Provenance::Pulled);
}

#[tokio::test]
async fn an_image_removed_and_pulled_again_outside_the_daemon_is_never_removed_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;

    // The operator removes every reference (`rmi -f` by id) and pulls the digest again while the
    // daemon is not looking: the marker is gone, so the image is theirs.
    let forced = Probe::push("forced");
    cache.acquire(&forced.image, PULL).await.unwrap();
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &forced.pinned()]);
    docker(&["rmi", "-f", &id]);
    docker(&["pull", "-q", &forced.pinned()]);
    assert_eq!(cache.evict().await.unwrap(), Vec::<String>::new());
    assert!(present(&forced.pinned()), "the operator's image was removed");
    assert!(
        cache.record(&forced.pinned()).await.unwrap().is_none(),
        "stale record kept"
    );
    let (_, source) = cache.acquire(&forced.image, PULL).await.unwrap();
    assert_eq!(source, Provenance::Foreign);

    // The operator removes the pinned reference only (the marker keeps the image): the daemon sees
    // it gone at its next look, forgets it and drops its marker; pulled again, it is the operator's.
    let untagged = Probe::push("untagged");
    cache.acquire(&untagged.image, PULL).await.unwrap();
    let marker = cache.marker_ref(&untagged.pinned());
    docker(&["rmi", &untagged.pinned()]);
    assert_eq!(cache.usage().await.unwrap(), 0);
    assert!(
        !present(&marker),
        "the daemon's marker outlived the image's reference"
    );
    docker(&["pull", "-q", &untagged.pinned()]);
    assert_eq!(cache.evict().await.unwrap(), Vec::<String>::new());
    assert!(present(&untagged.pinned()), "the operator's image was removed");
}

#[test]
fn a_store_call_that_never_returned_is_an_image_cache_task_failure() {
    // No engine needed: the mapping the cache's store calls (`ImageCache::stored`) give a lost worker.
    let e = RuntimeError::from(WorkerFailed("task 3 panicked".into()));
    assert!(
        matches!(&e, RuntimeError::Api { call: "image cache task", reason } if reason == "task 3 panicked"),
        "{e:?}"
    );
}

/// A registry on 127.0.0.1 that accepts connections and never answers; an image reference on it.
fn stalling_registry() -> ImageRef {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    ImageRef::parse(&format!("127.0.0.1:{port}/stall/x@sha256:{}", "c".repeat(64))).unwrap()
}

/// `evaluation.pull_timeout_secs`: a registry that accepts connections and never answers holds a pull
/// only until the configured timeout, and that is the host's failure, never the miner's.
#[tokio::test]
async fn a_pull_from_a_registry_that_never_answers_ends_at_the_pull_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path()).await;
    let image = stalling_registry();
    let timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let failure = cache.acquire(&image, timeout).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            &failure,
            RuntimeError::Pull { failure: PullFailure::Infra(reason), .. } if reason.contains("did not finish within 2s (the registry sent nothing)")
        ),
        "{failure:?}"
    );
    assert!(took >= timeout && took < Duration::from_secs(20), "{took:?}");
}

/// A miner whose registry never answers cannot hold rounds open for ever: once its runs have failed
/// for the host's reasons over the ledger's span while another registry served a real pull, the
/// unreachable registry is the miner's (`pull_failed`).
#[tokio::test]
async fn a_registry_that_stays_unreachable_while_another_serves_becomes_the_miners_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_small(&dir.path().join("state.db"));
    let engine = Engine::connect("unix:///var/run/docker.sock", store.instance_id())
        .await
        .unwrap();
    let clock = Arc::new(crate::clock::SteppedClock::new(1_000.0));
    let cache = ImageCache::new(engine, store, 0, clock.clone());
    let dead = stalling_registry();
    let timeout = Duration::from_secs(1);
    let failed_run = async |at: f64| {
        clock.set(at);
        let RuntimeError::Pull {
            failure: PullFailure::Infra(reason),
            ..
        } = cache.acquire(&dead, timeout).await.unwrap_err()
        else {
            panic!("expected an infrastructure failure")
        };
        cache.pull_exhausted(&dead, &reason, &[])
    };
    assert_eq!(failed_run(1_000.0).await, None);
    // The local registry serves a real pull meanwhile: this host's network works.
    let probe = Probe::push("ledger");
    cache.acquire(&probe.image, PULL).await.unwrap();
    assert_eq!(failed_run(1_300.0).await, None);
    let verdict = failed_run(1_700.0).await.expect("the miner's after the span");
    assert!(
        verdict.contains(&format!("registry {} unreachable", dead.registry().unwrap()))
            && verdict.contains("did not finish within 1s (the registry sent nothing)"),
        "{verdict}"
    );
}
