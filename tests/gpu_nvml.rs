//! The NVML path, on a host with an NVIDIA GPU: the inventory reports every field, a run is pinned to
//! one GPU by UUID and the container sees exactly that GPU (its environment, and CUDA itself inside the
//! container), the VRAM meter reports at least the known peak of a real CUDA workload with its
//! provenance, and the run records its GPU and the provenance of its VRAM figure. The CUDA workload is
//! the project's own `tests/cuda-workload` (the driver API, `libcuda.so.1` loaded at run time: no CUDA
//! image or toolkit needed, nothing downloaded). Every test is named `gpu_*`: the test command excludes
//! them on hosts without a GPU (`--skip gpu_`); they are not skipped in code, and without NVML they
//! fail saying so.

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
    .unwrap_or_else(|e| {
        panic!(
            "the gpu_* tests need an NVIDIA GPU and its driver's NVML (libnvidia-ml.so.1); \
             on hosts without one, run the tests with `--skip gpu_`: {e}"
        )
    })
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

/// The CUDA workload, built once per process (release, dynamically linked: it dlopens libcuda).
fn workload() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = images::repo_root().unwrap();
            let target = images::work_dir().unwrap().with_file_name("cuda-workload");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let out = std::process::Command::new(cargo)
                .args(["build", "--release", "--manifest-path"])
                .arg(root.join("tests/cuda-workload/Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("RUSTFLAGS")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building tests/cuda-workload: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            target.join("release/talkhead-cuda-workload")
        })
        .clone()
}

/// Reads the workload's stdout line by line.
fn expect_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, prefix: &str) -> String {
    let line = lines
        .next()
        .unwrap_or_else(|| panic!("the CUDA workload exited before `{prefix}`"))
        .unwrap();
    assert!(line.starts_with(prefix), "expected `{prefix}…`, got {line:?}");
    line
}

#[test]
fn gpu_vram_meter_reports_a_cuda_workloads_known_peak_with_its_provenance() {
    use std::io::BufRead;
    const MIB: u64 = 512;
    let inv = inventory();
    let uuid = inv.describe()[0].uuid.clone();
    let meter = inv.vram_meter();
    let mut child = std::process::Command::new(workload())
        // Held for 300 ms: 30 samples at the default 100 Hz, and an accounting record either way.
        .args(["alloc", &MIB.to_string(), "300"])
        .env("CUDA_VISIBLE_DEVICES", &uuid)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The workload's own cgroup (whatever runs this test) holds its PID, as a container's would.
    let procs = talkheadd::gpu::cgroup::ContainerProcs::resolve(child.id()).unwrap();
    let mut session = meter.start(&uuid, Some(procs));
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let allocated = expect_line(&mut lines, "allocated ");
    // After `freed` the allocation is gone: only a sampled or accounted peak can still show it.
    expect_line(&mut lines, "freed");
    let reading = session.take_peak();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    println!(
        "{allocated}: {reading:?}, accounting={}",
        inv.accounting_enabled(&uuid)
    );
    let peak = reading
        .peak_bytes
        .expect("a peak for a process that held GPU memory");
    assert!(
        peak >= MIB << 20,
        "peak {peak} bytes is below the {MIB} MiB the workload held"
    );
    use talkheadd::domain::metrics::MeasurementSource;
    let expected = if inv.accounting_enabled(&uuid) {
        MeasurementSource::Accounting
    } else {
        MeasurementSource::Sampled
    };
    assert_eq!(reading.source, expected);
}

/// A FROM-scratch image holding the workload and the glibc pieces `ldd` names (the NVIDIA toolkit adds
/// libcuda.so.1 when the device request asks for `compute`); returns its local tag.
async fn workload_image(docker: &bollard::Docker) -> String {
    use futures_util::StreamExt;
    let binary = workload();
    let ldd = std::process::Command::new("ldd").arg(&binary).output().unwrap();
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`.
    let libs: Vec<&str> = ldd
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then_some(path)
        })
        .collect();
    assert!(!libs.is_empty(), "ldd found no libraries: {ldd}");
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data).unwrap();
    };
    add(
        "Dockerfile",
        0o644,
        b"FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/cuda-workload\", \"devices\"]\n",
    );
    add("rootfs/cuda-workload", 0o755, &std::fs::read(&binary).unwrap());
    for lib in &libs {
        add(&format!("rootfs{lib}"), 0o755, &std::fs::read(lib).unwrap());
    }
    let context = tar.into_inner().unwrap();
    let tag = format!("talkhead-test/cuda-workload:{}", std::process::id());
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    while let Some(item) = stream.next().await {
        let info = item.unwrap();
        if let Some(detail) = info.error_detail {
            panic!("building {tag}: {:?}", detail.message);
        }
    }
    tag
}

#[test]
fn gpu_cuda_inside_the_container_sees_only_the_pinned_gpu() {
    use talkheadd::runtime::spec::{self, ContainerPolicy, GpuAssignment, RunSpecInput};
    let gpus = inventory().describe();
    // The last GPU: on a multi-GPU host, pinning must not fall back to device 0.
    let uuid = gpus.last().unwrap().uuid.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let log = rt.block_on(async {
        let docker = images::docker().await.unwrap();
        let tag = workload_image(&docker).await;
        // An instance id of this test's own: no daemon's start-up sweep touches its container.
        let instance = format!("gpu-pin-test-{}", std::process::id());
        let engine = talkheadd::runtime::Engine::connect("unix:///var/run/docker.sock", &instance)
            .await
            .unwrap();
        let dirs = tempfile::tempdir().unwrap();
        let (input, output) = (dirs.path().join("input"), dirs.path().join("output"));
        std::fs::create_dir(&input).unwrap();
        std::fs::create_dir(&output).unwrap();
        // Never run: the spec wants a digest-pinned reference; the local tag replaces it below.
        let image = talkheadd::domain::ImageRef::parse(&format!(
            "talkhead-test/cuda-workload@sha256:{}",
            "0".repeat(64)
        ))
        .unwrap();
        let mut spec = spec::build(&RunSpecInput {
            run_id: &format!("gpu-pin-{}", std::process::id()),
            instance: &instance,
            image: &image,
            gpu: GpuAssignment::Nvidia { uuid: uuid.clone() },
            input_dir: &input,
            output_dir: &output,
            policy: &ContainerPolicy {
                cpus: 1.0,
                ..ContainerPolicy::default()
            },
        })
        .unwrap();
        spec.body.image = Some(tag.clone());
        let id = engine.create(&spec.name, spec.body).await.unwrap();
        let wait = engine.client().wait_container(
            &id,
            Some(
                bollard::query_parameters::WaitContainerOptionsBuilder::default()
                    .condition("next-exit")
                    .build(),
            ),
        );
        engine.start(&id).await.unwrap();
        let _ = futures_util::StreamExt::collect::<Vec<_>>(wait).await;
        let log = engine.log_tail(&id, 16 * 1024).await.unwrap();
        let outcome = engine.outcome(&id).await.unwrap();
        engine.remove(&id).await.unwrap();
        let _ = docker
            .remove_image(&tag, None::<bollard::query_parameters::RemoveImageOptions>, None)
            .await;
        assert_eq!(outcome.exit_code, Some(0), "{log}");
        log
    });
    println!("{log}");
    assert!(log.contains("devices 1"), "exactly one GPU visible: {log}");
    assert!(log.contains(&format!("device 0 {uuid}")), "{log}");
}
