//! The NVML inventory: real GPUs through nvml-wrapper, whose `Nvml::init` dlopens
//! `libnvidia-ml.so.1` at run time (no link-time dependency, so the same binary starts on hosts
//! without a GPU and refuses cleanly). Owns discovery and `gpu.devices` selection, the idle health
//! probe (XID events, ECC, throttling, temperature, foreign processes), and the NVML VRAM meter
//! (accounting mode when permitted, else a sampler thread at `gpu.vram_sample_hz`). It never changes a
//! GPU's settings except enabling accounting mode, and never touches a GPU outside `gpu.devices`.

use super::cgroup::ContainerProcs;
use super::health::Fault;
use super::vram::{SampledSession, SamplerShared, VramMeter, VramSession, run_sampler};
use super::{GpuAssignment, GpuSelector};
use super::{GpuInfo, GpuInventory, GpuSlot, ProbeResult};
use nvml_wrapper::Nvml;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::enums::event::XidError;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Why the NVML inventory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NvmlOpenError {
    /// NVML is not there (no driver, no library) or refused to start.
    #[error(
        "NVML is not available ({0}): install the NVIDIA driver (libnvidia-ml.so.1) for real GPUs, or set gpu.virtual = N to evaluate on N virtual slots"
    )]
    Unavailable(String),
    /// NVML answered but a query failed.
    #[error("NVML query failed: {0}")]
    Query(String),
    /// `gpu.devices` names a GPU that is not there, or selects none.
    #[error("gpu.devices: {0}")]
    Selection(String),
}

/// Limits the idle probe checks against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeLimits {
    /// Hotter than this (°C) is a fault.
    pub max_temperature_c: u32,
}

/// `gpu.max_temperature_c`: a GPU hotter than `limit` °C is faulty; exactly at the limit it is not.
/// Pure.
fn temperature_fault(celsius: u32, limit: u32) -> Option<Fault> {
    (celsius > limit).then_some(Fault::Temperature {
        celsius,
        limit_c: limit,
    })
}

/// `gpu.vram_sample_hz` as the sampler's period: one sample every `1 / hz` seconds, at 50 Hz or
/// faster whatever is asked (configuration validation already refuses less). Pure.
fn sample_period(hz: u32) -> Duration {
    Duration::from_secs_f64(1.0 / f64::from(hz.max(50)))
}

/// Keep the GPUs `gpu.devices` selects (all when empty), in inventory order. Pure.
pub fn select(all: &[GpuInfo], selectors: &[GpuSelector]) -> Result<Vec<GpuInfo>, String> {
    if selectors.is_empty() {
        return Ok(all.to_vec());
    }
    let mut keep = BTreeSet::new();
    for sel in selectors {
        let found = all.iter().position(|g| match sel {
            GpuSelector::Index(i) => g.index == *i,
            GpuSelector::Uuid(u) => g.uuid.eq_ignore_ascii_case(u),
        });
        match found {
            Some(i) => {
                keep.insert(i);
            }
            None => {
                let present: Vec<String> = all.iter().map(|g| format!("{} ({})", g.index, g.uuid)).collect();
                return Err(format!(
                    "{sel} is not on this host; present: {}",
                    present.join(", ")
                ));
            }
        }
    }
    Ok(all
        .iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, g)| g.clone())
        .collect())
}

/// The throttle reasons that make timings incomparable (thermal, power brake, hardware slowdown).
/// The software power cap and idle clocks are normal operation.
fn bad_throttle(reasons: ThrottleReasons) -> Option<String> {
    let bad = [
        (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
        (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (
            ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            "hw_power_brake_slowdown",
        ),
    ];
    let names: Vec<&str> = bad
        .iter()
        .filter(|(flag, _)| reasons.contains(*flag))
        .map(|(_, n)| *n)
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// Real GPUs through NVML.
pub struct NvmlInventory {
    nvml: Arc<Nvml>,
    gpus: Vec<GpuInfo>,
    accounting: BTreeSet<String>,
    limits: ProbeLimits,
    sample_period: Duration,
    ecc_seen: Mutex<BTreeMap<String, u64>>,
    xids: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
    stop_xid: Arc<AtomicBool>,
}

impl std::fmt::Debug for NvmlInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlInventory")
            .field("gpus", &self.gpus)
            .finish_non_exhaustive()
    }
}

fn q<T>(r: Result<T, nvml_wrapper::error::NvmlError>) -> Result<T, NvmlOpenError> {
    r.map_err(|e| NvmlOpenError::Query(e.to_string()))
}

impl NvmlInventory {
    /// Load NVML, list the GPUs, keep those `gpu.devices` selects, enable accounting where permitted
    /// and start watching for XID events.
    pub fn open(
        selectors: &[GpuSelector],
        limits: ProbeLimits,
        sample_hz: u32,
    ) -> Result<NvmlInventory, NvmlOpenError> {
        let nvml = Nvml::init().map_err(|e| NvmlOpenError::Unavailable(e.to_string()))?;
        let driver = nvml.sys_driver_version().ok();
        let cuda = nvml
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
        let mut all = Vec::new();
        for index in 0..q(nvml.device_count())? {
            let d = q(nvml.device_by_index(index))?;
            all.push(GpuInfo {
                index,
                uuid: q(d.uuid())?,
                name: d.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
                memory_total_bytes: d.memory_info().ok().map(|m| m.total),
                compute_capability: d
                    .cuda_compute_capability()
                    .ok()
                    .map(|c| format!("{}.{}", c.major, c.minor)),
                driver_version: driver.clone(),
                cuda_version: cuda.clone(),
                pci_bus_id: d.pci_info().ok().map(|p| p.bus_id),
                is_virtual: false,
            });
        }
        let gpus = select(&all, selectors).map_err(NvmlOpenError::Selection)?;
        if gpus.is_empty() {
            return Err(NvmlOpenError::Selection(
                "NVML reports no GPU on this host; set gpu.virtual = N to evaluate on N virtual slots".into(),
            ));
        }
        let mut accounting = BTreeSet::new();
        for g in &gpus {
            let Ok(mut d) = nvml.device_by_uuid(g.uuid.as_str()) else {
                continue;
            };
            let on = d.is_accounting_enabled().unwrap_or(false) || d.set_accounting(true).is_ok();
            if on {
                accounting.insert(g.uuid.clone());
            }
            tracing::info!(index = g.index, uuid = %g.uuid, name = %g.name, memory = ?g.memory_total_bytes,
                compute_capability = ?g.compute_capability, pci = ?g.pci_bus_id, accounting = on, "GPU in service");
        }
        let nvml = Arc::new(nvml);
        let xids = Arc::new(Mutex::new(BTreeMap::new()));
        let stop_xid = Arc::new(AtomicBool::new(false));
        spawn_xid_watch(
            nvml.clone(),
            gpus.iter().map(|g| g.uuid.clone()).collect(),
            xids.clone(),
            stop_xid.clone(),
        );
        Ok(NvmlInventory {
            nvml,
            gpus,
            accounting,
            limits,
            sample_period: sample_period(sample_hz),
            ecc_seen: Mutex::new(BTreeMap::new()),
            xids,
            stop_xid,
        })
    }

    /// Whether NVML accounting mode is on for `uuid` (exact per-process peaks).
    pub fn accounting_enabled(&self, uuid: &str) -> bool {
        self.accounting.contains(uuid)
    }
}

impl Drop for NvmlInventory {
    fn drop(&mut self) {
        self.stop_xid.store(true, Ordering::SeqCst);
    }
}

/// Wait for critical XID events on the selected GPUs and queue them for the next probe.
fn spawn_xid_watch(
    nvml: Arc<Nvml>,
    uuids: Vec<String>,
    xids: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
    stop: Arc<AtomicBool>,
) {
    let spawned = std::thread::Builder::new().name("gpu-xid".into()).spawn(move || {
        // One set per GPU: a failed registration consumes its set, and must not cost the others theirs.
        let mut sets = Vec::new();
        for u in &uuids {
            let (Ok(d), Ok(set)) = (nvml.device_by_uuid(u.as_str()), nvml.create_event_set()) else {
                continue;
            };
            match d.register_events(EventTypes::CRITICAL_XID_ERROR, set) {
                Ok(s) => sets.push(s),
                Err(e) => {
                    tracing::info!(uuid = %u, error = %e.error, "XID events not available for this GPU")
                }
            }
        }
        if sets.is_empty() {
            return;
        }
        let per_set = u32::try_from(500 / sets.len()).unwrap_or(1).max(1);
        while !stop.load(Ordering::SeqCst) {
            for set in &sets {
                let Ok(ev) = set.wait(per_set) else { continue };
                let code = match ev.event_data {
                    Some(XidError::Value(v)) => v,
                    _ => 0,
                };
                if let Ok(uuid) = ev.device.uuid() {
                    tracing::warn!(%uuid, xid = code, "critical XID event");
                    xids.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(uuid)
                        .or_default()
                        .push(code);
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the XID watcher");
    }
}

impl GpuInventory for NvmlInventory {
    fn slots(&self) -> Vec<GpuSlot> {
        self.gpus
            .iter()
            .map(|g| GpuSlot {
                assignment: GpuAssignment::Nvidia { uuid: g.uuid.clone() },
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                compute_capability: g.compute_capability.clone(),
                cuda_version: g.cuda_version.clone(),
                driver_version: g.driver_version.clone(),
            })
            .collect()
    }

    fn is_real(&self) -> bool {
        true
    }

    fn describe(&self) -> Vec<GpuInfo> {
        self.gpus.clone()
    }

    fn vram_meter(&self) -> Arc<dyn VramMeter> {
        Arc::new(NvmlMeter {
            nvml: self.nvml.clone(),
            accounting: self.accounting.clone(),
            period: self.sample_period,
        })
    }

    fn probe(&self, uuid: &str) -> ProbeResult {
        if let Some(codes) = self
            .xids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(uuid)
            && let Some(code) = codes.last()
        {
            return ProbeResult::Fault(Fault::Xid { code: *code });
        }
        let d = match self.nvml.device_by_uuid(uuid) {
            Ok(d) => d,
            Err(e) => {
                return ProbeResult::Fault(Fault::ProbeFailed {
                    detail: e.to_string(),
                });
            }
        };
        if let Ok(ecc) = d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile) {
            let mut seen = self.ecc_seen.lock().unwrap_or_else(PoisonError::into_inner);
            let before = seen.insert(uuid.to_owned(), ecc);
            if let Some(before) = before
                && ecc > before
            {
                return ProbeResult::Fault(Fault::Ecc {
                    new_errors: ecc - before,
                });
            }
        }
        if let Some(fault) = d
            .temperature(TemperatureSensor::Gpu)
            .ok()
            .and_then(|t| temperature_fault(t, self.limits.max_temperature_c))
        {
            return ProbeResult::Fault(fault);
        }
        if let Some(reasons) = d.current_throttle_reasons().ok().and_then(bad_throttle) {
            return ProbeResult::Fault(Fault::Throttled { reasons });
        }
        match d.running_compute_processes() {
            Ok(procs) => match procs.first() {
                Some(p) => ProbeResult::Fault(Fault::ForeignProcess { pid: p.pid }),
                None => ProbeResult::Healthy,
            },
            Err(e) => ProbeResult::Fault(Fault::ProbeFailed {
                detail: e.to_string(),
            }),
        }
    }
}

/// The NVML VRAM meter.
struct NvmlMeter {
    nvml: Arc<Nvml>,
    accounting: BTreeSet<String>,
    period: Duration,
}

impl VramMeter for NvmlMeter {
    fn start(&self, gpu_uuid: &str, procs: Option<ContainerProcs>) -> Box<dyn VramSession> {
        let shared = Arc::new(SamplerShared::default());
        let (nvml, uuid, period, s) = (
            self.nvml.clone(),
            gpu_uuid.to_owned(),
            self.period,
            shared.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name("gpu-vram".into())
            .spawn(move || {
                let d = match nvml.device_by_uuid(uuid.as_str()) {
                    Ok(d) => d,
                    Err(e) => {
                        s.record_fault(Fault::ProbeFailed {
                            detail: e.to_string(),
                        });
                        return;
                    }
                };
                let mut n: u64 = 0;
                let mut sample = |pids: &BTreeSet<u32>| -> Result<u64, Fault> {
                    n += 1;
                    // Throttling is checked ~4 times a second, not every sample.
                    if n.is_multiple_of(25)
                        && let Some(reasons) = d.current_throttle_reasons().ok().and_then(bad_throttle)
                    {
                        return Err(Fault::Throttled { reasons });
                    }
                    let list = d.running_compute_processes().map_err(|e| Fault::ProbeFailed {
                        detail: e.to_string(),
                    })?;
                    let mut used = 0u64;
                    for p in list {
                        if pids.contains(&p.pid) {
                            if let UsedGpuMemory::Used(b) = p.used_gpu_memory {
                                used += b;
                            }
                        } else if procs.is_some() && !pids.is_empty() {
                            // Re-checked against a fresh listing next sample: a process the container just
                            // started may not be in the PID set yet.
                            let fresh: BTreeSet<u32> = procs
                                .as_ref()
                                .map(|c| c.pids().into_iter().collect())
                                .unwrap_or_default();
                            if !fresh.contains(&p.pid) {
                                return Err(Fault::ForeignProcess { pid: p.pid });
                            }
                            if let UsedGpuMemory::Used(b) = p.used_gpu_memory {
                                used += b;
                            }
                        }
                    }
                    Ok(used)
                };
                run_sampler(&s, procs.as_ref(), period, &mut sample);
            });
        let accounting: Option<Box<super::vram::AccountingFn>> = if self.accounting.contains(gpu_uuid) {
            let (nvml, uuid) = (self.nvml.clone(), gpu_uuid.to_owned());
            Some(Box::new(move |pids: &BTreeSet<u32>| {
                let d = nvml.device_by_uuid(uuid.as_str()).ok()?;
                let maxima: Vec<u64> = pids
                    .iter()
                    .filter_map(|p| d.accounting_stats_for(*p).ok()?.max_memory_usage)
                    .collect();
                (!maxima.is_empty()).then(|| maxima.iter().sum())
            }))
        } else {
            None
        };
        match spawned {
            Ok(thread) => Box::new(SampledSession::new(shared, accounting, thread)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the VRAM sampler; VRAM unavailable for this run");
                Box::new(super::vram::UnavailableMeter)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(index: u32, uuid: &str) -> GpuInfo {
        GpuInfo {
            index,
            uuid: uuid.into(),
            name: "X".into(),
            memory_total_bytes: None,
            compute_capability: None,
            driver_version: None,
            cuda_version: None,
            pci_bus_id: None,
            is_virtual: false,
        }
    }

    #[test]
    fn devices_select_by_index_or_uuid_and_unknown_ones_are_refused() {
        let all = vec![info(0, "GPU-a"), info(1, "GPU-b"), info(2, "GPU-c")];
        assert_eq!(select(&all, &[]).map(|v| v.len()), Ok(3));
        let picked =
            select(&all, &[GpuSelector::Uuid("GPU-C".into()), GpuSelector::Index(0)]).unwrap_or_default();
        assert_eq!(picked.iter().map(|g| g.index).collect::<Vec<_>>(), vec![0, 2]);
        let err = select(&all, &[GpuSelector::Index(7)]).err().unwrap_or_default();
        assert!(err.contains("7") && err.contains("GPU-b"), "{err}");
    }

    #[test]
    fn hotter_than_max_temperature_c_is_a_fault_naming_both() {
        assert_eq!(temperature_fault(90, 90), None);
        assert_eq!(temperature_fault(40, 90), None);
        let fault = temperature_fault(91, 90);
        assert_eq!(
            fault,
            Some(Fault::Temperature {
                celsius: 91,
                limit_c: 90
            })
        );
        let text = fault.map(|f| f.to_string()).unwrap_or_default();
        assert!(
            text.contains("91 °C") && text.contains("gpu.max_temperature_c 90"),
            "{text}"
        );
        // Another limit moves the edge with it.
        assert_eq!(temperature_fault(91, 95), None);
        assert!(temperature_fault(96, 95).is_some());
    }

    #[test]
    fn vram_sample_hz_sets_the_sampler_period() {
        assert_eq!(sample_period(100), Duration::from_millis(10));
        assert_eq!(sample_period(50), Duration::from_millis(20));
        assert_eq!(sample_period(1000), Duration::from_millis(1));
        assert_eq!(sample_period(200), Duration::from_millis(5));
        // Below the 50 Hz floor (validation refuses it anyway) the floor applies.
        assert_eq!(sample_period(10), Duration::from_millis(20));
        assert_eq!(sample_period(0), Duration::from_millis(20));
    }

    #[test]
    fn only_thermal_power_and_hardware_throttling_are_faults() {
        assert_eq!(
            bad_throttle(ThrottleReasons::SW_POWER_CAP | ThrottleReasons::GPU_IDLE),
            None
        );
        assert_eq!(
            bad_throttle(ThrottleReasons::HW_THERMAL_SLOWDOWN | ThrottleReasons::SW_POWER_CAP).as_deref(),
            Some("hw_thermal_slowdown")
        );
    }
}
