//! A real Ray head for the tests (`ray start --head` on the loopback, token authentication on), from
//! the Ray that `tests/setup.sh` installs (`/opt/talkhead-test/ray-venv`, or the `ray` program named by
//! `TALKHEADD_TEST_RAY`).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use super::common::{free_port, output_text};
use talkheadd::cluster::ray_jobs::RayJobs;
use talkheadd::cluster::token::AttemptToken;

/// A Ray head on the loopback, stopped (`ray stop --force`) when dropped.
pub struct RayHead {
    ray: PathBuf,
    /// The dashboard's (and Jobs API's) URL.
    pub address: String,
    /// The cluster's token.
    pub token: String,
    _dir: tempfile::TempDir,
}

impl RayHead {
    /// A head whose raylet has `gpus` in `CUDA_VISIBLE_DEVICES` (as many GPUs as it names), with
    /// `env` set for it and so for the jobs it runs.
    pub fn start(gpus: &[&str], env: &[(&str, &str)]) -> RayHead {
        let ray = ray_program();
        // Ray's Unix sockets live under the temp dir: keep its path short.
        let dir = tempfile::Builder::new().prefix("ray").tempdir_in("/tmp").unwrap();
        // As random as the attempts' own tokens.
        let token = AttemptToken::generate().unwrap().expose().to_owned();
        let (address, _) = start_head(&ray, dir.path(), &token, "127.0.0.1", gpus, env);
        RayHead {
            ray,
            address,
            token,
            _dir: dir,
        }
    }

    /// A client of its Jobs API with its token.
    pub fn client(&self) -> RayJobs {
        RayJobs::new(&self.address, Some(self.token.clone())).unwrap()
    }
}

impl Drop for RayHead {
    fn drop(&mut self) {
        let _ = Command::new(&self.ray).args(["stop", "--force"]).output();
    }
}

/// One GPU "host" of a [`RayHosts`] cluster: a network and UTS namespace of its own on this machine.
pub struct Host {
    /// Its network namespace (`ip netns`).
    pub netns: String,
    /// Its address on the cluster's bridge.
    pub ip: String,
    /// Its host name (what its workers report).
    pub hostname: String,
}

/// A Ray cluster of several hosts on this machine: the head in this network namespace on a bridge
/// of the cluster's own (it has no GPU: `--num-gpus 0`), and each GPU host's raylet in a network and
/// UTS namespace of its own behind a veth pair, with `gpus` in its `CUDA_VISIBLE_DEVICES` and `env`
/// set (the host's configuration). The machine's Docker engine is every host's. Torn down (every
/// process of the namespaces killed, the head stopped, links and namespaces removed) when dropped.
pub struct RayHosts {
    ray: PathBuf,
    /// The dashboard's (and Jobs API's) URL, on the bridge.
    pub address: String,
    /// The cluster's token.
    pub token: String,
    /// The head's (and this machine's) address on the bridge: what the hosts reach.
    pub bridge_ip: String,
    /// The GPU hosts.
    pub hosts: Vec<Host>,
    bridge: String,
    _dir: tempfile::TempDir,
}

/// `ip` (or another program) with `args`; it must succeed.
fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {}", output_text(&out));
}

impl RayHosts {
    /// A head and `hosts` GPU hosts, each with `gpus`.
    pub fn start(hosts: usize, gpus: &[&str], env: &[(&str, &str)]) -> RayHosts {
        let ray = ray_program();
        let dir = tempfile::Builder::new().prefix("ray").tempdir_in("/tmp").unwrap();
        let token = AttemptToken::generate().unwrap().expose().to_owned();
        // Names and a subnet of this process's own, so that a leftover of another run cannot clash.
        let n = 20 + std::process::id() % 200;
        let bridge = format!("thbr{n}");
        let subnet = format!("10.213.{n}");
        let bridge_ip = format!("{subnet}.1");
        let mut cluster = RayHosts {
            ray: ray.clone(),
            address: String::new(),
            token: token.clone(),
            bridge_ip: bridge_ip.clone(),
            hosts: Vec::new(),
            bridge: bridge.clone(),
            _dir: dir,
        };
        sh("ip", &["link", "add", &bridge, "type", "bridge"]);
        sh("ip", &["addr", "add", &format!("{bridge_ip}/24"), "dev", &bridge]);
        sh("ip", &["link", "set", &bridge, "up"]);
        // Docker's FORWARD policy drops bridged traffic between the hosts otherwise.
        let _ = Command::new("iptables")
            .args(["-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])
            .output();
        for i in 1..=hosts {
            let netns = format!("th{n}h{i}");
            let (outer, inner) = (format!("th{n}v{i}"), format!("th{n}p{i}"));
            let ip = format!("{subnet}.{}", i + 1);
            sh("ip", &["netns", "add", &netns]);
            cluster.hosts.push(Host {
                netns: netns.clone(),
                ip: ip.clone(),
                hostname: format!("gpu-host-{i}"),
            });
            sh(
                "ip",
                &["link", "add", &outer, "type", "veth", "peer", "name", &inner],
            );
            sh("ip", &["link", "set", &inner, "netns", &netns]);
            sh("ip", &["link", "set", &outer, "master", &bridge, "up"]);
            let in_ns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &netns, "ip"];
                all.extend_from_slice(args);
                sh("ip", &all);
            };
            in_ns(&["link", "set", "lo", "up"]);
            in_ns(&["addr", "add", &format!("{ip}/24"), "dev", &inner]);
            in_ns(&["link", "set", &inner, "up"]);
            in_ns(&["route", "add", "default", "via", &bridge_ip]);
        }
        // No GPU on the head: jobs go to the hosts.
        let (address, gcs) = start_head(&ray, cluster._dir.path(), &token, &bridge_ip, &[], &[]);
        cluster.address = address;
        for host in &cluster.hosts {
            // Ray gives a node 30 s to register, hard-coded; on a loaded 2-core machine a raylet can
            // miss that. A host that missed it is cleared and started again.
            let mut tries = Vec::new();
            loop {
                // Its own host name (UTS namespace), so that its workers report which host they ran on.
                let out = Command::new("ip")
                    .args(["netns", "exec", &host.netns, "unshare", "--uts", "--"])
                    .args([
                        "sh",
                        "-c",
                        "hostname \"$1\" && shift && exec \"$@\"",
                        "sh",
                        &host.hostname,
                    ])
                    .arg(&ray)
                    .args(["start", "--disable-usage-stats", "--num-cpus", "2"])
                    .args(["--num-gpus", &gpus.len().to_string()])
                    .args([
                        "--address",
                        &format!("{bridge_ip}:{gcs}"),
                        "--node-ip-address",
                        &host.ip,
                    ])
                    .env("RAY_AUTH_MODE", "token")
                    .env("RAY_AUTH_TOKEN", &token)
                    .env("CUDA_VISIBLE_DEVICES", gpus.join(","))
                    .envs(env.iter().copied())
                    .output()
                    .unwrap();
                if out.status.success() {
                    break;
                }
                tries.push(output_text(&out));
                assert!(
                    tries.len() < 3,
                    "ray start on {}: {}",
                    host.hostname,
                    tries.join("\n---\n")
                );
                RayHosts::kill(host);
            }
        }
        cluster
    }

    /// A client of its Jobs API with its token.
    pub fn client(&self) -> RayJobs {
        RayJobs::new(&self.address, Some(self.token.clone())).unwrap()
    }

    /// Every process running in `host`'s network namespace.
    pub fn processes(host: &Host) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &host.netns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The host is lost: every process in its namespace (its raylet, its jobs, their workers) is
    /// killed at once, as a power cut would.
    pub fn kill(host: &Host) {
        for pid in RayHosts::processes(host) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for RayHosts {
    fn drop(&mut self) {
        for host in &self.hosts {
            RayHosts::kill(host);
        }
        let _ = Command::new(&self.ray).args(["stop", "--force"]).output();
        for host in &self.hosts {
            let _ = Command::new("ip").args(["netns", "delete", &host.netns]).output();
        }
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).output();
        let _ = Command::new("iptables")
            .args([
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ])
            .output();
    }
}

/// `ray start --head` on `ip` with `gpus` in its raylet's `CUDA_VISIBLE_DEVICES`, `env` set, token
/// authentication with `token` and its files under `dir`: its dashboard URL and its GCS port.
fn start_head(
    ray: &std::path::Path,
    dir: &std::path::Path,
    token: &str,
    ip: &str,
    gpus: &[&str],
    env: &[(&str, &str)],
) -> (String, u16) {
    let (dashboard, gcs) = (free_port(), free_port());
    let out = Command::new(ray)
        .args(["start", "--head", "--disable-usage-stats", "--num-cpus", "4"])
        .args(["--num-gpus", &gpus.len().to_string()])
        .args(["--node-ip-address", ip, "--dashboard-host", ip])
        .args([
            "--dashboard-port",
            &dashboard.to_string(),
            "--port",
            &gcs.to_string(),
        ])
        .arg("--temp-dir")
        .arg(dir)
        .env("RAY_AUTH_MODE", "token")
        .env("RAY_AUTH_TOKEN", token)
        .env("CUDA_VISIBLE_DEVICES", gpus.join(","))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "ray start --head: {}", output_text(&out));
    (format!("http://{ip}:{dashboard}"), gcs)
}

/// A GPU host's configuration for `talkheadd worker` (its `TALKHEADD_CONFIG`), in `dir`: `slots`
/// virtual GPU slots (`virtual-0`…, named as Ray hands them out), the small test evaluation.
pub fn gpu_host_config(dir: &std::path::Path, slots: usize) -> PathBuf {
    let config = super::common::small_evaluation_config(dir, 1, 2);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("virtual = 1", &format!("virtual = {slots}"));
    std::fs::write(&config, text).unwrap();
    config
}

/// The `ray` program of `tests/setup.sh` (or `TALKHEADD_TEST_RAY`).
fn ray_program() -> PathBuf {
    let ray = std::env::var_os("TALKHEADD_TEST_RAY").map_or_else(
        || PathBuf::from("/opt/talkhead-test/ray-venv/bin/ray"),
        PathBuf::from,
    );
    assert!(ray.is_file(), "{} missing: run tests/setup.sh", ray.display());
    ray
}

/// The `[cluster]` table of a coordinator of the cluster at `address` (its token written to
/// `dir/ray-token`, mode 0600), its workers' listener on a free port of `ip`, with `extra` keys.
pub fn cluster_table(dir: &std::path::Path, address: &str, token: &str, ip: &str, extra: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let file = dir.join("ray-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    format!(
        "[cluster]\nengine = \"ray\"\nray_address = \"{address}\"\nray_token_file = \"{}\"\n\
         listen = \"{ip}:{port}\"\nadvertise_url = \"http://{ip}:{port}\"\n{extra}",
        file.display()
    )
}

impl RayHosts {
    /// Block until the cluster has at least `gpus` GPUs (every host joined).
    pub fn wait_for_gpus(&self, gpus: f64) {
        let client = self.client();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let seen = rt
                .block_on(client.resources())
                .ok()
                .and_then(|r| r.get("GPU").copied());
            if seen.is_some_and(|g| g.total >= gpus) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the hosts never joined: {seen:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
}
