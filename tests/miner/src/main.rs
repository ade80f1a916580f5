//! `talkhead-test-miner`: a stand-in for a talking-head miner, run inside FROM-scratch images by
//! talkheadd's integration tests, benches and demo.
//!
//! It speaks the miner container protocol (docs/reference.md#miner-protocol). Once "loaded" (after an
//! optional start-up delay) it writes `/output/ready.txt`, then polls `/input/task.json` every 5 ms. Each
//! time the `challenge_id` there differs from the last one handled, it handles the challenge according to
//! its *behaviour*, read from `/miner.conf` (baked into the image, see [`Config`]):
//!
//! | behaviour | what it does with a challenge |
//! |---|---|
//! | `good` | copies `/videos/<sha256 of /input/audio.wav>.mp4` to `/output/{id}.mp4`, then writes `{id}.json` `{"success": true}`; unknown audio gives `{"success": false, "error": "unknown challenge audio"}` |
//! | `static` | the same; the image's baked videos show a frozen face |
//! | `slow` | like `good`, after sleeping `delay_ms` (default 3000) |
//! | `crash` | exits with `exit_code` (default 3) on the first task |
//! | `hang` | never answers |
//! | `oom` | allocates and touches memory in `oom_step_mib` (default 64) MiB steps, forever |
//! | `garbage_json` | writes `{id}.mp4`, then `{id}.json` holding `{"success": tru` |
//! | `symlink_output` | makes `{id}.mp4` a symlink to `/etc/passwd` and `state.db` one to `/var/lib/talkheadd/state.db`, then answers success (`link_json=true`: `{id}.json` is a symlink too) |
//! | `fill_output` | writes `/output/fill.bin` until a write fails (ENOSPC/EDQUOT; or until `fill_max_mib`), then shrinks it just enough to answer like `good` |
//! | `network` | tries TCP connects (1 s timeouts) to `targets` (default `1.1.1.1:53,172.17.0.1:2375`) and reports `"network": "unreachable"` or `"REACHED"` beside the good answer |
//! | `write_input` | tries to create `/input/pwned` and to overwrite `/input/task.json`, reports `"input_writable"` beside the good answer |
//! | `gpu_env` | like `good`, and reports the environment it sees as `"env"` |
//! | `error` | answers `{"success": false, "error": <error>}` and logs the same text (default a CUDA out-of-memory message) |
//!
//! Every behaviour writes its files under a temporary name and renames them, so the host never sees
//! half a file, and logs one line per event on stderr. Any behaviour also takes `delay_ms` (`good`,
//! `static` and `slow` write their answer exactly `delay_ms` after they saw the task, the video copied
//! within that time, so the miner's time is known; the others sleep that long before acting),
//! `startup_delay_ms` (sleep before `ready.txt`), `ready=never` (never become
//! ready), `poll_us` (how often `task.json` is looked at, default 5000) and `report_times=true` (every
//! `{id}.json` also carries `task_seen_unix`, when the task was read, and `written_at_unix`, taken just
//! before the file is written and renamed into place: the bench's miner-reported clock, shared with
//! the host through the kernel's CLOCK_REALTIME).
//!
//! Two options act while the miner "loads", before `ready.txt`: `flood_entries=N` creates N empty files
//! `/output/flood-<n>` (the output quota's entry limit), and `plant=<id>:<audio sha256>,...` writes, for
//! each pair, the baked video of that audio as `/output/<id>.mp4` and `{"success": true}` as
//! `/output/<id>.json`: answers prepared for challenge ids the miner guessed. A planting miner then
//! never answers a task itself.
//!
//! Outside a container, `TALKHEAD_TEST_MINER_ROOT` names a directory that stands for `/`: the miner
//! then reads `<root>/miner.conf`, `<root>/input`, `<root>/videos` and writes `<root>/output`.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often `/input/task.json` is looked at by default (`poll_us`).
const POLL: Duration = Duration::from_millis(5);
/// When the current task was read (f64 unix seconds, as bits), for `report_times`.
static TASK_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Whether answers carry the miner-reported times.
static REPORT_TIMES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
/// Exit code when `/miner.conf` is missing or wrong, or `/output` cannot be written.
const EXIT_CONFIG: i32 = 2;
/// Exit code when `/output/ready.txt` cannot be written.
const EXIT_NO_OUTPUT: i32 = 4;
/// The default error text of the `error` behaviour (what PyTorch prints on a CUDA OOM).
const DEFAULT_ERROR: &str =
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity)";
/// Where the `symlink_output` behaviour points, besides `/etc/passwd`: a path that exists on a
/// talkheadd host, never in the container.
const HOST_LOOKING_TARGET: &str = "/var/lib/talkheadd/state.db";

/// What the miner does with a challenge (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Good,
    Static,
    Slow,
    Crash,
    Hang,
    Oom,
    GarbageJson,
    SymlinkOutput,
    FillOutput,
    Network,
    WriteInput,
    GpuEnv,
    Error,
}

impl Behaviour {
    /// Every behaviour, with its name in `/miner.conf`.
    const NAMES: [(&'static str, Behaviour); 13] = [
        ("good", Behaviour::Good),
        ("static", Behaviour::Static),
        ("slow", Behaviour::Slow),
        ("crash", Behaviour::Crash),
        ("hang", Behaviour::Hang),
        ("oom", Behaviour::Oom),
        ("garbage_json", Behaviour::GarbageJson),
        ("symlink_output", Behaviour::SymlinkOutput),
        ("fill_output", Behaviour::FillOutput),
        ("network", Behaviour::Network),
        ("write_input", Behaviour::WriteInput),
        ("gpu_env", Behaviour::GpuEnv),
        ("error", Behaviour::Error),
    ];

    fn parse(name: &str) -> Option<Behaviour> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }

    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, b)| *b == self)
            .map_or("?", |(n, _)| n)
    }
}

/// The contents of `/miner.conf`: lines of `key=value` (several space-separated pairs may share a
/// line, except `error=`, whose value runs to the end of its line); `#` starts a comment line.
#[derive(Debug)]
struct Config {
    behaviour: Behaviour,
    /// Sleep between reading a task and answering it.
    delay: Duration,
    /// Sleep before writing `ready.txt`.
    startup_delay: Duration,
    /// `false` with `ready=never`.
    write_ready: bool,
    /// `crash`: the exit code.
    exit_code: i32,
    /// `error`: the error text.
    error: String,
    /// `oom`: MiB allocated per step.
    oom_step_mib: usize,
    /// `fill_output`: stop after this many MiB even without an error (unbounded by default).
    fill_max_mib: Option<u64>,
    /// `symlink_output`: make `{id}.json` a symlink too.
    link_json: bool,
    /// `network`: where to connect.
    targets: Vec<String>,
    /// How often `task.json` is looked at.
    poll: Duration,
    /// Answers carry `task_seen_unix` and `written_at_unix`.
    report_times: bool,
    /// Empty files created in `/output` before `ready.txt`.
    flood_entries: u64,
    /// (challenge id, audio sha256) answers written before `ready.txt`.
    plant: Vec<(String, String)>,
}

impl Config {
    fn parse(text: &str) -> Result<Config, String> {
        let mut pairs: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(message) = line.strip_prefix("error=") {
                pairs.insert("error".to_owned(), message.to_owned());
                continue;
            }
            for token in line.split_whitespace() {
                let (key, value) = token
                    .split_once('=')
                    .ok_or_else(|| format!("`{token}` is not key=value"))?;
                pairs.insert(key.to_owned(), value.to_owned());
            }
        }
        let name = pairs.remove("behaviour").ok_or("no behaviour= line")?;
        let behaviour = Behaviour::parse(&name).ok_or_else(|| format!("unknown behaviour `{name}`"))?;
        let number = |pairs: &mut BTreeMap<String, String>, key: &str| -> Result<Option<u64>, String> {
            pairs
                .remove(key)
                .map(|v| v.parse::<u64>().map_err(|e| format!("{key}={v}: {e}")))
                .transpose()
        };
        let default_delay = if behaviour == Behaviour::Slow { 3000 } else { 0 };
        let delay = Duration::from_millis(number(&mut pairs, "delay_ms")?.unwrap_or(default_delay));
        let startup_delay = Duration::from_millis(number(&mut pairs, "startup_delay_ms")?.unwrap_or(0));
        let exit_code = i32::try_from(number(&mut pairs, "exit_code")?.unwrap_or(3))
            .map_err(|e| format!("exit_code: {e}"))?;
        let oom_step_mib = usize::try_from(number(&mut pairs, "oom_step_mib")?.unwrap_or(64))
            .map_err(|e| format!("oom_step_mib: {e}"))?
            .max(1);
        let fill_max_mib = number(&mut pairs, "fill_max_mib")?;
        let write_ready = match pairs.remove("ready").as_deref() {
            None | Some("yes" | "true") => true,
            Some("never" | "no" | "false") => false,
            Some(other) => return Err(format!("ready={other}: expected never")),
        };
        let link_json = match pairs.remove("link_json").as_deref() {
            None | Some("false" | "no") => false,
            Some("true" | "yes") => true,
            Some(other) => return Err(format!("link_json={other}: expected true or false")),
        };
        let error = pairs.remove("error").unwrap_or_else(|| DEFAULT_ERROR.to_owned());
        let targets = pairs.remove("targets").map_or_else(
            || vec!["1.1.1.1:53".to_owned(), "172.17.0.1:2375".to_owned()],
            |t| {
                t.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            },
        );
        let poll = number(&mut pairs, "poll_us")?
            .map_or(POLL, Duration::from_micros)
            .max(Duration::from_micros(100));
        let report_times = match pairs.remove("report_times").as_deref() {
            None | Some("false" | "no") => false,
            Some("true" | "yes") => true,
            Some(other) => return Err(format!("report_times={other}: expected true or false")),
        };
        let flood_entries = number(&mut pairs, "flood_entries")?.unwrap_or(0);
        let plant = pairs
            .remove("plant")
            .map(|list| {
                list.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|pair| {
                        pair.split_once(':')
                            .map(|(id, sha)| (id.to_owned(), sha.to_owned()))
                            .ok_or_else(|| format!("plant: `{pair}` is not <id>:<audio sha256>"))
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .transpose()?
            .unwrap_or_default();
        if let Some(key) = pairs.keys().next() {
            return Err(format!("unknown key `{key}`"));
        }
        Ok(Config {
            behaviour,
            delay,
            startup_delay,
            write_ready,
            exit_code,
            error,
            oom_step_mib,
            fill_max_mib,
            link_json,
            targets,
            poll,
            report_times,
            flood_entries,
            plant,
        })
    }
}

/// The container paths, under an optional root (`TALKHEAD_TEST_MINER_ROOT`) for runs on the host.
struct Paths {
    conf: PathBuf,
    input: PathBuf,
    output: PathBuf,
    videos: PathBuf,
}

impl Paths {
    fn from_env() -> Paths {
        let root =
            std::env::var_os("TALKHEAD_TEST_MINER_ROOT").map_or_else(|| PathBuf::from("/"), PathBuf::from);
        Paths {
            conf: root.join("miner.conf"),
            input: root.join("input"),
            output: root.join("output"),
            videos: root.join("videos"),
        }
    }
}

/// One line on stderr, prefixed with the program name and the wall-clock time.
fn log(message: impl Display) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut err = io::stderr().lock();
    // Nothing sensible to do when stderr is gone.
    let _ = writeln!(
        err,
        "talkhead-test-miner {}.{:03} {message}",
        now.as_secs(),
        now.subsec_millis()
    );
}

/// Writes `dir/name` through a hidden temporary name and a rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, dir.join(name))
}

/// `{id}.json`, atomically.
fn write_result(paths: &Paths, id: &str, result: &Value) {
    let name = format!("{id}.json");
    let mut result = result.clone();
    if REPORT_TIMES.load(std::sync::atomic::Ordering::Relaxed)
        && let Value::Object(map) = &mut result
    {
        let seen = f64::from_bits(TASK_SEEN.load(std::sync::atomic::Ordering::Relaxed));
        map.insert("task_seen_unix".to_owned(), json!(seen));
        map.insert("written_at_unix".to_owned(), json!(unix_now()));
    }
    let result = &result;
    match serde_json::to_vec(result)
        .map_err(io::Error::other)
        .and_then(|b| write_atomic(&paths.output, &name, &b))
    {
        Ok(()) => log(format_args!("answered {name}: {result}")),
        Err(e) => log(format_args!("cannot write {name}: {e}")),
    }
}

/// A challenge read from `/input/task.json`.
struct Task {
    id: String,
}

/// Reads the task file; `Ok(None)` while there is none.
fn read_task(paths: &Paths) -> Result<Option<Task>, String> {
    let path = paths.input.join("task.json");
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read task.json: {e}")),
    };
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("task.json does not parse: {e}"))?;
    let id = match value.get("challenge_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("task.json has no challenge_id".to_owned()),
    };
    Ok(Some(Task { id }))
}

/// A challenge id the miner is willing to use in a file name.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The outcome of looking the challenge audio up among the baked videos.
enum Video {
    Delivered,
    Unknown,
}

/// Copies the baked video for the challenge audio to `/output/{id}.mp4` (atomically).
fn deliver_video(paths: &Paths, id: &str) -> io::Result<Video> {
    let audio = fs::read(paths.input.join("audio.wav"))?;
    let sha = hex(&Sha256::digest(&audio));
    let source = paths.videos.join(format!("{sha}.mp4"));
    if !source.is_file() {
        log(format_args!("no baked video for audio sha256 {sha}"));
        return Ok(Video::Unknown);
    }
    let name = format!("{id}.mp4");
    let tmp = paths.output.join(format!(".{name}.tmp"));
    let bytes = fs::copy(&source, &tmp)?;
    fs::rename(&tmp, paths.output.join(&name))?;
    log(format_args!("wrote {name} ({bytes} bytes, audio sha256 {sha})"));
    Ok(Video::Delivered)
}

/// The answer of a well-behaved miner, with `extra` fields merged into the result JSON, written no
/// earlier than `answer_at` (the video is delivered first).
fn answer_with_video(paths: &Paths, id: &str, extra: Map<String, Value>, answer_at: std::time::Instant) {
    let mut result = match deliver_video(paths, id) {
        Ok(Video::Delivered) => json!({"success": true}),
        Ok(Video::Unknown) => json!({"success": false, "error": "unknown challenge audio"}),
        Err(e) => {
            log(format_args!("cannot deliver the video: {e}"));
            json!({"success": false, "error": format!("cannot deliver the video: {e}")})
        }
    };
    if let Value::Object(map) = &mut result {
        map.extend(extra);
    }
    let wait = answer_at.saturating_duration_since(std::time::Instant::now());
    if !wait.is_zero() {
        log(format_args!("answering in {} ms", wait.as_millis()));
        sleep(wait);
    }
    write_result(paths, id, &result);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn outcome<T>(result: &io::Result<T>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

/// Replaces whatever is at `link` by a symlink to `target`.
fn plant_symlink(target: &str, link: &Path) {
    let _ = fs::remove_file(link);
    let result = std::os::unix::fs::symlink(target, link);
    log(format_args!(
        "symlink {} -> {target}: {}",
        link.display(),
        outcome(&result)
    ));
}

/// Sleeps forever (the `hang` behaviour, and `oom` should the allocator ever refuse).
fn sleep_forever() -> ! {
    loop {
        sleep(Duration::from_secs(3600));
    }
}

fn handle(config: &Config, paths: &Paths, id: &str) {
    let seen = std::time::Instant::now();
    let answers_on_time = matches!(
        config.behaviour,
        Behaviour::Good | Behaviour::Static | Behaviour::Slow
    );
    if !answers_on_time && !config.delay.is_zero() {
        log(format_args!(
            "sleeping {} ms before answering",
            config.delay.as_millis()
        ));
        sleep(config.delay);
    }
    match config.behaviour {
        // The answer lands `delay_ms` after the task was seen, whatever the video copy took (it is
        // done within the delay): a miner whose time is known exactly, for the timing bench.
        Behaviour::Good | Behaviour::Static | Behaviour::Slow => {
            answer_with_video(paths, id, Map::new(), seen + config.delay);
        }
        Behaviour::Crash => {
            log(format_args!("crashing with exit code {}", config.exit_code));
            std::process::exit(config.exit_code);
        }
        Behaviour::Hang => {
            log("hanging: this challenge will never be answered");
            sleep_forever();
        }
        Behaviour::Oom => {
            let step = config.oom_step_mib << 20;
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // A non-zero fill writes every page, so the memory is really resident.
                hoard.push(vec![0xa5; step]);
                std::hint::black_box(&hoard);
                log(format_args!("holding {} MiB", hoard.len() * config.oom_step_mib));
            }
        }
        Behaviour::GarbageJson => {
            if let Err(e) = deliver_video(paths, id) {
                log(format_args!("cannot deliver the video: {e}"));
            }
            let name = format!("{id}.json");
            match write_atomic(&paths.output, &name, br#"{"success": tru"#) {
                Ok(()) => log(format_args!("wrote truncated JSON to {name}")),
                Err(e) => log(format_args!("cannot write {name}: {e}")),
            }
        }
        Behaviour::SymlinkOutput => {
            plant_symlink("/etc/passwd", &paths.output.join(format!("{id}.mp4")));
            plant_symlink(HOST_LOOKING_TARGET, &paths.output.join("state.db"));
            if config.link_json {
                plant_symlink(HOST_LOOKING_TARGET, &paths.output.join(format!("{id}.json")));
            } else {
                write_result(paths, id, &json!({"success": true}));
            }
        }
        Behaviour::FillOutput => {
            let (written, full) = fill(paths, config.fill_max_mib);
            if full {
                // Give back just enough room for the answer, so the success can still be written.
                free_room(paths, written);
            }
            let mut extra = Map::new();
            extra.insert("fill_bytes".to_owned(), json!(written));
            answer_with_video(paths, id, extra, std::time::Instant::now());
        }
        Behaviour::Network => {
            let mut attempts = Map::new();
            let mut reached = false;
            for target in &config.targets {
                let (text, answered) = try_connect(target);
                log(format_args!("connect {target}: {text}"));
                reached |= answered;
                attempts.insert(target.clone(), json!(text));
            }
            let mut extra = Map::new();
            extra.insert(
                "network".to_owned(),
                json!(if reached { "REACHED" } else { "unreachable" }),
            );
            extra.insert("attempts".to_owned(), Value::Object(attempts));
            answer_with_video(paths, id, extra, std::time::Instant::now());
        }
        Behaviour::WriteInput => {
            let created = fs::write(paths.input.join("pwned"), b"written by talkhead-test-miner\n");
            log(format_args!("create /input/pwned: {}", outcome(&created)));
            let overwritten = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(paths.input.join("task.json"))
                .and_then(|mut f| {
                    f.write_all(json!({"challenge_id": id, "pwned": true}).to_string().as_bytes())
                });
            log(format_args!(
                "overwrite /input/task.json: {}",
                outcome(&overwritten)
            ));
            let mut extra = Map::new();
            extra.insert(
                "input_writable".to_owned(),
                json!(created.is_ok() || overwritten.is_ok()),
            );
            extra.insert(
                "attempts".to_owned(),
                json!({"create /input/pwned": outcome(&created), "overwrite /input/task.json": outcome(&overwritten)}),
            );
            answer_with_video(paths, id, extra, std::time::Instant::now());
        }
        Behaviour::GpuEnv => {
            let env: BTreeMap<String, String> = std::env::vars_os()
                .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
                .collect();
            for key in [
                "NVIDIA_VISIBLE_DEVICES",
                "CUDA_VISIBLE_DEVICES",
                "LD_PRELOAD",
                "TALKHEAD_GPU_SLOT",
            ] {
                log(format_args!(
                    "env {key}={}",
                    env.get(key).map_or("<unset>", String::as_str)
                ));
            }
            let mut extra = Map::new();
            extra.insert("env".to_owned(), json!(env));
            answer_with_video(paths, id, extra, std::time::Instant::now());
        }
        Behaviour::Error => {
            log(format_args!("error: {}", config.error));
            write_result(paths, id, &json!({"success": false, "error": config.error}));
        }
    }
}

/// `fill_output`: writes 1 MiB blocks to `/output/fill.bin` until a write fails; returns the bytes
/// written and whether a write failed (rather than `fill_max_mib` stopping it).
fn fill(paths: &Paths, max_mib: Option<u64>) -> (u64, bool) {
    let path = paths.output.join("fill.bin");
    let mut file = match File::create(&path) {
        Ok(file) => file,
        Err(e) => {
            log(format_args!("cannot create fill.bin: {e}"));
            return (0, true);
        }
    };
    let block = vec![0x5a_u8; 1 << 20];
    let mut written: u64 = 0;
    let full = loop {
        if max_mib.is_some_and(|max| written >= max << 20) {
            log(format_args!(
                "fill.bin reached fill_max_mib after {written} bytes"
            ));
            break false;
        }
        match file.write(&block) {
            Ok(0) => {
                log(format_args!("fill.bin: zero-length write after {written} bytes"));
                break true;
            }
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log(format_args!("fill.bin: write failed after {written} bytes: {e}"));
                break true;
            }
        }
    };
    if let Err(e) = file.sync_all() {
        log(format_args!("fill.bin: sync failed: {e}"));
    }
    (written, full)
}

/// Shrinks `fill.bin` by the size of the largest baked video plus 1 MiB, so the answer fits.
fn free_room(paths: &Paths, written: u64) {
    let largest = fs::read_dir(&paths.videos)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let keep = written.saturating_sub(largest + (1 << 20));
    let result = OpenOptions::new()
        .write(true)
        .open(paths.output.join("fill.bin"))
        .and_then(|f| f.set_len(keep));
    log(format_args!(
        "fill.bin: shrinking to {keep} bytes to make room for the answer: {}",
        outcome(&result)
    ));
}

/// One TCP connect with a 1 s timeout. Returns the outcome and whether anything answered (a refused
/// connection is an answer: the network was reached).
fn try_connect(target: &str) -> (String, bool) {
    let addr: SocketAddr = match target.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => addr,
        Ok(None) => return ("error: no address".to_owned(), false),
        Err(e) => return (format!("error: {e}"), false),
    };
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(_) => ("connected".to_owned(), true),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => (format!("refused: {e}"), true),
        Err(e) => (format!("error: {e}"), false),
    }
}

/// `uid=… gid=…` from /proc, for the start-up log line.
fn ids() -> String {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_owned()
    };
    format!("uid={} gid={}", field("Uid:"), field("Gid:"))
}

fn main() {
    let paths = Paths::from_env();
    let config = match fs::read_to_string(&paths.conf)
        .map_err(|e| e.to_string())
        .and_then(|t| Config::parse(&t))
    {
        Ok(config) => config,
        Err(e) => {
            log(format_args!("bad {}: {e}", paths.conf.display()));
            std::process::exit(EXIT_CONFIG);
        }
    };
    log(format_args!(
        "start behaviour={} pid={} {} delay_ms={} startup_delay_ms={}",
        config.behaviour.name(),
        std::process::id(),
        ids(),
        config.delay.as_millis(),
        config.startup_delay.as_millis()
    ));
    if !config.startup_delay.is_zero() {
        log(format_args!(
            "loading for {} ms",
            config.startup_delay.as_millis()
        ));
        sleep(config.startup_delay);
    }
    for n in 0..config.flood_entries {
        if let Err(e) = File::create(paths.output.join(format!("flood-{n}"))) {
            log(format_args!("flooding /output stopped at {n} entries: {e}"));
            break;
        }
    }
    if config.flood_entries > 0 {
        log(format_args!(
            "flooded /output with {} entries",
            config.flood_entries
        ));
    }
    for (id, sha) in &config.plant {
        let planted = fs::copy(
            paths.videos.join(format!("{sha}.mp4")),
            paths.output.join(format!("{id}.mp4")),
        )
        .and_then(|_| write_atomic(&paths.output, &format!("{id}.json"), br#"{"success": true}"#));
        log(format_args!("planted an answer for {id}: {}", outcome(&planted)));
    }
    if config.write_ready {
        if let Err(e) = write_atomic(&paths.output, "ready.txt", b"ready\n") {
            log(format_args!("cannot write ready.txt: {e}"));
            std::process::exit(EXIT_NO_OUTPUT);
        }
        log("ready");
    } else {
        log("ready=never: not writing ready.txt");
    }

    REPORT_TIMES.store(config.report_times, std::sync::atomic::Ordering::Relaxed);
    let mut last_id: Option<String> = None;
    let mut last_problem: Option<String> = None;
    loop {
        match read_task(&paths) {
            Ok(Some(task)) if !config.plant.is_empty() => {
                if last_id.as_deref() != Some(task.id.as_str()) {
                    log(format_args!(
                        "task challenge_id={}: not answering (planted answers)",
                        task.id
                    ));
                    last_id = Some(task.id);
                }
            }
            Ok(Some(task)) if last_id.as_deref() != Some(task.id.as_str()) => {
                TASK_SEEN.store(unix_now().to_bits(), std::sync::atomic::Ordering::Relaxed);
                last_problem = None;
                last_id = Some(task.id.clone());
                if safe_id(&task.id) {
                    log(format_args!("task challenge_id={}", task.id));
                    handle(&config, &paths, &task.id);
                } else {
                    log(format_args!("refusing unsafe challenge_id {:?}", task.id));
                }
            }
            Ok(_) => {}
            // A task being written, or a bad one: say so once, and look again.
            Err(problem) => {
                if last_problem.as_deref() != Some(problem.as_str()) {
                    log(&problem);
                    last_problem = Some(problem);
                }
            }
        }
        sleep(config.poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines_and_defaults() {
        let c = Config::parse("behaviour=slow\n").unwrap();
        assert_eq!(c.behaviour, Behaviour::Slow);
        assert_eq!(c.delay, Duration::from_millis(3000));
        let c =
            Config::parse("# test\nbehaviour=good delay_ms=250 startup_delay_ms=10\nready=never\n").unwrap();
        assert_eq!(c.delay, Duration::from_millis(250));
        assert_eq!(c.startup_delay, Duration::from_millis(10));
        assert!(!c.write_ready);
        let c = Config::parse(
            "behaviour=error\nerror=no kernel image is available for execution on the device\n",
        )
        .unwrap();
        assert_eq!(
            c.error,
            "no kernel image is available for execution on the device"
        );
        assert!(Config::parse("behaviour=nope").is_err());
        assert!(Config::parse("behaviour=good colour=blue").is_err());
        assert!(Config::parse("delay_ms=3").is_err());
    }

    #[test]
    fn loading_options_parse_and_refuse_malformed_pairs() {
        let c = Config::parse("behaviour=good flood_entries=10001 plant=c-0:ab,c-1:cd\n").unwrap();
        assert_eq!(c.flood_entries, 10001);
        assert_eq!(
            c.plant,
            vec![
                ("c-0".to_owned(), "ab".to_owned()),
                ("c-1".to_owned(), "cd".to_owned())
            ]
        );
        let c = Config::parse("behaviour=good\n").unwrap();
        assert_eq!((c.flood_entries, c.plant.len()), (0, 0));
        assert!(Config::parse("behaviour=good plant=c-0\n").is_err());
        assert!(Config::parse("behaviour=good flood_entries=many\n").is_err());
    }

    #[test]
    fn every_behaviour_name_round_trips() {
        for (name, b) in Behaviour::NAMES {
            assert_eq!(Behaviour::parse(name), Some(b));
            assert_eq!(b.name(), name);
        }
    }

    #[test]
    fn ids_that_could_escape_output_are_refused() {
        assert!(safe_id("challenge-2"));
        assert!(safe_id("warmup_0.a"));
        for bad in ["", ".", "..", "../x", "a/b", "a\nb", &"x".repeat(129)] {
            assert!(!safe_id(bad), "{bad:?}");
        }
    }
}
