//! talkheadctl without a daemon: usage errors, the unreachable-daemon exit code and advice, and the
//! man page and completions the build generates from the CLI definition.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn ctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_talkheadctl"));
    c.env_remove("TALKHEAD_SOCKET");
    c
}

#[test]
fn usage_errors_exit_2() {
    let out = ctl().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ctl().args(["miners", "--state", "sideways"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_absent_daemon_exits_3_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let out = ctl().arg("--socket").arg(&socket).arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach talkheadd at {}", socket.display())),
        "{err}"
    );
    assert!(err.contains("systemctl status talkheadd"), "{err}");
    // A socket nobody serves (a crashed daemon's leftover) is the same.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let out = ctl()
        .env("TALKHEAD_SOCKET", &socket)
        .arg("runs")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `version` still answers for the client.
    let out = ctl()
        .arg("--socket")
        .arg(&socket)
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_build_generated_the_man_page_and_completions() {
    // OUT_DIR of the build script is not visible here; its copy under <target>/assets/ctl is.
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_talkheadctl"));
    let assets = exe.ancestors().nth(2).unwrap().join("assets/ctl");
    let man = std::fs::read_to_string(assets.join("man/talkheadctl.1")).unwrap();
    assert!(man.contains(".TH talkheadctl"), "{man}");
    assert!(man.contains("watch"));
    assert!(assets.join("man/talkheadctl-watch.1").exists());
    let bash = std::fs::read_to_string(assets.join("completions/talkheadctl.bash")).unwrap();
    assert!(bash.contains("reevaluate"));
    assert!(assets.join("completions/_talkheadctl").exists());
    assert!(assets.join("completions/talkheadctl.fish").exists());
}
