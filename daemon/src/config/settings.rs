//! Validated settings: what the rest of the daemon reads. Every value is typed, in range and resolved
//! (defaults applied, environment overrides merged); nothing downstream re-checks configuration.
//!
//! Validation collects every problem at once, each naming its key and where the value came from, so an
//! operator fixes a file in one pass.

use super::raw::RawConfig;
use super::{ConfigProblem, Origins};
pub use crate::analysis::decode::Conformance;
pub use crate::analysis::settings::{AnalysisSettings, AsrBackend, FaceBackend, FaceSettings};
use crate::domain::Hotkey;
pub use crate::gpu::{GpuMode, GpuSelector, GpuSettings};
use crate::rounds::ReevaluatePolicy;
use crate::runtime::spec::ContainerPolicy;
use crate::scoring::ScoringConfig;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Embedded defaults (docs/reference.md#config-defaults; the reference's values where it has one).
pub mod defaults {
    /// HTTP listen address: loopback only, port 8000 as the reference.
    pub const HTTP_LISTEN: &str = "127.0.0.1:8000";
    /// Largest `/update` body: 1 MiB holds ~8,000 submissions.
    pub const MAX_BODY_BYTES: i64 = 1 << 20;
    /// Most submissions per `/update`.
    pub const MAX_BATCH: i64 = 4096;
    /// Simultaneous HTTP connections.
    pub const MAX_CONNECTIONS: i64 = 256;
    /// Seconds to receive request headers.
    pub const HEADER_TIMEOUT_SECS: i64 = 10;
    /// Seconds for a whole request.
    pub const REQUEST_TIMEOUT_SECS: i64 = 30;
    /// State file, as the reference's `STATE_FILE`.
    pub const STORE_PATH: &str = "./state.db";
    /// LMDB map size in MiB (a sparse file: only what is used takes disk).
    pub const MAP_SIZE_MB: i64 = 1024;
    /// Runs kept per miner.
    pub const HISTORY_PER_MINER: i64 = 20;
    /// Distinct hotkeys the table may hold (a subnet has at most 256 UIDs; room for churn).
    pub const MAX_SUBMISSIONS: i64 = 4096;
    /// Signed-request clock skew, as the reference.
    pub const MAX_SKEW_SECS: i64 = 120;
    /// Replay-cache entries.
    pub const REPLAY_CACHE_CAPACITY: i64 = 65_536;
    /// Warm-up challenges.
    pub const WARMUP_COUNT: i64 = 2;
    /// Scored challenges.
    pub const SCORING_COUNT: i64 = 5;
    /// Seconds until `ready.txt`.
    pub const READY_TIMEOUT_SECS: i64 = 600;
    /// Seconds per challenge.
    pub const CHALLENGE_TIMEOUT_SECS: i64 = 120;
    /// Seconds one whisper transcription may take (`[analysis.asr] timeout_secs`): whisper.cpp
    /// "base" on a few CPU cores needs a few seconds for a challenge's audio, temperature fallbacks
    /// included; far beyond that the model is too slow for the host.
    pub const ASR_TIMEOUT_SECS: i64 = 120;
    /// Seconds per pull attempt.
    pub const PULL_TIMEOUT_SECS: i64 = 900;
    /// Docker Engine endpoint.
    pub const DOCKER_HOST: &str = "unix:///var/run/docker.sock";
    /// Largest miner image (on disk): 32 GiB holds a CUDA runtime and a large model.
    pub const MAX_IMAGE_BYTES: i64 = 32 << 30;
    /// Pull attempts per run.
    pub const PULL_ATTEMPTS: i64 = 5;
    /// Two of the largest accepted images: the next miner's image fits beside the one just run.
    pub const IMAGE_CACHE_BYTES: i64 = 2 * MAX_IMAGE_BYTES;
    /// One submission ahead: its pull overlaps the current run without hoarding disk.
    pub const PREPULL_AHEAD: i64 = 1;
    /// Admin socket.
    pub const ADMIN_SOCKET: &str = "/run/talkheadd/admin.sock";
    /// Full-control admin group (created by the package's sysusers entry).
    pub const ADMIN_GROUP: &str = "talkhead-admin";
    /// Read-only admin group (the daemon's own group).
    pub const ADMIN_READ_GROUP: &str = "talkhead";
    /// Admin socket permissions: owner and group read/write, nothing for others.
    pub const ADMIN_SOCKET_MODE: u32 = 0o660;
    /// Log level.
    pub const LOG_LEVEL: &str = "info";
    /// The cluster listener: loopback until the operator names the private address workers reach.
    pub const CLUSTER_LISTEN: &str = "127.0.0.1:8790";
    /// Attempts per evaluation on a cluster: a lost host, then another, then give the miner back.
    pub const CLUSTER_MAX_ATTEMPTS: i64 = 3;
    /// CPUs a job reserves for the analysis beside its GPU.
    pub const CLUSTER_JOB_CPUS: f64 = 1.0;
    /// Jobs in flight at most (the cluster's free GPUs bound it further).
    pub const CLUSTER_MAX_JOBS: i64 = 16;
    /// One scored video: far above a 1080p clip of the longest challenge.
    pub const CLUSTER_MAX_VIDEO_BYTES: i64 = 256 << 20;
    /// One run report: metrics, stage times and a 64 KiB log tail.
    pub const CLUSTER_MAX_REPORT_BYTES: i64 = 4 << 20;
    /// Haar cascade shipped by Debian's opencv-data.
    pub const FACE_CASCADE: &str = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";
    /// Intra-op threads per ONNX session: analysis runs beside miners and must not starve the host.
    pub const FACE_THREADS: i64 = 2;
    /// SCRFD input side (the reference's `det_size`).
    pub const FACE_DET_SIZE: i64 = crate::analysis::face::scrfd::DEFAULT_INPUT_SIDE as i64;
    /// SCRFD score threshold (the reference's `det_thresh`).
    pub const FACE_DET_THRESHOLD: f64 = crate::analysis::face::scrfd::SCORE_THRESHOLD as f64;
}

/// Everything the daemon is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Validator-facing HTTP gateway.
    pub http: HttpSettings,
    /// LMDB store.
    pub store: StoreSettings,
    /// Gateway authentication.
    pub auth: AuthSettings,
    /// Evaluation parameters.
    pub evaluation: EvaluationSettings,
    /// Container engine.
    pub docker: DockerSettings,
    /// GPU selection.
    pub gpu: GpuSettings,
    /// Admin control plane.
    pub admin: AdminSettings,
    /// Scoring constants.
    pub scoring: ScoringConfig,
    /// Limits of every miner container.
    pub container: ContainerPolicy,
    /// Output analysis.
    pub analysis: AnalysisSettings,
    /// Logging.
    pub log: LogSettings,
    /// Where evaluations execute.
    pub cluster: ClusterSettings,
}

/// `cluster.engine`: where evaluations execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEngine {
    /// On this host's GPUs (the embedded default; neither Python nor Ray).
    Local,
    /// As jobs on a Ray cluster's GPU hosts, each running `talkheadd worker`.
    Ray,
}

impl ClusterEngine {
    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterEngine::Local => "local",
            ClusterEngine::Ray => "ray",
        }
    }
}

/// `[cluster]`: the Ray coordinator's settings (read only with `engine = "ray"`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `local` or `ray`.
    pub engine: ClusterEngine,
    /// The Ray head's dashboard URL (required with `ray`).
    pub ray_address: Option<String>,
    /// Where the Ray cluster's token is read from (required with `ray`; never the token itself).
    pub ray_token: Option<crate::challenges::KeySource>,
    /// The cluster listener's bind address.
    pub listen: SocketAddr,
    /// The listener's URL as the workers reach it (required with `ray`).
    pub advertise_url: Option<String>,
    /// Attempts of one evaluation (each a Ray job) before its infrastructure failure is the loop's.
    pub max_attempts: u32,
    /// CPUs each job reserves on its host.
    pub job_cpus: f64,
    /// The custom resource every job asks one unit of.
    pub gpu_model_resource: Option<String>,
    /// Most jobs in flight at once.
    pub max_jobs: u32,
    /// Most bytes of one uploaded video.
    pub max_video_bytes: u64,
    /// Most bytes of one uploaded report.
    pub max_report_bytes: u64,
}

/// `[http]`
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest request body, enforced while streaming.
    pub max_body_bytes: usize,
    /// Most submissions per `/update`.
    pub max_batch: usize,
    /// Most simultaneous connections.
    pub max_connections: usize,
    /// Time to receive headers; also how long an idle keep-alive connection is kept.
    pub header_timeout: Duration,
    /// Time for a whole request.
    pub request_timeout: Duration,
}

/// `[store]`
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// The LMDB data file (NOSUBDIR).
    pub path: PathBuf,
    /// LMDB map size in bytes.
    pub map_size_bytes: usize,
    /// Runs kept per miner.
    pub history_per_miner: usize,
    /// Distinct hotkeys the table may hold.
    pub max_submissions: usize,
}

impl StoreSettings {
    /// What [`crate::store::Store::open`] takes from these settings.
    pub fn options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            map_size_bytes: self.map_size_bytes,
            history_per_miner: self.history_per_miner,
            max_submissions: self.max_submissions,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Public hotkeys allowed to call.
    pub allowed_hotkeys: BTreeSet<Hotkey>,
    /// Accepted skew.
    pub max_skew_secs: u64,
    /// Whether signatures are required (false only on loopback).
    pub require_signature: bool,
    /// Whether `/metrics` is public.
    pub public_metrics: bool,
    /// Replay-cache entries.
    pub replay_cache_capacity: usize,
}

/// Where a round's challenges come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeSource {
    /// A local directory of challenge sub-directories.
    Directory(PathBuf),
    /// The Subnet API (`GET {url}/challenge`).
    SubnetApi(String),
    /// Neither configured: the daemon serves the API but evaluates nothing.
    Unconfigured,
}

/// `[evaluation]`
#[derive(Debug, Clone)]
pub struct EvaluationSettings {
    /// Challenge source.
    pub challenges: ChallengeSource,
    /// A plain `http://` Subnet API URL to a non-loopback host was explicitly accepted.
    pub subnet_api_allow_insecure: bool,
    /// Warm-up challenges.
    pub warmup_count: usize,
    /// Scored challenges.
    pub scoring_count: usize,
    /// Time for `ready.txt`.
    pub ready_timeout: Duration,
    /// Time per challenge.
    pub challenge_timeout: Duration,
    /// Time per pull attempt.
    pub pull_timeout: Duration,
    /// Re-evaluation policy.
    pub reevaluate: ReevaluatePolicy,
    /// Root of the per-run job directories.
    pub work_dir: PathBuf,
    /// The key that signs Subnet API requests, when one is configured.
    pub signing_key: Option<crate::challenges::KeySource>,
    /// What submissions of an already-evaluated digest get.
    pub duplicates: DuplicatePolicy,
}

/// What a submission whose image digest another hotkey submitted earlier gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// The earliest `submit_time` keeps the score; the others get `duplicate` (final score 0).
    FirstWins,
    /// Every submitter of the digest gets the same metrics.
    Share,
}

/// `[docker]`
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// Engine endpoint.
    pub host: String,
    /// Largest image accepted (bytes on disk).
    pub max_image_bytes: u64,
    /// Registries images may come from; empty = any.
    pub allowed_registries: Vec<String>,
    /// Pull attempts per run for infrastructure failures.
    pub pull_attempts: u32,
    /// Bytes of idle miner images the daemon keeps (LRU); 0 removes each image after its run.
    pub image_cache_bytes: u64,
    /// Pending submissions pulled ahead while evaluations run.
    pub prepull_ahead: u32,
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    /// Socket path.
    pub socket: PathBuf,
    /// Group with full control (empty: root only).
    pub group: String,
    /// Group with read-only access (empty: none).
    pub read_group: String,
    /// Socket file permission bits (at most 0o666: never executable, never setuid).
    pub socket_mode: u32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// journald when under systemd, plain otherwise.
    Auto,
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
    /// journald-native structured fields.
    Journald,
}

/// `[log]`
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Format.
    pub format: LogFormat,
    /// tracing filter directive.
    pub level: String,
}

impl Settings {
    /// Validate a merged raw configuration. `origins` says which file or variable set each key.
    pub(super) fn validate(raw: &RawConfig, origins: &Origins) -> Result<Settings, Vec<ConfigProblem>> {
        let mut v = Validator {
            origins,
            problems: Vec::new(),
        };
        let settings = Settings {
            http: v.http(raw),
            store: v.store(raw),
            auth: AuthSettings {
                allowed_hotkeys: v.hotkeys(raw.auth.allowed_hotkeys.as_deref().unwrap_or(&[])),
                max_skew_secs: v.int(
                    raw.auth.max_skew_secs,
                    defaults::MAX_SKEW_SECS,
                    "auth.max_skew_secs",
                    1,
                    3600,
                ),
                require_signature: raw.auth.require_signature.unwrap_or(true),
                public_metrics: raw.auth.public_metrics.unwrap_or(false),
                replay_cache_capacity: v.int(
                    raw.auth.replay_cache_capacity,
                    defaults::REPLAY_CACHE_CAPACITY,
                    "auth.replay_cache_capacity",
                    16,
                    10_000_000,
                ),
            },
            evaluation: v.evaluation(raw),
            docker: DockerSettings {
                host: v.docker_host(raw.docker.host.as_deref()),
                max_image_bytes: v.int(
                    raw.docker.max_image_bytes,
                    defaults::MAX_IMAGE_BYTES,
                    "docker.max_image_bytes",
                    1 << 20,
                    i64::MAX,
                ),
                allowed_registries: v.registries(raw.docker.allowed_registries.as_deref().unwrap_or(&[])),
                pull_attempts: v.int(
                    raw.docker.pull_attempts,
                    defaults::PULL_ATTEMPTS,
                    "docker.pull_attempts",
                    1,
                    20,
                ),
                image_cache_bytes: v.int(
                    raw.docker.image_cache_bytes,
                    defaults::IMAGE_CACHE_BYTES,
                    "docker.image_cache_bytes",
                    0,
                    i64::MAX,
                ),
                prepull_ahead: v.int(
                    raw.docker.prepull_ahead,
                    defaults::PREPULL_AHEAD,
                    "docker.prepull_ahead",
                    0,
                    4,
                ),
            },
            gpu: GpuSettings {
                mode: match raw.gpu.virtual_slots {
                    None => GpuMode::Nvml,
                    Some(_) => GpuMode::Virtual(v.int(raw.gpu.virtual_slots, 0, "gpu.virtual", 1, 64)),
                },
                devices: v.gpu_devices(raw.gpu.devices.as_deref().unwrap_or(&[])),
                health: crate::gpu::health::HealthPolicy {
                    quarantine_after: v.int(
                        raw.gpu.quarantine_after_faults,
                        3,
                        "gpu.quarantine_after_faults",
                        1,
                        1000,
                    ),
                    quarantine_secs: v
                        .secs(raw.gpu.quarantine_secs, 600, "gpu.quarantine_secs", 86_400)
                        .as_secs_f64(),
                },
                max_temperature_c: v.int(raw.gpu.max_temperature_c, 90, "gpu.max_temperature_c", 40, 120),
                vram_sample_hz: v.int(raw.gpu.vram_sample_hz, 100, "gpu.vram_sample_hz", 50, 1000),
                same_model_per_round: raw.gpu.same_model_per_round.unwrap_or(true),
                virtual_cuda_version: v.cuda_version(raw.gpu.virtual_cuda_version.as_deref()),
                calibration_image: v.calibration_image(raw.gpu.calibration_image.as_deref()),
            },
            admin: v.admin(raw),
            scoring: v.scoring(raw.scoring.clone().unwrap_or_default()),
            container: v.container(raw.container.clone().unwrap_or_default()),
            analysis: v.analysis(raw),
            log: v.log(raw),
            cluster: v.cluster(raw),
        };
        v.cross_checks(&settings);
        if v.problems.is_empty() {
            Ok(settings)
        } else {
            Err(v.problems)
        }
    }
}

struct Validator<'a> {
    origins: &'a Origins,
    problems: Vec<ConfigProblem>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, problem: impl Into<String>) {
        self.problems.push(ConfigProblem {
            origin: self.origins.origin_of(key),
            key: key.to_owned(),
            problem: problem.into(),
        });
    }

    /// An integer in [min, max], converted to the target type (all targets hold the whole range).
    fn int<T: TryFrom<i64> + Default>(
        &mut self,
        value: Option<i64>,
        default: i64,
        key: &str,
        min: i64,
        max: i64,
    ) -> T {
        let value = value.unwrap_or(default);
        if value < min || value > max {
            self.problem(key, format!("must be between {min} and {max} (got {value})"));
            return T::default();
        }
        T::try_from(value).unwrap_or_default()
    }

    fn secs(&mut self, value: Option<i64>, default: i64, key: &str, max: i64) -> Duration {
        Duration::from_secs(self.int(value, default, key, 1, max))
    }

    fn http(&mut self, raw: &RawConfig) -> HttpSettings {
        let h = &raw.http;
        let listen_text = h.listen.as_deref().unwrap_or(defaults::HTTP_LISTEN);
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                self.problem(
                    "http.listen",
                    "port 0 is not allowed: name the port validators call",
                );
                addr
            }
            Ok(addr) => addr,
            Err(_) => {
                self.problem(
                    "http.listen",
                    format!("'{listen_text}' is not an IP:port address (e.g. 127.0.0.1:8000)"),
                );
                SocketAddr::from(([127, 0, 0, 1], 8000))
            }
        };
        HttpSettings {
            listen,
            max_body_bytes: self.int(
                h.max_body_bytes,
                defaults::MAX_BODY_BYTES,
                "http.max_body_bytes",
                1024,
                64 << 20,
            ),
            max_batch: self.int(h.max_batch, defaults::MAX_BATCH, "http.max_batch", 1, 100_000),
            max_connections: self.int(
                h.max_connections,
                defaults::MAX_CONNECTIONS,
                "http.max_connections",
                1,
                65_536,
            ),
            header_timeout: self.secs(
                h.header_timeout_secs,
                defaults::HEADER_TIMEOUT_SECS,
                "http.header_timeout_secs",
                3600,
            ),
            request_timeout: self.secs(
                h.request_timeout_secs,
                defaults::REQUEST_TIMEOUT_SECS,
                "http.request_timeout_secs",
                3600,
            ),
        }
    }

    fn store(&mut self, raw: &RawConfig) -> StoreSettings {
        let s = &raw.store;
        let path = PathBuf::from(s.path.as_deref().unwrap_or(defaults::STORE_PATH));
        self.check_state_path(&path);
        let map_size_mb: usize = self.int(
            s.map_size_mb,
            defaults::MAP_SIZE_MB,
            "store.map_size_mb",
            16,
            1 << 20,
        );
        StoreSettings {
            path,
            map_size_bytes: map_size_mb.saturating_mul(1 << 20),
            history_per_miner: self.int(
                s.history_per_miner,
                defaults::HISTORY_PER_MINER,
                "store.history_per_miner",
                1,
                10_000,
            ),
            max_submissions: self.int(
                s.max_submissions,
                defaults::MAX_SUBMISSIONS,
                "store.max_submissions",
                1,
                1_000_000,
            ),
        }
    }

    /// The state file's directory must exist and be writable, and the file itself (if present) a regular
    /// file: catching this here gives exit 78 with the key named instead of a store error later.
    fn check_state_path(&mut self, path: &Path) {
        if path.as_os_str().is_empty() || path.to_str().is_some_and(|p| p.ends_with('/')) {
            self.problem("store.path", "must name a file, e.g. /var/lib/talkheadd/state.db");
            return;
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {
                if !dir_is_writable(&dir) {
                    self.problem(
                        "store.path",
                        format!("directory {} is not writable by this user", dir.display()),
                    );
                }
            }
            Ok(_) => self.problem("store.path", format!("{} is not a directory", dir.display())),
            Err(e) => self.problem(
                "store.path",
                format!("directory {} is not accessible: {e}", dir.display()),
            ),
        }
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && !meta.file_type().is_file()
        {
            self.problem(
                "store.path",
                format!("{} exists but is not a regular file", path.display()),
            );
        }
    }

    fn hotkeys(&mut self, list: &[String]) -> BTreeSet<Hotkey> {
        let mut set = BTreeSet::new();
        for (i, text) in list.iter().enumerate() {
            match Hotkey::parse(text) {
                Ok(h) => {
                    set.insert(h);
                }
                Err(e) => self.problem(
                    &format!("auth.allowed_hotkeys[{i}]"),
                    format!("'{text}' is not a valid SS58 hotkey: {e}"),
                ),
            }
        }
        set
    }

    fn evaluation(&mut self, raw: &RawConfig) -> EvaluationSettings {
        let e = &raw.evaluation;
        let allow_insecure = e.subnet_api_allow_insecure.unwrap_or(false);
        let url = e.subnet_api_url.as_deref().filter(|u| !u.is_empty());
        let challenges = match (e.challenges_dir.as_deref(), url) {
            (Some(_), Some(_)) => {
                self.problem(
                    "evaluation.challenges_dir",
                    "set either challenges_dir or subnet_api_url, not both",
                );
                ChallengeSource::Unconfigured
            }
            (Some(dir), None) => {
                let dir = PathBuf::from(dir);
                match std::fs::read_dir(&dir) {
                    Ok(_) => ChallengeSource::Directory(dir),
                    Err(err) => {
                        self.problem(
                            "evaluation.challenges_dir",
                            format!("{} is not a readable directory: {err}", dir.display()),
                        );
                        ChallengeSource::Unconfigured
                    }
                }
            }
            (None, Some(url)) => {
                if !valid_base_url(url) {
                    self.problem(
                        "evaluation.subnet_api_url",
                        "must be an http:// or https:// URL without spaces",
                    );
                    ChallengeSource::Unconfigured
                } else if cleartext_to_remote(url) && !allow_insecure {
                    self.problem(
                        "evaluation.subnet_api_url",
                        "is plain http:// to a host that is not loopback: the signed request would travel in clear \
                         text (it can be replayed and the challenges altered in transit); use https://, or set \
                         evaluation.subnet_api_allow_insecure = true to accept that",
                    );
                    ChallengeSource::Unconfigured
                } else {
                    ChallengeSource::SubnetApi(url.trim_end_matches('/').to_owned())
                }
            }
            (None, None) => ChallengeSource::Unconfigured,
        };
        EvaluationSettings {
            challenges,
            subnet_api_allow_insecure: allow_insecure,
            warmup_count: self.int(
                e.warmup_count,
                defaults::WARMUP_COUNT,
                "evaluation.warmup_count",
                0,
                100,
            ),
            scoring_count: self.int(
                e.scoring_count,
                defaults::SCORING_COUNT,
                "evaluation.scoring_count",
                1,
                100,
            ),
            ready_timeout: self.secs(
                e.ready_timeout_secs,
                defaults::READY_TIMEOUT_SECS,
                "evaluation.ready_timeout_secs",
                86_400,
            ),
            challenge_timeout: self.secs(
                e.challenge_timeout_secs,
                defaults::CHALLENGE_TIMEOUT_SECS,
                "evaluation.challenge_timeout_secs",
                86_400,
            ),
            pull_timeout: self.secs(
                e.pull_timeout_secs,
                defaults::PULL_TIMEOUT_SECS,
                "evaluation.pull_timeout_secs",
                86_400,
            ),
            reevaluate: e.reevaluate.unwrap_or_default(),
            work_dir: match e.work_dir.as_deref() {
                Some(dir) => self.absolute_path(dir, "evaluation.work_dir"),
                None => default_work_dir(raw),
            },
            signing_key: match (e.signing_key_file.as_deref(), e.signing_key_credential.as_deref()) {
                (Some(_), Some(_)) => {
                    self.problem(
                        "evaluation.signing_key_file",
                        "set signing_key_file or signing_key_credential, not both",
                    );
                    None
                }
                (Some(file), None) => Some(crate::challenges::KeySource::File(
                    self.absolute_path(file, "evaluation.signing_key_file"),
                )),
                (None, Some(name)) => Some(crate::challenges::KeySource::Credential(name.to_owned())),
                (None, None) => None,
            },
            duplicates: match e.duplicates.as_deref().unwrap_or("first_wins") {
                "first_wins" => DuplicatePolicy::FirstWins,
                "share" => DuplicatePolicy::Share,
                other => {
                    self.problem(
                        "evaluation.duplicates",
                        format!("'{other}' is not first_wins or share"),
                    );
                    DuplicatePolicy::FirstWins
                }
            },
        }
    }

    fn gpu_devices(&mut self, list: &[super::raw::RawGpuDevice]) -> Vec<GpuSelector> {
        let mut out = Vec::new();
        for d in list {
            match d {
                super::raw::RawGpuDevice::Index(i) => match u32::try_from(*i) {
                    Ok(i) => out.push(GpuSelector::Index(i)),
                    Err(_) => self.problem("gpu.devices", format!("{i} is not a GPU index")),
                },
                super::raw::RawGpuDevice::Uuid(u) if u.starts_with("GPU-") || u.starts_with("MIG-") => {
                    out.push(GpuSelector::Uuid(u.clone()))
                }
                super::raw::RawGpuDevice::Uuid(u) => match u.parse::<u32>() {
                    Ok(i) => out.push(GpuSelector::Index(i)),
                    Err(_) => self.problem(
                        "gpu.devices",
                        format!("{u:?} is neither an index nor a GPU-... UUID"),
                    ),
                },
            }
        }
        out
    }

    fn cuda_version(&mut self, version: Option<&str>) -> Option<String> {
        let version = version?;
        let mut parts = version.split('.');
        let ok = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(major), Some(minor), None)
                if [major, minor].iter().all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
        );
        if ok {
            Some(version.to_owned())
        } else {
            self.problem(
                "gpu.virtual_cuda_version",
                format!("{version:?} is not a CUDA version major.minor (e.g. \"12.4\")"),
            );
            None
        }
    }

    /// Validated like the images of `POST /update`: pinned by digest, the tag ignored.
    fn calibration_image(&mut self, image: Option<&str>) -> Option<crate::domain::ImageRef> {
        match crate::domain::ImageRef::parse(image?) {
            Ok(image) => Some(image),
            Err(e) => {
                self.problem("gpu.calibration_image", e.to_string());
                None
            }
        }
    }

    fn registries(&mut self, list: &[String]) -> Vec<String> {
        for (i, r) in list.iter().enumerate() {
            let probe = format!("{r}/x@sha256:{}", "0".repeat(64));
            let ok = r == "docker.io"
                || crate::domain::ImageRef::parse(&probe).is_ok_and(|i| i.registry() == Some(r.as_str()));
            if !ok {
                self.problem(
                    &format!("docker.allowed_registries[{i}]"),
                    format!("'{r}' is not a registry host[:port]"),
                );
            }
        }
        list.to_vec()
    }

    fn analysis(&mut self, raw: &RawConfig) -> AnalysisSettings {
        let a = &raw.analysis;
        let face = self.face(a);
        let asr = self.asr(&a.asr);
        // `scoring.profile` decides how the analysis measures the terms it changes.
        let profile = raw.scoring.as_ref().map(|s| s.profile).unwrap_or_default();
        let conformance = match a.conformance.as_deref() {
            None | Some("strict") => Conformance::Strict,
            Some("penalty") => Conformance::Penalty,
            Some(other) => {
                self.problem(
                    "analysis.conformance",
                    format!(
                        "'{other}' is not strict (an output off the task's size or frame rate is bad_output) or penalty (scored, each mismatch halving its quality)"
                    ),
                );
                Conformance::Strict
            }
        };
        AnalysisSettings {
            face,
            asr,
            profile,
            conformance,
        }
    }

    /// `[analysis.face]`, with the old flat `analysis.face_backend` / `face_cascade` still accepted.
    fn face(&mut self, a: &super::raw::RawAnalysis) -> FaceSettings {
        let f = &a.face;
        let mut either = |new: &Option<String>, old: &Option<String>, new_key: &str, old_key: &str| {
            if new.is_some() && old.is_some() {
                self.problem(old_key, format!("set {new_key} only ({old_key} is its old name)"));
            }
            new.clone().or_else(|| old.clone())
        };
        let backend = either(
            &f.backend,
            &a.face_backend,
            "analysis.face.backend",
            "analysis.face_backend",
        );
        let cascade = either(
            &f.cascade,
            &a.face_cascade,
            "analysis.face.cascade",
            "analysis.face_cascade",
        );
        let cascade_key = if f.cascade.is_none() && a.face_cascade.is_some() {
            "analysis.face_cascade"
        } else {
            "analysis.face.cascade"
        };
        let cascade = self.absolute_path(cascade.as_deref().unwrap_or(defaults::FACE_CASCADE), cascade_key);
        let backend = match backend.as_deref().unwrap_or("builtin") {
            "builtin" => FaceBackend::Builtin,
            "onnx" => FaceBackend::Onnx(self.onnx_face(f)),
            other => {
                let key = if f.backend.is_some() {
                    "analysis.face.backend"
                } else {
                    "analysis.face_backend"
                };
                self.problem(key, format!("'{other}' is not builtin or onnx"));
                FaceBackend::Builtin
            }
        };
        FaceSettings { backend, cascade }
    }

    fn onnx_face(&mut self, f: &super::raw::RawFace) -> crate::analysis::face::OnnxFaceConfig {
        let mut required = |value: &Option<String>, key: &str| match value.as_deref() {
            Some(path) => self.absolute_path(path, key),
            None => {
                self.problem(key, "required when analysis.face.backend = \"onnx\"");
                PathBuf::new()
            }
        };
        let onnxruntime_library = required(&f.onnxruntime_library, "analysis.face.onnxruntime_library");
        let detector_model = required(&f.detector_model, "analysis.face.detector_model");
        let recognizer_model = required(&f.recognizer_model, "analysis.face.recognizer_model");
        let threads = self.int(f.threads, defaults::FACE_THREADS, "analysis.face.threads", 1, 64);
        let det_size: u32 = self.int(
            f.det_size,
            defaults::FACE_DET_SIZE,
            "analysis.face.det_size",
            32,
            4096,
        );
        if !det_size.is_multiple_of(32) {
            self.problem(
                "analysis.face.det_size",
                format!("{det_size} is not a multiple of 32 (SCRFD's largest stride)"),
            );
        }
        let det_threshold = f.det_threshold.unwrap_or(defaults::FACE_DET_THRESHOLD);
        if !(det_threshold > 0.0 && det_threshold < 1.0) {
            self.problem(
                "analysis.face.det_threshold",
                format!("must be between 0 and 1, exclusive (got {det_threshold})"),
            );
        }
        crate::analysis::face::OnnxFaceConfig {
            onnxruntime_library,
            detector_model,
            recognizer_model,
            threads,
            det_size,
            det_threshold,
        }
    }

    fn asr(&mut self, raw: &super::raw::RawAsr) -> AsrBackend {
        let model = raw.model.as_deref();
        match raw.backend.as_deref().unwrap_or("none") {
            "none" => {
                if model.is_some() {
                    self.problem("analysis.asr.model", "is only used with backend = \"whisper\"");
                }
                if raw.timeout_secs.is_some() {
                    self.problem(
                        "analysis.asr.timeout_secs",
                        "is only used with backend = \"whisper\"",
                    );
                }
                AsrBackend::None
            }
            "whisper" => {
                if !cfg!(feature = "whisper") {
                    self.problem("analysis.asr.backend", crate::analysis::asr::NEEDS_FEATURE);
                }
                let Some(model) = model else {
                    self.problem(
                        "analysis.asr.model",
                        "is required with backend = \"whisper\": the path of a ggml model (e.g. /var/lib/talkheadd/models/ggml-base.bin, from `talkheadd models fetch`)",
                    );
                    return AsrBackend::None;
                };
                let timeout = self.secs(
                    raw.timeout_secs,
                    defaults::ASR_TIMEOUT_SECS,
                    "analysis.asr.timeout_secs",
                    3600,
                );
                let model = self.absolute_path(model, "analysis.asr.model");
                if model.is_absolute() && !model.is_file() {
                    self.problem(
                        "analysis.asr.model",
                        format!(
                            "{} is not a readable file; `talkheadd models fetch` installs ggml-base.bin \
                             (into /var/lib/talkheadd/models)",
                            model.display()
                        ),
                    );
                }
                AsrBackend::Whisper { model, timeout }
            }
            other => {
                self.problem(
                    "analysis.asr.backend",
                    format!("'{other}' is not one of none, whisper"),
                );
                AsrBackend::None
            }
        }
    }

    fn container(&mut self, policy: ContainerPolicy) -> ContainerPolicy {
        if let Err(problems) = policy.validate() {
            for (key, problem) in problems {
                self.problem(&format!("container.{key}"), problem);
            }
        }
        policy
    }

    fn docker_host(&mut self, host: Option<&str>) -> String {
        let host = host.unwrap_or(defaults::DOCKER_HOST);
        let ok = host.strip_prefix("unix://").is_some_and(|p| p.starts_with('/'))
            || host.strip_prefix("tcp://").is_some_and(|a| !a.is_empty())
            || host.strip_prefix("http://").is_some_and(|a| !a.is_empty());
        if !ok || host.chars().any(char::is_whitespace) {
            self.problem(
                "docker.host",
                format!("'{host}' is not unix:///path/to/docker.sock or tcp://host:port"),
            );
        }
        host.to_owned()
    }

    fn admin(&mut self, raw: &RawConfig) -> AdminSettings {
        let a = &raw.admin;
        let group = |v: &mut Self, value: Option<&str>, default: &str, key: &str| {
            let name = value.unwrap_or(default).to_owned();
            if !name.is_empty() && !valid_group_name(&name) {
                v.problem(key, format!("'{name}' is not a valid group name"));
            }
            name
        };
        let mode_text = a.socket_mode.as_deref().unwrap_or("");
        let socket_mode = if mode_text.is_empty() {
            defaults::ADMIN_SOCKET_MODE
        } else {
            match u32::from_str_radix(mode_text.trim_start_matches("0o"), 8) {
                Ok(m) if m & !0o666 == 0 && m & 0o600 == 0o600 => m,
                _ => {
                    self.problem(
                        "admin.socket_mode",
                        format!(
                            "'{mode_text}' must be octal permission bits within 0666 that include 0600 (e.g. \"0660\")"
                        ),
                    );
                    defaults::ADMIN_SOCKET_MODE
                }
            }
        };
        AdminSettings {
            socket: self.absolute_path(
                a.socket.as_deref().unwrap_or(defaults::ADMIN_SOCKET),
                "admin.socket",
            ),
            group: group(self, a.group.as_deref(), defaults::ADMIN_GROUP, "admin.group"),
            read_group: group(
                self,
                a.read_group.as_deref(),
                defaults::ADMIN_READ_GROUP,
                "admin.read_group",
            ),
            socket_mode,
        }
    }

    fn cluster(&mut self, raw: &RawConfig) -> ClusterSettings {
        let c = &raw.cluster;
        let engine = match c.engine.as_deref().unwrap_or("local") {
            "local" => ClusterEngine::Local,
            "ray" => ClusterEngine::Ray,
            other => {
                self.problem("cluster.engine", format!("'{other}' is not local or ray"));
                ClusterEngine::Local
            }
        };
        let ray = engine == ClusterEngine::Ray;
        if !ray {
            // A Ray key under the local engine is a half-made change: say so rather than ignore it.
            let set: [(&str, bool); 11] = [
                ("ray_address", c.ray_address.is_some()),
                ("ray_token_file", c.ray_token_file.is_some()),
                ("ray_token_credential", c.ray_token_credential.is_some()),
                ("listen", c.listen.is_some()),
                ("advertise_url", c.advertise_url.is_some()),
                ("max_attempts", c.max_attempts.is_some()),
                ("job_cpus", c.job_cpus.is_some()),
                ("gpu_model_resource", c.gpu_model_resource.is_some()),
                ("max_jobs", c.max_jobs.is_some()),
                ("max_video_bytes", c.max_video_bytes.is_some()),
                ("max_report_bytes", c.max_report_bytes.is_some()),
            ];
            for (key, _) in set.iter().filter(|(_, set)| *set) {
                self.problem(
                    &format!("cluster.{key}"),
                    "is read only with cluster.engine = \"ray\" (the engine is local)",
                );
            }
        }
        let ray_address = c.ray_address.as_deref().and_then(|url| {
            if valid_base_url(url) {
                Some(url.trim_end_matches('/').to_owned())
            } else {
                self.problem(
                    "cluster.ray_address",
                    "must be an http:// or https:// URL without spaces",
                );
                None
            }
        });
        if ray && ray_address.is_none() && c.ray_address.is_none() {
            self.problem(
                "cluster.ray_address",
                "is required with engine = \"ray\": the Ray head's dashboard URL (http://head:8265)",
            );
        }
        let ray_token = match (c.ray_token_file.as_deref(), c.ray_token_credential.as_deref()) {
            (Some(_), Some(_)) => {
                self.problem(
                    "cluster.ray_token_file",
                    "set ray_token_file or ray_token_credential, not both",
                );
                None
            }
            (Some(file), None) => Some(crate::challenges::KeySource::File(
                self.absolute_path(file, "cluster.ray_token_file"),
            )),
            (None, Some(name)) => Some(crate::challenges::KeySource::Credential(name.to_owned())),
            (None, None) => {
                if ray {
                    self.problem(
                        "cluster.ray_token_file",
                        "is required with engine = \"ray\" (or ray_token_credential): the Jobs API without \
                         token authentication runs anyone's code on every GPU host",
                    );
                }
                None
            }
        };
        let listen_text = c.listen.as_deref().unwrap_or(defaults::CLUSTER_LISTEN);
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                self.problem(
                    "cluster.listen",
                    "port 0 is not allowed: name the port workers call",
                );
                addr
            }
            Ok(addr) => addr,
            Err(_) => {
                self.problem(
                    "cluster.listen",
                    format!("'{listen_text}' is not an ip:port address"),
                );
                SocketAddr::from(([127, 0, 0, 1], 8790))
            }
        };
        let advertise_url = c.advertise_url.as_deref().and_then(|url| {
            match crate::cluster::job::check_coordinator_url(url.trim_end_matches('/')) {
                Ok(url) => Some(url.to_owned()),
                Err(e) => {
                    self.problem("cluster.advertise_url", e.to_string());
                    None
                }
            }
        });
        if ray && c.advertise_url.is_none() {
            self.problem(
                "cluster.advertise_url",
                format!(
                    "is required with engine = \"ray\": the URL workers reach cluster.listen ({listen}) at"
                ),
            );
        }
        let job_cpus = c.job_cpus.unwrap_or(defaults::CLUSTER_JOB_CPUS);
        if !(job_cpus.is_finite() && (0.1..=256.0).contains(&job_cpus)) {
            self.problem(
                "cluster.job_cpus",
                format!("must be between 0.1 and 256 (got {job_cpus})"),
            );
        }
        let gpu_model_resource = c.gpu_model_resource.clone().filter(|name| {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.' | ':'));
            if !ok {
                self.problem(
                    "cluster.gpu_model_resource",
                    "must be 1-64 characters of [A-Za-z0-9_.:-] (a custom resource name given to `ray start --resources`)",
                );
            }
            ok
        });
        ClusterSettings {
            engine,
            ray_address,
            ray_token,
            listen,
            advertise_url,
            max_attempts: self.int(
                c.max_attempts,
                defaults::CLUSTER_MAX_ATTEMPTS,
                "cluster.max_attempts",
                1,
                20,
            ),
            job_cpus,
            gpu_model_resource,
            max_jobs: self.int(
                c.max_jobs,
                defaults::CLUSTER_MAX_JOBS,
                "cluster.max_jobs",
                1,
                4096,
            ),
            max_video_bytes: self.int(
                c.max_video_bytes,
                defaults::CLUSTER_MAX_VIDEO_BYTES,
                "cluster.max_video_bytes",
                1 << 16,
                16 << 30,
            ),
            max_report_bytes: self.int(
                c.max_report_bytes,
                defaults::CLUSTER_MAX_REPORT_BYTES,
                "cluster.max_report_bytes",
                1 << 16,
                256 << 20,
            ),
        }
    }

    fn absolute_path(&mut self, path: &str, key: &str) -> PathBuf {
        let p = PathBuf::from(path);
        if !p.is_absolute() {
            self.problem(key, format!("'{path}' must be an absolute path"));
        }
        p
    }

    fn scoring(&mut self, scoring: ScoringConfig) -> ScoringConfig {
        if let Err(problems) = scoring.validate() {
            for p in problems {
                self.problem(&format!("scoring.{}", p.key), p.problem);
            }
        }
        scoring
    }

    fn log(&mut self, raw: &RawConfig) -> LogSettings {
        let format = match raw.log.format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "plain" => LogFormat::Plain,
            "json" => LogFormat::Json,
            "journald" => LogFormat::Journald,
            other => {
                self.problem(
                    "log.format",
                    format!("'{other}' is not one of auto, plain, json, journald"),
                );
                LogFormat::Auto
            }
        };
        let level = raw
            .log
            .level
            .clone()
            .unwrap_or_else(|| defaults::LOG_LEVEL.to_owned());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            self.problem(
                "log.level",
                format!("'{level}' is not a tracing filter such as info or talkheadd=debug"),
            );
        }
        LogSettings { format, level }
    }

    /// Rules that span several keys.
    fn cross_checks(&mut self, s: &Settings) {
        if s.cluster.engine == ClusterEngine::Ray && s.gpu.calibration_image.is_some() {
            self.problem(
                "gpu.calibration_image",
                "is not supported with cluster.engine = \"ray\" yet: calibration runs on this host's GPUs",
            );
        }
        if !s.auth.require_signature && !s.http.listen.ip().is_loopback() {
            self.problem(
                "auth.require_signature",
                format!(
                    "may be false only when http.listen is a loopback address (it is {})",
                    s.http.listen
                ),
            );
        }
        if s.auth.require_signature && s.auth.allowed_hotkeys.is_empty() && !s.http.listen.ip().is_loopback()
        {
            self.problem(
                "auth.allowed_hotkeys",
                "is empty while http.listen is not loopback: nobody could call the gateway; list the validator's public hotkey",
            );
        }
    }
}

/// `jobs/` beside the state file: same filesystem, same ownership, and a path dockerd can bind-mount.
fn default_work_dir(raw: &RawConfig) -> PathBuf {
    let state = PathBuf::from(raw.store.path.as_deref().unwrap_or(defaults::STORE_PATH));
    let dir = match state.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Bind mounts need an absolute source.
    std::path::absolute(&dir).unwrap_or(dir).join("jobs")
}

/// POSIX portable group names (as useradd accepts them).
fn valid_group_name(name: &str) -> bool {
    name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Whether `url` (a valid base URL) is plain `http://` to a host other than a loopback address or
/// `localhost`: the signed headers would cross a network in clear text.
///
/// The host is the one the Subnet API client will connect to: the URL is parsed by the same parser
/// (`reqwest::Url`, WHATWG rules), never split by hand, which could disagree about where the host ends
/// (`http://evil.example\@127.0.0.1/` goes to evil.example). An `http://` text it cannot parse counts
/// as remote.
fn cleartext_to_remote(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url.trim()) else {
        return url.trim_start().to_ascii_lowercase().starts_with("http://");
    };
    if parsed.scheme() != "http" {
        return false;
    }
    let host = parsed.host_str().unwrap_or_default();
    // An IPv6 host comes bracketed.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

fn valid_base_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) && url.chars().all(|c| c.is_ascii_graphic())
}

/// Whether this process may create files in `dir` (what LMDB's open needs), asked of the kernel so
/// that the check has no side effects.
fn dir_is_writable(dir: &Path) -> bool {
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok()
}
