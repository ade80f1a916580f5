//! The `talkheadd` command line: version, check-config, print-config, exit 78 on bad configuration,
//! and a start on embedded defaults with no configuration file at all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use std::process::{Command, Output};

fn talkheadd(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("TALKHEADD_CONFIG")
        .env_remove("PORT")
        .env_remove("STATE_FILE")
        .env_remove("SUBNET_API_URL")
        .output()
        .unwrap()
}

#[test]
fn version_names_the_package_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = talkheadd(&["--version"], dir.path());
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("talkheadd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_configurations_exit_78_naming_file_key_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "unknown.toml",
            "[http]\nlisten_address = \"127.0.0.1:1\"\n",
            "key `http.listen_address`: unknown field",
        ),
        (
            "negative.toml",
            "[evaluation]\nchallenge_timeout_secs = -1\n",
            "key `evaluation.challenge_timeout_secs`: must be between 1 and 86400 (got -1)",
        ),
        (
            "port0.toml",
            "[http]\nlisten = \"127.0.0.1:0\"\n",
            "key `http.listen`: port 0 is not allowed",
        ),
        (
            "type.toml",
            "[auth]\nmax_skew_secs = \"2m\"\n",
            "key `auth.max_skew_secs`: invalid type",
        ),
        (
            "path.toml",
            "[store]\npath = \"/no/such/dir/state.db\"\n",
            "key `store.path`: directory /no/such/dir is not accessible",
        ),
        ("notoml.toml", "[http\n", "key `(document)`"),
    ];
    for (name, body, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        for args in [
            vec!["--config", path.to_str().unwrap()],
            vec!["--config", path.to_str().unwrap(), "check-config"],
        ] {
            let out = talkheadd(&args, dir.path());
            assert_eq!(
                out.status.code(),
                Some(78),
                "{name} {args:?}: {}",
                output_text(&out)
            );
            let t = output_text(&out);
            assert!(t.contains(path.to_str().unwrap()), "{name}: file not named: {t}");
            assert!(t.contains(expected), "{name}: expected '{expected}' in: {t}");
        }
    }
    // TALKHEADD_CONFIG names the file like --config does.
    let out = Command::new(bin())
        .arg("check-config")
        .env("TALKHEADD_CONFIG", dir.path().join("port0.toml"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let out = talkheadd(
        &["--config", dir.path().join("absent.toml").to_str().unwrap()],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(
        output_text(&out).contains("absent.toml: cannot read configuration file"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn check_and_print_config_on_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        "[evaluation]\nsubnet_api_url = \"https://user:secret@subnet.example\"\n",
    )
    .unwrap();
    let out = talkheadd(&["--config", path.to_str().unwrap(), "check-config"], dir.path());
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains("configuration OK"));
    let out = talkheadd(&["--config", path.to_str().unwrap(), "print-config"], dir.path());
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !printed.contains("secret"),
        "print-config leaked a credential:\n{printed}"
    );
    assert!(printed.contains("https://<redacted>@subnet.example"));
    assert!(printed.contains("listen = \"127.0.0.1:8000\""));
    assert!(printed.contains("[scoring]"));
}

#[test]
fn embedded_defaults_need_nvml_or_virtual_slots() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // No --config and no file at the default path: embedded defaults, with the reference's PORT variable
    // choosing a free port (the default 8000 may be taken on a shared machine).
    assert!(!std::path::Path::new(talkheadd::config::DEFAULT_CONFIG_PATH).exists());
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir.path()).env("PORT", port.to_string());
    if nvml_wrapper::Nvml::init().is_err() {
        // No NVML here: refusing is the contract (exit 78), naming both ways out.
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(78));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("NVML") && err.contains("gpu.virtual"), "{err}");
        assert!(!dir.path().join("state.db-lock").exists() || dir.path().join("state.db").is_file());
        return;
    }
    let state = dir.path().join("state.db");
    let mut d = Daemon::spawn(
        &mut cmd,
        dir.path().to_path_buf(),
        state.clone(),
        dir.path().join("none"),
        port,
    );
    d.notifications.retain(|n| n.contains("READY=1"));
    assert!(
        d.notifications[0].contains(&format!("127.0.0.1:{port}")),
        "{:?}",
        d.notifications
    );
    assert!(d.log().contains("embedded defaults"), "{}", d.log());
    let r = d.request(&HttpRequest::new("GET", "/healthz"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    // The reference's default state file, in the working directory.
    assert!(state.is_file(), "state.db not created in the working directory");
    assert!(d.stop().success());
}

#[test]
fn embedded_defaults_with_virtual_slots_serve_the_api() {
    // The same embedded defaults plus the one key a GPU-less host needs, as a drop-in-free file.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("only-gpu.toml");
    std::fs::write(
        &config,
        format!(
            "[gpu]\nvirtual = 1\n[admin]\nsocket = \"{}\"\n",
            dir.path().join("admin.sock").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    cmd.current_dir(dir.path())
        .env("PORT", port.to_string())
        .arg("--config")
        .arg(&config);
    let state = dir.path().join("state.db");
    let mut d = Daemon::spawn(&mut cmd, dir.path().to_path_buf(), state.clone(), config, port);
    d.notifications.retain(|n| n.contains("READY=1"));
    assert!(
        d.notifications[0].contains(&format!("127.0.0.1:{port}")),
        "{:?}",
        d.notifications
    );
    assert_eq!(d.request(&HttpRequest::new("GET", "/healthz")).status, 200);
    // The reference's default state file, in the working directory.
    assert!(state.is_file(), "state.db not created in the working directory");
    assert!(d.stop().success());
}
