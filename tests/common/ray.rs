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
        let ray = std::env::var_os("TALKHEADD_TEST_RAY").map_or_else(
            || PathBuf::from("/opt/talkhead-test/ray-venv/bin/ray"),
            PathBuf::from,
        );
        assert!(ray.is_file(), "{} missing: run tests/setup.sh", ray.display());
        // Ray's Unix sockets live under the temp dir: keep its path short.
        let dir = tempfile::Builder::new().prefix("ray").tempdir_in("/tmp").unwrap();
        // As random as the attempts' own tokens.
        let token = AttemptToken::generate().unwrap().expose().to_owned();
        let (dashboard, gcs) = (free_port(), free_port());
        let out = Command::new(&ray)
            .args([
                "start",
                "--head",
                "--disable-usage-stats",
                "--num-cpus",
                "4",
                "--num-gpus",
                &gpus.len().to_string(),
            ])
            .args([
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                &dashboard.to_string(),
            ])
            .args(["--port", &gcs.to_string(), "--temp-dir"])
            .arg(dir.path())
            .env("RAY_AUTH_MODE", "token")
            .env("RAY_AUTH_TOKEN", &token)
            .env("CUDA_VISIBLE_DEVICES", gpus.join(","))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "ray start: {}", output_text(&out));
        RayHead {
            ray,
            address: format!("http://127.0.0.1:{dashboard}"),
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
