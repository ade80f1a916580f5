//! The demo (the README's first command): builds the demo miners from the project's test miner,
//! pushes them to the local registry, starts the real `talkheadd` on the bundled challenges, submits
//! the miners by digest through `POST /update`, waits for the round to commit and prints the ranking
//! exactly as the winner selection orders it.
//!
//! Needs what `tests/setup.sh` provides (dockerd, the registry on 127.0.0.1:5000, ffmpeg,
//! opencv-data) and a built `talkheadd` binary (`TALKHEADD_BIN`, default `target/release/talkheadd`).

#![allow(clippy::print_stdout)]

#[path = "../../common/images.rs"]
#[allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]
mod images;

use anyhow::{Context, Result, bail};
use images::Behaviour;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use talkheadd::domain::Hotkey;
use talkheadd::scoring::{RankCandidate, rank};

/// A demo miner: behaviour, build options, what to call it.
type DemoMiner = (Behaviour, &'static [(&'static str, &'static str)], &'static str);

/// The demo miners.
const MINERS: &[DemoMiner] = &[
    (Behaviour::Good, &[], "good (talking face)"),
    (
        Behaviour::Slow,
        &[("delay_ms", "1500")],
        "slow (good, 1.5 s late)",
    ),
    (Behaviour::Static, &[], "static face"),
    (Behaviour::Crash, &[], "crashes"),
    (Behaviour::Hang, &[], "hangs"),
    (Behaviour::GarbageJson, &[], "garbage JSON"),
    (Behaviour::SymlinkOutput, &[], "symlinks its output"),
];

/// Longest the demo round may take.
const ROUND_LIMIT: Duration = Duration::from_secs(900);

fn hotkey(seed: u8) -> String {
    let keypair = schnorrkel::MiniSecretKey::from_bytes(&[seed; 32])
        .map(|k| k.expand_to_keypair(schnorrkel::ExpansionMode::Ed25519))
        .map(|k| k.public.to_bytes())
        .unwrap_or([seed; 32]);
    Hotkey::from_public_key(keypair).to_string()
}

fn http(port: u16, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad HTTP answer")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = images::repo_root()?;
    let challenges = root
        .join("../shared/fixtures/challenges")
        .canonicalize()
        .context("bundled challenges")?;
    let bin = std::env::var_os("TALKHEADD_BIN")
        .map_or_else(|| root.join("target/release/talkheadd"), PathBuf::from);
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p talkheadd`",
            bin.display()
        );
    }

    println!(
        "== building and pushing {} demo miners to 127.0.0.1:5000",
        MINERS.len()
    );
    let mut miners = Vec::new();
    for (i, (behaviour, options, label)) in MINERS.iter().enumerate() {
        let pushed = images::build_and_push_miner_with(*behaviour, options, &challenges).await?;
        println!("   {label:<24} {}", pushed.reference);
        miners.push((hotkey(200 + i as u8), pushed.reference, *label));
    }

    let dir = tempfile::tempdir()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.path().join("talkheadd.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n[store]\npath = \"{state}\"\n[admin]\nsocket = \"{admin}\"\n[auth]\nrequire_signature = false\npublic_metrics = true\n\
             [evaluation]\nchallenges_dir = \"{challenges}\"\nchallenge_timeout_secs = 10\nready_timeout_secs = 60\n[gpu]\nvirtual = 1\n\
             [container]\ncpus = 1.0\nmemory_bytes = 2147483648\nshm_bytes = 268435456\noutput_bytes = 268435456\n",
            state = dir.path().join("state.db").display(),
            admin = dir.path().join("admin.sock").display(),
            challenges = challenges.display(),
        ),
    )?;
    println!(
        "== starting talkheadd on the {} bundled challenges (log: {})",
        7,
        dir.path().join("talkheadd.log").display()
    );
    let log = std::fs::File::create(dir.path().join("talkheadd.log"))?;
    let mut daemon = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let result = run(port, &miners).await;
    // A clean stop, as systemd does it: SIGTERM, then the daemon removes every container it created.
    let stopped = stop(&mut daemon).await;
    let result = result
        .and(stopped)
        .and(no_containers_left(&dir.path().join("state.db")).await);
    if result.is_err() {
        let log = std::fs::read_to_string(dir.path().join("talkheadd.log")).unwrap_or_default();
        eprintln!("--- talkheadd log ---\n{log}");
    }
    result
}

/// Longest the daemon may take to stop after SIGTERM (its unit allows 45 s).
const STOP_LIMIT: Duration = Duration::from_secs(45);

/// SIGTERM the daemon and wait for it to exit (SIGKILL after [`STOP_LIMIT`], which is an error).
async fn stop(daemon: &mut std::process::Child) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.id()).context("daemon pid")?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("sending SIGTERM")?;
    let started = Instant::now();
    loop {
        if let Some(status) = daemon.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                bail!("talkheadd exited with {status} after SIGTERM")
            };
        }
        if started.elapsed() > STOP_LIMIT {
            let _ = daemon.kill();
            let _ = daemon.wait();
            bail!("talkheadd did not stop within {STOP_LIMIT:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The stopped daemon left no container behind (it labels them with its state file's instance id).
async fn no_containers_left(state: &std::path::Path) -> Result<()> {
    let store = talkheadd::store::Store::open(
        state,
        talkheadd::store::StoreOptions {
            map_size_bytes: 64 << 20,
            history_per_miner: 20,
            max_submissions: 100,
        },
    )?;
    let instance = store.instance_id().to_owned();
    store.close()?;
    let docker = images::docker().await?;
    let filters = std::collections::HashMap::from([(
        "label".to_owned(),
        vec!["talkhead.run".to_owned(), format!("talkhead.instance={instance}")],
    )]);
    let left = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    if !left.is_empty() {
        let ids: Vec<String> = left.into_iter().filter_map(|c| c.id).collect();
        bail!(
            "talkheadd left {} container(s) behind: {}",
            ids.len(),
            ids.join(", ")
        );
    }
    println!("== talkheadd stopped cleanly and left no container behind");
    Ok(())
}

async fn run(port: u16, miners: &[(String, String, &str)]) -> Result<()> {
    let started = Instant::now();
    while http(port, "GET", "/healthz", "").is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("talkheadd did not come up");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<serde_json::Value> = miners
        .iter()
        .enumerate()
        .map(|(i, (h, r, _))| serde_json::json!({"hotkey": h, "image_ref": r, "submit_time": 1_700_000_000.0 + i as f64}))
        .collect();
    let (status, body) = http(port, "POST", "/update", &serde_json::to_string(&rows)?)?;
    if status != 200 {
        bail!("POST /update answered {status}: {body}");
    }
    println!(
        "== submitted {} miners; evaluating (one virtual GPU slot)...",
        miners.len()
    );
    let metrics = loop {
        let (_, body) = http(port, "GET", "/metrics", "")?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        if rows.len() == miners.len() {
            break rows;
        }
        if started.elapsed() > ROUND_LIMIT {
            bail!("the round did not commit within {ROUND_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "== round committed after {:.0} s\n",
        started.elapsed().as_secs_f64()
    );

    let candidates: Vec<RankCandidate<'_>> = metrics
        .iter()
        .map(|row| {
            let m = &row["metrics"];
            RankCandidate {
                hotkey: row["hotkey"].as_str().unwrap_or_default(),
                final_score: m["final_score"].as_f64().unwrap_or(0.0),
                mean_time: m["efficiency"]["inference_time_sec"].as_f64(),
                mean_vram: m["efficiency"]["peak_vram_gb"].as_f64(),
                submit_time: row["submit_time"].as_f64().unwrap_or(f64::INFINITY),
                eligible: m["verdict"] == "ok" && m.get("error").is_none(),
            }
        })
        .collect();
    println!(
        "{:<4} {:<24} {:<22} {:>7} {:>7} {:>8}  reason",
        "rank", "miner", "verdict", "final", "quality", "time s"
    );
    for (place, &i) in rank(&candidates, 1e-4).iter().enumerate() {
        let row = &metrics[i];
        let m = &row["metrics"];
        let label = miners
            .iter()
            .find(|(h, _, _)| row["hotkey"] == h.as_str())
            .map_or("?", |(_, _, l)| *l);
        let time = m["efficiency"]["inference_time_sec"]
            .as_f64()
            .map_or("-".to_owned(), |t| format!("{t:.3}"));
        let reason: String = m["error"].as_str().unwrap_or("").chars().take(60).collect();
        println!(
            "{:<4} {:<24} {:<22} {:>7.4} {:>7.4} {:>8}  {}",
            place + 1,
            label,
            m["verdict"].as_str().unwrap_or("?"),
            m["final_score"].as_f64().unwrap_or(0.0),
            m["quality_score"].as_f64().unwrap_or(0.0),
            time,
            reason
        );
    }
    Ok(())
}
