//! The hardened container spec: a pure function from one run's validated inputs to the Docker Engine
//! `ContainerCreate` body that runs a miner image. No I/O, no clock, no Docker calls.
//!
//! # This is the security boundary
//!
//! Membership of the `docker` group is root-equivalent, so the systemd unit cannot confine what the
//! engine does on the daemon's behalf: whatever this module emits, dockerd executes as root. The miner
//! image is hostile. This module must therefore **never** emit, whatever [`ContainerPolicy`] or
//! [`RunSpecInput`] say:
//!
//! - a privileged container, any `CapAdd`, or fewer dropped capabilities than `ALL`;
//! - a network other than `none`, or the host's PID, IPC, UTS, user or cgroup namespace;
//! - a mount, bind, volume, tmpfs or device beyond: `/input` (read-only bind), `/output` (read-write
//!   bind), size-capped `noexec` tmpfs at `/tmp` and `/var/tmp`, and at most one GPU by UUID;
//! - a device request for all GPUs (`Count: -1`, `DeviceIDs: ["all"]`) or for more than one GPU;
//! - uid 0 (or gid 0), a writable root filesystem, a writable `/input`;
//! - a seccomp, AppArmor or SELinux override (Docker's default profiles stay on), or a runtime, sysctl,
//!   masked-path or annotation override;
//! - unlimited PIDs, memory, swap or tmpfs.
//!
//! It is enforced twice. By construction: the policy has no knob for any of the above, and every input
//! is validated before use. And by [`audit`], an independent allow-list check of the serialised body (what
//! dockerd actually receives) that [`build`] runs before returning and that the runtime should run again
//! right before `create_container`: any field it does not know is refused, so a bollard upgrade that adds
//! a dangerous field, or a later edit to [`build`], cannot silently widen the sandbox.

use crate::domain::ImageRef;
use bollard::models::{
    ContainerCreateBody, DeviceRequest, HealthConfig, HostConfig, HostConfigCgroupnsModeEnum,
    HostConfigLogConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum, MountType,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Label carrying the run id on every container the daemon creates (docs/reference.md#container-labels).
pub const LABEL_RUN: &str = "talkhead.run";
/// Label marking containers the daemon owns (start-up reconciliation kills and removes them).
pub const LABEL_MANAGED: &str = "talkhead.managed";
/// Label naming the daemon instance (its store's id) that created the container: reconciliation
/// touches only its own instance's containers, so daemons sharing one engine never kill each other's.
pub const LABEL_INSTANCE: &str = "talkhead.instance";
/// Container names are this prefix followed by the run id.
pub const CONTAINER_NAME_PREFIX: &str = "talkhead-";
/// Where the challenge directory appears in the container (read-only).
pub const INPUT_TARGET: &str = "/input";
/// Where the result directory appears in the container (the only writable bind).
pub const OUTPUT_TARGET: &str = "/output";
/// Longest accepted run id.
pub const MAX_RUN_ID_LEN: usize = 64;

/// Seconds between SIGTERM and SIGKILL on stop: the daemon is done with the miner by then.
const STOP_TIMEOUT_SECS: i64 = 5;
/// The miner is killed before host services when memory runs short.
const OOM_SCORE_ADJ: i64 = 500;
/// json-file rotation: one file of at most this size, so a chatty miner cannot fill the host disk.
const LOG_MAX_SIZE: &str = "10m";
const LOG_MAX_FILE: &str = "1";
const NO_NEW_PRIVILEGES: &str = "no-new-privileges:true";
const NVIDIA_DRIVER: &str = "nvidia";
const GPU_CAPABILITIES: [&str; 3] = ["gpu", "compute", "utility"];
const NVIDIA_DRIVER_CAPABILITIES: &str = "compute,utility";
/// `void` (unlike `none`) makes the NVIDIA hook inject no device and no driver library at all.
const NVIDIA_NO_GPU: &str = "void";
/// Tmpfs options before `size=`: `noexec` so nothing downloaded or unpacked at run time executes.
const TMPFS_OPTIONS: &str = "rw,nosuid,nodev,noexec";
const TMP_TARGET: &str = "/tmp";
const VAR_TMP_TARGET: &str = "/var/tmp";
/// The reference's cache variables: everything libraries cache goes to the size-capped `/tmp`.
const CACHE_ENV: [(&str, &str); 4] = [
    ("TMPDIR", "/tmp"),
    ("HF_HOME", "/tmp/hf"),
    ("TRANSFORMERS_CACHE", "/tmp/hf/transformers"),
    ("XDG_CACHE_HOME", "/tmp/.cache"),
];
/// Longest accepted host path for a bind source.
const MAX_PATH_LEN: usize = 4096;
/// Linux `PID_MAX_LIMIT`.
const MAX_PIDS: u32 = 4_194_304;
/// Default `fs.nr_open`: a higher `nofile` makes container start fail.
const MAX_NOFILE: u32 = 1_048_576;
/// Docker refuses less than 0.01 CPU.
const MIN_CPUS: f64 = 0.01;
const MAX_CPUS: f64 = 4096.0;
/// Below this no PyTorch process starts; it also catches a value given in GiB instead of bytes.
const MIN_MEMORY_BYTES: u64 = 64 << 20;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Operator-tunable resource limits for miner containers (a config section).
///
/// There is deliberately no field for privileges, capabilities, devices, network, mounts, security
/// options or namespaces: those are fixed by this module, and `deny_unknown_fields` turns an attempt to
/// configure them (`privileged = true`) into a configuration error rather than a silently ignored key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerPolicy {
    /// CPUs the container may use (`NanoCpus`); the reference's `--cpus=8`.
    pub cpus: f64,
    /// Memory limit in bytes; swap is disabled (`MemorySwap` = `Memory`).
    pub memory_bytes: u64,
    /// Most processes and threads.
    pub pids_limit: u32,
    /// Size of `/dev/shm`; PyTorch data loaders need far more than Docker's 64 MB default.
    pub shm_bytes: u64,
    /// Size cap of the `noexec` tmpfs at `/tmp` (the caches live there).
    pub tmp_bytes: u64,
    /// Size cap of the `noexec` tmpfs at `/var/tmp`.
    pub var_tmp_bytes: u64,
    /// `uid:gid`, both numeric and non-zero: root in the container is root on the bind mounts.
    pub user: String,
    /// Quota for `/output`, enforced by the runtime (the spec cannot express it).
    pub output_bytes: u64,
    /// `RLIMIT_NOFILE`, soft and hard.
    pub nofile: u32,
}

impl Default for ContainerPolicy {
    fn default() -> Self {
        ContainerPolicy {
            cpus: 8.0,
            memory_bytes: 16 * GIB,
            pids_limit: 256,
            shm_bytes: 2 * GIB,
            tmp_bytes: GIB,
            var_tmp_bytes: 256 * MIB,
            user: "65534:65534".to_owned(),
            output_bytes: 2 * GIB,
            nofile: 4096,
        }
    }
}

impl ContainerPolicy {
    /// Check every field; on failure, every problem as `(key, problem)`, keys named as in the config.
    pub fn validate(&self) -> Result<(), Vec<(String, String)>> {
        let mut problems: Vec<(String, String)> = Vec::new();
        let mut problem = |key: &str, text: String| problems.push((key.to_owned(), text));

        if !self.cpus.is_finite() || !(MIN_CPUS..=MAX_CPUS).contains(&self.cpus) {
            problem(
                "cpus",
                format!(
                    "must be a number from {MIN_CPUS} to {MAX_CPUS}, got {}",
                    self.cpus
                ),
            );
        }
        let max_bytes = i64::MAX as u64;
        if !(MIN_MEMORY_BYTES..=max_bytes).contains(&self.memory_bytes) {
            problem(
                "memory_bytes",
                format!(
                    "must be at least {MIN_MEMORY_BYTES} (64 MiB), got {}",
                    self.memory_bytes
                ),
            );
        }
        if self.pids_limit == 0 || self.pids_limit > MAX_PIDS {
            // 0 would mean "unlimited" to Docker: a fork bomb's invitation.
            problem(
                "pids_limit",
                format!("must be from 1 to {MAX_PIDS}, got {}", self.pids_limit),
            );
        }
        // A tmpfs `size=0` is unlimited, and shm 0 is Docker's default: zero must never get through.
        for (key, value) in [
            ("shm_bytes", self.shm_bytes),
            ("tmp_bytes", self.tmp_bytes),
            ("var_tmp_bytes", self.var_tmp_bytes),
        ] {
            if value == 0 {
                problem(key, "must be greater than 0".to_owned());
            } else if value > self.memory_bytes {
                // tmpfs and shm pages are charged to the container's memory cgroup.
                problem(
                    key,
                    format!(
                        "must not exceed memory_bytes ({}), got {value}",
                        self.memory_bytes
                    ),
                );
            }
        }
        if self.output_bytes == 0 || self.output_bytes > max_bytes {
            problem(
                "output_bytes",
                format!("must be from 1 to {max_bytes}, got {}", self.output_bytes),
            );
        }
        if self.nofile == 0 || self.nofile > MAX_NOFILE {
            problem(
                "nofile",
                format!("must be from 1 to {MAX_NOFILE}, got {}", self.nofile),
            );
        }
        if let Err(why) = parse_user(&self.user) {
            problem("user", format!("{why}, got {:?}", self.user));
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The GPU a run is pinned to (the GPU layer's type: it places runs, this module builds their spec).
pub use crate::gpu::GpuAssignment;

/// Everything one run's container depends on. Only `policy` comes from configuration.
#[derive(Debug, Clone)]
pub struct RunSpecInput<'a> {
    /// Run id, `[a-z0-9-]{1,64}`; names the container and labels it.
    pub run_id: &'a str,
    /// The daemon instance's id (its store's), `[a-z0-9-]{1,64}`; labels the container.
    pub instance: &'a str,
    /// The miner image; its digest-pinned form is what runs.
    pub image: &'a ImageRef,
    /// The GPU this run is pinned to.
    pub gpu: GpuAssignment,
    /// Host directory mounted read-only at `/input`: absolute, normalised, no `:` or `,`.
    pub input_dir: &'a Path,
    /// Host directory mounted read-write at `/output`; same rules, and not nested with `input_dir`.
    pub output_dir: &'a Path,
    /// Resource limits.
    pub policy: &'a ContainerPolicy,
}

/// A container ready to create: its name and the audited create body.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// `talkhead-<run id>`.
    pub name: String,
    /// The `ContainerCreate` body; it has passed [`audit`].
    pub body: ContainerCreateBody,
}

/// Why no container spec was produced.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The policy failed [`ContainerPolicy::validate`].
    #[error("invalid container policy: {}", join_problems(.0))]
    Policy(Vec<(String, String)>),
    /// The run id is not `[a-z0-9-]{1,64}`.
    #[error("run id {0:?} is invalid: expected 1 to 64 characters from [a-z0-9-]")]
    RunId(String),
    /// The instance id is not `[a-z0-9-]{1,64}`.
    #[error("instance id {0:?} is invalid: expected 1 to 64 characters from [a-z0-9-]")]
    InstanceId(String),
    /// The GPU UUID is not in NVML's `GPU-<uuid>` form (`all` and friends land here).
    #[error("GPU UUID {0:?} is invalid: expected GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, lowercase hex")]
    GpuUuid(String),
    /// A bind source path is unusable.
    #[error("{which} {path:?} is invalid: {problem}")]
    Path {
        /// `input_dir` or `output_dir`.
        which: &'static str,
        /// The path, lossily decoded.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `input_dir` and `output_dir` are the same or one contains the other, which would make `/input`
    /// writable through `/output` (or expose one through the other).
    #[error("input_dir {input:?} and output_dir {output:?} must be distinct and not nested")]
    NestedDirs {
        /// The input directory.
        input: String,
        /// The output directory.
        output: String,
    },
    /// The body broke a security invariant. From [`build`] this is a bug in this module.
    #[error("container body refused by the security audit: {field}: {problem}")]
    Audit {
        /// The offending field, as a dotted path of Docker API names (`HostConfig.CapAdd`).
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The body could not be serialised for the audit.
    #[error("container body could not be serialised for the audit")]
    Serialize(#[source] serde_json::Error),
}

fn join_problems(problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(key, problem)| format!("{key}: {problem}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Build the hardened create body for one run, validate everything, and [`audit`] the result.
pub fn build(input: &RunSpecInput<'_>) -> Result<ContainerSpec, SpecError> {
    input.policy.validate().map_err(SpecError::Policy)?;
    let policy = input.policy;
    check_run_id(input.run_id).map_err(|()| SpecError::RunId(input.run_id.to_owned()))?;
    check_run_id(input.instance).map_err(|()| SpecError::InstanceId(input.instance.to_owned()))?;
    let gpu_uuid = match &input.gpu {
        GpuAssignment::Nvidia { uuid } => {
            check_gpu_uuid(uuid).map_err(|()| SpecError::GpuUuid(uuid.clone()))?;
            Some(uuid.as_str())
        }
        GpuAssignment::Virtual { .. } => None,
    };
    let slot_label = match &input.gpu {
        GpuAssignment::Nvidia { uuid } => uuid.clone(),
        GpuAssignment::Virtual { slot } => format!("{VIRTUAL_SLOT_PREFIX}{slot}"),
    };
    let input_dir = dir_arg("input_dir", input.input_dir)?;
    let output_dir = dir_arg("output_dir", input.output_dir)?;
    if nested(input_dir, output_dir) {
        return Err(SpecError::NestedDirs {
            input: input_dir.to_owned(),
            output: output_dir.to_owned(),
        });
    }
    let (uid, gid) = parse_user(&policy.user)
        .map_err(|why| SpecError::Policy(vec![("user".to_owned(), why.to_owned())]))?;

    let bytes = |key: &str, value: u64| {
        i64::try_from(value)
            .map_err(|_| SpecError::Policy(vec![(key.to_owned(), "does not fit in i64".to_owned())]))
    };
    let memory = bytes("memory_bytes", policy.memory_bytes)?;
    let shm = bytes("shm_bytes", policy.shm_bytes)?;
    // `as` saturates; validate() bounded cpus to [0.01, 4096], so this is exact enough and in range.
    let nano_cpus = (policy.cpus * 1e9).round() as i64;

    let device_requests = match gpu_uuid {
        Some(uuid) => vec![DeviceRequest {
            driver: Some(NVIDIA_DRIVER.to_owned()),
            // DeviceIDs only, never Count: Count -1 is "all GPUs".
            device_ids: Some(vec![uuid.to_owned()]),
            capabilities: Some(vec![GPU_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()]),
            ..Default::default()
        }],
        None => Vec::new(),
    };

    let host_config = HostConfig {
        network_mode: Some("none".to_owned()),
        privileged: Some(false),
        readonly_rootfs: Some(true),
        cap_drop: Some(vec!["ALL".to_owned()]),
        // Only no-new-privileges: Docker's default seccomp and AppArmor profiles stay in force.
        security_opt: Some(vec![NO_NEW_PRIVILEGES.to_owned()]),
        ipc_mode: Some("private".to_owned()),
        // Explicit: the daemon default may be "host" on cgroup v1 hosts.
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        pids_limit: Some(i64::from(policy.pids_limit)),
        memory: Some(memory),
        memory_swap: Some(memory),
        nano_cpus: Some(nano_cpus),
        shm_size: Some(shm),
        ulimits: Some(vec![
            ulimit("nofile", i64::from(policy.nofile)),
            // No core dumps: systemd-coredump would otherwise store a 16 GiB miner core on the host.
            ulimit("core", 0),
        ]),
        tmpfs: Some(HashMap::from([
            (TMP_TARGET.to_owned(), tmpfs_options(policy.tmp_bytes)),
            (VAR_TMP_TARGET.to_owned(), tmpfs_options(policy.var_tmp_bytes)),
        ])),
        mounts: Some(vec![
            bind_mount(input_dir, INPUT_TARGET, true),
            bind_mount(output_dir, OUTPUT_TARGET, false),
        ]),
        devices: Some(Vec::new()),
        device_requests: Some(device_requests),
        // tini as PID 1 reaps the zombies a miner's workers leave behind.
        init: Some(true),
        // The daemon removes the container itself, after it has read the logs and exit state.
        auto_remove: Some(false),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_owned()),
            config: Some(HashMap::from([
                ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
            ])),
        }),
        oom_kill_disable: Some(false),
        oom_score_adj: Some(OOM_SCORE_ADJ),
        ..Default::default()
    };

    let body = ContainerCreateBody {
        image: Some(input.image.pinned()),
        user: Some(format!("{uid}:{gid}")),
        working_dir: Some("/".to_owned()),
        env: Some(daemon_env(gpu_uuid, &slot_label)),
        labels: Some(HashMap::from([
            (LABEL_RUN.to_owned(), input.run_id.to_owned()),
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_INSTANCE.to_owned(), input.instance.to_owned()),
        ])),
        // An image HEALTHCHECK would run commands on the engine's schedule; readiness is ready.txt.
        healthcheck: Some(HealthConfig {
            test: Some(vec!["NONE".to_owned()]),
            ..Default::default()
        }),
        stop_timeout: Some(STOP_TIMEOUT_SECS),
        host_config: Some(host_config),
        // Entrypoint and Cmd stay the image's: the miner decides how it starts.
        ..Default::default()
    };

    audit(&body)?;
    Ok(ContainerSpec {
        name: format!("{CONTAINER_NAME_PREFIX}{}", input.run_id),
        body,
    })
}

/// The environment variable naming the run's slot (the GPU UUID, or `virtual-N`): informational for
/// the miner, and what lets tests prove each container sees only its own slot.
pub const SLOT_ENV: &str = "TALKHEAD_GPU_SLOT";
/// Prefix of virtual slot labels.
const VIRTUAL_SLOT_PREFIX: &str = "virtual-";

/// The environment the daemon imposes. Container `Env` overrides the image's, so an image that sets
/// `NVIDIA_VISIBLE_DEVICES=all` or `LD_PRELOAD` gets these values instead.
fn daemon_env(gpu_uuid: Option<&str>, slot_label: &str) -> Vec<String> {
    let mut env: Vec<String> = CACHE_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.push("LD_PRELOAD=".to_owned());
    match gpu_uuid {
        Some(uuid) => {
            env.push(format!("NVIDIA_VISIBLE_DEVICES={uuid}"));
            // The pinned GPU is the only one visible, so it is device 0.
            env.push("CUDA_VISIBLE_DEVICES=0".to_owned());
        }
        None => {
            env.push(format!("NVIDIA_VISIBLE_DEVICES={NVIDIA_NO_GPU}"));
            env.push("CUDA_VISIBLE_DEVICES=".to_owned());
        }
    }
    env.push(format!("NVIDIA_DRIVER_CAPABILITIES={NVIDIA_DRIVER_CAPABILITIES}"));
    env.push(format!("{SLOT_ENV}={slot_label}"));
    env
}

fn ulimit(name: &str, value: i64) -> ResourcesUlimits {
    ResourcesUlimits {
        name: Some(name.to_owned()),
        soft: Some(value),
        hard: Some(value),
    }
}

fn tmpfs_options(size: u64) -> String {
    format!("{TMPFS_OPTIONS},size={size}")
}

fn bind_mount(source: &str, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.to_owned()),
        source: Some(source.to_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        bind_options: Some(MountBindOptions {
            // rprivate: no mount event crosses between host and container in either direction.
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            // Non-recursive: a mount under the job directory never shows up in the container.
            non_recursive: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `[a-z0-9-]{1,64}`: run ids and instance ids (label values and part of the container name).
fn check_run_id(run_id: &str) -> Result<(), ()> {
    let ok = !run_id.is_empty()
        && run_id.len() <= MAX_RUN_ID_LEN
        && run_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(()) }
}

/// `GPU-` then 8-4-4-4-12 lowercase hex, as NVML reports it.
fn check_gpu_uuid(uuid: &str) -> Result<(), ()> {
    let Some(rest) = uuid.strip_prefix("GPU-") else {
        return Err(());
    };
    let groups: Vec<&str> = rest.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == lens.len()
        && groups.iter().zip(lens).all(|(g, len)| {
            g.len() == len
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if ok { Ok(()) } else { Err(()) }
}

/// Numeric `uid:gid`, neither 0 nor 4294967295 (`(uid_t)-1`).
fn parse_user(user: &str) -> Result<(u32, u32), &'static str> {
    let (uid, gid) = user
        .split_once(':')
        .ok_or("must be numeric uid:gid such as 65534:65534")?;
    let id = |s: &str| -> Result<u32, &'static str> {
        if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must be numeric uid:gid such as 65534:65534");
        }
        match s.parse::<u32>() {
            Ok(u32::MAX) | Err(_) => Err("ids must be below 4294967295"),
            Ok(v) => Ok(v),
        }
    };
    let (uid, gid) = (id(uid)?, id(gid)?);
    if uid == 0 {
        return Err("uid 0 (root) is refused: root in the container is root on the bind mounts");
    }
    if gid == 0 {
        return Err("gid 0 (root group) is refused");
    }
    Ok((uid, gid))
}

fn dir_arg<'p>(which: &'static str, path: &'p Path) -> Result<&'p str, SpecError> {
    let fail = |problem| SpecError::Path {
        which,
        path: path.to_string_lossy().into_owned(),
        problem,
    };
    let s = path.to_str().ok_or_else(|| fail("is not valid UTF-8"))?;
    check_dir(s).map_err(fail)?;
    Ok(s)
}

/// A bind source: absolute, normalised (no empty, `.` or `..` component, no trailing `/`), at least two
/// components deep (never `/` or a system top-level such as `/etc`), and free of `:`, `,` and control
/// characters (separators of Docker's `Binds` and mount-option syntax).
fn check_dir(path: &str) -> Result<(), &'static str> {
    if path.len() > MAX_PATH_LEN {
        return Err("is too long");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must be absolute");
    };
    if path.chars().any(|c| c == ':' || c == ',' || c.is_control()) {
        return Err("must not contain ':', ',' or control characters");
    }
    let components: Vec<&str> = rest.split('/').collect();
    if components.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err("must be normalised: no empty, '.' or '..' components and no trailing '/'");
    }
    if components.len() < 2 {
        return Err("must be at least two directories deep (never '/' or a top-level directory)");
    }
    Ok(())
}

/// Equal, or one an ancestor of the other (component-wise, so `/a/in` and `/a/input` are not nested).
fn nested(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    a.iter().zip(&b).all(|(x, y)| x == y)
}

// ---------------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------------

const TOP_KEYS: &[&str] = &[
    "Image",
    "User",
    "Env",
    "Labels",
    "WorkingDir",
    "Healthcheck",
    "StopTimeout",
    "HostConfig",
];

const HOST_KEYS: &[&str] = &[
    "NetworkMode",
    "Privileged",
    "ReadonlyRootfs",
    "CapDrop",
    "SecurityOpt",
    "IpcMode",
    "CgroupnsMode",
    "PidsLimit",
    "Memory",
    "MemorySwap",
    "NanoCpus",
    "ShmSize",
    "Ulimits",
    "Tmpfs",
    "Mounts",
    "Devices",
    "DeviceRequests",
    "Init",
    "AutoRemove",
    "RestartPolicy",
    "LogConfig",
    "OomKillDisable",
    "OomScoreAdj",
];

/// Independently re-check a create body against every invariant of this module, on its serialised form
/// (exactly what dockerd receives). Allow-list based: any field not known to be safe is refused, even one
/// bollard adds in a later version. Run it right before `create_container`.
pub fn audit(body: &ContainerCreateBody) -> Result<(), SpecError> {
    let value = serde_json::to_value(body).map_err(SpecError::Serialize)?;
    let top = as_object(&value, "body")?;
    only_keys(top, "", TOP_KEYS)?;

    let image = get_str(top, "", "Image")?;
    match ImageRef::parse(image) {
        Ok(r) if r.pinned() == image => {}
        _ => {
            return Err(violation(
                "Image",
                "must be a digest-pinned repository@sha256:<hex>",
            ));
        }
    }
    parse_user(get_str(top, "", "User")?).map_err(|why| violation("User", why))?;
    expect_str(top, "", "WorkingDir", "/")?;
    let stop = get_i64(top, "", "StopTimeout")?;
    if !(1..=60).contains(&stop) {
        return Err(violation("StopTimeout", "must be 1 to 60 seconds"));
    }
    let health = as_object(get(top, "", "Healthcheck")?, "Healthcheck")?;
    only_keys(health, "Healthcheck", &["Test"])?;
    if str_array(get(health, "Healthcheck", "Test")?, "Healthcheck.Test")? != ["NONE"] {
        return Err(violation("Healthcheck.Test", "must be [\"NONE\"]"));
    }
    let labels = as_object(get(top, "", "Labels")?, "Labels")?;
    only_keys(labels, "Labels", &[LABEL_RUN, LABEL_MANAGED, LABEL_INSTANCE])?;
    check_run_id(get_str(labels, "Labels", LABEL_RUN)?)
        .map_err(|()| violation("Labels.talkhead.run", "must be a valid run id"))?;
    check_run_id(get_str(labels, "Labels", LABEL_INSTANCE)?)
        .map_err(|()| violation("Labels.talkhead.instance", "must be a valid instance id"))?;
    expect_str(labels, "Labels", LABEL_MANAGED, "true")?;

    let host = as_object(get(top, "", "HostConfig")?, "HostConfig")?;
    let gpu_uuid = audit_host(host)?;
    audit_env(get(top, "", "Env")?, gpu_uuid)
}

/// Checks `HostConfig`; returns the one GPU UUID requested, if any.
fn audit_host(host: &Map<String, Value>) -> Result<Option<&str>, SpecError> {
    const H: &str = "HostConfig";
    only_keys(host, H, HOST_KEYS)?;
    expect_str(host, H, "NetworkMode", "none")?;
    expect_bool(host, H, "Privileged", false)?;
    expect_bool(host, H, "ReadonlyRootfs", true)?;
    if str_array(get(host, H, "CapDrop")?, "HostConfig.CapDrop")? != ["ALL"] {
        return Err(violation("HostConfig.CapDrop", "must be exactly [\"ALL\"]"));
    }
    // Exactly this one option: no seccomp=, apparmor=, label= or systempaths= override can sneak in.
    if str_array(get(host, H, "SecurityOpt")?, "HostConfig.SecurityOpt")? != [NO_NEW_PRIVILEGES] {
        return Err(violation(
            "HostConfig.SecurityOpt",
            "must be exactly [\"no-new-privileges:true\"] (default seccomp/AppArmor profiles)",
        ));
    }
    expect_str(host, H, "IpcMode", "private")?;
    expect_str(host, H, "CgroupnsMode", "private")?;
    expect_bool(host, H, "Init", true)?;
    expect_bool(host, H, "AutoRemove", false)?;
    expect_bool(host, H, "OomKillDisable", false)?;

    let pids = get_i64(host, H, "PidsLimit")?;
    if !(1..=i64::from(MAX_PIDS)).contains(&pids) {
        return Err(violation("HostConfig.PidsLimit", "must be a positive limit"));
    }
    let memory = get_i64(host, H, "Memory")?;
    if memory <= 0 {
        return Err(violation("HostConfig.Memory", "must be a positive limit"));
    }
    if get_i64(host, H, "MemorySwap")? != memory {
        return Err(violation("HostConfig.MemorySwap", "must equal Memory (no swap)"));
    }
    if get_i64(host, H, "NanoCpus")? <= 0 {
        return Err(violation("HostConfig.NanoCpus", "must be a positive limit"));
    }
    let shm = get_i64(host, H, "ShmSize")?;
    if shm <= 0 || shm > memory {
        return Err(violation(
            "HostConfig.ShmSize",
            "must be positive and at most Memory",
        ));
    }
    let oom = get_i64(host, H, "OomScoreAdj")?;
    if !(1..=1000).contains(&oom) {
        return Err(violation("HostConfig.OomScoreAdj", "must be 1 to 1000"));
    }

    audit_ulimits(get(host, H, "Ulimits")?)?;
    audit_tmpfs(get(host, H, "Tmpfs")?)?;
    audit_mounts(get(host, H, "Mounts")?)?;

    if let Some(devices) = host.get("Devices")
        && !array(devices, "HostConfig.Devices")?.is_empty()
    {
        return Err(violation("HostConfig.Devices", "must be empty"));
    }
    let restart = as_object(get(host, H, "RestartPolicy")?, "HostConfig.RestartPolicy")?;
    only_keys(restart, "HostConfig.RestartPolicy", &["Name"])?;
    expect_str(restart, "HostConfig.RestartPolicy", "Name", "no")?;

    let log = as_object(get(host, H, "LogConfig")?, "HostConfig.LogConfig")?;
    only_keys(log, "HostConfig.LogConfig", &["Type", "Config"])?;
    expect_str(log, "HostConfig.LogConfig", "Type", "json-file")?;
    let log_opts = as_object(
        get(log, "HostConfig.LogConfig", "Config")?,
        "HostConfig.LogConfig.Config",
    )?;
    only_keys(log_opts, "HostConfig.LogConfig.Config", &["max-size", "max-file"])?;
    expect_str(log_opts, "HostConfig.LogConfig.Config", "max-size", LOG_MAX_SIZE)?;
    expect_str(log_opts, "HostConfig.LogConfig.Config", "max-file", LOG_MAX_FILE)?;

    match host.get("DeviceRequests") {
        None => Ok(None),
        Some(requests) => audit_device_requests(requests),
    }
}

fn audit_ulimits(value: &Value) -> Result<(), SpecError> {
    const F: &str = "HostConfig.Ulimits";
    let mut seen = BTreeMap::new();
    for item in array(value, F)? {
        let u = as_object(item, F)?;
        only_keys(u, F, &["Name", "Soft", "Hard"])?;
        let name = get_str(u, F, "Name")?;
        let (soft, hard) = (get_i64(u, F, "Soft")?, get_i64(u, F, "Hard")?);
        if soft != hard {
            return Err(violation(F, format!("{name}: soft and hard must be equal")));
        }
        if seen.insert(name, soft).is_some() {
            return Err(violation(F, format!("{name} appears twice")));
        }
    }
    match (seen.get("nofile"), seen.get("core"), seen.len()) {
        (Some(n), Some(0), 2) if (1..=i64::from(MAX_NOFILE)).contains(n) => Ok(()),
        _ => Err(violation(F, "must be exactly nofile (bounded) and core = 0")),
    }
}

fn audit_tmpfs(value: &Value) -> Result<(), SpecError> {
    const F: &str = "HostConfig.Tmpfs";
    let tmpfs = as_object(value, F)?;
    only_keys(tmpfs, F, &[TMP_TARGET, VAR_TMP_TARGET])?;
    for target in [TMP_TARGET, VAR_TMP_TARGET] {
        let options = get_str(tmpfs, F, target)?;
        let size = options
            .strip_prefix(TMPFS_OPTIONS)
            .and_then(|rest| rest.strip_prefix(",size="))
            .filter(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        match size {
            // size=0 would be an unlimited tmpfs.
            Some(n) if n > 0 => {}
            _ => {
                return Err(violation(
                    format!("{F}.{target}"),
                    format!("must be exactly \"{TMPFS_OPTIONS},size=<bytes > 0>\""),
                ));
            }
        }
    }
    Ok(())
}

fn audit_mounts(value: &Value) -> Result<(), SpecError> {
    const F: &str = "HostConfig.Mounts";
    let mounts = array(value, F)?;
    if mounts.len() != 2 {
        return Err(violation(F, "must be exactly the /input and /output binds"));
    }
    let mut sources = BTreeMap::new();
    for m in mounts {
        let m = as_object(m, F)?;
        only_keys(m, F, &["Target", "Source", "Type", "ReadOnly", "BindOptions"])?;
        let target = get_str(m, F, "Target")?;
        let field = format!("{F}[{target}]");
        let read_only = match target {
            INPUT_TARGET => true,
            OUTPUT_TARGET => false,
            _ => return Err(violation(field, "only /input and /output may be mounted")),
        };
        expect_str(m, &field, "Type", "bind")?;
        expect_bool(m, &field, "ReadOnly", read_only)?;
        let source = get_str(m, &field, "Source")?;
        check_dir(source).map_err(|why| violation(format!("{field}.Source"), why))?;
        let opts_field = format!("{field}.BindOptions");
        let opts = as_object(get(m, &field, "BindOptions")?, &opts_field)?;
        only_keys(opts, &opts_field, &["Propagation", "NonRecursive"])?;
        expect_str(opts, &opts_field, "Propagation", "rprivate")?;
        expect_bool(opts, &opts_field, "NonRecursive", true)?;
        if sources.insert(target, source).is_some() {
            return Err(violation(field, "mounted twice"));
        }
    }
    match (sources.get(INPUT_TARGET), sources.get(OUTPUT_TARGET)) {
        (Some(i), Some(o)) if !nested(i, o) => Ok(()),
        _ => Err(violation(
            F,
            "/input and /output sources must be distinct and not nested",
        )),
    }
}

fn audit_device_requests(value: &Value) -> Result<Option<&str>, SpecError> {
    const F: &str = "HostConfig.DeviceRequests";
    let requests = array(value, F)?;
    let request = match requests {
        [] => return Ok(None),
        [one] => as_object(one, F)?,
        _ => return Err(violation(F, "at most one device request")),
    };
    // No Count (-1 is every GPU) and no Options: one named GPU and nothing else.
    only_keys(request, F, &["Driver", "DeviceIDs", "Capabilities"])?;
    expect_str(request, F, "Driver", NVIDIA_DRIVER)?;
    let ids = str_array(
        get(request, F, "DeviceIDs")?,
        "HostConfig.DeviceRequests.DeviceIDs",
    )?;
    let uuid = match ids.as_slice() {
        [uuid] if check_gpu_uuid(uuid).is_ok() => *uuid,
        _ => {
            return Err(violation(
                "HostConfig.DeviceRequests.DeviceIDs",
                "must be exactly one GPU UUID (never \"all\", an index or several)",
            ));
        }
    };
    let caps = array(
        get(request, F, "Capabilities")?,
        "HostConfig.DeviceRequests.Capabilities",
    )?;
    let ok = match caps {
        [one] => str_array(one, "HostConfig.DeviceRequests.Capabilities")? == GPU_CAPABILITIES,
        _ => false,
    };
    if !ok {
        return Err(violation(
            "HostConfig.DeviceRequests.Capabilities",
            "must be [[\"gpu\", \"compute\", \"utility\"]]",
        ));
    }
    Ok(Some(uuid))
}

fn audit_env(value: &Value, gpu_uuid: Option<&str>) -> Result<(), SpecError> {
    let env = str_array(value, "Env")?;
    let mut vars = BTreeMap::new();
    for entry in &env {
        let (key, val) = entry
            .split_once('=')
            .ok_or_else(|| violation("Env", format!("{entry:?} is not KEY=value")))?;
        if vars.insert(key, val).is_some() {
            return Err(violation("Env", format!("{key} is set twice")));
        }
    }
    // Spot checks that do not depend on daemon_env, then the exact list.
    let expected_visible = gpu_uuid.unwrap_or(NVIDIA_NO_GPU);
    if vars.get("NVIDIA_VISIBLE_DEVICES") != Some(&expected_visible) {
        return Err(violation(
            "Env.NVIDIA_VISIBLE_DEVICES",
            "must name exactly the requested GPU, or \"void\" without one",
        ));
    }
    let expected_cuda = if gpu_uuid.is_some() { "0" } else { "" };
    if vars.get("CUDA_VISIBLE_DEVICES") != Some(&expected_cuda) {
        return Err(violation(
            "Env.CUDA_VISIBLE_DEVICES",
            "must match the GPU assignment",
        ));
    }
    if vars.get("LD_PRELOAD") != Some(&"") {
        return Err(violation("Env.LD_PRELOAD", "must be set and empty"));
    }
    let slot_label = vars.get(SLOT_ENV).copied().unwrap_or_default();
    let label_ok = match gpu_uuid {
        Some(uuid) => slot_label == uuid,
        None => slot_label
            .strip_prefix(VIRTUAL_SLOT_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
    };
    if !label_ok {
        return Err(violation(
            "Env.TALKHEAD_GPU_SLOT",
            "must name the assigned GPU, or virtual-N without one",
        ));
    }
    if env != daemon_env(gpu_uuid, slot_label) {
        return Err(violation("Env", "must be exactly the daemon's environment"));
    }
    Ok(())
}

fn violation(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError::Audit {
        field: field.into(),
        problem: problem.into(),
    }
}

fn dotted(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn as_object<'v>(value: &'v Value, field: &str) -> Result<&'v Map<String, Value>, SpecError> {
    value
        .as_object()
        .ok_or_else(|| violation(field, "must be an object"))
}

fn array<'v>(value: &'v Value, field: &str) -> Result<&'v [Value], SpecError> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| violation(field, "must be an array"))
}

fn str_array<'v>(value: &'v Value, field: &str) -> Result<Vec<&'v str>, SpecError> {
    array(value, field)?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| violation(field, "must be an array of strings"))
        })
        .collect()
}

fn only_keys(obj: &Map<String, Value>, parent: &str, allowed: &[&str]) -> Result<(), SpecError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(violation(
            dotted(parent, key),
            "is not allowed in a miner container",
        )),
        None => Ok(()),
    }
}

fn get<'v>(obj: &'v Map<String, Value>, parent: &str, key: &str) -> Result<&'v Value, SpecError> {
    obj.get(key)
        .ok_or_else(|| violation(dotted(parent, key), "is required"))
}

fn get_str<'v>(obj: &'v Map<String, Value>, parent: &str, key: &str) -> Result<&'v str, SpecError> {
    get(obj, parent, key)?
        .as_str()
        .ok_or_else(|| violation(dotted(parent, key), "must be a string"))
}

fn get_i64(obj: &Map<String, Value>, parent: &str, key: &str) -> Result<i64, SpecError> {
    get(obj, parent, key)?
        .as_i64()
        .ok_or_else(|| violation(dotted(parent, key), "must be an integer"))
}

fn expect_str(obj: &Map<String, Value>, parent: &str, key: &str, expected: &str) -> Result<(), SpecError> {
    if get_str(obj, parent, key)? == expected {
        Ok(())
    } else {
        Err(violation(dotted(parent, key), format!("must be {expected:?}")))
    }
}

fn expect_bool(obj: &Map<String, Value>, parent: &str, key: &str, expected: bool) -> Result<(), SpecError> {
    match get(obj, parent, key)?.as_bool() {
        Some(v) if v == expected => Ok(()),
        _ => Err(violation(dotted(parent, key), format!("must be {expected}"))),
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
