//! `talkheadctl`: the operator's client for talkheadd's Unix-socket admin plane (`talkhead.admin.v1`).
//!
//! Human output is aligned tables; `--json` prints the API's messages as JSON for scripts. Exit codes:
//! 0 ok, 1 other error, 2 usage or invalid argument, 3 daemon unreachable, 4 not found, 5 permission
//! denied.

mod cli;
mod client;
mod render;
mod watch;

use clap::Parser;
use cli::{Cli, ColorChoice, Command, GpuAction};
use client::{Failure, exit};
use render::{Style, duration, pairs, score, short_key, table, timestamp};
use serde::Serialize;
use std::io::IsTerminal;
use std::process::ExitCode;
use talkhead_admin_proto::v1 as pb;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let style = Style {
        color: match cli.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("talkheadctl: cannot start: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match runtime.block_on(run(&cli, style)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(f) => {
            eprintln!("talkheadctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// `--json`: the message as JSON; otherwise the human rendering of it.
fn emit<T: Serialize>(
    json_mode: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<String, Failure> {
    if json_mode { json(value) } else { Ok(human(value)) }
}

fn json<T: Serialize>(value: &T) -> Result<String, Failure> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| Failure {
            code: exit::OTHER,
            message: format!("cannot render JSON: {e}"),
        })
}

async fn run(cli: &Cli, style: Style) -> Result<String, Failure> {
    if let Command::Version = cli.command {
        let mine = format!("talkheadctl {}\n", env!("CARGO_PKG_VERSION"));
        return Ok(match client::connect(&cli.socket).await {
            Ok(mut c) => match c.read.get_status(pb::GetStatusRequest {}).await {
                Ok(s) => {
                    let s = s.into_inner();
                    format!("{mine}talkheadd {} ({})\n", s.version, s.build)
                }
                Err(_) => mine,
            },
            Err(_) => format!("{mine}talkheadd: not reachable at {}\n", cli.socket.display()),
        });
    }
    let mut c = client::connect(&cli.socket).await?;
    let socket = c.socket.clone();
    let grpc = |s: tonic::Status| Failure::from_status(&s, &socket);
    match &cli.command {
        Command::Version => Ok(String::new()),
        Command::Status => {
            let s = c
                .read
                .get_status(pb::GetStatusRequest {})
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &s, |s| status_text(s, style))
        }
        Command::Miners { state, verdict } => {
            let r = c
                .read
                .list_miners(pb::ListMinersRequest {
                    state: state.clone().unwrap_or_default(),
                    verdict: verdict.clone().unwrap_or_default(),
                })
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &r, |r| {
                table(
                    &["hotkey", "state", "verdict", "score", "submitted", "image"],
                    r.miners
                        .iter()
                        .map(|m| {
                            vec![
                                m.hotkey.clone(),
                                if m.blocked {
                                    format!("{} (blocked)", m.state)
                                } else {
                                    m.state.clone()
                                },
                                style.verdict(&m.verdict),
                                score(m.score),
                                timestamp(m.submit_time),
                                m.image_ref.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        Command::Miner { hotkey, runs } => {
            let m = c
                .read
                .get_miner(pb::GetMinerRequest {
                    hotkey: hotkey.clone(),
                    runs: *runs,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &m, |m| miner_text(m, style))
        }
        Command::Runs {
            hotkey,
            verdict,
            limit,
        } => {
            let r = c
                .read
                .list_runs(pb::ListRunsRequest {
                    hotkey: hotkey.clone().unwrap_or_default(),
                    verdict: verdict.clone().unwrap_or_default(),
                    limit: *limit,
                })
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &r, |r| runs_table(&r.runs, style))
        }
        Command::Run { id } => {
            let r = c
                .read
                .get_run(pb::GetRunRequest { run_id: id.clone() })
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &r, |r| run_text(r, style))
        }
        Command::Scores => {
            let s = c
                .read
                .get_scores(pb::GetScoresRequest {})
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &s, |s| {
                let mut out = format!("metrics_version {}\n", s.metrics_version);
                out += &table(
                    &["rank", "hotkey", "score", "verdict", "submitted", "image"],
                    s.rows
                        .iter()
                        .map(|r| {
                            vec![
                                r.rank.to_string(),
                                r.hotkey.clone(),
                                format!("{:.4}", r.final_score),
                                style.verdict(&r.verdict),
                                timestamp(r.submit_time),
                                r.image_ref.clone(),
                            ]
                        })
                        .collect(),
                );
                out
            })
        }
        Command::Blocks => {
            let r = c
                .read
                .list_blocks(pb::ListBlocksRequest {})
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &r, |r| {
                table(
                    &["kind", "value", "since", "reason"],
                    r.blocks
                        .iter()
                        .map(|b| {
                            vec![
                                b.kind.clone(),
                                b.value.clone(),
                                timestamp(b.since_unix),
                                b.reason.clone(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        Command::Watch { after, count } => watch::run(&mut c, *after, *count, cli.json, style).await,
        Command::Pause => control(cli, c.control.pause(pb::PauseRequest {}).await.map_err(grpc)?),
        Command::Resume => control(cli, c.control.resume(pb::ResumeRequest {}).await.map_err(grpc)?),
        Command::Reevaluate { hotkey } => control(
            cli,
            c.control
                .reevaluate(pb::ReevaluateRequest {
                    hotkey: hotkey.clone(),
                })
                .await
                .map_err(grpc)?,
        ),
        Command::Gpu { action } => {
            let r = match action {
                GpuAction::Drain { id } => c.control.drain_gpu(pb::GpuRequest { gpu: id.clone() }).await,
                GpuAction::Undrain { id } => c.control.undrain_gpu(pb::GpuRequest { gpu: id.clone() }).await,
            };
            control(cli, r.map_err(grpc)?)
        }
        Command::Block { target, reason } => control(
            cli,
            c.control
                .block(pb::BlockRequest {
                    target: target.clone(),
                    reason: reason.clone(),
                })
                .await
                .map_err(grpc)?,
        ),
        Command::Unblock { target } => control(
            cli,
            c.control
                .unblock(pb::UnblockRequest {
                    target: target.clone(),
                })
                .await
                .map_err(grpc)?,
        ),
        Command::Reload => {
            let r = c
                .control
                .reload(pb::ReloadRequest {})
                .await
                .map_err(grpc)?
                .into_inner();
            emit(cli.json, &r, |r| {
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                pairs(&[
                    ("applied", list(&r.applied)),
                    ("needs restart", list(&r.needs_restart)),
                ])
            })
        }
    }
}

fn control(cli: &Cli, r: tonic::Response<pb::ControlResponse>) -> Result<String, Failure> {
    let r = r.into_inner();
    emit(cli.json, &r, |r| format!("{}\n", r.message))
}

fn status_text(s: &pb::Status, style: Style) -> String {
    let mut out = pairs(&[
        ("talkheadd", format!("{} ({})", s.version, s.build)),
        ("uptime", duration(s.uptime_seconds)),
        ("config", s.config_digest.chars().take(12).collect()),
        ("docker", s.docker.clone()),
        ("gpus", s.gpu_backend.clone()),
        (
            "evaluation",
            if s.paused {
                style.verdict("paused")
            } else {
                "running".into()
            },
        ),
        (
            "round",
            format!(
                "{}: {}/{} evaluated, {} queued",
                s.round, s.round_evaluated, s.round_total, s.queue_length
            ),
        ),
        (
            "last commit",
            if s.last_commit_unix > 0.0 {
                timestamp(s.last_commit_unix)
            } else {
                "never".into()
            },
        ),
        ("metrics version", s.metrics_version.to_string()),
        (
            "scheduler",
            s.scheduler
                .as_ref()
                .map_or("no decision yet".into(), |d| d.summary.clone()),
        ),
    ]);
    if let Some(d) = s
        .scheduler
        .as_ref()
        .filter(|d| !d.held.is_empty() || !d.idle.is_empty())
    {
        out.push('\n');
        out += &table(
            &["held back", "why"],
            d.held
                .iter()
                .map(|h| vec![format!("miner {}", short_key(&h.hotkey)), h.reason.clone()])
                .chain(
                    d.idle
                        .iter()
                        .map(|g| vec![format!("gpu {}", g.id), g.reason.clone()]),
                )
                .collect(),
        );
    }
    if !s.gpus.is_empty() {
        out.push('\n');
        out += &table(
            &[
                "gpu",
                "model",
                "state",
                "run",
                "miner",
                "stage",
                "progress",
                "calibration",
            ],
            s.gpus
                .iter()
                .map(|g| {
                    let run = g.current.as_ref();
                    vec![
                        g.id.clone(),
                        g.name.clone(),
                        if g.state_reason.is_empty() {
                            g.state.clone()
                        } else {
                            format!("{} ({})", g.state, g.state_reason)
                        },
                        run.map_or("-".into(), |r| r.run_id.clone()),
                        run.map_or("-".into(), |r| short_key(&r.hotkey)),
                        run.map_or("idle".into(), |r| r.stage.clone()),
                        run.map_or("-".into(), |r| {
                            format!("{}/{}", r.challenges_done, r.challenges_total)
                        }),
                        g.last_calibration.as_ref().map_or("-".into(), calibration_cell),
                    ]
                })
                .collect(),
        );
    }
    out
}

/// `round 3: 1.52 s`, or `round 3: crashed` for a calibration that failed.
fn calibration_cell(c: &pb::Calibration) -> String {
    if c.verdict == "ok" {
        format!("round {}: {:.2} s", c.round, c.seconds)
    } else {
        format!("round {}: {}", c.round, c.verdict)
    }
}

fn miner_text(m: &pb::Miner, style: Style) -> String {
    let Some(s) = &m.summary else {
        return String::new();
    };
    let mut out = pairs(&[
        ("hotkey", s.hotkey.clone()),
        ("image", s.image_ref.clone()),
        ("submitted", timestamp(s.submit_time)),
        (
            "state",
            if s.blocked {
                format!("{} (blocked)", s.state)
            } else {
                s.state.clone()
            },
        ),
        ("verdict", style.verdict(&s.verdict)),
        ("score", score(s.score)),
        ("generation", m.generation.to_string()),
        (
            "committed",
            if m.committed_metrics_json.is_empty() {
                "none".into()
            } else {
                format!(
                    "round {}{}",
                    m.committed_round,
                    if m.carried_over { " (carried over)" } else { "" }
                )
            },
        ),
        (
            "staged",
            if m.staged_metrics_json.is_empty() {
                "none".into()
            } else {
                "yes".into()
            },
        ),
    ]);
    out.push('\n');
    out += &runs_table(&m.runs, style);
    out
}

fn runs_table(runs: &[pb::Run], style: Style) -> String {
    table(
        &[
            "run", "miner", "round", "verdict", "score", "gpu", "took", "started",
        ],
        runs.iter()
            .map(|r| {
                vec![
                    r.run_id.clone(),
                    short_key(&r.hotkey),
                    r.round.to_string(),
                    style.verdict(&r.verdict),
                    score(r.score),
                    if r.gpu.is_empty() {
                        "-".into()
                    } else {
                        r.gpu.clone()
                    },
                    duration(r.finished_unix - r.started_unix),
                    timestamp(r.started_unix),
                ]
            })
            .collect(),
    )
}

fn run_text(r: &pb::Run, style: Style) -> String {
    let mut stages: Vec<_> = r.stage_seconds.iter().collect();
    stages.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = pairs(&[
        ("run", r.run_id.clone()),
        ("miner", r.hotkey.clone()),
        ("image", r.image_ref.clone()),
        ("round", r.round.to_string()),
        ("verdict", style.verdict(&r.verdict)),
        (
            "reason",
            if r.reason.is_empty() {
                "-".into()
            } else {
                r.reason.clone()
            },
        ),
        ("score", score(r.score)),
        (
            "image source",
            if r.image_source.is_empty() {
                "-".into()
            } else {
                r.image_source.clone()
            },
        ),
        (
            "gpu",
            if r.gpu.is_empty() {
                "-".into()
            } else {
                format!("{} ({})", r.gpu, r.gpu_name)
            },
        ),
        (
            "peak vram",
            format!(
                "{} [{}]",
                r.peak_vram_gb.map_or("-".into(), |v| format!("{v:.2} GB")),
                r.vram_provenance
            ),
        ),
        ("started", timestamp(r.started_unix)),
        ("took", duration(r.finished_unix - r.started_unix)),
        (
            "stages",
            stages
                .iter()
                .map(|(k, v)| format!("{k} {}", duration(**v)))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ]);
    if !r.notes.is_empty() {
        out += &format!("\n{}\n", style.bold("notes:"));
        for note in &r.notes {
            out += &format!("  - {note}\n");
        }
    }
    if !r.log_tail.is_empty() {
        out += &format!("\n{}\n{}", style.bold("container log (tail):"), r.log_tail);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
#[test]
fn a_calibration_shows_its_round_and_time_or_why_it_failed() {
    let ok = pb::Calibration {
        round: 3,
        verdict: "ok".into(),
        seconds: 1.516,
        reason: String::new(),
        finished_unix: 1.0,
    };
    assert_eq!(calibration_cell(&ok), "round 3: 1.52 s");
    let failed = pb::Calibration {
        verdict: "crashed".into(),
        seconds: 0.0,
        reason: "exited with code 3".into(),
        ..ok
    };
    assert_eq!(calibration_cell(&failed), "round 3: crashed");
}

#[cfg(test)]
#[test]
fn a_run_shows_where_its_image_came_from_and_its_notes() {
    let style = Style { color: false };
    let run = pb::Run {
        run_id: "run-1".into(),
        verdict: "ok".into(),
        image_source: "pre_pulled".into(),
        notes: vec![
            "CUDA requirement undecided: no driver".into(),
            "second note".into(),
        ],
        log_tail: "miner says hi\n".into(),
        ..Default::default()
    };
    let text = run_text(&run, style);
    assert!(
        text.lines()
            .any(|l| l.starts_with("image source") && l.ends_with("pre_pulled")),
        "{text}"
    );
    let notes = text.find("notes:\n  - CUDA requirement undecided: no driver\n  - second note\n");
    let log = text.find("container log (tail):\nminer says hi");
    assert!(notes.is_some() && log.is_some() && notes < log, "{text}");
    // A run from before image sources were recorded, with no notes.
    let old = run_text(&pb::Run::default(), style);
    assert!(
        old.lines()
            .any(|l| l.starts_with("image source") && l.ends_with(" -")),
        "{old}"
    );
    assert!(!old.contains("notes:"), "{old}");
}
