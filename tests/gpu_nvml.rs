//! The NVML path, on a host with an NVIDIA GPU: the inventory reports every field, a run is pinned to
//! one GPU by UUID and the container sees exactly that GPU, and the run records its GPU and the
//! provenance of its VRAM figure. Every test is named `gpu_*`: the test command excludes them on
//! hosts without a GPU (`--skip gpu_`); they are not skipped in code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/images.rs"]
mod images;

use common::*;
use images::Behaviour;
use std::path::{Path, PathBuf};
use std::time::Duration;
use talkheadd::gpu::GpuInventory;
use talkheadd::gpu::nvml::{NvmlInventory, ProbeLimits};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/challenges")
        .canonicalize()
        .unwrap()
}

fn inventory() -> NvmlInventory {
    NvmlInventory::open(
        &[],
        ProbeLimits {
            max_temperature_c: 95,
        },
        100,
    )
    .unwrap()
}

#[test]
fn gpu_nvml_inventory_reports_every_field() {
    let inv = inventory();
    let gpus = inv.describe();
    assert!(!gpus.is_empty());
    for g in &gpus {
        println!("{g:?} accounting={}", inv.accounting_enabled(&g.uuid));
        assert!(g.uuid.starts_with("GPU-"), "{g:?}");
        assert!(g.memory_total_bytes.is_some_and(|m| m > 0), "{g:?}");
        assert!(g.compute_capability.is_some(), "{g:?}");
        assert!(g.driver_version.is_some() && g.cuda_version.is_some(), "{g:?}");
        assert!(g.pci_bus_id.is_some(), "{g:?}");
        assert!(!g.is_virtual);
    }
    assert_eq!(inv.slots().len(), gpus.len());
    println!("probe: {:?}", inv.probe(&gpus[0].uuid));
}

#[test]
fn gpu_vram_meter_samples_at_least_50_hz_without_a_workload() {
    let inv = inventory();
    let uuid = inv.describe()[0].uuid.clone();
    let meter = inv.vram_meter();
    let started = std::time::Instant::now();
    let mut session = meter.start(&uuid, None);
    std::thread::sleep(Duration::from_millis(500));
    let reading = session.take_peak();
    println!("no workload: {reading:?} after {:?}", started.elapsed());
    // No container processes: nothing to attribute, so no figure (never a free zero).
    assert_eq!(reading.peak_bytes, None);
}

#[test]
fn gpu_pinning_is_visible_in_the_container_and_recorded_with_the_run() {
    let uuid = inventory().describe()[0].uuid.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let image = rt
        .block_on(images::build_and_push_miner_with(
            Behaviour::GpuEnv,
            &[],
            &fixtures(),
        ))
        .unwrap()
        .reference;
    let setup = Setup::new("");
    let extra = format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\nchallenges_dir = \"{}\"\nready_timeout_secs = 60\nchallenge_timeout_secs = 20\n\
         work_dir = \"{}\"\n[gpu]\ndevices = [\"{uuid}\"]\n",
        fixtures().display(),
        setup.dir.path().join("jobs").display()
    );
    let setup = Setup { extra, ..setup };
    let mut d = Daemon::start(&setup);
    let signer = Signer::from_seed(170);
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&[(
        signer.hotkey.as_str(),
        image,
        1000.0,
    )])));
    assert_eq!(r.status, 200);
    d.wait_for_within("round 1 committed", Duration::from_secs(900));
    let metrics = d.request(&HttpRequest::new("GET", "/metrics")).json();
    let m = &metrics[0]["metrics"];
    assert_eq!(m["gpu"]["uuid"], uuid.as_str(), "{m}");
    println!("measurement: {}", m["measurement"]);
    let state = d.state.clone();
    assert!(d.stop().success());
    let store = talkheadd::store::Store::open(
        &state,
        talkheadd::store::StoreOptions {
            map_size_bytes: 64 << 20,
            history_per_miner: 20,
            max_submissions: 100,
        },
    )
    .unwrap();
    let runs = store
        .runs_for(&talkheadd::domain::Hotkey::parse(&signer.hotkey).unwrap(), 5)
        .unwrap();
    let tail = runs[0].log_tail.clone().unwrap_or_default();
    assert!(
        tail.contains(&format!("env NVIDIA_VISIBLE_DEVICES={uuid}")),
        "{tail}"
    );
    assert!(tail.contains(&format!("env TALKHEAD_GPU_SLOT={uuid}")), "{tail}");
    assert!(tail.contains("env CUDA_VISIBLE_DEVICES=0"), "{tail}");
}
