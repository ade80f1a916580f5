//! `[gpu]`: the settings the GPU layer owns. [`crate::config`] validates the file's values into
//! them; nothing here reads configuration itself.

/// How GPUs are discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuMode {
    /// Real GPUs through NVML.
    Nvml,
    /// N virtual slots on a host without NVML.
    Virtual(u32),
}

/// `[gpu]`
#[derive(Debug, Clone)]
pub struct GpuSettings {
    /// Discovery mode.
    pub mode: GpuMode,
    /// `gpu.devices`: the GPUs the daemon may use (empty: all).
    pub devices: Vec<GpuSelector>,
    /// When faults quarantine a GPU and for how long.
    pub health: super::health::HealthPolicy,
    /// `gpu.max_temperature_c`.
    pub max_temperature_c: u32,
    /// `gpu.vram_sample_hz`.
    pub vram_sample_hz: u32,
    /// `gpu.same_model_per_round`.
    pub same_model_per_round: bool,
    /// `gpu.virtual_cuda_version`: the driver CUDA version virtual slots claim (`None`: unknown).
    pub virtual_cuda_version: Option<String>,
    /// `gpu.calibration_image`: the reference image evaluated on each GPU once per round.
    pub calibration_image: Option<crate::domain::ImageRef>,
}

/// One GPU named in `gpu.devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelector {
    /// By NVML index.
    Index(u32),
    /// By NVML UUID.
    Uuid(String),
}

impl std::fmt::Display for GpuSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuSelector::Index(i) => write!(f, "GPU index {i}"),
            GpuSelector::Uuid(u) => write!(f, "GPU {u}"),
        }
    }
}
