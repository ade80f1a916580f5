//! The loop's effects against the real Docker engine, analyser and LMDB store (its decisions are
//! tested without Docker in `engine/plan_tests.rs`).

use super::*;
use crate::challenges::{Limits, load_directory};
use crate::config::{ConfigLocation, load};
use crate::domain::{Hotkey, ImageRef, Verdict};
use crate::engine::dispatch::{Lost, run_task};
use crate::engine::slots::Busy;
use crate::engine::tasks::Held;
use crate::gpu::{GpuState, VirtualInventory};
use crate::rounds::EvaluationTicket;
use std::path::Path;

/// The loop with the real Docker engine, analyser and LMDB store, on one virtual slot. Docker is
/// only connected to: nothing runs in it.
async fn one_slot_loop(dir: &Path) -> EvaluationLoop {
    one_slot_loop_with(dir, "").await
}

/// [`one_slot_loop`] with more keys in `[gpu]`.
async fn one_slot_loop_with(dir: &Path, gpu: &str) -> EvaluationLoop {
    let config = dir.join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[gpu]\nvirtual = 1\n{gpu}",
            dir.join("state.db").display()
        ),
    )
    .unwrap();
    let settings = Arc::new(
        load(&ConfigLocation::Explicit(config), &|_| None)
            .unwrap()
            .settings,
    );
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
    let store = Store::open_small(&dir.join("state.db"));
    let engine = crate::runtime::Engine::connect(&settings.docker.host, store.instance_id())
        .await
        .unwrap();
    let images = Arc::new(crate::runtime::ImageCache::new(
        engine.clone(),
        store.clone(),
        settings.docker.image_cache_bytes,
        clock.clone(),
    ));
    let env = Arc::new(RunEnv {
        engine,
        images,
        analyzer: crate::analysis::default_analyzer(&settings.analysis)
            .await
            .unwrap(),
        settings: settings.clone(),
        clock: clock.clone(),
        container_user: super::super::run::ContainerUser::resolve(&settings.container.user),
        events: crate::events::EventBus::new(clock),
    });
    EvaluationLoop::new(
        env,
        store,
        Source::Directory(dir.to_path_buf()),
        Arc::new(VirtualInventory::new(1)),
        LoopControl::default(),
    )
}

#[tokio::test]
async fn a_calibration_waits_for_the_engine_gate_like_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let image = format!(
        "127.0.0.1:5000/talkheadd-cache-test/calib@sha256:{}",
        "e".repeat(64)
    );
    let mut lp = one_slot_loop_with(dir.path(), &format!("calibration_image = \"{image}\"\n")).await;
    let fixtures = crate::analysis::face::tests::fixtures_dir();
    lp.set.current = Some(Arc::new(load_directory(&fixtures, &Limits::default()).unwrap()));
    // Nothing pending, the round's set known, the GPU not calibrated: a calibration is due. The
    // engine gate is closed (its last ping failed).
    lp.gate.unreachable(Instant::now());
    let wait = lp.step(&CancellationToken::new()).await.unwrap();
    assert!(
        lp.tasks.is_empty(),
        "a calibration was started while the engine gate was closed"
    );
    assert!(
        wait.is_some_and(|w| w > Duration::ZERO && w <= Duration::from_secs(2)),
        "{wait:?}"
    );
    // Once the gate opens (the engine answers), the calibration starts.
    lp.gate = EngineGate::new(MAX_ENGINE_BACKOFF);
    lp.step(&CancellationToken::new()).await.unwrap();
    assert_eq!(lp.tasks.len(), 1, "the calibration did not start");
    assert!(
        lp.slots.list[0]
            .busy
            .as_ref()
            .is_some_and(|b| b.run_id.starts_with(calibration::RUN_ID_PREFIX))
    );
}

#[tokio::test]
async fn a_run_hands_its_slot_back_without_waiting_for_the_image_cache_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let mut lp = one_slot_loop(dir.path()).await;
    let fixtures = crate::analysis::face::tests::fixtures_dir();
    let set = Arc::new(load_directory(&fixtures, &Limits::default()).unwrap());
    // Not in the local registry: the run ends at its pull (`pull_failed`), no container involved.
    let ticket = EvaluationTicket {
        hotkey: Hotkey::from_public_key([8; 32]),
        image_ref: ImageRef::parse(&format!(
            "127.0.0.1:5000/talkheadd-cache-test/absent@sha256:{}",
            "d".repeat(64)
        ))
        .unwrap(),
        generation: 1,
        submit_time: 1.0,
        round: 1,
    };
    let images = lp.env.images.clone();
    let held = images.hold_evictions().await;
    let slot = lp.slots.list[0].slot.clone();
    let run = run_task(
        lp.env.clone(),
        lp.dispatcher.executor.clone(),
        lp.store.clone(),
        lp.dispatcher.meter.clone(),
        0,
        slot,
        ticket,
        set,
        "run-evict".into(),
        CancellationToken::new(),
    );
    // A bound, not a synchronisation: the run must end while an eviction holds the cache.
    let done = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run waited for the image cache eviction");
    assert!(done.infra.is_none(), "{:?}", done.infra);
    lp.finish(done);
    assert!(lp.slots.list[0].busy.is_none());
    // The eviction is handed to the loop's evictor, woken once the slot is free.
    assert!(
        futures_util::FutureExt::now_or_never(lp.evict.notified()).is_some(),
        "no eviction was asked for"
    );
    drop(held);
}

#[tokio::test]
async fn a_run_task_that_panics_frees_its_slot_and_is_recorded_as_infra_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut lp = one_slot_loop(dir.path()).await;
    let ticket = EvaluationTicket {
        hotkey: Hotkey::from_public_key([7; 32]),
        image_ref: ImageRef::parse(&format!("127.0.0.1:5000/m@sha256:{}", "c".repeat(64))).unwrap(),
        generation: 1,
        submit_time: 1.0,
        round: 1,
    };
    // What `dispatch` does, with a task that panics in place of `run_task`.
    let Some(rt) = lp.slots.list.get_mut(0) else {
        panic!("one slot")
    };
    rt.busy = Some(Busy {
        run_id: "run-1".into(),
        hotkey: ticket.hotkey.to_string(),
        digest: ticket.image_ref.digest(),
    });
    let held = Held {
        slot: 0,
        run_id: "run-1".into(),
        key: Lost::Miner {
            ticket: ticket.clone(),
            started_at: 5.0,
        },
    };
    lp.tasks.spawn(held, async { panic!("index out of bounds") });
    lp.slots.refresh_board("virtual-0");
    assert_eq!(lp.slots.board.snapshot()[0].state.name(), "busy");

    let ended = lp.tasks.next().await.unwrap();
    lp.ended(ended).await;

    assert!(lp.slots.list[0].busy.is_none(), "the slot is free again");
    assert_eq!(lp.slots.board.snapshot()[0].state, GpuState::Available);
    assert!(
        lp.backoff_until.contains_key(ticket.hotkey.as_str()),
        "retried later, like any infrastructure failure"
    );
    let runs = lp.store.runs_for(&ticket.hotkey, 5).unwrap();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].verdict, Verdict::InfraError, "never the miner's fault");
    assert_eq!(runs[0].run_id, "run-1");
    assert_eq!(runs[0].started_at, 5.0);
    let reason = runs[0].reason.clone().unwrap_or_default();
    assert!(reason.contains("panicked: index out of bounds"), "{reason}");
}

#[test]
fn the_status_line_names_the_round_queue_and_every_gpu() {
    assert_eq!(
        status_line(12, 3, 2, &[("virtual-0", "busy"), ("virtual-1", "drained")]),
        "round 12: 3 queued, 2 running; virtual-0 busy, virtual-1 drained"
    );
}
