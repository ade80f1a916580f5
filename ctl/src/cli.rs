//! The command line of `talkheadctl`, on its own so that the build script generates the man page and
//! shell completions from exactly this definition.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Where talkheadd listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/talkheadd/admin.sock";

/// Operate a running talkheadd over its admin socket.
///
/// Exit codes: 0 ok, 1 other error, 2 usage or invalid argument, 3 daemon unreachable, 4 not found,
/// 5 permission denied.
#[derive(Debug, Parser)]
#[command(name = "talkheadctl", version, about, long_about = None)]
pub struct Cli {
    /// The daemon's admin socket.
    #[arg(long, global = true, env = "TALKHEAD_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Print JSON instead of tables (one object per line for `watch`).
    #[arg(long, global = true)]
    pub json: bool,
    /// Colour in human output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// When to use colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Only on a terminal.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon at a glance: version, Docker, GPUs and what they run, round progress.
    Status,
    /// List miners (submissions) and their evaluation state.
    Miners {
        /// Only miners in this state.
        #[arg(long, value_parser = ["pending", "staged", "committed"])]
        state: Option<String>,
        /// Only miners whose newest result has this verdict (ok, crashed, bad_output, …).
        #[arg(long)]
        verdict: Option<String>,
    },
    /// One miner: committed and staged metrics and its run history.
    Miner {
        /// The miner's hotkey (SS58).
        hotkey: String,
        /// Runs of its history to show.
        #[arg(long, default_value_t = 20)]
        runs: u32,
    },
    /// Recent runs, newest first.
    Runs {
        /// Only this miner's runs.
        #[arg(long)]
        hotkey: Option<String>,
        /// Only runs with this verdict.
        #[arg(long)]
        verdict: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One run: stage times, verdict, GPU, VRAM provenance and the container's log tail.
    Run {
        /// The run id (see `runs`).
        id: String,
    },
    /// The committed ranking with the tie-break applied; rank 1 is the winner selection's pick.
    Scores,
    /// Follow evaluations live: a progress bar per GPU and a scrolling event log.
    Watch {
        /// Start after this event sequence number (0: everything the daemon still holds).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Stop after this many events (for scripts).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Stop starting new evaluations (running ones finish).
    Pause,
    /// Start evaluating again.
    Resume,
    /// Evaluate a miner again now.
    Reevaluate {
        /// The miner's hotkey (SS58).
        hotkey: String,
    },
    /// Take a GPU out of service or put it back.
    Gpu {
        /// drain or undrain.
        #[command(subcommand)]
        action: GpuAction,
    },
    /// Block an image digest or a hotkey: its submissions get image_rejected.
    Block {
        /// A hotkey (SS58) or an image digest (sha256:…).
        target: String,
        /// Why (shown as the verdict's reason).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a block.
    Unblock {
        /// The hotkey or digest.
        target: String,
    },
    /// List blocked hotkeys and digests.
    Blocks,
    /// Re-read the daemon's configuration and apply what can change while it runs.
    Reload,
    /// Print this client's version and, when reachable, the daemon's.
    Version,
}

/// GPU actions.
#[derive(Debug, Subcommand)]
pub enum GpuAction {
    /// Finish the current run on this GPU, then take no new ones (persisted).
    Drain {
        /// GPU UUID, virtual-N, or index.
        id: String,
    },
    /// Put a drained GPU back into service.
    Undrain {
        /// GPU UUID, virtual-N, or index.
        id: String,
    },
}
