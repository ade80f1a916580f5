//! The host-side part of one VRAM sample: list the container's processes from its cgroup
//! (`cgroup.procs`, here this process's own cgroup), match them against a per-process memory list
//! shaped like NVML's answer (16 processes), and record the peak. The NVML call itself
//! (`nvmlDeviceGetComputeRunningProcesses`) needs a GPU and is not part of this figure.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::BTreeSet;
use std::hint::black_box;
use talkheadd::gpu::cgroup::ContainerProcs;
use talkheadd::gpu::vram::SamplerShared;

fn sampler(c: &mut Criterion) {
    let procs = ContainerProcs::resolve(std::process::id()).unwrap();
    let shared = SamplerShared::default();
    let nvml_like: Vec<(u32, u64)> = (0..16).map(|i| (1000 + i, 512 << 20)).collect();
    c.bench_function("vram_sample_host_side", |b| {
        b.iter(|| {
            let pids: BTreeSet<u32> = procs.pids().into_iter().collect();
            let used: u64 = nvml_like
                .iter()
                .filter(|(p, _)| pids.contains(p))
                .map(|(_, m)| *m)
                .sum();
            shared.record(black_box(used));
        })
    });
    c.bench_function("vram_sample_record_only", |b| {
        b.iter(|| shared.record(black_box(42)))
    });
}

criterion_group!(benches, sampler);
criterion_main!(benches);
