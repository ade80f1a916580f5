//! The configuration file as written: every key optional, unknown keys refused, numbers kept signed so
//! that a negative timeout is reported as an impossible value rather than a parse error.
//!
//! This module only mirrors the TOML shape; all meaning and every check live in `settings`.

use crate::rounds::ReevaluatePolicy;
use crate::runtime::spec::ContainerPolicy;
use crate::scoring::ScoringConfig;
use serde::{Deserialize, Serialize};

/// The whole file (or one drop-in fragment).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[http]`: the validator-facing gateway.
    pub http: RawHttp,
    /// `[store]`: the LMDB state file.
    pub store: RawStore,
    /// `[auth]`: who may call the gateway.
    pub auth: RawAuth,
    /// `[evaluation]`: challenges, counts, timeouts, round policy.
    pub evaluation: RawEvaluation,
    /// `[docker]`: the container engine.
    pub docker: RawDocker,
    /// `[gpu]`: which GPUs to use.
    pub gpu: RawGpu,
    /// `[admin]`: the Unix-socket control plane.
    pub admin: RawAdmin,
    /// `[log]`: log format and level.
    pub log: RawLog,
    /// `[scoring]`: every scoring constant.
    pub scoring: Option<ScoringConfig>,
    /// `[container]`: limits of every miner container.
    pub container: Option<ContainerPolicy>,
    /// `[analysis]`: how outputs are analysed.
    pub analysis: RawAnalysis,
    /// `[cluster]`: where evaluations execute (this host, or a Ray cluster's GPU hosts).
    pub cluster: RawCluster,
}

/// `[cluster]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCluster {
    /// `local` (this host's GPUs) or `ray` (jobs on a Ray cluster's GPU hosts).
    pub engine: Option<String>,
    /// The Ray head's dashboard URL (`http://head:8265`).
    pub ray_address: Option<String>,
    /// A file holding the Ray cluster's auth token (mode 0600).
    pub ray_token_file: Option<String>,
    /// A systemd credential holding the Ray cluster's auth token.
    pub ray_token_credential: Option<String>,
    /// Where the cluster listener (the workers' door) binds.
    pub listen: Option<String>,
    /// The listener's URL as the workers reach it.
    pub advertise_url: Option<String>,
    /// Attempts of one evaluation before its infrastructure failure goes back to the loop.
    pub max_attempts: Option<i64>,
    /// CPUs each job reserves on its host (the analysis runs there).
    pub job_cpus: Option<f64>,
    /// A custom Ray resource every job asks one unit of (the hosts of one GPU model carry it).
    pub gpu_model_resource: Option<String>,
    /// Most jobs in flight at once (the cluster's free GPUs bound it further).
    pub max_jobs: Option<i64>,
    /// Most bytes of one uploaded video.
    pub max_video_bytes: Option<i64>,
    /// Most bytes of one uploaded run report.
    pub max_report_bytes: Option<i64>,
}

/// `[analysis]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnalysis {
    /// Old name of `analysis.face.backend` (still accepted).
    pub face_backend: Option<String>,
    /// Old name of `analysis.face.cascade` (still accepted).
    pub face_cascade: Option<String>,
    /// `[analysis.asr]`: the speech backend.
    pub asr: RawAsr,
    /// `[analysis.face]`: the face detector and identity backend.
    pub face: RawFace,
    /// `strict` (an output off the task's size or frame rate is `bad_output`) or `penalty`.
    pub conformance: Option<String>,
}

/// `[analysis.face]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawFace {
    /// `builtin` (Haar cascade, histogram identity) or `onnx` (SCRFD + ArcFace).
    pub backend: Option<String>,
    /// OpenCV Haar cascade XML for the builtin backend.
    pub cascade: Option<String>,
    /// SCRFD detector model (`det_10g.onnx`) for the onnx backend.
    pub detector_model: Option<String>,
    /// ArcFace recogniser model (`w600k_r50.onnx`) for the onnx backend.
    pub recognizer_model: Option<String>,
    /// The ONNX Runtime shared library for the onnx backend.
    pub onnxruntime_library: Option<String>,
    /// Intra-op threads per ONNX session.
    pub threads: Option<i64>,
    /// Detector input side when the model's is dynamic.
    pub det_size: Option<i64>,
    /// Detection score threshold.
    pub det_threshold: Option<f64>,
}

/// `[analysis.asr]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAsr {
    /// `none` or `whisper`.
    pub backend: Option<String>,
    /// The ggml model file of `whisper`.
    pub model: Option<String>,
    /// The most one `whisper` transcription may take, seconds.
    pub timeout_secs: Option<i64>,
}

/// `[http]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp {
    /// `host:port` to listen on.
    pub listen: Option<String>,
    /// Largest accepted request body.
    pub max_body_bytes: Option<i64>,
    /// Most submissions in one `/update`.
    pub max_batch: Option<i64>,
    /// Most simultaneous connections.
    pub max_connections: Option<i64>,
    /// Time allowed to receive a request's headers; also bounds an idle keep-alive connection.
    pub header_timeout_secs: Option<i64>,
    /// Time allowed for a whole request, body included.
    pub request_timeout_secs: Option<i64>,
}

/// `[store]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// The LMDB data file.
    pub path: Option<String>,
    /// LMDB map size.
    pub map_size_mb: Option<i64>,
    /// Runs kept per miner in the history.
    pub history_per_miner: Option<i64>,
    /// Most distinct hotkeys the table may hold.
    pub max_submissions: Option<i64>,
}

/// `[auth]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// Public SS58 hotkeys allowed to call the gateway.
    pub allowed_hotkeys: Option<Vec<String>>,
    /// Accepted clock skew of signed requests.
    pub max_skew_secs: Option<i64>,
    /// `false` disables signatures (loopback listeners only).
    pub require_signature: Option<bool>,
    /// `true` serves `GET /metrics` without a signature.
    pub public_metrics: Option<bool>,
    /// Nonces remembered by the replay cache.
    pub replay_cache_capacity: Option<i64>,
}

/// `[evaluation]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEvaluation {
    /// Directory of challenge sub-directories.
    pub challenges_dir: Option<String>,
    /// Subnet API base URL to fetch challenges from.
    pub subnet_api_url: Option<String>,
    /// `true` accepts a plain `http://` Subnet API URL to a host other than loopback.
    pub subnet_api_allow_insecure: Option<bool>,
    /// Unscored warm-up challenges per evaluation.
    pub warmup_count: Option<i64>,
    /// Scored challenges per evaluation.
    pub scoring_count: Option<i64>,
    /// Time for a container to write `ready.txt`.
    pub ready_timeout_secs: Option<i64>,
    /// Time for one challenge's result.
    pub challenge_timeout_secs: Option<i64>,
    /// Time for one pull attempt.
    pub pull_timeout_secs: Option<i64>,
    /// Which miners are re-evaluated each round.
    pub reevaluate: Option<ReevaluatePolicy>,
    /// Bittensor hotkey file that signs Subnet API requests (mode 0600; never the key itself).
    pub signing_key_file: Option<String>,
    /// systemd credential holding that hotkey file (`LoadCredential=`).
    pub signing_key_credential: Option<String>,
    /// Where job directories are created (default: `jobs/` beside the state file).
    pub work_dir: Option<String>,
    /// `first_wins` (default) or `share`: what copies of an already-evaluated digest get.
    pub duplicates: Option<String>,
}

/// `[docker]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDocker {
    /// Docker Engine API endpoint (`unix:///…` or `tcp://…`).
    pub host: Option<String>,
    /// Largest miner image accepted, in bytes on disk.
    pub max_image_bytes: Option<i64>,
    /// Registries images may come from (`host[:port]`, `docker.io` for Docker Hub); empty = any.
    pub allowed_registries: Option<Vec<String>>,
    /// Pull attempts for infrastructure failures before the run is retried later.
    pub pull_attempts: Option<i64>,
    /// Bytes of pulled miner images kept after their runs (least recently used removed first).
    pub image_cache_bytes: Option<i64>,
    /// Pending submissions whose images are pulled ahead while evaluations run (0 disables).
    pub prepull_ahead: Option<i64>,
}

/// `[gpu]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGpu {
    /// Number of virtual GPU slots on a host without NVML.
    #[serde(rename = "virtual")]
    pub virtual_slots: Option<i64>,
    /// GPUs the daemon may use, by NVML index or UUID (default: all).
    pub devices: Option<Vec<RawGpuDevice>>,
    /// Consecutive faults that quarantine a GPU.
    pub quarantine_after_faults: Option<i64>,
    /// Seconds a quarantined GPU waits before it is re-probed.
    pub quarantine_secs: Option<i64>,
    /// Temperature (°C) above which a GPU is faulty.
    pub max_temperature_c: Option<i64>,
    /// VRAM sampling rate when NVML accounting is not available (>= 50).
    pub vram_sample_hz: Option<i64>,
    /// Measure all miners of a round on one GPU model when the host has several.
    pub same_model_per_round: Option<bool>,
    /// The driver CUDA version virtual slots claim (`major.minor`), for the images' CUDA requirements.
    pub virtual_cuda_version: Option<String>,
    /// Digest-pinned reference image evaluated on each GPU once per round (calibration).
    pub calibration_image: Option<String>,
}

/// One `gpu.devices` entry: an NVML index or a UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawGpuDevice {
    /// NVML index.
    Index(i64),
    /// NVML UUID (`GPU-...`).
    Uuid(String),
}

/// `[admin]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAdmin {
    /// Path of the admin Unix socket.
    pub socket: Option<String>,
    /// Group whose members may call every admin call.
    pub group: Option<String>,
    /// Group whose members may call the read-only admin calls.
    pub read_group: Option<String>,
    /// Permission bits of the socket file (octal string, e.g. "0660"), applied through the umask at bind.
    pub socket_mode: Option<String>,
}

/// `[log]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `auto`, `plain`, `json` or `journald`.
    pub format: Option<String>,
    /// A tracing filter directive, e.g. `info` or `talkheadd=debug`.
    pub level: Option<String>,
}
