//! Which of this host's GPU slots a worker job was given. Ray reserves one GPU for the job
//! (`entrypoint_num_gpus = 1`) and says which in the job's `CUDA_VISIBLE_DEVICES`: the GPU's UUID
//! when the host's raylet was started with `CUDA_VISIBLE_DEVICES=<its UUIDs>` (docs/cluster.md asks
//! for that), a CUDA index otherwise. The worker runs only on a slot of its own configured inventory
//! (`[gpu]`), so the answer is checked against it, never taken on trust.
//!
//! Pure: the environment variable's value and the inventory's slots in, a slot index or a refusal
//! out (an `infra_error` of the attempt, never the miner's).

use crate::gpu::GpuSlot;

/// Why the given GPU cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerGpuError {
    /// `CUDA_VISIBLE_DEVICES` is unset or empty.
    #[error(
        "CUDA_VISIBLE_DEVICES is unset: Ray gave this job no GPU (submit it with entrypoint_num_gpus = 1)"
    )]
    NoneGiven,
    /// More than one device.
    #[error("CUDA_VISIBLE_DEVICES={0:?} names more than one GPU; an evaluation takes exactly one")]
    MoreThanOne(String),
    /// A UUID that is not one of this host's slots.
    #[error(
        "Ray gave GPU {given}, which is not one of this host's configured slots ({slots}); check gpu.devices and the raylet's CUDA_VISIBLE_DEVICES"
    )]
    NotOnThisHost {
        /// What Ray gave.
        given: String,
        /// This host's slots.
        slots: String,
    },
    /// A CUDA index where real GPUs need a UUID (CUDA's index order is not NVML's).
    #[error(
        "CUDA_VISIBLE_DEVICES={0:?} is an index; start the raylet with CUDA_VISIBLE_DEVICES set to this host's GPU UUIDs so that jobs are given UUIDs"
    )]
    IndexNotUuid(String),
    /// An index past the virtual slots.
    #[error("CUDA_VISIBLE_DEVICES={given:?}: this host has {slots} virtual slots")]
    NoSuchVirtualSlot {
        /// What Ray gave.
        given: String,
        /// How many slots there are.
        slots: usize,
    },
}

/// The index in `slots` of the GPU `visible` names. `real`: the slots are NVML GPUs (only a UUID is
/// accepted); otherwise virtual slots, chosen by UUID or by index.
pub fn given_slot(visible: Option<&str>, slots: &[GpuSlot], real: bool) -> Result<usize, WorkerGpuError> {
    let given = visible
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(WorkerGpuError::NoneGiven)?;
    if given.contains(',') {
        return Err(WorkerGpuError::MoreThanOne(given.to_owned()));
    }
    if let Some(at) = slots.iter().position(|s| s.uuid == given) {
        return Ok(at);
    }
    match given.parse::<usize>() {
        Ok(_) if real => Err(WorkerGpuError::IndexNotUuid(given.to_owned())),
        Ok(index) if index < slots.len() => Ok(index),
        Ok(_) => Err(WorkerGpuError::NoSuchVirtualSlot {
            given: given.to_owned(),
            slots: slots.len(),
        }),
        Err(_) => Err(WorkerGpuError::NotOnThisHost {
            given: given.to_owned(),
            slots: slots
                .iter()
                .map(|s| s.uuid.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::gpu::{GpuInventory, VirtualInventory};

    fn real(uuids: &[&str]) -> Vec<GpuSlot> {
        let mut slots = VirtualInventory::new(u32::try_from(uuids.len()).unwrap()).slots();
        for (slot, uuid) in slots.iter_mut().zip(uuids) {
            slot.uuid = (*uuid).to_owned();
            slot.assignment = crate::gpu::GpuAssignment::Nvidia {
                uuid: (*uuid).to_owned(),
            };
        }
        slots
    }

    #[test]
    fn a_uuid_picks_its_slot_on_real_gpus_and_an_index_is_refused() {
        let slots = real(&["GPU-aaaa", "GPU-bbbb"]);
        assert_eq!(given_slot(Some("GPU-bbbb"), &slots, true), Ok(1));
        assert_eq!(given_slot(Some(" GPU-aaaa\n"), &slots, true), Ok(0));
        assert!(matches!(
            given_slot(Some("GPU-cccc"), &slots, true),
            Err(WorkerGpuError::NotOnThisHost { .. })
        ));
        assert_eq!(
            given_slot(Some("1"), &slots, true),
            Err(WorkerGpuError::IndexNotUuid("1".into()))
        );
        assert_eq!(
            given_slot(Some("GPU-aaaa,GPU-bbbb"), &slots, true),
            Err(WorkerGpuError::MoreThanOne("GPU-aaaa,GPU-bbbb".into()))
        );
        for none in [None, Some(""), Some("  ")] {
            assert_eq!(given_slot(none, &slots, true), Err(WorkerGpuError::NoneGiven));
        }
    }

    #[test]
    fn virtual_slots_are_picked_by_name_or_index() {
        let slots = VirtualInventory::new(2).slots();
        assert_eq!(given_slot(Some("virtual-1"), &slots, false), Ok(1));
        assert_eq!(given_slot(Some("0"), &slots, false), Ok(0));
        assert!(matches!(
            given_slot(Some("2"), &slots, false),
            Err(WorkerGpuError::NoSuchVirtualSlot { slots: 2, .. })
        ));
        let e = given_slot(Some("GPU-aaaa"), &slots, false).unwrap_err();
        assert!(e.to_string().contains("virtual-0, virtual-1"), "{e}");
    }
}
