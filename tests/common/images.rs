//! The test miner's images: built FROM scratch through the Docker API, pushed to the local registry
//! (`127.0.0.1:5000`, Debian's docker-registry, see `tests/registry.yml`) and named by digest, the way
//! a miner submits them.
//!
//! [`build_and_push_miner`] does the whole job for one [`Behaviour`]:
//!
//! 1. builds the static `talkhead-test-miner` binary and the host-side `render-demo-video` tool once
//!    per process (`cargo build --release --target x86_64-unknown-linux-gnu` with
//!    `-C target-feature=+crt-static`, into `target/test-miner`);
//! 2. renders the demo video of every challenge in the challenge directory once per process, for
//!    the mode the behaviour needs (talking or static face), cached on disk under
//!    `target/test-miner/videos` by audio SHA-256, face SHA-256 and mode;
//! 3. builds an image with the classic builder from an in-memory tar context: `/miner`,
//!    `/miner.conf` (the behaviour and its options), `/videos/<audio sha256>.mp4`, and
//!    `ENTRYPOINT ["/miner"]` (no `USER`: the daemon chooses the user);
//! 4. tags it `127.0.0.1:5000/talkhead-test/<behaviour>:<unique tag>` and pushes it;
//! 5. reads the manifest digest from the push stream and checks it against the registry (`HEAD
//!    /v2/<name>/manifests/<tag>`, `Docker-Content-Digest`);
//! 6. removes the local image, so that whoever runs the reference really pulls it.
//!
//! Results are memoised per process: asking twice for the same behaviour, options and challenge
//! directory returns the same reference. The module is included by the integration tests of the
//! `talkheadd` package (`#[path = "common/images.rs"] mod images;` or `common::images`).

#![allow(dead_code)]

use anyhow::{Context, Result, anyhow, bail, ensure};
use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The local registry the images are pushed to.
pub const REGISTRY: &str = "127.0.0.1:5000";
/// Repository prefix: images are `127.0.0.1:5000/talkhead-test/<behaviour>`.
pub const REPOSITORY_PREFIX: &str = "talkhead-test";
/// The target the static miner is built for.
const TARGET_TRIPLE: &str = "x86_64-unknown-linux-gnu";
/// Bumped whenever the renderer's output changes, so stale cached videos are not reused.
const RENDER_VERSION: u32 = 1;
/// Upper bound for one image build and for one push or pull.
pub const DOCKER_STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// What the miner in an image does with a challenge (`behaviour=` in its `/miner.conf`; see
/// `tests/miner/README.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Behaviour {
    /// Answers every challenge with its pre-rendered talking video.
    Good,
    /// Answers with a frozen face (no mouth motion).
    Static,
    /// Like `Good`, after `delay_ms` (default 3000).
    Slow,
    /// Exits with code 3 on the first task.
    Crash,
    /// Never answers.
    Hang,
    /// Allocates and touches memory in 64 MiB steps, forever.
    Oom,
    /// Writes the video, then `{"success": tru`.
    GarbageJson,
    /// Writes its video as a symlink to `/etc/passwd` (and `state.db` to a host-looking path).
    SymlinkOutput,
    /// Writes `/output/fill.bin` until a write fails, then answers success.
    FillOutput,
    /// Tries TCP connects and reports `"network": "unreachable" | "REACHED"`.
    Network,
    /// Tries to write `/input` and reports `"input_writable"`.
    WriteInput,
    /// Its image sets GPU-selection variables and `LD_PRELOAD`; reports the environment it sees.
    GpuEnv,
    /// Answers `{"success": false, "error": <error option>}` (default a CUDA out-of-memory message).
    Error,
}

/// How the face in a baked video moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoMode {
    /// The mouth opens with the audio's loudness.
    Talking,
    /// A frozen face.
    Static,
}

impl VideoMode {
    /// The renderer's `--mode` value.
    pub fn name(self) -> &'static str {
        match self {
            VideoMode::Talking => "talking",
            VideoMode::Static => "static",
        }
    }
}

impl Behaviour {
    /// Every behaviour.
    pub const ALL: [Behaviour; 13] = [
        Behaviour::Good,
        Behaviour::Static,
        Behaviour::Slow,
        Behaviour::Crash,
        Behaviour::Hang,
        Behaviour::Oom,
        Behaviour::GarbageJson,
        Behaviour::SymlinkOutput,
        Behaviour::FillOutput,
        Behaviour::Network,
        Behaviour::WriteInput,
        Behaviour::GpuEnv,
        Behaviour::Error,
    ];

    /// The name in `/miner.conf`, and the image's repository name.
    pub fn name(self) -> &'static str {
        match self {
            Behaviour::Good => "good",
            Behaviour::Static => "static",
            Behaviour::Slow => "slow",
            Behaviour::Crash => "crash",
            Behaviour::Hang => "hang",
            Behaviour::Oom => "oom",
            Behaviour::GarbageJson => "garbage_json",
            Behaviour::SymlinkOutput => "symlink_output",
            Behaviour::FillOutput => "fill_output",
            Behaviour::Network => "network",
            Behaviour::WriteInput => "write_input",
            Behaviour::GpuEnv => "gpu_env",
            Behaviour::Error => "error",
        }
    }

    /// The videos baked into the image, if the behaviour ever delivers one.
    pub fn videos(self) -> Option<VideoMode> {
        match self {
            Behaviour::Static => Some(VideoMode::Static),
            Behaviour::Good
            | Behaviour::Slow
            | Behaviour::GarbageJson
            | Behaviour::FillOutput
            | Behaviour::Network
            | Behaviour::WriteInput
            | Behaviour::GpuEnv => Some(VideoMode::Talking),
            Behaviour::Crash
            | Behaviour::Hang
            | Behaviour::Oom
            | Behaviour::SymlinkOutput
            | Behaviour::Error => None,
        }
    }

    /// `ENV` lines of the image.
    pub fn image_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Behaviour::GpuEnv => &[
                ("NVIDIA_VISIBLE_DEVICES", "all"),
                ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
                ("LD_PRELOAD", "/nonexistent.so"),
            ],
            _ => &[],
        }
    }

    /// The image repository, `127.0.0.1:5000/talkhead-test/<name>`.
    pub fn repository(self) -> String {
        format!("{REGISTRY}/{REPOSITORY_PREFIX}/{}", self.name())
    }
}

/// An image in the local registry.
#[derive(Clone, Debug)]
pub struct PushedMiner {
    /// `127.0.0.1:5000/talkhead-test/<behaviour>@sha256:<digest>`.
    pub reference: String,
    /// `sha256:<64 hex>`: the registry's manifest digest.
    pub digest: String,
    /// The image's size as the engine reported it before it was removed.
    pub image_bytes: u64,
    /// Building the image (context tar and build), not counting the binary and videos.
    pub build_time: Duration,
    /// Pushing it and reading the digest back.
    pub push_time: Duration,
}

/// The repository's root (the directory holding `tests/miner`): `TALKHEAD_REPO_ROOT`, or the first
/// ancestor of this package's manifest directory that has `tests/miner/Cargo.toml`.
pub fn repo_root() -> Result<PathBuf> {
    if let Some(root) = std::env::var_os("TALKHEAD_REPO_ROOT") {
        return Ok(PathBuf::from(root));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("tests/miner/Cargo.toml").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            anyhow!(
                "no tests/miner/Cargo.toml above {}; set TALKHEAD_REPO_ROOT",
                env!("CARGO_MANIFEST_DIR")
            )
        })
}

/// `<target dir>/test-miner`, where the miner is built and the videos are cached (`CARGO_TARGET_DIR`
/// when set, else the repository's `target/`).
pub fn work_dir() -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root()?.join("target"),
    };
    Ok(target.join("test-miner"))
}

/// The two binaries of the `talkhead-test-miner` crate.
#[derive(Clone, Debug)]
pub struct MinerBinaries {
    /// The static miner, copied into every image as `/miner`.
    pub miner: PathBuf,
    /// The host-side video renderer.
    pub renderer: PathBuf,
}

/// Builds the test-miner crate once per process (blocking; cargo's own lock keeps concurrent
/// processes apart) and checks that the miner is statically linked.
pub fn miner_binaries() -> Result<MinerBinaries> {
    static BUILT: OnceLock<std::result::Result<MinerBinaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_miner_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_miner_binaries() -> Result<MinerBinaries> {
    let manifest = repo_root()?.join("tests/miner/Cargo.toml");
    let target_dir = work_dir()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let out = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--bins",
            "--target",
            TARGET_TRIPLE,
            "--manifest-path",
        ])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Takes precedence over RUSTFLAGS when set, e.g. by an outer cargo.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .with_context(|| format!("running {cargo:?} build for {}", manifest.display()))?;
    ensure!(
        out.status.success(),
        "building the test miner failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let bin_dir = target_dir.join(TARGET_TRIPLE).join("release");
    let binaries = MinerBinaries {
        miner: bin_dir.join("talkhead-test-miner"),
        renderer: bin_dir.join("render-demo-video"),
    };
    let elf =
        std::fs::read(&binaries.miner).with_context(|| format!("reading {}", binaries.miner.display()))?;
    ensure!(
        is_static_elf(&elf)?,
        "{} has an ELF interpreter: it is not statically linked and cannot run FROM scratch",
        binaries.miner.display()
    );
    eprintln!(
        "images: built the test miner in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(binaries)
}

/// Whether a 64-bit little-endian ELF file has no `PT_INTERP` program header (no dynamic loader).
fn is_static_elf(elf: &[u8]) -> Result<bool> {
    ensure!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not an ELF64 LE file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = elf
            .get(at..at + 4)
            .ok_or_else(|| anyhow!("truncated program headers"))?;
        if u32::from_le_bytes(p_type.try_into()?) == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One rendered demo video.
#[derive(Clone, Debug)]
pub struct DemoVideo {
    /// The challenge directory's name.
    pub challenge: String,
    /// Hex SHA-256 of the challenge's `audio.wav`: the video's name in the image.
    pub audio_sha256: String,
    /// The cached MP4.
    pub path: PathBuf,
}

/// The challenges of a directory (sub-directories holding `face.png` and `audio.wav`), sorted.
pub fn challenges(challenges_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in
        std::fs::read_dir(challenges_dir).with_context(|| format!("reading {}", challenges_dir.display()))?
    {
        let path = entry?.path();
        if path.join("face.png").is_file() && path.join("audio.wav").is_file() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push((name, path));
        }
    }
    found.sort();
    ensure!(
        !found.is_empty(),
        "no challenge (face.png + audio.wav) under {}",
        challenges_dir.display()
    );
    Ok(found)
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Renders (or finds in the cache) the video of every challenge in `challenges_dir` (blocking).
pub fn demo_videos(challenges_dir: &Path, mode: VideoMode) -> Result<Vec<DemoVideo>> {
    type Memo = Mutex<HashMap<(PathBuf, VideoMode), Vec<DemoVideo>>>;
    static RENDERED: OnceLock<Memo> = OnceLock::new();
    let memo = RENDERED.get_or_init(Default::default);
    let key = (challenges_dir.to_path_buf(), mode);
    if let Some(videos) = memo.lock().map_err(|_| anyhow!("video memo poisoned"))?.get(&key) {
        return Ok(videos.clone());
    }
    let renderer = miner_binaries()?.renderer;
    let cache = work_dir()?.join("videos");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let started = Instant::now();
    let mut rendered = 0;
    let mut videos = Vec::new();
    for (challenge, dir) in challenges(challenges_dir)? {
        let (face, audio) = (dir.join("face.png"), dir.join("audio.wav"));
        let audio_sha256 = sha256_file(&audio)?;
        let face_sha256 = sha256_file(&face)?;
        let path = cache.join(format!(
            "{}-{audio_sha256}-{}-v{RENDER_VERSION}.mp4",
            mode.name(),
            &face_sha256[..16]
        ));
        if !path.is_file() {
            // A name of our own, renamed into place: concurrent processes never see half a video.
            let tmp = cache.join(format!(
                ".{}.{}.mp4",
                path.file_stem().unwrap_or_default().to_string_lossy(),
                std::process::id()
            ));
            let out = Command::new(&renderer)
                .arg("--face")
                .arg(&face)
                .arg("--audio")
                .arg(&audio)
                .args(["--mode", mode.name(), "--out"])
                .arg(&tmp)
                .output()
                .with_context(|| format!("running {}", renderer.display()))?;
            ensure!(
                out.status.success(),
                "rendering {challenge} ({}) failed: {}",
                mode.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            std::fs::rename(&tmp, &path).with_context(|| format!("renaming into {}", path.display()))?;
            rendered += 1;
        }
        videos.push(DemoVideo {
            challenge,
            audio_sha256,
            path,
        });
    }
    if rendered > 0 {
        eprintln!(
            "images: rendered {rendered} {} video(s) in {:.1} s",
            mode.name(),
            started.elapsed().as_secs_f64()
        );
    }
    memo.lock()
        .map_err(|_| anyhow!("video memo poisoned"))?
        .insert(key, videos.clone());
    Ok(videos)
}

/// A Docker client for the local engine, its API version negotiated (Debian's docker.io may be
/// older than bollard's default API version).
pub async fn docker() -> Result<Docker> {
    let docker = Docker::connect_with_local_defaults()
        .context("Docker engine not reachable at the local socket: install docker.io and start it")?
        .negotiate_version()
        .await
        .context("Docker engine not reachable at the local socket: install docker.io and start it")?;
    docker.ping().await.context("pinging the Docker engine")?;
    Ok(docker)
}

/// Checks that the local registry answers `GET /v2/`.
pub fn check_registry() -> Result<()> {
    let (status, _) = http_request("GET", "/v2/", &[]).with_context(|| {
        format!("local registry not reachable at {REGISTRY}: run tests/setup.sh, or `docker-registry serve tests/registry.yml &`")
    })?;
    ensure!(
        status == 200,
        "local registry at {REGISTRY} answered {status} to GET /v2/"
    );
    Ok(())
}

/// A minimal HTTP/1.1 request to the registry (no body), returning the status and the headers with
/// lower-cased names.
fn http_request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, HashMap<String, String>)> {
    let mut stream = TcpStream::connect_timeout(&REGISTRY.parse()?, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {REGISTRY}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    // The headers are all we need; the bodies are small (GET /v2/ is `{}`).
    stream.take(1 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("no HTTP status line from {REGISTRY}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok((status, headers))
}

/// The registry's digest for `<name>:<tag>` (a `HEAD` on the manifest, asking for a Docker v2 or OCI
/// manifest).
pub fn registry_digest(name: &str, tag: &str) -> Result<String> {
    let accept =
        "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json";
    let (status, headers) = http_request(
        "HEAD",
        &format!("/v2/{name}/manifests/{tag}"),
        &[("Accept", accept)],
    )?;
    ensure!(status == 200, "HEAD /v2/{name}/manifests/{tag} answered {status}");
    headers
        .get("docker-content-digest")
        .cloned()
        .ok_or_else(|| anyhow!("no Docker-Content-Digest for {name}:{tag}"))
}

/// Builds, pushes and un-caches the image of `behaviour` baking the videos of `challenges_dir`;
/// returns `127.0.0.1:5000/talkhead-test/<behaviour>@sha256:<digest>`.
pub async fn build_and_push_miner(behaviour: Behaviour, challenges_dir: &Path) -> Result<String> {
    Ok(build_and_push_miner_with(behaviour, &[], challenges_dir)
        .await?
        .reference)
}

/// Builds and pushes one image per `(behaviour, options)`, in order, from a blocking test; their
/// digest-pinned references.
pub fn build_and_push_all(behaviours: &[(Behaviour, &[(&str, &str)])], challenges_dir: &Path) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut refs = Vec::new();
        for (b, options) in behaviours {
            let pushed = build_and_push_miner_with(*b, options, challenges_dir)
                .await
                .unwrap();
            refs.push(pushed.reference);
        }
        refs
    })
}

/// [`build_and_push_miner`] with extra `/miner.conf` options (`("delay_ms", "500")`,
/// `("startup_delay_ms", "…")`, `("ready", "never")`, `("error", "…")`, …), and the timings. An option
/// named `env.NAME` is an `ENV NAME="value"` line of the image instead (e.g. a declared
/// `NVIDIA_REQUIRE_CUDA`).
pub async fn build_and_push_miner_with(
    behaviour: Behaviour,
    options: &[(&str, &str)],
    challenges_dir: &Path,
) -> Result<PushedMiner> {
    static PUSHED: OnceLock<tokio::sync::Mutex<HashMap<String, PushedMiner>>> = OnceLock::new();
    let key = format!("{}|{options:?}|{}", behaviour.name(), challenges_dir.display());
    // Held across the build: one image build at a time in a process, and each only once.
    let mut pushed = PUSHED.get_or_init(Default::default).lock().await;
    if let Some(miner) = pushed.get(&key) {
        return Ok(miner.clone());
    }
    let miner = build_push_uncached(behaviour, options, challenges_dir)
        .await
        .with_context(|| format!("building the `{}` test miner image", behaviour.name()))?;
    pushed.insert(key, miner.clone());
    Ok(miner)
}

async fn build_push_uncached(
    behaviour: Behaviour,
    options: &[(&str, &str)],
    challenges_dir: &Path,
) -> Result<PushedMiner> {
    for (key, value) in options {
        ensure!(
            !key.is_empty() && !key.contains(['=', '\n', ' ']) && !value.contains(['\n', '"', '\\']),
            "bad miner option {key:?}={value:?}"
        );
    }
    check_registry()?;
    let docker = docker().await?;
    let dir = challenges_dir.to_path_buf();
    let (binaries, videos) = tokio::task::spawn_blocking(move || -> Result<_> {
        let binaries = miner_binaries()?;
        let videos = match behaviour.videos() {
            Some(mode) => demo_videos(&dir, mode)?,
            None => Vec::new(),
        };
        Ok((binaries, videos))
    })
    .await??;

    let started = Instant::now();
    let context = build_context(behaviour, options, &binaries.miner, &videos)?;
    let repository = behaviour.repository();
    // Unique per build: concurrent processes never remove each other's tag.
    let tag = format!(
        "build-{}-{}",
        std::process::id(),
        &hex::encode(Sha256::digest(&context))[..12]
    );
    let tagged = format!("{repository}:{tag}");
    let build_options = BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(&tagged)
        .rm(true)
        .forcerm(true)
        .build();
    let mut log = String::new();
    let build = async {
        let mut stream = docker.build_image(build_options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| anyhow!("{e}\n{log}"))?;
            if let Some(text) = info.stream {
                log.push_str(&text);
            }
            if let Some(detail) = info.error_detail {
                bail!("{}\n{log}", detail.message.unwrap_or_default());
            }
        }
        Ok(())
    };
    tokio::time::timeout(DOCKER_STEP_TIMEOUT, build)
        .await
        .context("image build timed out")??;
    let inspect = docker
        .inspect_image(&tagged)
        .await
        .with_context(|| format!("inspecting {tagged}"))?;
    let image_bytes = inspect.size.unwrap_or_default().max(0) as u64;
    let build_time = started.elapsed();

    let started = Instant::now();
    let result = push_and_resolve(&docker, &repository, &tag).await;
    // Always drop the local copy, pushed or not: the daemon's pull must really pull.
    let removed = docker
        .remove_image(
            &tagged,
            Some(RemoveImageOptionsBuilder::default().force(true).build()),
            None,
        )
        .await
        .with_context(|| format!("removing the local image {tagged}"));
    let digest = result?;
    removed?;
    let push_time = started.elapsed();
    let reference = format!("{repository}@{digest}");
    eprintln!(
        "images: {reference} ({} KiB; build {:.2} s, push {:.2} s)",
        image_bytes / 1024,
        build_time.as_secs_f64(),
        push_time.as_secs_f64()
    );
    Ok(PushedMiner {
        reference,
        digest,
        image_bytes,
        build_time,
        push_time,
    })
}

/// Pushes `<repository>:<tag>` and returns the registry's manifest digest, read from the push
/// stream and confirmed by a `HEAD` on the manifest.
async fn push_and_resolve(docker: &Docker, repository: &str, tag: &str) -> Result<String> {
    let push = async {
        let mut from_stream = None;
        let mut stream = docker.push_image(
            repository,
            Some(PushImageOptionsBuilder::default().tag(tag).build()),
            None,
        );
        while let Some(item) = stream.next().await {
            let info = item.with_context(|| format!("pushing {repository}:{tag}"))?;
            // The last status reads "<tag>: digest: sha256:<hex> size: <n>".
            if let Some(rest) = info.status.as_deref().and_then(|s| s.split("digest: ").nth(1)) {
                from_stream = rest.split_whitespace().next().map(str::to_owned);
            }
        }
        Ok::<_, anyhow::Error>(from_stream)
    };
    let from_stream = tokio::time::timeout(DOCKER_STEP_TIMEOUT, push)
        .await
        .context("push timed out")??;
    let name = repository
        .strip_prefix(&format!("{REGISTRY}/"))
        .unwrap_or(repository)
        .to_owned();
    let tag_owned = tag.to_owned();
    let from_registry = tokio::task::spawn_blocking(move || registry_digest(&name, &tag_owned)).await??;
    if let Some(pushed) = &from_stream {
        ensure!(
            pushed == &from_registry,
            "push reported {pushed} but the registry serves {from_registry}"
        );
    }
    ensure!(
        from_registry.len() == 71 && from_registry.starts_with("sha256:"),
        "unexpected digest {from_registry:?}"
    );
    Ok(from_registry)
}

/// Options with this prefix are image environment variables, not `/miner.conf` lines.
const IMAGE_ENV_OPTION: &str = "env.";

/// The in-memory build context: `Dockerfile`, `miner`, `miner.conf` and `videos/<sha256>.mp4`.
fn build_context(
    behaviour: Behaviour,
    options: &[(&str, &str)],
    miner: &Path,
    videos: &[DemoVideo],
) -> Result<Vec<u8>> {
    let mut dockerfile = String::from("FROM scratch\nCOPY miner /miner\nCOPY miner.conf /miner.conf\n");
    if !videos.is_empty() {
        dockerfile.push_str("COPY videos/ /videos/\n");
    }
    for (name, value) in behaviour.image_env() {
        dockerfile.push_str(&format!("ENV {name}={value}\n"));
    }
    let (image_env, options): (Vec<_>, Vec<_>) = options
        .iter()
        .partition(|(key, _)| key.starts_with(IMAGE_ENV_OPTION));
    for (key, value) in image_env {
        let name = &key[IMAGE_ENV_OPTION.len()..];
        dockerfile.push_str(&format!("ENV {name}=\"{value}\"\n"));
    }
    dockerfile.push_str(&format!(
        "LABEL talkhead.test-miner.behaviour=\"{}\"\nENTRYPOINT [\"/miner\"]\n",
        behaviour.name()
    ));
    let mut conf = format!("behaviour={}\n", behaviour.name());
    for (key, value) in options {
        conf.push_str(&format!("{key}={value}\n"));
    }

    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        // Fixed metadata: the same inputs give the same layers.
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, data)
            .with_context(|| format!("adding {path} to the build context"))
    };
    add("Dockerfile", 0o644, dockerfile.as_bytes())?;
    add("miner.conf", 0o644, conf.as_bytes())?;
    let binary = std::fs::read(miner).with_context(|| format!("reading {}", miner.display()))?;
    add("miner", 0o755, &binary)?;
    for video in videos {
        let bytes =
            std::fs::read(&video.path).with_context(|| format!("reading {}", video.path.display()))?;
        add(&format!("videos/{}.mp4", video.audio_sha256), 0o644, &bytes)?;
    }
    tar.into_inner().context("finishing the build context")
}

/// Pulls an image by reference (normally digest-pinned) and returns how long it took.
pub async fn pull(docker: &Docker, reference: &str) -> Result<Duration> {
    let started = Instant::now();
    let pull = async {
        let mut stream = docker.create_image(
            Some(CreateImageOptionsBuilder::default().from_image(reference).build()),
            None,
            None,
        );
        while let Some(item) = stream.next().await {
            item.with_context(|| format!("pulling {reference}"))?;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(DOCKER_STEP_TIMEOUT, pull)
        .await
        .with_context(|| format!("pulling {reference} timed out"))??;
    Ok(started.elapsed())
}

/// Removes a local image if it is there (by reference or id); `Ok(false)` when it was not.
pub async fn remove_local_image(docker: &Docker, reference: &str) -> Result<bool> {
    match docker
        .remove_image(
            reference,
            Some(RemoveImageOptionsBuilder::default().force(true).build()),
            None,
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {reference}")),
    }
}
