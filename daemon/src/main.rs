//! `talkheadd`: the binary edge. Parses the command line, loads configuration (exit 78 on any problem),
//! and either runs the daemon or answers `check-config` / `print-config` / `analyze` / `models` /
//! `--version`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage error, 78 configuration error; `analyze` adds 65
//! (the video is `bad_output`) and 66 (the face, audio or transcript given is unusable). `models` reads
//! no configuration (it installs what a configuration names) and exits 0 when every file is installed
//! and verified, 1 on a network or disk failure (a stalled server, an HTTP error, a cut download), when
//! another run holds the directory's lock, or when root is refused a directory another user owns, 65
//! when a file is refused (its size or SHA-256 is not the manifest's) or `verify` finds one missing or
//! wrong, 66 when `fetch --from SRC` lacks a file, 78 when `--manifest` names an invalid manifest; with
//! several failures, 65 if a file was refused, else the first one's. `check-config` also exits 78 when
//! a configured model file is missing, naming `talkheadd models fetch`.
//!
//! `evaluate` runs one evaluation of one image as the daemon would (no daemon, no persistent state) and
//! exits 0 when the verdict is `ok`, 65 when the miner's verdict is anything else (the report says
//! which), 1 on an infrastructure failure (Docker unreachable, a pull failed for the host's reasons, a
//! GPU fault, interrupted by SIGINT/SIGTERM: the reason is printed), 2 on a usage error (a reference
//! not pinned by digest, a `--gpu` index the inventory lacks, an unusable `--challenges` directory), 78
//! on a configuration error (no GPU inventory, analysis backends).

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
    /// Install or check the model files of the `onnx` face and `whisper` speech backends (and ONNX
    /// Runtime), each checked against the manifest's size and SHA-256. Reads no configuration.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run ONE evaluation of an image on this host as the daemon would (pull by digest, hardened
    /// container, timing, VRAM, analysis, scoring) and print its report; no daemon, nothing kept.
    /// Exit 0 verdict ok, 65 another miner verdict, 1 infrastructure failure, 2 usage, 78 configuration.
    Evaluate(EvaluateArgs),
    /// Run one attempt of a cluster's evaluation on this GPU host (Ray starts it as a job's
    /// entrypoint): fetch the spec and the challenge files from the coordinator, evaluate as
    /// `evaluate` does, upload the scored videos and the report. The attempt's token is read from
    /// TALKHEADD_ATTEMPT_TOKEN, its GPU from CUDA_VISIBLE_DEVICES. Exit 0 reported, 1 not reported,
    /// 2 usage.
    Worker(WorkerArgs),
}

#[derive(Debug, clap::Args)]
struct WorkerArgs {
    /// The coordinator's cluster listener (its `cluster.advertise_url`).
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// The evaluation's id.
    #[arg(long, value_name = "ID")]
    evaluation: String,
    /// The attempt number.
    #[arg(long, value_name = "N")]
    attempt: u32,
}

#[derive(Debug, clap::Args)]
struct EvaluateArgs {
    /// The image, pinned by digest: `registry/name[:tag]@sha256:<64 hex>` (a tag alone is refused).
    #[arg(long, value_name = "REF", value_parser = parse_image_ref)]
    image: talkheadd::domain::ImageRef,
    /// The challenge directory (the layout of `evaluation.challenges_dir`).
    #[arg(long, value_name = "DIR")]
    challenges: PathBuf,
    /// The slot of the configured GPU inventory (NVML or `gpu.virtual`) to run on.
    #[arg(long, value_name = "INDEX", default_value_t = 0)]
    gpu: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `--image`: the gateway's own parsing, so a tag-only reference is refused as `POST /update` refuses it.
fn parse_image_ref(text: &str) -> Result<talkheadd::domain::ImageRef, String> {
    talkheadd::domain::ImageRef::parse(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Download (or, with --from, copy) the files, check each, install the ones that pass, and print
    /// the configuration lines that use them. Resumes a download cut short (its `.part` file).
    Fetch(ModelsFetchArgs),
    /// Check the installed files against the manifest (exit 65 naming each missing or wrong one).
    Verify(ModelsDirArgs),
}

#[derive(Debug, clap::Args)]
struct ModelsDirArgs {
    /// Where the files are installed.
    #[arg(long, value_name = "DIR", default_value = talkheadd::models::DEFAULT_DIR)]
    dir: PathBuf,
    /// A manifest to use instead of the one built in (the same TOML form as
    /// /usr/share/talkheadd/models.toml): another mirror, or a newer release.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ModelsFetchArgs {
    #[command(flatten)]
    common: ModelsDirArgs,
    /// Install from files copied by hand into SRC (air-gapped hosts): each file as installed, or the
    /// archive it comes from; nothing is downloaded.
    #[arg(long, value_name = "SRC")]
    from: Option<PathBuf>,
    /// Seconds to wait for a connection, and for any data while downloading, before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = talkheadd::models::DEFAULT_TIMEOUT.as_secs_f64(),
          value_parser = parse_timeout)]
    timeout: f64,
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 3600.0 => Ok(s),
        _ => Err("a number of seconds, more than 0 and at most 3600".to_owned()),
    }
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
    if let Some(Command::Models(command)) = &cli.command {
        return ExitCode::from(models(command));
    }
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
            let missing = talkheadd::models::missing_model_files(&loaded.settings.analysis);
            if !missing.is_empty() {
                eprintln!("talkheadd: configuration error:");
                for (key, path) in missing {
                    eprintln!(
                        "{source}: key `{key}`: {} is not a readable file; {}",
                        path.display(),
                        talkheadd::models::FETCH_HINT
                    );
                }
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            println!("configuration OK ({source})");
            ExitCode::SUCCESS
        }
        Command::PrintConfig => {
            println!("# effective configuration from {source}");
            print!("{}", config::render_effective(&loaded.settings));
            ExitCode::SUCCESS
        }
        Command::Analyze(args) => analyze(&loaded.settings, args),
        Command::Evaluate(args) => evaluate(loaded.settings, args),
        Command::Worker(args) => worker(loaded.settings, args),
        Command::Models(command) => ExitCode::from(models(&command)),
        Command::Run => {
            talkheadd::logging::init(&loaded.settings.log);
            tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %source, "talkheadd starting");
            let runtime = match start_runtime(tokio::runtime::Builder::new_multi_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
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

/// `talkheadd models fetch | verify` (see `talkheadd::models`).
fn models(command: &ModelsCommand) -> u8 {
    match command {
        ModelsCommand::Fetch(args) => talkheadd::models::fetch(&talkheadd::models::FetchOptions {
            dir: args.common.dir.clone(),
            from: args.from.clone(),
            manifest: args.common.manifest.clone(),
            timeout: std::time::Duration::from_secs_f64(args.timeout),
        }),
        ModelsCommand::Verify(args) => talkheadd::models::verify(&talkheadd::models::VerifyOptions {
            dir: args.dir.clone(),
            manifest: args.manifest.clone(),
        }),
    }
}

/// Start a subcommand's async runtime from `builder`; `Err` is the exit code when it cannot start.
fn start_runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("talkheadd: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// `talkheadd evaluate`: one evaluation of one image (see `talkheadd::engine::oneshot`).
fn evaluate(settings: talkheadd::config::Settings, args: EvaluateArgs) -> ExitCode {
    use talkheadd::engine::oneshot::{self, EvaluateRequest};
    talkheadd::logging::init(&settings.log);
    let runtime = match start_runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let request = EvaluateRequest {
        image: args.image,
        challenges: args.challenges,
        gpu: args.gpu,
        keep_videos: None,
        instance: None,
    };
    match runtime.block_on(oneshot::evaluate(settings, request)) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if let Some(reason) = report.reason.as_deref().filter(|_| report.exit_code != 0) {
                eprintln!("talkheadd: {}: {reason}", report.verdict);
            }
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("talkheadd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `talkheadd worker`: one attempt of a cluster's evaluation (see `talkheadd::engine::worker`).
fn worker(settings: talkheadd::config::Settings, args: WorkerArgs) -> ExitCode {
    use talkheadd::engine::worker::{WorkerRequest, run_worker};
    talkheadd::logging::init(&settings.log);
    let runtime = match start_runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let request = WorkerRequest {
        coordinator: args.coordinator,
        evaluation: args.evaluation,
        attempt: args.attempt,
    };
    ExitCode::from(runtime.block_on(run_worker(settings, request)))
}

/// `talkheadd analyze`: the daemon's analyser on one file (see `talkheadd::analysis::offline`).
fn analyze(settings: &talkheadd::config::Settings, args: AnalyzeArgs) -> ExitCode {
    use talkheadd::analysis::offline::{self, OfflineError, OfflineRequest};
    let runtime = match start_runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
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
