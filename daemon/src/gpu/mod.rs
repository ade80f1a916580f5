//! GPUs the daemon may place evaluations on, behind [`GpuInventory`] so that hosts without NVML (and
//! tests) use virtual slots. Only the virtual inventory exists so far; the NVML one (pinning by UUID,
//! VRAM measurement, health) is the GPU issue's.

use crate::runtime::spec::GpuAssignment;

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
}

/// The GPUs available for evaluations.
pub trait GpuInventory: Send + Sync {
    /// Every usable slot, in placement order.
    fn slots(&self) -> Vec<GpuSlot>;
    /// Whether the slots are real GPUs (false: VRAM cannot be measured).
    fn is_real(&self) -> bool;
}

/// `gpu.virtual = N`: N slots on a host without NVML.
#[derive(Debug, Clone)]
pub struct VirtualInventory {
    slots: u32,
}

impl VirtualInventory {
    /// N virtual slots.
    pub fn new(slots: u32) -> VirtualInventory {
        VirtualInventory { slots }
    }
}

impl GpuInventory for VirtualInventory {
    fn slots(&self) -> Vec<GpuSlot> {
        (0..self.slots)
            .map(|slot| GpuSlot {
                assignment: GpuAssignment::Virtual { slot },
                uuid: format!("virtual-{slot}"),
                name: "virtual GPU slot".to_owned(),
                compute_capability: None,
            })
            .collect()
    }

    fn is_real(&self) -> bool {
        false
    }
}
