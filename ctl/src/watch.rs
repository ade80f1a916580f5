//! `talkheadctl watch`: follow the daemon's event stream, a progress bar per GPU and a scrolling event
//! log (or JSON lines with `--json`). A lost connection is re-established and the stream resumed after
//! the last event seen, so nothing the daemon still holds is skipped or shown twice.

use crate::client::{self, Clients, Failure};
use crate::render::{Style, score, short_key};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;
use talkhead_admin_proto::v1 as pb;
use talkhead_admin_proto::v1::event::Kind;

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Live bars, one per running evaluation.
struct Board {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    visible: bool,
}

impl Board {
    fn new() -> Board {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let visible = !multi.is_hidden();
        Board {
            multi,
            bars: HashMap::new(),
            visible,
        }
    }

    fn log(&self, line: &str) {
        if self.visible {
            let _ = self.multi.println(line);
        } else {
            println!("{line}");
        }
    }

    fn start(&mut self, run_id: &str, gpu: &str, hotkey: &str, total: u32, stage: &str, done: u32) {
        let bar = self.multi.add(ProgressBar::new(u64::from(total.max(1))));
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} {bar:24} {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(gpu.to_owned());
        bar.set_message(format!("{} {stage}", short_key(hotkey)));
        bar.set_position(u64::from(done));
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bars.insert(run_id.to_owned(), bar);
    }

    fn finish(&mut self, run_id: &str) {
        if let Some(bar) = self.bars.remove(run_id) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

/// Follow events after `after` until `count` events were shown (forever when `None`).
pub async fn run(
    clients: &mut Clients,
    after: u64,
    count: Option<u64>,
    json: bool,
    style: Style,
) -> Result<String, Failure> {
    let socket = clients.socket.clone();
    let mut board = Board::new();
    if !json {
        // Seed the bars with what is already running.
        if let Ok(s) = clients.read.get_status(pb::GetStatusRequest {}).await {
            for g in s.into_inner().gpus {
                if let Some(r) = g.current {
                    board.start(
                        &r.run_id,
                        &g.id,
                        &r.hotkey,
                        r.challenges_total,
                        &r.stage,
                        r.challenges_done,
                    );
                }
            }
        }
    }
    let mut last = after;
    let mut shown = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        let stream = clients.read.watch(pb::WatchRequest { after_seq: last }).await;
        match stream {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                backoff = Duration::from_millis(250);
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            last = last.max(event.seq);
                            if json {
                                let line = serde_json::to_string(&event).unwrap_or_default();
                                let mut out = std::io::stdout().lock();
                                let _ = writeln!(out, "{line}");
                                let _ = out.flush();
                            } else {
                                show(&mut board, &event, style);
                            }
                            shown += 1;
                            if count.is_some_and(|c| shown >= c) {
                                return Ok(String::new());
                            }
                        }
                        Ok(None) => break,
                        Err(s) if s.code() == tonic::Code::PermissionDenied => {
                            return Err(Failure::from_status(&s, &socket));
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                return Err(Failure::from_status(&s, &socket));
            }
            Err(_) => {}
        }
        board.log(&format!(
            "-- connection to talkheadd lost; resuming after event {last}"
        ));
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match client::connect(&socket).await {
                Ok(c) => {
                    *clients = c;
                    break;
                }
                Err(f) if f.code == client::exit::PERMISSION_DENIED => return Err(f),
                Err(_) => {}
            }
        }
    }
}

fn show(board: &mut Board, event: &pb::Event, style: Style) {
    let Some(kind) = &event.kind else {
        return;
    };
    match kind {
        Kind::RunStarted(r) => {
            board.start(&r.run_id, &r.gpu, &r.hotkey, r.challenges, "pull", 0);
            board.log(&format!(
                "{} started on {}: {} ({})",
                r.run_id,
                r.gpu,
                short_key(&r.hotkey),
                r.image
            ));
        }
        Kind::StageChanged(s) => {
            if let Some(bar) = board.bars.get(&s.run_id) {
                let who = bar.message().split(' ').next().unwrap_or_default().to_owned();
                bar.set_message(format!("{who} {}", s.stage));
            }
        }
        Kind::ChallengeFinished(c) => {
            if let Some(bar) = board.bars.get(&c.run_id) {
                bar.set_position(u64::from(c.index));
            }
            if !c.failure.is_empty() {
                board.log(&format!(
                    "{} challenge {}/{} {}: {}",
                    c.run_id, c.index, c.total, c.challenge_id, c.failure
                ));
            }
        }
        Kind::Verdict(v) => {
            board.finish(&v.run_id);
            let reason = if v.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.reason)
            };
            board.log(&format!(
                "{} {}: {} score {}{reason}",
                v.run_id,
                short_key(&v.hotkey),
                style.verdict(&v.verdict),
                score(v.score)
            ));
        }
        Kind::RoundCommitted(r) => board.log(&format!(
            "round {} committed: {} miners, metrics_version {}",
            r.round, r.committed, r.metrics_version
        )),
        Kind::GpuStateChanged(g) => board.log(&format!("GPU {} is now {} {}", g.gpu, g.state, g.reason)),
        Kind::Missed(m) => board.log(&format!(
            "-- {} events were no longer held by the daemon",
            m.count
        )),
    }
}
