//! Tests of the hardened container spec: snapshots, validation, properties over arbitrary inputs, and
//! one test per hostile mutation the audit must refuse.

use super::*;
use proptest::prelude::*;
use serde_json::json;
use std::path::PathBuf;

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UUID: &str = "GPU-12345678-90ab-cdef-1234-567890abcdef";
const INPUT: &str = "/var/lib/talkheadd/jobs/run-0001/input";
const OUTPUT: &str = "/var/lib/talkheadd/jobs/run-0001/output";
const INSTANCE: &str = "0123456789abcdef0123456789abcdef";

fn image() -> ImageRef {
    ImageRef::parse(&format!("localhost:5000/talkhead/demo:v1@sha256:{DIGEST}")).unwrap()
}

fn nvidia() -> GpuAssignment {
    GpuAssignment::Nvidia {
        uuid: UUID.to_owned(),
    }
}

fn build_with(gpu: GpuAssignment, policy: &ContainerPolicy) -> Result<ContainerSpec, SpecError> {
    let image = image();
    build(&RunSpecInput {
        run_id: "run-0001",
        instance: INSTANCE,
        image: &image,
        gpu,
        input_dir: Path::new(INPUT),
        output_dir: Path::new(OUTPUT),
        policy,
    })
}

fn nvidia_body() -> ContainerCreateBody {
    build_with(nvidia(), &ContainerPolicy::default()).unwrap().body
}

fn virtual_body() -> ContainerCreateBody {
    build_with(GpuAssignment::Virtual { slot: 3 }, &ContainerPolicy::default())
        .unwrap()
        .body
}

fn host(body: &mut ContainerCreateBody) -> &mut HostConfig {
    body.host_config.as_mut().unwrap()
}

/// The expected body, shared by both snapshots; only the GPU parts differ.
fn expected_json(device_requests: Value, gpu_env: [&str; 3]) -> Value {
    json!({
        "Image": format!("localhost:5000/talkhead/demo@sha256:{DIGEST}"),
        "User": "65534:65534",
        "WorkingDir": "/",
        "Env": [
            "TMPDIR=/tmp",
            "HF_HOME=/tmp/hf",
            "TRANSFORMERS_CACHE=/tmp/hf/transformers",
            "XDG_CACHE_HOME=/tmp/.cache",
            "LD_PRELOAD=",
            gpu_env[0],
            gpu_env[1],
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
            gpu_env[2]
        ],
        "Labels": {
            "talkhead.run": "run-0001",
            "talkhead.managed": "true",
            "talkhead.instance": INSTANCE
        },
        "Healthcheck": { "Test": ["NONE"] },
        "StopTimeout": 5,
        "HostConfig": {
            "NetworkMode": "none",
            "Privileged": false,
            "ReadonlyRootfs": true,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges:true"],
            "IpcMode": "private",
            "CgroupnsMode": "private",
            "PidsLimit": 256,
            "Memory": 17_179_869_184_i64,
            "MemorySwap": 17_179_869_184_i64,
            "NanoCpus": 8_000_000_000_i64,
            "ShmSize": 2_147_483_648_i64,
            "Ulimits": [
                { "Name": "nofile", "Soft": 4096, "Hard": 4096 },
                { "Name": "core", "Soft": 0, "Hard": 0 }
            ],
            "Tmpfs": {
                "/tmp": "rw,nosuid,nodev,noexec,size=1073741824",
                "/var/tmp": "rw,nosuid,nodev,noexec,size=268435456"
            },
            "Mounts": [
                {
                    "Target": "/input",
                    "Source": INPUT,
                    "Type": "bind",
                    "ReadOnly": true,
                    "BindOptions": { "Propagation": "rprivate", "NonRecursive": true }
                },
                {
                    "Target": "/output",
                    "Source": OUTPUT,
                    "Type": "bind",
                    "ReadOnly": false,
                    "BindOptions": { "Propagation": "rprivate", "NonRecursive": true }
                }
            ],
            "Devices": [],
            "DeviceRequests": device_requests,
            "Init": true,
            "AutoRemove": false,
            "RestartPolicy": { "Name": "no" },
            "LogConfig": { "Type": "json-file", "Config": { "max-size": "10m", "max-file": "1" } },
            "OomKillDisable": false,
            "OomScoreAdj": 500
        }
    })
}

// ----------------------------------------------------------------------------------------------------
// Snapshots
// ----------------------------------------------------------------------------------------------------

#[test]
fn snapshot_nvidia() {
    let spec = build_with(nvidia(), &ContainerPolicy::default()).unwrap();
    assert_eq!(spec.name, "talkhead-run-0001");
    let expected = expected_json(
        json!([{
            "Driver": "nvidia",
            "DeviceIDs": [UUID],
            "Capabilities": [["gpu", "compute", "utility"]]
        }]),
        [
            "NVIDIA_VISIBLE_DEVICES=GPU-12345678-90ab-cdef-1234-567890abcdef",
            "CUDA_VISIBLE_DEVICES=0",
            "TALKHEAD_GPU_SLOT=GPU-12345678-90ab-cdef-1234-567890abcdef",
        ],
    );
    assert_eq!(serde_json::to_value(&spec.body).unwrap(), expected);
}

#[test]
fn snapshot_virtual() {
    let spec = build_with(GpuAssignment::Virtual { slot: 3 }, &ContainerPolicy::default()).unwrap();
    assert_eq!(spec.name, "talkhead-run-0001");
    let expected = expected_json(
        json!([]),
        [
            "NVIDIA_VISIBLE_DEVICES=void",
            "CUDA_VISIBLE_DEVICES=",
            "TALKHEAD_GPU_SLOT=virtual-3",
        ],
    );
    assert_eq!(serde_json::to_value(&spec.body).unwrap(), expected);
}

/// Every security-relevant field asserted on the typed body, independently of the JSON snapshot.
#[test]
fn security_fields_explicitly() {
    for (body, gpu) in [(nvidia_body(), Some(UUID)), (virtual_body(), None)] {
        check_invariants(&body, gpu, &ContainerPolicy::default(), INPUT, OUTPUT);
        let h = body.host_config.as_ref().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.privileged, Some(false));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(h.cap_add, None);
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges:true".to_owned()]));
        assert_eq!(h.pid_mode, None);
        assert_eq!(h.uts_mode, None);
        assert_eq!(h.userns_mode, None);
        assert_eq!(h.ipc_mode.as_deref(), Some("private"));
        assert_eq!(h.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
        assert_eq!(h.binds, None);
        assert_eq!(h.volumes_from, None);
        assert_eq!(h.runtime, None);
        assert_eq!(h.sysctls, None);
        assert_eq!(h.masked_paths, None);
        assert_eq!(h.readonly_paths, None);
        assert_eq!(h.memory, Some(16 << 30));
        assert_eq!(h.memory_swap, Some(16 << 30));
        assert_eq!(h.pids_limit, Some(256));
        assert_eq!(h.shm_size, Some(2 << 30));
        assert_eq!(h.nano_cpus, Some(8_000_000_000));
        assert_eq!(h.oom_score_adj, Some(500));
        assert_eq!(h.auto_remove, Some(false));
        assert_eq!(h.init, Some(true));
        assert_eq!(body.volumes, None);
        assert_eq!(body.networking_config, None);
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, None);
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
    }
}

#[test]
fn image_runs_by_digest_without_tag() {
    assert_eq!(
        nvidia_body().image.unwrap(),
        format!("localhost:5000/talkhead/demo@sha256:{DIGEST}")
    );
}

#[test]
fn user_is_canonicalised() {
    let policy = ContainerPolicy {
        user: "01000:0100".to_owned(),
        ..Default::default()
    };
    let body = build_with(nvidia(), &policy).unwrap().body;
    assert_eq!(body.user.as_deref(), Some("1000:100"));
}

#[test]
fn fractional_cpus_become_nano_cpus() {
    let policy = ContainerPolicy {
        cpus: 1.5,
        ..Default::default()
    };
    let body = build_with(nvidia(), &policy).unwrap().body;
    assert_eq!(body.host_config.unwrap().nano_cpus, Some(1_500_000_000));
}

// ----------------------------------------------------------------------------------------------------
// Policy (de)serialisation and validation
// ----------------------------------------------------------------------------------------------------

#[test]
fn default_policy_is_valid_and_sane() {
    let p = ContainerPolicy::default();
    assert_eq!(p.validate(), Ok(()));
    assert_eq!(p.cpus, 8.0);
    assert_eq!(p.memory_bytes, 16 << 30);
    assert_eq!(p.pids_limit, 256);
    assert_eq!(p.shm_bytes, 2 << 30);
    assert_eq!(p.tmp_bytes, 1 << 30);
    assert_eq!(p.var_tmp_bytes, 256 << 20);
    assert_eq!(p.user, "65534:65534");
    assert_eq!(p.output_bytes, 2 << 30);
    assert_eq!(p.nofile, 4096);
}

#[test]
fn empty_config_section_gives_defaults_and_roundtrips() {
    let p: ContainerPolicy = serde_json::from_str("{}").unwrap();
    assert_eq!(p, ContainerPolicy::default());
    let back: ContainerPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back, p);
    let partial: ContainerPolicy = serde_json::from_str(r#"{"cpus": 2.0, "user": "1000:1000"}"#).unwrap();
    assert_eq!(partial.cpus, 2.0);
    assert_eq!(partial.memory_bytes, 16 << 30);
}

#[test]
fn policy_has_no_knob_for_dangerous_settings() {
    for key in [
        "privileged",
        "cap_add",
        "capabilities",
        "network",
        "network_mode",
        "devices",
        "mounts",
        "binds",
        "security_opt",
        "pid_mode",
        "runtime",
        "env",
    ] {
        let raw = format!(r#"{{"{key}": true}}"#);
        let err = serde_json::from_str::<ContainerPolicy>(&raw).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{key}: {err}");
    }
}

#[test]
fn negative_integer_limits_do_not_deserialise() {
    for key in [
        "memory_bytes",
        "pids_limit",
        "shm_bytes",
        "tmp_bytes",
        "var_tmp_bytes",
        "output_bytes",
        "nofile",
    ] {
        let raw = format!(r#"{{"{key}": -1}}"#);
        assert!(serde_json::from_str::<ContainerPolicy>(&raw).is_err(), "{key}");
    }
}

fn problem_keys(p: &ContainerPolicy) -> Vec<String> {
    p.validate().unwrap_err().into_iter().map(|(k, _)| k).collect()
}

#[test]
fn bad_cpus_are_refused() {
    for cpus in [
        0.0,
        -1.0,
        -0.0,
        0.001,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e9,
    ] {
        let p = ContainerPolicy {
            cpus,
            ..Default::default()
        };
        assert_eq!(problem_keys(&p), ["cpus"], "{cpus}");
        assert!(matches!(build_with(nvidia(), &p), Err(SpecError::Policy(_))));
    }
}

#[test]
fn zero_limits_are_refused() {
    let cases: Vec<(&str, ContainerPolicy)> = vec![
        (
            "memory_bytes",
            ContainerPolicy {
                memory_bytes: 0,
                shm_bytes: 0,
                tmp_bytes: 0,
                var_tmp_bytes: 0,
                ..Default::default()
            },
        ),
        (
            "pids_limit",
            ContainerPolicy {
                pids_limit: 0,
                ..Default::default()
            },
        ),
        (
            "shm_bytes",
            ContainerPolicy {
                shm_bytes: 0,
                ..Default::default()
            },
        ),
        (
            "tmp_bytes",
            ContainerPolicy {
                tmp_bytes: 0,
                ..Default::default()
            },
        ),
        (
            "var_tmp_bytes",
            ContainerPolicy {
                var_tmp_bytes: 0,
                ..Default::default()
            },
        ),
        (
            "output_bytes",
            ContainerPolicy {
                output_bytes: 0,
                ..Default::default()
            },
        ),
        (
            "nofile",
            ContainerPolicy {
                nofile: 0,
                ..Default::default()
            },
        ),
    ];
    for (key, p) in cases {
        assert!(problem_keys(&p).contains(&key.to_owned()), "{key}");
        assert!(
            matches!(build_with(nvidia(), &p), Err(SpecError::Policy(_))),
            "{key}"
        );
    }
}

#[test]
fn oversized_limits_are_refused() {
    let p = ContainerPolicy {
        memory_bytes: u64::MAX,
        pids_limit: u32::MAX,
        nofile: u32::MAX,
        output_bytes: u64::MAX,
        ..Default::default()
    };
    let keys = problem_keys(&p);
    for key in ["memory_bytes", "pids_limit", "nofile", "output_bytes"] {
        assert!(keys.contains(&key.to_owned()), "{key}: {keys:?}");
    }
}

#[test]
fn shm_and_tmpfs_cannot_exceed_memory() {
    let p = ContainerPolicy {
        memory_bytes: 1 << 30,
        shm_bytes: 2 << 30,
        tmp_bytes: 2 << 30,
        var_tmp_bytes: 2 << 30,
        ..Default::default()
    };
    assert_eq!(problem_keys(&p), ["shm_bytes", "tmp_bytes", "var_tmp_bytes"]);
}

#[test]
fn validation_reports_every_problem_at_once() {
    let p = ContainerPolicy {
        cpus: f64::NAN,
        pids_limit: 0,
        user: "root".to_owned(),
        ..Default::default()
    };
    assert_eq!(problem_keys(&p), ["cpus", "pids_limit", "user"]);
    let msg = build_with(nvidia(), &p).unwrap_err().to_string();
    assert!(
        msg.contains("cpus") && msg.contains("pids_limit") && msg.contains("user"),
        "{msg}"
    );
}

#[test]
fn root_and_non_numeric_users_are_refused() {
    for user in [
        "0:0",
        "0:65534",
        "00:1000",
        "65534:0",
        "root",
        "root:root",
        "nobody",
        "1000",
        "",
        ":",
        "1000:",
        ":1000",
        "-1:-1",
        "+1000:1000",
        " 1000:1000",
        "1000:1000 ",
        "1000:1000:1",
        "4294967295:1000",
        "4294967296:1000",
        "99999999999:1",
        "1000:1000\n",
        "１０００:1000",
    ] {
        let p = ContainerPolicy {
            user: user.to_owned(),
            ..Default::default()
        };
        assert_eq!(problem_keys(&p), ["user"], "{user:?}");
        assert!(
            matches!(build_with(nvidia(), &p), Err(SpecError::Policy(_))),
            "{user:?}"
        );
    }
}

#[test]
fn uid_zero_message_says_why() {
    let p = ContainerPolicy {
        user: "0:0".to_owned(),
        ..Default::default()
    };
    let problems = p.validate().unwrap_err();
    assert!(problems[0].1.contains("uid 0"), "{problems:?}");
}

// ----------------------------------------------------------------------------------------------------
// Input validation
// ----------------------------------------------------------------------------------------------------

#[test]
fn bad_run_and_instance_ids_are_refused() {
    let image = image();
    let policy = ContainerPolicy::default();
    let long = "a".repeat(65);
    for run_id in [
        "",
        "Run-1",
        "run_1",
        "run 1",
        "run/1",
        "../x",
        "run.1",
        "run:1",
        "run\n1",
        "rün",
        long.as_str(),
    ] {
        let r = build(&RunSpecInput {
            run_id,
            instance: INSTANCE,
            image: &image,
            gpu: nvidia(),
            input_dir: Path::new(INPUT),
            output_dir: Path::new(OUTPUT),
            policy: &policy,
        });
        assert!(matches!(r, Err(SpecError::RunId(_))), "{run_id:?}");
        let r = build(&RunSpecInput {
            run_id: "run-0001",
            instance: run_id,
            image: &image,
            gpu: nvidia(),
            input_dir: Path::new(INPUT),
            output_dir: Path::new(OUTPUT),
            policy: &policy,
        });
        assert!(matches!(r, Err(SpecError::InstanceId(_))), "instance {run_id:?}");
    }
    let longest = "a".repeat(64);
    let ok = build(&RunSpecInput {
        run_id: &longest,
        instance: INSTANCE,
        image: &image,
        gpu: nvidia(),
        input_dir: Path::new(INPUT),
        output_dir: Path::new(OUTPUT),
        policy: &policy,
    });
    assert_eq!(ok.unwrap().name, format!("talkhead-{longest}"));
}

#[test]
fn bad_device_uuids_are_refused() {
    for uuid in [
        "all",
        "none",
        "void",
        "0",
        "0,1",
        "",
        "GPU-all",
        "GPU-",
        "GPU-12345678-90AB-CDEF-1234-567890ABCDEF",
        "gpu-12345678-90ab-cdef-1234-567890abcdef",
        "GPU-12345678-90ab-cdef-1234-567890abcde",
        "GPU-12345678-90ab-cdef-1234-567890abcdef0",
        "GPU-1234567890ab-cdef-1234-567890abcdef-",
        "GPU-12345678-90ab-cdef-1234-567890abcdeg",
        "GPU-12345678-90ab-cdef-1234-567890abcdef,GPU-12345678-90ab-cdef-1234-567890abcdee",
        "MIG-12345678-90ab-cdef-1234-567890abcdef",
        " GPU-12345678-90ab-cdef-1234-567890abcdef",
    ] {
        let r = build_with(
            GpuAssignment::Nvidia {
                uuid: uuid.to_owned(),
            },
            &ContainerPolicy::default(),
        );
        assert!(matches!(r, Err(SpecError::GpuUuid(_))), "{uuid:?}");
    }
}

fn build_dirs(input: &Path, output: &Path) -> Result<ContainerSpec, SpecError> {
    let image = image();
    let policy = ContainerPolicy::default();
    build(&RunSpecInput {
        run_id: "run-0001",
        instance: INSTANCE,
        image: &image,
        gpu: nvidia(),
        input_dir: input,
        output_dir: output,
        policy: &policy,
    })
}

#[test]
fn bad_paths_are_refused() {
    let long = format!("/a/{}", "b".repeat(5000));
    for bad in [
        "",
        "relative/input",
        "./input",
        "/",
        "/etc",
        "/jobs/../etc",
        "/jobs/./input",
        "/jobs//input",
        "/jobs/input/",
        "/jobs/in:put",
        "/jobs/input:/etc",
        "/jobs/in,put",
        "/jobs/input\n",
        "/jobs/in\0put",
        "/jobs/..",
        long.as_str(),
    ] {
        let r = build_dirs(Path::new(bad), Path::new(OUTPUT));
        assert!(
            matches!(
                r,
                Err(SpecError::Path {
                    which: "input_dir",
                    ..
                })
            ),
            "input {bad:?}: {r:?}"
        );
        let r = build_dirs(Path::new(INPUT), Path::new(bad));
        assert!(
            matches!(
                r,
                Err(SpecError::Path {
                    which: "output_dir",
                    ..
                })
            ),
            "output {bad:?}: {r:?}"
        );
    }
}

#[test]
fn non_utf8_paths_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let bad = Path::new(std::ffi::OsStr::from_bytes(b"/jobs/\xffinput"));
    let r = build_dirs(bad, Path::new(OUTPUT));
    assert!(
        matches!(
            r,
            Err(SpecError::Path {
                which: "input_dir",
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn same_or_nested_dirs_are_refused() {
    for (input, output) in [
        ("/jobs/r1", "/jobs/r1"),
        ("/jobs/r1/input", "/jobs/r1"),
        ("/jobs/r1", "/jobs/r1/output"),
        ("/jobs/r1/output/input", "/jobs/r1/output"),
    ] {
        let r = build_dirs(Path::new(input), Path::new(output));
        assert!(
            matches!(r, Err(SpecError::NestedDirs { .. })),
            "{input} {output}: {r:?}"
        );
    }
    // Sharing a prefix of characters is not nesting.
    assert!(build_dirs(Path::new("/jobs/in"), Path::new("/jobs/input")).is_ok());
}

// ----------------------------------------------------------------------------------------------------
// Properties
// ----------------------------------------------------------------------------------------------------

/// Everything a built body must satisfy, checked field by field on the typed struct (not via audit).
fn check_invariants(
    body: &ContainerCreateBody,
    gpu: Option<&str>,
    policy: &ContainerPolicy,
    input: &str,
    output: &str,
) {
    assert!(audit(body).is_ok());
    let h = body.host_config.as_ref().unwrap();
    assert_eq!(h.privileged, Some(false));
    assert_eq!(h.network_mode.as_deref(), Some("none"));
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.cap_drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(h.cap_add.is_none());
    assert_eq!(
        h.security_opt.as_deref(),
        Some(&[NO_NEW_PRIVILEGES.to_owned()][..])
    );
    assert!(h.security_opt.iter().flatten().all(|o| !o.contains("unconfined")));
    assert!(h.pid_mode.is_none() && h.uts_mode.is_none() && h.userns_mode.is_none());
    assert_eq!(h.ipc_mode.as_deref(), Some("private"));
    assert_eq!(h.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::PRIVATE));
    assert!(h.binds.is_none() && h.volumes_from.is_none() && body.volumes.is_none());
    assert!(h.devices.iter().flatten().next().is_none());
    assert!(h.device_cgroup_rules.is_none());
    assert!(h.runtime.is_none() && h.sysctls.is_none() && h.annotations.is_none());
    assert!(h.masked_paths.is_none() && h.readonly_paths.is_none());
    assert!(h.cgroup_parent.is_none() && h.cgroup.is_none());
    assert!(h.group_add.is_none() && h.port_bindings.is_none() && h.publish_all_ports.is_none());
    assert!(body.networking_config.is_none());

    let memory = i64::try_from(policy.memory_bytes).unwrap();
    assert_eq!(h.memory, Some(memory));
    assert_eq!(h.memory_swap, Some(memory));
    assert_eq!(h.pids_limit, Some(i64::from(policy.pids_limit)));
    assert!(h.pids_limit.unwrap() > 0);
    assert_eq!(h.shm_size, Some(i64::try_from(policy.shm_bytes).unwrap()));
    assert!(h.nano_cpus.unwrap() > 0);
    assert_eq!(h.oom_kill_disable, Some(false));
    assert!(h.oom_score_adj.unwrap() > 0);
    assert_eq!(h.init, Some(true));
    assert_eq!(h.auto_remove, Some(false));
    assert_eq!(
        h.restart_policy.as_ref().unwrap().name,
        Some(RestartPolicyNameEnum::NO)
    );
    let ulimits = h.ulimits.as_ref().unwrap();
    assert_eq!(ulimits.len(), 2);
    assert_eq!(ulimits[0].name.as_deref(), Some("nofile"));
    assert_eq!(ulimits[0].soft, Some(i64::from(policy.nofile)));
    assert_eq!(ulimits[0].hard, Some(i64::from(policy.nofile)));
    assert_eq!(ulimits[1].name.as_deref(), Some("core"));
    assert_eq!((ulimits[1].soft, ulimits[1].hard), (Some(0), Some(0)));

    let tmpfs = h.tmpfs.as_ref().unwrap();
    assert_eq!(tmpfs.len(), 2);
    assert_eq!(
        tmpfs["/tmp"],
        format!("rw,nosuid,nodev,noexec,size={}", policy.tmp_bytes)
    );
    assert_eq!(
        tmpfs["/var/tmp"],
        format!("rw,nosuid,nodev,noexec,size={}", policy.var_tmp_bytes)
    );

    let mounts = h.mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 2);
    for (m, target, source, ro) in [
        (&mounts[0], "/input", input, true),
        (&mounts[1], "/output", output, false),
    ] {
        assert_eq!(m.typ, Some(MountType::BIND));
        assert_eq!(m.target.as_deref(), Some(target));
        assert_eq!(m.source.as_deref(), Some(source));
        assert_eq!(m.read_only, Some(ro));
        let o = m.bind_options.as_ref().unwrap();
        assert_eq!(o.propagation, Some(MountBindOptionsPropagationEnum::RPRIVATE));
        assert_eq!(o.create_mountpoint, None);
        assert!(m.volume_options.is_none() && m.tmpfs_options.is_none() && m.image_options.is_none());
    }

    let requests = h.device_requests.as_deref().unwrap_or(&[]);
    let env = body.env.as_ref().unwrap();
    assert!(env.contains(&"LD_PRELOAD=".to_owned()));
    let visible: Vec<&String> = env
        .iter()
        .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
        .collect();
    assert_eq!(visible.len(), 1);
    match gpu {
        Some(uuid) => {
            assert_eq!(requests.len(), 1);
            let r = &requests[0];
            assert_eq!(r.driver.as_deref(), Some("nvidia"));
            assert_eq!(r.count, None);
            assert_eq!(r.device_ids, Some(vec![uuid.to_owned()]));
            assert_eq!(
                r.capabilities,
                Some(vec![vec![
                    "gpu".to_owned(),
                    "compute".to_owned(),
                    "utility".to_owned()
                ]])
            );
            assert!(r.options.is_none());
            assert_eq!(visible[0], &format!("NVIDIA_VISIBLE_DEVICES={uuid}"));
            assert!(env.contains(&"CUDA_VISIBLE_DEVICES=0".to_owned()));
        }
        None => {
            assert!(requests.is_empty());
            assert_eq!(visible[0], "NVIDIA_VISIBLE_DEVICES=void");
            assert!(env.contains(&"CUDA_VISIBLE_DEVICES=".to_owned()));
        }
    }
    let labels = body.labels.as_ref().unwrap();
    assert_eq!(labels.len(), 3);
    assert_eq!(labels["talkhead.managed"], "true");
    assert!(check_run_id(&labels["talkhead.run"]).is_ok());
    assert!(check_run_id(&labels["talkhead.instance"]).is_ok());
    let (uid, gid) = parse_user(body.user.as_deref().unwrap()).unwrap();
    assert!(uid != 0 && gid != 0);
}

fn bytes_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        1u64..(1 << 20),
        (64u64 << 20)..(64u64 << 30),
        any::<u64>(),
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
    ]
}

/// Policies that pass validation: sizes that fit in memory, numeric non-root users.
fn valid_policy_strategy() -> impl Strategy<Value = ContainerPolicy> {
    (
        0.01f64..256.0,
        (64u64 << 20)..(1u64 << 40),
        1u32..=MAX_PIDS,
        1u32..=MAX_NOFILE,
        1u32..u32::MAX,
        1u32..u32::MAX,
        1u64..=(i64::MAX as u64),
    )
        .prop_flat_map(
            |(cpus, memory_bytes, pids_limit, nofile, uid, gid, output_bytes)| {
                (1..=memory_bytes, 1..=memory_bytes, 1..=memory_bytes).prop_map(
                    move |(shm_bytes, tmp_bytes, var_tmp_bytes)| ContainerPolicy {
                        cpus,
                        memory_bytes,
                        pids_limit,
                        shm_bytes,
                        tmp_bytes,
                        var_tmp_bytes,
                        user: format!("{uid}:{gid}"),
                        output_bytes,
                        nofile,
                    },
                )
            },
        )
}

/// Anything at all, mostly invalid.
fn arbitrary_policy_strategy() -> impl Strategy<Value = ContainerPolicy> {
    let cpus = prop_oneof![
        any::<f64>(),
        0.0f64..64.0,
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0)
    ];
    let user = prop_oneof![
        "[0-9]{1,6}:[0-9]{1,6}",
        Just("0:0".to_owned()),
        Just("65534:65534".to_owned()),
        "\\PC{0,14}",
    ];
    let small = prop_oneof![Just(0u32), 1u32..100_000, any::<u32>()];
    (
        cpus,
        bytes_strategy(),
        small.clone(),
        bytes_strategy(),
        bytes_strategy(),
        bytes_strategy(),
        user,
        bytes_strategy(),
        small,
    )
        .prop_map(
            |(
                cpus,
                memory_bytes,
                pids_limit,
                shm_bytes,
                tmp_bytes,
                var_tmp_bytes,
                user,
                output_bytes,
                nofile,
            )| {
                ContainerPolicy {
                    cpus,
                    memory_bytes,
                    pids_limit,
                    shm_bytes,
                    tmp_bytes,
                    var_tmp_bytes,
                    user,
                    output_bytes,
                    nofile,
                }
            },
        )
}

fn policy_strategy() -> impl Strategy<Value = ContainerPolicy> {
    prop_oneof![3 => valid_policy_strategy(), 1 => arbitrary_policy_strategy()]
}

fn gpu_strategy() -> impl Strategy<Value = GpuAssignment> {
    prop_oneof![
        2 => "GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
            .prop_map(|uuid| GpuAssignment::Nvidia { uuid }),
        1 => prop_oneof![
            Just("all".to_owned()),
            "GPU-[0-9a-fA-F,-]{30,40}",
            "\\PC{0,40}"
        ]
        .prop_map(|uuid| GpuAssignment::Nvidia { uuid }),
        2 => any::<u32>().prop_map(|slot| GpuAssignment::Virtual { slot }),
    ]
}

fn dir_strategy(leaf: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z0-9-]{1,12}".prop_map(move |job| format!("/var/lib/talkheadd/jobs/{job}/{leaf}")),
        1 => "(/[a-z.:,]{0,4}){0,4}",
        1 => "\\PC{0,30}",
    ]
}

fn image_strategy() -> impl Strategy<Value = ImageRef> {
    (
        prop_oneof![
            Just("miner/img"),
            Just("localhost:5000/talkhead/demo:v1"),
            Just("ghcr.io/org/sub/img:latest"),
            Just("ubuntu")
        ],
        "[0-9a-f]{64}",
    )
        .prop_map(|(name, hex)| ImageRef::parse(&format!("{name}@sha256:{hex}")).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn build_errors_or_yields_an_audited_hardened_body(
        policy in policy_strategy(),
        run_id in prop_oneof![4 => "[a-z0-9-]{1,64}", 1 => "\\PC{0,70}"],
        gpu in gpu_strategy(),
        input in dir_strategy("input"),
        output in dir_strategy("output"),
        image in image_strategy(),
    ) {
        let (input_dir, output_dir) = (PathBuf::from(&input), PathBuf::from(&output));
        let result = build(&RunSpecInput {
            run_id: &run_id,
            instance: INSTANCE,
            image: &image,
            gpu: gpu.clone(),
            input_dir: &input_dir,
            output_dir: &output_dir,
            policy: &policy,
        });
        if policy.validate().is_err() {
            prop_assert!(matches!(result, Err(SpecError::Policy(_))));
        }
        if let Ok(spec) = result {
            prop_assert_eq!(spec.name, format!("talkhead-{run_id}"));
            prop_assert_eq!(spec.body.image.clone(), Some(image.pinned()));
            let uuid = match &gpu {
                GpuAssignment::Nvidia { uuid } => Some(uuid.as_str()),
                GpuAssignment::Virtual { .. } => None,
            };
            check_invariants(&spec.body, uuid, &policy, &input, &output);
            prop_assert_eq!(
                spec.body.labels.as_ref().unwrap()["talkhead.run"].as_str(),
                run_id.as_str()
            );
            prop_assert_eq!(
                spec.body.labels.as_ref().unwrap()["talkhead.instance"].as_str(),
                INSTANCE
            );
        }
    }

    #[test]
    fn valid_inputs_always_build(
        cpus in 0.01f64..512.0,
        memory_gib in 1u64..1024,
        pids in 1u32..100_000,
        uid in 1u32..u32::MAX,
        gid in 1u32..u32::MAX,
        run_id in "[a-z0-9-]{1,64}",
        gpu in prop_oneof![
            "GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
                .prop_map(|uuid| GpuAssignment::Nvidia { uuid }),
            any::<u32>().prop_map(|slot| GpuAssignment::Virtual { slot }),
        ],
        job in "[a-z0-9_.-]{1,20}",
    ) {
        prop_assume!(job != "." && job != "..");
        let policy = ContainerPolicy {
            cpus,
            memory_bytes: memory_gib << 30,
            pids_limit: pids,
            shm_bytes: 1 << 30,
            tmp_bytes: 1 << 30,
            var_tmp_bytes: 1 << 20,
            user: format!("{uid}:{gid}"),
            ..Default::default()
        };
        let image = image();
        let input = format!("/srv/jobs/{job}/input");
        let output = format!("/srv/jobs/{job}/output");
        let spec = build(&RunSpecInput {
            run_id: &run_id,
            instance: INSTANCE,
            image: &image,
            gpu,
            input_dir: Path::new(&input),
            output_dir: Path::new(&output),
            policy: &policy,
        });
        prop_assert!(spec.is_ok(), "{:?}", spec.err());
    }

    #[test]
    fn audit_never_panics_on_arbitrary_json_bodies(body in arbitrary_body()) {
        let _ = audit(&body);
    }
}

/// Bodies deserialised from random JSON shaped like a create body (most of them invalid).
fn arbitrary_body() -> impl Strategy<Value = ContainerCreateBody> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z/:=,]{0,8}".prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("Mounts".to_owned()),
                    Just("Env".to_owned()),
                    Just("Target".to_owned()),
                    "[A-Za-z]{1,6}"
                ],
                inner,
                0..3
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    (any::<u8>(), value).prop_map(|(pick, v)| {
        let mut base = serde_json::to_value(nvidia_body()).unwrap();
        let keys = ["Env", "Labels", "User", "Image"];
        let host_keys = [
            "Mounts",
            "Tmpfs",
            "Ulimits",
            "DeviceRequests",
            "CapDrop",
            "Memory",
        ];
        let i = usize::from(pick);
        if i % 2 == 0 {
            base[keys[i / 2 % keys.len()]] = v;
        } else {
            base["HostConfig"][host_keys[i / 2 % host_keys.len()]] = v;
        }
        serde_json::from_value(base).unwrap_or_default()
    })
}

// ----------------------------------------------------------------------------------------------------
// Audit: one test per hostile mutation
// ----------------------------------------------------------------------------------------------------

#[test]
fn audit_accepts_what_build_emits() {
    assert!(audit(&nvidia_body()).is_ok());
    assert!(audit(&virtual_body()).is_ok());
}

#[test]
fn audit_refuses_an_empty_body() {
    assert!(matches!(
        audit(&ContainerCreateBody::default()),
        Err(SpecError::Audit { .. })
    ));
}

/// `mutation!(name, base, |body| ...)`: mutate a freshly built body; the audit must refuse it.
macro_rules! mutation {
    ($name:ident, $base:expr, $mutate:expr) => {
        #[test]
        fn $name() {
            let mut body: ContainerCreateBody = $base;
            let mutate: fn(&mut ContainerCreateBody) = $mutate;
            mutate(&mut body);
            match audit(&body) {
                Err(SpecError::Audit { .. }) => {}
                other => panic!("audit accepted a hostile body: {other:?}"),
            }
        }
    };
    ($name:ident, $mutate:expr) => {
        mutation!($name, nvidia_body(), $mutate);
    };
}

fn push_mount(b: &mut ContainerCreateBody, m: Mount) {
    host(b).mounts.as_mut().unwrap().push(m);
}

fn mount_mut<'b>(b: &'b mut ContainerCreateBody, target: &str) -> &'b mut Mount {
    host(b)
        .mounts
        .as_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m.target.as_deref() == Some(target))
        .unwrap()
}

fn request_mut(b: &mut ContainerCreateBody) -> &mut DeviceRequest {
    &mut host(b).device_requests.as_mut().unwrap()[0]
}

fn set_env(b: &mut ContainerCreateBody, key: &str, value: &str) {
    let env = b.env.as_mut().unwrap();
    let prefix = format!("{key}=");
    env.retain(|e| !e.starts_with(&prefix));
    env.push(format!("{key}={value}"));
}

// Privilege and capabilities.
mutation!(refuses_privileged, |b| host(b).privileged = Some(true));
mutation!(refuses_missing_privileged_flag, |b| host(b).privileged = None);
mutation!(refuses_cap_add, |b| host(b).cap_add =
    Some(vec!["SYS_ADMIN".into()]));
mutation!(refuses_empty_cap_add, |b| host(b).cap_add = Some(vec![]));
mutation!(refuses_partial_cap_drop, |b| host(b).cap_drop =
    Some(vec!["NET_RAW".into()]));
mutation!(refuses_missing_cap_drop, |b| host(b).cap_drop = None);
mutation!(refuses_writable_rootfs, |b| host(b).readonly_rootfs = Some(false));
mutation!(refuses_root_user, |b| b.user = Some("0:0".into()));
mutation!(refuses_named_root_user, |b| b.user = Some("root".into()));
mutation!(refuses_image_default_user, |b| b.user = None);
mutation!(refuses_group_add, |b| host(b).group_add = Some(vec!["0".into()]));

// Security options.
mutation!(refuses_seccomp_unconfined, |b| host(b)
    .security_opt
    .as_mut()
    .unwrap()
    .push("seccomp=unconfined".into()));
mutation!(refuses_apparmor_unconfined, |b| host(b)
    .security_opt
    .as_mut()
    .unwrap()
    .push("apparmor=unconfined".into()));
mutation!(refuses_label_disable, |b| host(b)
    .security_opt
    .as_mut()
    .unwrap()
    .push("label=disable".into()));
mutation!(refuses_systempaths_unconfined, |b| host(b)
    .security_opt
    .as_mut()
    .unwrap()
    .push("systempaths=unconfined".into()));
mutation!(refuses_missing_no_new_privileges, |b| host(b).security_opt =
    Some(vec![]));
mutation!(refuses_unmasked_proc_paths, |b| host(b).masked_paths =
    Some(vec![]));
mutation!(refuses_writable_proc_paths, |b| host(b).readonly_paths =
    Some(vec![]));
mutation!(refuses_sysctls, |b| host(b).sysctls =
    Some(HashMap::from([("kernel.shm_rmid_forced".into(), "1".into())])));
mutation!(refuses_other_runtime, |b| host(b).runtime = Some("nvidia".into()));
mutation!(refuses_annotations, |b| host(b).annotations = Some(
    HashMap::from([("cdi.k8s.io/gpu".into(), "nvidia.com/gpu=all".into())])
));

// Network and namespaces.
mutation!(refuses_host_network, |b| host(b).network_mode =
    Some("host".into()));
mutation!(refuses_bridge_network, |b| host(b).network_mode =
    Some("bridge".into()));
mutation!(refuses_container_network, |b| host(b).network_mode =
    Some("container:other".into()));
mutation!(refuses_default_network, |b| host(b).network_mode = None);
mutation!(refuses_networking_config, |b| b.networking_config =
    Some(bollard::models::NetworkingConfig {
        endpoints_config: Some(HashMap::new())
    }));
mutation!(refuses_published_ports, |b| host(b).publish_all_ports =
    Some(true));
mutation!(refuses_extra_hosts, |b| host(b).extra_hosts =
    Some(vec!["x:1.2.3.4".into()]));
mutation!(refuses_host_pid, |b| host(b).pid_mode = Some("host".into()));
mutation!(refuses_host_ipc, |b| host(b).ipc_mode = Some("host".into()));
mutation!(refuses_shareable_ipc, |b| host(b).ipc_mode =
    Some("shareable".into()));
mutation!(refuses_host_uts, |b| host(b).uts_mode = Some("host".into()));
mutation!(refuses_host_userns, |b| host(b).userns_mode = Some("host".into()));
mutation!(refuses_host_cgroupns, |b| host(b).cgroupns_mode =
    Some(HostConfigCgroupnsModeEnum::HOST));
mutation!(refuses_cgroup_parent, |b| host(b).cgroup_parent =
    Some("/".into()));

// Mounts, volumes, devices.
mutation!(refuses_extra_bind, |b| host(b).binds =
    Some(vec!["/:/host".into()]));
mutation!(refuses_extra_mount, |b| push_mount(
    b,
    Mount {
        target: Some("/host".into()),
        source: Some("/var/run".into()),
        typ: Some(MountType::BIND),
        ..Default::default()
    }
));
mutation!(refuses_docker_socket_mount, |b| {
    let m = mount_mut(b, "/output");
    m.source = Some("/var/run/docker.sock".into());
    m.target = Some("/var/run/docker.sock".into());
});
mutation!(refuses_volume_mount_type, |b| mount_mut(b, "/output").typ =
    Some(MountType::VOLUME));
mutation!(refuses_tmpfs_mount_type, |b| mount_mut(b, "/output").typ =
    Some(MountType::TMPFS));
mutation!(refuses_writable_input, |b| mount_mut(b, "/input").read_only =
    Some(false));
mutation!(refuses_input_without_read_only_flag, |b| mount_mut(b, "/input")
    .read_only = None);
mutation!(refuses_read_only_output, |b| mount_mut(b, "/output").read_only =
    Some(true));
mutation!(refuses_missing_input_mount, |b| host(b)
    .mounts
    .as_mut()
    .unwrap()
    .retain(|m| m.target.as_deref() != Some("/input")));
mutation!(refuses_duplicate_output_mount, |b| {
    let o = mount_mut(b, "/output").clone();
    let i = mount_mut(b, "/input");
    *i = o;
});
mutation!(refuses_host_root_as_input, |b| mount_mut(b, "/input").source =
    Some("/".into()));
mutation!(refuses_relative_source, |b| mount_mut(b, "/input").source =
    Some("jobs/input".into()));
mutation!(refuses_traversing_source, |b| mount_mut(b, "/input").source =
    Some("/var/lib/talkheadd/../../etc".into()));
mutation!(refuses_nested_sources, |b| mount_mut(b, "/output").source =
    Some("/var/lib/talkheadd/jobs".into()));
mutation!(refuses_shared_propagation, |b| mount_mut(b, "/output")
    .bind_options
    .as_mut()
    .unwrap()
    .propagation =
    Some(MountBindOptionsPropagationEnum::RSHARED));
mutation!(refuses_recursive_bind, |b| mount_mut(b, "/input")
    .bind_options
    .as_mut()
    .unwrap()
    .non_recursive = Some(false));
mutation!(refuses_create_mountpoint, |b| mount_mut(b, "/output")
    .bind_options
    .as_mut()
    .unwrap()
    .create_mountpoint = Some(true));
mutation!(refuses_read_only_non_recursive, |b| mount_mut(b, "/input")
    .bind_options
    .as_mut()
    .unwrap()
    .read_only_non_recursive =
    Some(true));
mutation!(refuses_volumes, |b| b.volumes = Some(vec!["/data".into()]));
mutation!(refuses_volumes_from, |b| host(b).volumes_from =
    Some(vec!["other".into()]));
mutation!(refuses_extra_tmpfs, |b| {
    host(b)
        .tmpfs
        .as_mut()
        .unwrap()
        .insert("/opt".into(), "rw,exec".into());
});
mutation!(refuses_executable_tmp, |b| {
    host(b)
        .tmpfs
        .as_mut()
        .unwrap()
        .insert("/tmp".into(), "rw,nosuid,nodev,exec,size=1024".into());
});
mutation!(refuses_unbounded_tmp, |b| {
    host(b)
        .tmpfs
        .as_mut()
        .unwrap()
        .insert("/tmp".into(), "rw,nosuid,nodev,noexec,size=0".into());
});
mutation!(refuses_tmp_without_size, |b| {
    host(b)
        .tmpfs
        .as_mut()
        .unwrap()
        .insert("/var/tmp".into(), "rw,nosuid,nodev,noexec".into());
});
mutation!(refuses_device, |b| host(b).devices =
    Some(vec![bollard::models::DeviceMapping {
        path_on_host: Some("/dev/mem".into()),
        path_in_container: Some("/dev/mem".into()),
        cgroup_permissions: Some("rwm".into()),
    }]));
mutation!(refuses_device_cgroup_rules, |b| host(b).device_cgroup_rules =
    Some(vec!["c *:* rwm".into()]));

// GPUs.
mutation!(refuses_all_gpus_by_id, |b| request_mut(b).device_ids =
    Some(vec!["all".into()]));
mutation!(refuses_all_gpus_by_count, |b| {
    let r = request_mut(b);
    r.device_ids = None;
    r.count = Some(-1);
});
mutation!(refuses_count_alongside_id, |b| request_mut(b).count = Some(1));
mutation!(refuses_two_device_ids, |b| request_mut(b)
    .device_ids
    .as_mut()
    .unwrap()
    .push("GPU-00000000-0000-0000-0000-000000000000".into()));
mutation!(refuses_device_index, |b| request_mut(b).device_ids =
    Some(vec!["0".into()]));
mutation!(refuses_two_device_requests, |b| {
    let r = request_mut(b).clone();
    host(b).device_requests.as_mut().unwrap().push(r);
});
mutation!(refuses_other_driver, |b| request_mut(b).driver =
    Some("cdi".into()));
mutation!(refuses_display_capability, |b| request_mut(b).capabilities =
    Some(vec![vec![
        "gpu".into(),
        "compute".into(),
        "utility".into(),
        "display".into()
    ]]));
mutation!(refuses_driver_options, |b| request_mut(b).options =
    Some(HashMap::from([("x".into(), "y".into())])));
mutation!(refuses_env_all_gpus, |b| set_env(
    b,
    "NVIDIA_VISIBLE_DEVICES",
    "all"
));
mutation!(refuses_env_device_mismatch, |b| set_env(
    b,
    "NVIDIA_VISIBLE_DEVICES",
    "GPU-00000000-0000-0000-0000-000000000000"
));
mutation!(refuses_env_cuda_devices, |b| set_env(
    b,
    "CUDA_VISIBLE_DEVICES",
    "0,1"
));
mutation!(refuses_env_driver_capabilities, |b| set_env(
    b,
    "NVIDIA_DRIVER_CAPABILITIES",
    "all"
));
mutation!(refuses_virtual_env_all_gpus, virtual_body(), |b| set_env(
    b,
    "NVIDIA_VISIBLE_DEVICES",
    "all"
));
mutation!(refuses_virtual_env_none, virtual_body(), |b| set_env(
    b,
    "NVIDIA_VISIBLE_DEVICES",
    "none"
));
mutation!(refuses_device_added_to_virtual_body, virtual_body(), |b| host(
    b
)
.device_requests =
    Some(vec![DeviceRequest {
        driver: Some("nvidia".into()),
        device_ids: Some(vec![UUID.into()]),
        capabilities: Some(vec![vec!["gpu".into(), "compute".into(), "utility".into()]]),
        ..Default::default()
    }]));

// Environment.
mutation!(refuses_missing_ld_preload_override, |b| b
    .env
    .as_mut()
    .unwrap()
    .retain(|e| !e.starts_with("LD_PRELOAD=")));
mutation!(refuses_ld_preload_value, |b| set_env(
    b,
    "LD_PRELOAD",
    "/tmp/x.so"
));
mutation!(refuses_extra_env, |b| b
    .env
    .as_mut()
    .unwrap()
    .push("FOO=bar".into()));
mutation!(refuses_duplicate_env, |b| b
    .env
    .as_mut()
    .unwrap()
    .push("NVIDIA_VISIBLE_DEVICES=all".into()));
mutation!(refuses_missing_env, |b| b.env = None);

// Resource limits.
mutation!(refuses_unlimited_pids, |b| host(b).pids_limit = Some(-1));
mutation!(refuses_zero_pids, |b| host(b).pids_limit = Some(0));
mutation!(refuses_missing_pids, |b| host(b).pids_limit = None);
mutation!(refuses_unlimited_swap, |b| host(b).memory_swap = Some(-1));
mutation!(refuses_swap, |b| host(b).memory_swap = Some(32 << 30));
mutation!(refuses_missing_memory, |b| {
    host(b).memory = None;
    host(b).memory_swap = None;
});
mutation!(refuses_zero_cpus, |b| host(b).nano_cpus = Some(0));
mutation!(refuses_zero_shm, |b| host(b).shm_size = Some(0));
mutation!(refuses_oom_kill_disable, |b| host(b).oom_kill_disable =
    Some(true));
mutation!(refuses_negative_oom_score, |b| host(b).oom_score_adj =
    Some(-1000));
mutation!(refuses_core_dumps, |b| host(b).ulimits.as_mut().unwrap()[1]
    .soft = Some(-1));
mutation!(refuses_unbounded_nofile, |b| {
    let u = &mut host(b).ulimits.as_mut().unwrap()[0];
    u.soft = Some(i64::MAX);
    u.hard = Some(i64::MAX);
});
mutation!(refuses_extra_ulimit, |b| host(b)
    .ulimits
    .as_mut()
    .unwrap()
    .push(ulimit("memlock", -1)));
mutation!(refuses_cpuset_override, |b| host(b).cpuset_cpus =
    Some("0-127".into()));

// Lifecycle, logs, identity.
mutation!(refuses_restart_always, |b| host(b).restart_policy =
    Some(RestartPolicy {
        name: Some(RestartPolicyNameEnum::ALWAYS),
        maximum_retry_count: None,
    }));
mutation!(refuses_auto_remove, |b| host(b).auto_remove = Some(true));
mutation!(refuses_no_init, |b| host(b).init = Some(false));
mutation!(refuses_unbounded_logs, |b| {
    let log = host(b).log_config.as_mut().unwrap();
    log.config
        .as_mut()
        .unwrap()
        .insert("max-size".into(), "100g".into());
});
mutation!(refuses_other_log_driver, |b| host(b)
    .log_config
    .as_mut()
    .unwrap()
    .typ = Some("syslog".into()));
mutation!(refuses_image_healthcheck, |b| b.healthcheck = None);
mutation!(refuses_unpinned_image, |b| b.image = Some("ubuntu:latest".into()));
mutation!(refuses_tagged_image, |b| b.image =
    Some(format!("miner/img:v1@sha256:{DIGEST}")));
mutation!(refuses_missing_run_label, |b| {
    b.labels.as_mut().unwrap().remove("talkhead.run");
});
mutation!(refuses_bad_run_label, |b| {
    b.labels
        .as_mut()
        .unwrap()
        .insert("talkhead.run".into(), "../x".into());
});
mutation!(refuses_missing_instance_label, |b| {
    b.labels.as_mut().unwrap().remove("talkhead.instance");
});
mutation!(refuses_bad_instance_label, |b| {
    b.labels
        .as_mut()
        .unwrap()
        .insert("talkhead.instance".into(), "a/b".into());
});
mutation!(refuses_extra_label, |b| {
    b.labels
        .as_mut()
        .unwrap()
        .insert("com.docker.compose.project".into(), "x".into());
});
mutation!(refuses_working_dir_change, |b| b.working_dir =
    Some("/input".into()));
mutation!(refuses_entrypoint_override, |b| b.entrypoint =
    Some(vec!["/bin/sh".into()]));
mutation!(refuses_tty, |b| b.tty = Some(true));

#[test]
fn audit_names_the_offending_field() {
    let mut body = nvidia_body();
    host(&mut body).cap_add = Some(vec!["SYS_ADMIN".into()]);
    match audit(&body) {
        Err(SpecError::Audit { field, .. }) => assert_eq!(field, "HostConfig.CapAdd"),
        other => panic!("{other:?}"),
    }
    let mut body = nvidia_body();
    mount_mut(&mut body, "/input").read_only = Some(false);
    match audit(&body) {
        Err(SpecError::Audit { field, .. }) => assert_eq!(field, "HostConfig.Mounts[/input].ReadOnly"),
        other => panic!("{other:?}"),
    }
}
