//! The admin plane end to end: the real daemon serving gRPC on a real Unix socket and the real
//! `talkheadctl` binary, run as root and as unprivileged uids (setpriv) so that authorisation by peer
//! credentials is what the kernel reports. Covers every call, human and JSON output, exit codes, and
//! the watch stream over a whole evaluation, resumed after a disconnect.
//!
//! Needs root (to run the client as other uids), setpriv (util-linux), and for the watch test dockerd
//! and the local registry (`tests/setup.sh`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/images.rs"]
mod images;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HK_A: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const HK_B: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

fn image(d: char) -> String {
    format!("127.0.0.1:5000/talkhead/m@sha256:{}", d.to_string().repeat(64))
}

/// `talkheadctl`, copied where every uid may execute it (the build tree may be private to root).
fn ctl_binary(dir: &Path) -> PathBuf {
    let built = Path::new(bin()).with_file_name("talkheadctl");
    assert!(
        built.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds talkheadctl)",
        built.display()
    );
    let copy = dir.join("talkheadctl");
    // Copied by a child process, never through a descriptor of ours: a test thread forking meanwhile
    // (every test starts processes) would inherit our write descriptor until its exec, and running the
    // copy then fails with ETXTBSY ("Text file busy"), as a test run here once did.
    let copied = std::process::Command::new("cp")
        .arg(&built)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success(), "cp {} {}", built.display(), copy.display());
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// A directory every uid can traverse, for the socket and the client binary.
fn public_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

struct Ctl {
    bin: PathBuf,
    socket: PathBuf,
}

impl Ctl {
    /// `cmd` pointed at this daemon, without colour, with `args`; run to completion.
    fn output(&self, cmd: &mut Command, args: &[&str]) -> Output {
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--color")
            .arg("never")
            .args(args)
            .output()
            .unwrap()
    }

    /// Run as root.
    fn run(&self, args: &[&str]) -> Output {
        self.output(&mut Command::new(&self.bin), args)
    }

    /// Sequence numbers of the `count` events after `after`, from `watch --json` (which then exits).
    fn watch_seqs(&self, after: u64, count: u64) -> Vec<u64> {
        let out = self.run(&[
            "--json",
            "watch",
            "--after",
            &after.to_string(),
            "--count",
            &count.to_string(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    /// Run as `uid:gid` with exactly the supplementary `groups`.
    fn run_as(&self, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}"));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", list.join(",")));
        }
        cmd.arg(&self.bin);
        self.output(&mut cmd, args)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(code(o), 0, "stderr: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the admin tests run the client as other uids and need root (CI runs as root)"
    );
}

/// A daemon serving the API only, its socket in a public directory.
/// The daemon and the setup whose directory it lives in (kept alive as long as the daemon).
fn daemon(socket_dir: &Path, admin: &str) -> (Setup, Daemon) {
    let mut setup = Setup::new("[auth]\nrequire_signature = false\n");
    setup.admin = admin.to_owned();
    setup.admin_socket = Some(socket_dir.join("admin.sock"));
    let d = Daemon::start(&setup);
    (setup, d)
}

#[test]
fn every_call_works_for_root_with_tables_json_and_exit_codes() {
    require_root();
    let public = public_dir();
    let (_setup, d) = daemon(public.path(), "");
    let ctl = Ctl {
        bin: ctl_binary(public.path()),
        socket: public.path().join("admin.sock"),
    };
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&[
        (HK_A, image('a'), 1_700_000_000.0),
        (HK_B, image('b'), 1_700_000_100.0),
    ])));
    assert_eq!(r.status, 200);

    // status
    let s = json(&ctl.run(&["--json", "status"]));
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["round"], 1);
    assert_eq!(s["round_total"], 2);
    assert_eq!(s["queue_length"], 2);
    assert_eq!(s["paused"], false);
    assert_eq!(s["config_digest"].as_str().unwrap().len(), 64);
    let human = stdout(&ctl.run(&["status"]));
    assert!(
        human.contains("round            1: 0/2 evaluated, 2 queued"),
        "{human}"
    );
    // No evaluation loop here: no scheduler decision to show.
    assert!(s["scheduler"].is_null(), "{s}");
    assert!(human.contains("no decision yet"), "{human}");

    // miners: the human table, exactly
    let miners = ctl.run(&["miners"]);
    assert_eq!(code(&miners), 0, "{}", stderr(&miners));
    let expected = format!(
        " HOTKEY                                            STATE    VERDICT  SCORE  SUBMITTED            IMAGE\n \
         {HK_B}  pending           -      2023-11-14 22:15:00  {}\n \
         {HK_A}  pending           -      2023-11-14 22:13:20  {}\n",
        image('b'),
        image('a')
    );
    assert_eq!(stdout(&miners), expected);
    let list = json(&ctl.run(&["--json", "miners", "--state", "pending"]));
    assert_eq!(list["miners"].as_array().unwrap().len(), 2);
    let none = json(&ctl.run(&["--json", "miners", "--state", "committed"]));
    assert!(none["miners"].as_array().is_none_or(Vec::is_empty), "{none}");
    assert_eq!(code(&ctl.run(&["miners", "--verdict", "not_a_verdict"])), 2);

    // one miner; unknown and malformed hotkeys
    let m = json(&ctl.run(&["--json", "miner", HK_A]));
    assert_eq!(m["summary"]["hotkey"], HK_A);
    assert_eq!(m["summary"]["state"], "pending");
    let unknown = ctl.run(&["miner", "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"]);
    assert_eq!(code(&unknown), 4, "{}", stderr(&unknown));
    assert_eq!(code(&ctl.run(&["miner", "nonsense"])), 2);

    // runs: none yet; an unknown run is "not found"
    let runs = json(&ctl.run(&["--json", "runs"]));
    assert!(runs["runs"].as_array().is_none_or(Vec::is_empty));
    assert_eq!(code(&ctl.run(&["run", "run-nope"])), 4);

    // scores: nothing committed yet
    let scores = json(&ctl.run(&["--json", "scores"]));
    assert_eq!(scores["metrics_version"], 0);

    // block / blocks / unblock (persisted), with the miner table marking it
    let digest = format!("sha256:{}", "b".repeat(64));
    let b = ctl.run(&["block", &digest, "--reason", "copied weights"]);
    assert_eq!(code(&b), 0, "{}", stderr(&b));
    assert!(stdout(&b).contains("image_rejected"));
    assert!(stdout(&ctl.run(&["block", &digest])).contains("already blocked"));
    let blocks = json(&ctl.run(&["--json", "blocks"]));
    assert_eq!(blocks["blocks"][0]["value"], digest.as_str());
    assert!(stdout(&ctl.run(&["miners"])).contains("pending (blocked)"));
    assert_eq!(code(&ctl.run(&["block", "sha256:xyz"])), 2);
    assert_eq!(code(&ctl.run(&["unblock", &digest])), 0);
    assert_eq!(code(&ctl.run(&["unblock", &digest])), 4);

    // pause / resume are reported and visible in status
    assert!(stdout(&ctl.run(&["pause"])).contains("paused"));
    assert_eq!(json(&ctl.run(&["--json", "status"]))["paused"], true);
    assert!(stdout(&ctl.run(&["pause"])).contains("already"));
    assert_eq!(json(&ctl.run(&["--json", "resume"]))["changed"], true);

    // re-evaluating a miner that is already pending changes nothing
    assert_eq!(json(&ctl.run(&["--json", "reevaluate", HK_A]))["changed"], false);

    // reload: an edited allow-list applies, an HTTP change needs a restart; a broken file changes nothing
    let config = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(
        &d.config,
        config.replace(
            "[auth]\nrequire_signature = false\n",
            &format!("[auth]\nrequire_signature = false\nallowed_hotkeys = [\"{HK_A}\"]\n"),
        ) + "",
    )
    .unwrap();
    let reload = json(&ctl.run(&["--json", "reload"]));
    assert_eq!(
        reload["applied"],
        serde_json::json!(["auth.allowed_hotkeys"]),
        "{reload}"
    );
    std::fs::write(&d.config, "[http]\nnot_a_key = 1\n").unwrap();
    let broken = ctl.run(&["reload"]);
    assert_eq!(code(&broken), 2, "{}", stderr(&broken));
    assert!(stderr(&broken).contains("not_a_key"), "{}", stderr(&broken));

    // GPU drain on an API-only daemon names the GPU it cannot find
    let drain = ctl.run(&["gpu", "drain", "GPU-none"]);
    assert_ne!(code(&drain), 0);

    // version reports both sides
    let v = stdout(&ctl.run(&["version"]));
    assert!(v.contains("talkheadctl ") && v.contains("talkheadd "), "{v}");

    // the daemon gone: unreachable (3) with advice
    drop(d);
    let gone = ctl.run(&["status"]);
    assert_eq!(code(&gone), 3);
    assert!(
        stderr(&gone).contains("systemctl status talkheadd"),
        "{}",
        stderr(&gone)
    );
}

#[test]
fn peer_credentials_decide_who_may_read_and_who_may_control() {
    require_root();
    // Groups every Debian system has: `adm` (4) controls, `nogroup` (65534) reads. The socket is
    // world-connectable here so that the refusal comes from the peer-credential check itself.
    let adm = nix::unistd::Group::from_name("adm")
        .unwrap()
        .expect("group adm")
        .gid
        .as_raw();
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("group nogroup")
        .gid
        .as_raw();
    let public = public_dir();
    let (_setup, d) = daemon(
        public.path(),
        "group = \"adm\"\nread_group = \"nogroup\"\nsocket_mode = \"0666\"\n",
    );
    let ctl = Ctl {
        bin: ctl_binary(public.path()),
        socket: public.path().join("admin.sock"),
    };
    let stranger = 54_321;

    // A stranger can neither read nor control, and is told which rule refused it.
    let read = ctl.run_as(stranger, stranger, &[], &["status"]);
    assert_eq!(code(&read), 5, "{}", stderr(&read));
    assert!(stderr(&read).contains("admin.read_group"), "{}", stderr(&read));
    assert_eq!(code(&ctl.run_as(stranger, stranger, &[], &["pause"])), 5);

    // A member of the read group (as primary or supplementary group) reads but cannot control.
    for (gid, groups) in [(nogroup, vec![]), (stranger, vec![nogroup])] {
        let ok = ctl.run_as(stranger, gid, &groups, &["--json", "status"]);
        assert_eq!(code(&ok), 0, "{}", stderr(&ok));
        let denied = ctl.run_as(stranger, gid, &groups, &["pause"]);
        assert_eq!(code(&denied), 5, "{}", stderr(&denied));
        assert!(
            stderr(&denied).contains("'adm' (admin.group)"),
            "{}",
            stderr(&denied)
        );
    }
    assert_eq!(
        json(&ctl.run(&["--json", "status"]))["paused"],
        false,
        "nothing was paused"
    );

    // A member of the admin group controls.
    let pause = ctl.run_as(stranger, stranger, &[adm], &["pause"]);
    assert_eq!(code(&pause), 0, "{}", stderr(&pause));
    assert_eq!(json(&ctl.run(&["--json", "status"]))["paused"], true);

    // Root controls.
    assert_eq!(code(&ctl.run(&["resume"])), 0);
    drop(d);
}

#[test]
fn the_default_socket_mode_keeps_strangers_out_at_the_file() {
    require_root();
    let public = public_dir();
    let (_setup, d) = daemon(public.path(), "");
    let socket = public.path().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is created 0660 through the umask");
    let ctl = Ctl {
        bin: ctl_binary(public.path()),
        socket,
    };
    let refused = ctl.run_as(54_321, 54_321, &[], &["status"]);
    assert_eq!(code(&refused), 5, "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("permission denied"),
        "{}",
        stderr(&refused)
    );
    drop(d);
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let public = public_dir();
    let (_setup, d) = daemon(public.path(), "");
    let mut setup = Setup::new("[auth]\nrequire_signature = false\n");
    setup.admin_socket = Some(public.path().join("admin.sock"));
    let out = Command::new(bin())
        .arg("--config")
        .arg(setup.write_config(free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another talkheadd is already serving the admin socket"),
        "{err}"
    );
    // The first one is unharmed.
    assert_eq!(d.request(&HttpRequest::new("GET", "/healthz")).status, 200);
}

/// Events of one whole evaluation, in order, through `watch`; a client that disconnects mid-stream
/// and resumes after the last event it saw gets the rest exactly once.
#[test]
fn watch_streams_a_whole_run_in_order_and_resumes_without_gap_or_repeat() {
    require_root();
    let fixtures = fixtures();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pushed = rt
        .block_on(images::build_and_push_miner_with(
            images::Behaviour::Good,
            &[],
            &fixtures,
        ))
        .unwrap();
    let public = public_dir();
    let mut setup = Setup::new(&format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\nchallenges_dir = \"{}\"\nwarmup_count = 1\nscoring_count = 2\nready_timeout_secs = 30\n\
         challenge_timeout_secs = 10\nwork_dir = \"{}\"\n[gpu]\nvirtual = 1\n\
         [container]\ncpus = 1.0\nmemory_bytes = 536870912\nshm_bytes = 67108864\ntmp_bytes = 67108864\nvar_tmp_bytes = 16777216\noutput_bytes = 67108864\n",
        fixtures.display(),
        public.path().join("jobs").display()
    ));
    setup.admin_socket = Some(public.path().join("admin.sock"));
    let mut d = Daemon::start(&setup);
    let ctl = Ctl {
        bin: ctl_binary(public.path()),
        socket: public.path().join("admin.sock"),
    };
    // Pause so that the watcher is attached before anything happens.
    assert_eq!(code(&ctl.run(&["pause"])), 0);
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&[(
        HK_A,
        pushed.reference.clone(),
        1.0,
    )])));
    assert_eq!(r.status, 200);
    // The paused loop's decision, as status shows it: the miner held back, and why.
    d.wait_for("evaluation paused: 1 miners pending");
    let status = json(&ctl.run(&["--json", "status"]));
    let scheduler = &status["scheduler"];
    assert_eq!(scheduler["summary"], "paused", "{status}");
    assert_eq!(scheduler["held"][0]["hotkey"], HK_A, "{status}");
    assert_eq!(scheduler["held"][0]["reason"], "paused", "{status}");
    let human = stdout(&ctl.run(&["status"]));
    assert!(
        human.contains("scheduler        paused") && human.contains("HELD BACK"),
        "{human}"
    );
    let after = status["last_event_seq"].as_u64().unwrap();
    // run_started, stage start/ready/challenges, 3 challenges, stage analysis, verdict, round_committed
    let total = 10;
    let watcher = Command::new(&ctl.bin)
        .args([
            "--socket",
            ctl.socket.to_str().unwrap(),
            "--json",
            "watch",
            "--count",
            &total.to_string(),
        ])
        .args(["--after", &after.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(code(&ctl.run(&["resume"])), 0);
    let out = watcher.wait_with_output().unwrap();
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| {
            let kind = e["kind"].as_object().unwrap();
            let (name, body) = kind.iter().next().unwrap();
            match name.as_str() {
                "StageChanged" => format!("stage:{}", body["stage"].as_str().unwrap()),
                "Verdict" => format!("verdict:{}", body["verdict"].as_str().unwrap()),
                other => other.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "RunStarted",
            "stage:start",
            "stage:ready",
            "stage:challenges",
            "ChallengeFinished",
            "ChallengeFinished",
            "ChallengeFinished",
            "stage:analysis",
            "verdict:ok",
            "RoundCommitted"
        ],
        "{events:#?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "consecutive: {seqs:?}");
    d.wait_for("round 1 committed");

    // Disconnect after 4 events, then resume after the last one seen: the rest, exactly once.
    let first = ctl.watch_seqs(after, 4);
    assert_eq!(first, seqs[..4]);
    let rest = ctl.watch_seqs(first[3], 6);
    assert_eq!(rest, seqs[4..]);

    // And the committed ranking matches /metrics.
    let scores = json(&ctl.run(&["--json", "scores"]));
    assert_eq!(scores["rows"][0]["hotkey"], HK_A);
    let metrics = d.request(&HttpRequest::new("GET", "/metrics")).json();
    assert_eq!(
        scores["rows"][0]["final_score"],
        metrics[0]["metrics"]["final_score"]
    );

    // A second hotkey submitting the same digest later is a duplicate (first_wins, the default): it
    // is settled without a container and the original keeps its score.
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&[(
        HK_B,
        pushed.reference.clone(),
        2.0,
    )])));
    assert_eq!(r.status, 200);
    d.wait_for_within("round 2 committed", std::time::Duration::from_secs(180));
    let b = json(&ctl.run(&["--json", "miner", HK_B]));
    assert_eq!(b["summary"]["verdict"], "duplicate", "{b}");
    let committed: serde_json::Value =
        serde_json::from_str(b["committed_metrics_json"].as_str().unwrap()).unwrap();
    assert!(committed["error"].as_str().unwrap().contains(HK_A), "{committed}");
    assert!(
        b["runs"][0]["stage_seconds"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "no container ran: {b}"
    );
    let scores = json(&ctl.run(&["--json", "scores"]));
    assert_eq!(scores["rows"][0]["hotkey"], HK_A);
    assert_eq!(scores["rows"][0]["verdict"], "ok");

    // An operator block: the next evaluation of HK_A is image_rejected with the operator's reason,
    // without pulling or running the image. Rounds follow each other at once (reevaluate = "all"), so
    // the run of the round under way may predate the block: look at the next two commits.
    assert_eq!(code(&ctl.run(&["block", HK_A, "--reason", "weights copied"])), 0);
    let rejected = (3..=4).any(|round| {
        d.wait_for_within(
            &format!("round {round} committed"),
            std::time::Duration::from_secs(180),
        );
        let a = json(&ctl.run(&["--json", "miner", HK_A]));
        a["summary"]["verdict"] == "image_rejected"
    });
    assert!(rejected, "HK_A was not rejected after the block");
    let run =
        &json(&ctl.run(&["--json", "runs", "--hotkey", HK_A, "--verdict", "image_rejected"]))["runs"][0];
    assert!(
        run["reason"].as_str().unwrap().contains("weights copied"),
        "{run}"
    );
    assert!(
        run["stage_seconds"]
            .as_object()
            .is_none_or(|m| !m.contains_key("pull")),
        "nothing pulled: {run}"
    );
}

/// Under systemd the admin socket comes from `talkheadd.socket` (LISTEN_FDS, name `admin`): the daemon
/// serves on it and never binds `admin.socket` itself. `systemd-socket-activate` plays systemd's part.
#[test]
fn a_socket_passed_by_systemd_is_served_instead_of_binding_one() {
    let public = public_dir();
    let activated = public.path().join("activated.sock");
    let mut setup = Setup::new("[auth]\nrequire_signature = false\n");
    let configured = public.path().join("configured.sock");
    setup.admin_socket = Some(configured.clone());
    let config = setup.write_config(free_port());
    let mut launcher = Command::new("systemd-socket-activate")
        .arg(format!("--listen={}", activated.display()))
        .arg("--fdname=admin")
        .arg(bin())
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd; tests/setup.sh installs it)");
    // It says when it listens; then the first connection starts the daemon (it execs in place, so
    // killing the launcher's pid stops the daemon).
    let mut stderr = std::io::BufReader::new(launcher.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Listening on") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0,
            "systemd-socket-activate ended before listening"
        );
    }
    let ctl = Ctl {
        bin: ctl_binary(public.path()),
        socket: activated.clone(),
    };
    let status = ctl.run(&["--json", "status"]);
    let _ = launcher.kill();
    let _ = launcher.wait();
    assert_eq!(json(&status)["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        !configured.exists(),
        "admin.socket must not be bound when systemd passes one"
    );
}
