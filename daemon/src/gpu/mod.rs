//! GPUs the daemon may place evaluations on, behind [`GpuInventory`] so that hosts without NVML (and
//! tests) use virtual slots. Owns discovery ([`nvml`], [`VirtualInventory`]), the pure placement of
//! miners on slots ([`placement`]), the pure check of an image's CUDA requirement against a GPU
//! ([`cuda_requirement`]), the pure health state machine ([`health`]), host-side peak-VRAM
//! measurement ([`vram`], [`cgroup`]) and the shared per-GPU status board ([`board`]) that `status`
//! and the admin plane read. It never runs containers: the engine does, on the slot placed here.

pub mod board;
pub mod cgroup;
pub mod cuda_requirement;
pub mod health;
pub mod nvml;
pub mod placement;
pub mod settings;
pub mod vram;

use serde::Serialize;
use std::sync::Arc;
use vram::{UnavailableMeter, VramMeter};

pub use board::{GpuBoard, GpuState, GpuStatus};
pub use settings::{GpuMode, GpuSelector, GpuSettings};

/// The GPU a run is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GpuAssignment {
    /// One physical NVIDIA GPU, by NVML UUID (`GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
    Nvidia {
        /// The GPU's UUID; validated by [`crate::runtime::spec::build`].
        uuid: String,
    },
    /// A virtual slot on a host without NVML: the container gets no GPU at all.
    Virtual {
        /// Slot number (scheduling only; nothing of it reaches the container).
        slot: u32,
    },
}

/// One place an evaluation can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuSlot {
    /// What the container spec gets.
    pub assignment: GpuAssignment,
    /// Identity recorded with every timing (`virtual-N` without NVML).
    pub uuid: String,
    /// Marketing name.
    pub name: String,
    /// Compute capability (`major.minor`), when known.
    pub compute_capability: Option<String>,
    /// CUDA version the driver supports (`major.minor`), when known (virtual slots: `gpu.virtual_cuda_version`).
    pub cuda_version: Option<String>,
    /// Driver version, when known.
    pub driver_version: Option<String>,
}

impl GpuSlot {
    /// What the CUDA requirement check knows about this slot.
    pub fn facts(&self) -> cuda_requirement::GpuFacts<'_> {
        cuda_requirement::GpuFacts {
            cuda_version: self.cuda_version.as_deref(),
            driver_version: self.driver_version.as_deref(),
            compute_capability: self.compute_capability.as_deref(),
        }
    }
}

/// What the inventory knows about one GPU, for `status` and the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuInfo {
    /// NVML index (slot number for virtual slots).
    pub index: u32,
    /// NVML UUID, or `virtual-N`.
    pub uuid: String,
    /// Marketing name.
    pub name: String,
    /// Total memory in bytes, when known.
    pub memory_total_bytes: Option<u64>,
    /// Compute capability (`major.minor`), when known.
    pub compute_capability: Option<String>,
    /// Driver version, when known.
    pub driver_version: Option<String>,
    /// CUDA version the driver supports (`major.minor`), when known.
    pub cuda_version: Option<String>,
    /// PCI bus id, when known.
    pub pci_bus_id: Option<String>,
    /// True for a virtual slot (no GPU reaches the container; VRAM is not measured).
    pub is_virtual: bool,
}

/// What a health probe of one GPU saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    /// Nothing wrong.
    Healthy,
    /// A fault; the health state machine decides what it means.
    Fault(health::Fault),
}

/// The GPUs available for evaluations.
pub trait GpuInventory: Send + Sync {
    /// Every usable slot (after `gpu.devices` selection), in placement order.
    fn slots(&self) -> Vec<GpuSlot>;
    /// Whether the slots are real GPUs (false: VRAM cannot be measured).
    fn is_real(&self) -> bool;
    /// One entry per usable slot, in the same order as [`GpuInventory::slots`].
    fn describe(&self) -> Vec<GpuInfo>;
    /// The peak-VRAM meter for runs on these slots.
    fn vram_meter(&self) -> Arc<dyn VramMeter> {
        Arc::new(UnavailableMeter)
    }
    /// Check one idle GPU before it takes a run (XID/ECC events, throttling, temperature, foreign
    /// processes). Virtual slots are always healthy.
    fn probe(&self, _uuid: &str) -> ProbeResult {
        ProbeResult::Healthy
    }
}

/// `gpu.virtual = N`: N slots on a host without NVML.
#[derive(Debug, Clone)]
pub struct VirtualInventory {
    slots: u32,
    cuda_version: Option<String>,
    /// `virtual` (`virtual-0`…), or `ray-job` for a coordinator's job slots.
    prefix: &'static str,
    name: &'static str,
}

impl VirtualInventory {
    /// N virtual slots.
    pub fn new(slots: u32) -> VirtualInventory {
        VirtualInventory {
            slots,
            cuda_version: None,
            prefix: "virtual",
            name: VIRTUAL_NAME,
        }
    }

    /// The job slots of a Ray coordinator (`cluster.max_jobs`, `ray-job-0`…): the loop places one
    /// evaluation per slot as it does on GPUs; the cluster's GPU hosts run and measure them.
    pub fn cluster_jobs(slots: u32) -> VirtualInventory {
        VirtualInventory {
            slots,
            cuda_version: None,
            prefix: "ray-job",
            name: CLUSTER_SLOT_NAME,
        }
    }

    /// Slots that claim a driver CUDA version (`gpu.virtual_cuda_version`), so that the images' CUDA
    /// requirements are checked on hosts without a GPU (CI) as they would be on one.
    pub fn with_cuda_version(mut self, cuda_version: Option<String>) -> VirtualInventory {
        self.cuda_version = cuda_version;
        self
    }
}

/// The name virtual slots report.
pub const VIRTUAL_NAME: &str = "virtual GPU slot";

/// The name a Ray coordinator's job slots report.
pub const CLUSTER_SLOT_NAME: &str = "Ray job slot";

impl GpuInventory for VirtualInventory {
    fn slots(&self) -> Vec<GpuSlot> {
        (0..self.slots)
            .map(|slot| GpuSlot {
                assignment: GpuAssignment::Virtual { slot },
                uuid: format!("{}-{slot}", self.prefix),
                name: self.name.to_owned(),
                compute_capability: None,
                cuda_version: self.cuda_version.clone(),
                driver_version: None,
            })
            .collect()
    }

    fn is_real(&self) -> bool {
        false
    }

    fn describe(&self) -> Vec<GpuInfo> {
        (0..self.slots)
            .map(|slot| GpuInfo {
                index: slot,
                uuid: format!("{}-{slot}", self.prefix),
                name: self.name.to_owned(),
                memory_total_bytes: None,
                compute_capability: None,
                driver_version: None,
                cuda_version: self.cuda_version.clone(),
                pci_bus_id: None,
                is_virtual: true,
            })
            .collect()
    }
}

/// The inventory `settings` configure: `gpu.virtual = N` slots, or the NVML GPUs `gpu.devices`
/// selects. Also returns the backend's name for `status` (`virtual (N slots)`, `nvml`). Shared by the
/// daemon and `talkheadd evaluate`; an error is the operator's to fix in the configuration.
pub fn open_inventory(
    settings: &GpuSettings,
) -> Result<(Arc<dyn GpuInventory>, String), nvml::NvmlOpenError> {
    match settings.mode {
        GpuMode::Virtual(n) => {
            tracing::warn!(
                slots = n,
                "gpu.virtual is set: evaluations run on virtual GPU slots, VRAM is not measured"
            );
            let inventory = VirtualInventory::new(n).with_cuda_version(settings.virtual_cuda_version.clone());
            Ok((Arc::new(inventory), format!("virtual ({n} slots)")))
        }
        GpuMode::Nvml => {
            let limits = nvml::ProbeLimits {
                max_temperature_c: settings.max_temperature_c,
            };
            let inventory = nvml::NvmlInventory::open(&settings.devices, limits, settings.vram_sample_hz)?;
            Ok((Arc::new(inventory), "nvml".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_inventory_describes_every_slot_in_order() {
        let inv = VirtualInventory::new(3);
        let slots = inv.slots();
        let info = inv.describe();
        assert_eq!(slots.len(), 3);
        assert!(!inv.is_real());
        for (s, i) in slots.iter().zip(&info) {
            assert_eq!(s.uuid, i.uuid);
            assert!(i.is_virtual);
        }
        assert_eq!(inv.probe("virtual-0"), ProbeResult::Healthy);
    }
}
