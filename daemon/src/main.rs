//! `talkheadd`: the binary edge. Parses the command line, loads configuration (exit 78 on any problem),
//! and either runs the daemon or answers `check-config` / `print-config` / `analyze` / `--version`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error, 78 configuration error; `analyze` adds 65
//! (the video is `bad_output`) and 66 (the face, audio or transcript given is unusable).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use talkheadd::config::{self, ConfigLocation, EXIT_CONFIG};

/// Evaluation executor for the Talkhead subnet.
#[derive(Debug, Parser)]
#[command(name = "talkheadd", version, about, long_about = None)]
struct Cli {
    /// Configuration file [default: /etc/talkheadd/talkheadd.toml if it exists, else embedded defaults]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (the default).
    Run,
    /// Validate the configuration and exit (0 valid, 78 invalid).
    CheckConfig,
    /// Print the effective configuration, every default filled in and secrets redacted.
    PrintConfig,
    /// Score one output video offline with the configured analysis backends: prints its components
    /// (exit 0), or its bad_output reason (exit 65); 66 when --face/--audio/--text is unusable.
    Analyze(AnalyzeArgs),
}

#[derive(Debug, clap::Args)]
struct AnalyzeArgs {
    /// The output video to analyse.
    #[arg(long, value_name = "PATH")]
    video: PathBuf,
    /// The challenge's reference face (PNG or JPEG).
    #[arg(long, value_name = "PATH")]
    face: PathBuf,
    /// The challenge's audio (PCM WAV).
    #[arg(long, value_name = "PATH")]
    audio: PathBuf,
    /// The challenge's transcript (text.txt), for the WER.
    #[arg(long, value_name = "PATH")]
    text: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Efficiency calculator: inference seconds of the scored challenges (one value for all, or one
    /// each, comma-separated); prints the efficiency block and the final score the daemon would commit.
    #[arg(long, value_name = "SECONDS", value_delimiter = ',')]
    time_sec: Vec<f64>,
    /// Efficiency calculator: peak VRAM in GB of the scored challenges (one value, or one each).
    #[arg(long, value_name = "GB", value_delimiter = ',')]
    vram_gb: Vec<f64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |name: &str| std::env::var(name).ok();
    let location = ConfigLocation::resolve(cli.config, &env);
    let loaded = match config::load(&location, &env) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("talkheadd: configuration error:\n{e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let source = if loaded.files.is_empty() {
        "embedded defaults".to_owned()
    } else {
        loaded
            .files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("configuration OK ({source})");
            ExitCode::SUCCESS
        }
        Command::PrintConfig => {
            println!("# effective configuration from {source}");
            print!("{}", config::render_effective(&loaded.settings));
            ExitCode::SUCCESS
        }
        Command::Analyze(args) => analyze(&loaded.settings, args),
        Command::Run => {
            talkheadd::logging::init(&loaded.settings.log);
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %source, "talkheadd starting");
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("talkheadd: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(talkheadd::daemon::run(loaded.settings, location)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "talkheadd stopped");
                    eprintln!("talkheadd: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

/// `talkheadd analyze`: the daemon's analyser on one file (see `talkheadd::analysis::offline`).
fn analyze(settings: &talkheadd::config::Settings, args: AnalyzeArgs) -> ExitCode {
    use talkheadd::analysis::offline::{self, OfflineError, OfflineRequest};
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("talkheadd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = OfflineRequest {
        video: args.video,
        face: args.face,
        audio: args.audio,
        text: args.text,
        timing: offline::Timing {
            time_sec: args.time_sec,
            vram_gb: args.vram_gb,
            scored_challenges: settings.evaluation.scoring_count,
        },
    };
    let result = runtime.block_on(async {
        let analyzer = talkheadd::analysis::default_analyzer(&settings.analysis)
            .await
            .map_err(OfflineError::Host)?;
        offline::analyse_file(analyzer.as_ref(), &settings.scoring, &request).await
    });
    match result {
        Ok(report) if args.json => {
            println!("{}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.to_table());
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json
                && let OfflineError::BadOutput { reason, detail } = &e
            {
                let body = serde_json::json!({ "bad_output": { "reason": reason, "detail": detail } });
                println!("{body}");
            }
            eprintln!("talkheadd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
