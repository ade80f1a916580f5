//! # talkheadd
//!
//! The evaluation executor of the Talkhead subnet as a production daemon. Miners submit Docker images
//! (pinned by digest) that turn a face image and a speech clip into a talking-head video; talkheadd keeps
//! the table of submissions, evaluates every image on the round's challenges, scores the outputs and
//! commits results round by round for the validator process to read.
//!
//! ## Architecture
//!
//! One submission's path, from the validator's `POST /update` to the `GET /metrics` that pays on it:
//!
//! ```text
//! POST /update ─► api::http ─► api::auth ─► service ─► store ◄─► rounds (pure: upsert, stage, commit)
//!                                             │ wake
//!                                             ▼
//!   engine::rounds_loop ─► challenges (round's set) ─► gpu::placement (one run per GPU slot)
//!                                             │
//!                                             ▼
//!   engine::run ─► runtime::images/pull ─► runtime::spec ─► runtime::job ◄─► miner container
//!                  (gpu: CUDA check, host-side VRAM)
//!                                                               │ outputs collected, container removed
//!                                                               ▼
//!   analysis (sandboxed decode, components) ─► scoring ─► engine::metrics ─► store: stage
//!                                                                              │ commit
//!                                                                              ▼
//! GET /metrics ◄─ api::http ◄─ api::auth ◄─ service ◄─────────────────────── store: committed
//! ```
//!
//! 1. **Arrival.** [`api::http`] (hyper) caps connections and request time, refuses an oversized body
//!    while streaming, and hands the headers to [`api::auth`], which checks the sr25519 signature
//!    (the reference's legacy scheme or `talkhead-v1`) against the allow-list of *public* hotkeys
//!    before any body byte is trusted. The batch is validated whole into [`domain`] types
//!    ([`domain::Hotkey`], [`domain::ImageRef`], [`domain::Submission`]); any bad item refuses all of
//!    it, with the one error → status mapping of [`api::error`].
//! 2. **Upsert.** [`service`] runs the operation on a blocking thread: [`store`] (one LMDB file, one
//!    decision = one write transaction) reads the miners concerned and applies what
//!    [`rounds::plan_upsert`] decides. A new image takes a fresh generation (results computed for an
//!    older one are stale) and drops the miner's committed metrics; a new `submit_time` alone keeps
//!    them; `metrics_version`, the ETag, moves when `/metrics` would change. The service then wakes
//!    the evaluation loop.
//! 3. **Scheduling.** [`engine::rounds_loop`] is the only writer of results. Each tick it feeds the
//!    systemd watchdog, gathers a snapshot and applies what the pure [`engine::plan`] decides over it
//!    (effects in [`engine`]'s dispatch, slot, gate and challenge-set modules): it asks the store for
//!    the open round's pending tickets, fixes the round's challenge set once ([`challenges`]: a local
//!    directory or the Subnet API's `GET /challenge`, signed by [`challenges::Signer`]; every face,
//!    clip and id validated, the set persisted by hash so a restart resumes it), applies operator
//!    blocks and [`engine::duplicates`], and places tickets on free GPU slots with the pure
//!    [`gpu::placement`]. Slots come from the [`gpu`] inventory (NVML, or
//!    virtual slots), minus drained and quarantined GPUs ([`gpu::health`]); [`engine::gate`] holds
//!    every dispatch while the Docker engine is unreachable or not yet swept, and [`engine::tasks`]
//!    frees a slot however its run task ends. With `gpu.calibration_image`, [`engine::calibration`]
//!    times a reference image on each GPU once per round.
//! 4. **One run.** [`engine::run`], on its slot: [`runtime::images`] pulls by digest through
//!    [`runtime::docker`] (bollard) into a bounded cache, [`runtime::pull`] says whose fault a failed
//!    pull is, and [`gpu::cuda_requirement`] checks the image's declared CUDA needs against the GPU.
//!    [`runtime::spec`] builds the hardened container body (no network, read-only root, one GPU by
//!    UUID, non-root user, limits), audited against an allow-list: this is the security boundary.
//!    [`runtime::job`] speaks the miner file protocol: `/input` read-only and written atomically,
//!    `ready.txt`, then each warm-up and scored challenge's `face.png`, `audio.wav` and `task.json`,
//!    results detected by inotify, refused when stale, opened without following links and copied out of
//!    the container's reach, `/output` held to its quota. Time is measured on the host, peak VRAM by
//!    [`gpu::vram`] over the container's cgroup ([`gpu::cgroup`]). [`engine::verdicts`] turns exits,
//!    OOM kills, the miner's own error text and the daemon's kills into a [`domain::Verdict`];
//!    failures of the host are `infra_error`, retried with backoff and never scored.
//! 5. **Analysis and score.** Only after the container is removed, [`analysis`] decodes each collected
//!    video in a sandboxed ffprobe/ffmpeg ([`analysis::decode`], which also turns a malformed or
//!    out-of-spec file into `bad_output`) and computes the components natively
//!    ([`analysis::components`], with [`analysis::face`] and the optional [`analysis::asr`]), through
//!    [`analysis::pipeline`]. [`scoring`] is pure arithmetic: per-challenge quality (blend, gates, WER
//!    hard fail), efficiency (norms, factor, caps) and the run score, with every constant in
//!    [`scoring::ScoringConfig`]. [`engine::metrics`] assembles the reference-shaped
//!    [`domain::EvaluationMetrics`] with talkheadd's additive fields.
//! 6. **Stage and commit.** The store stages the result only if the ticket's generation and round
//!    are still current ([`rounds::plan_stage`]), and records the run in the miner's history. When no
//!    miner of the round is pending, [`rounds::plan_commit`] commits every staged result in one
//!    transaction, opens the next round (its ranking for the `top_k` re-evaluation policy is
//!    [`scoring::rank`]) and moves `metrics_version`.
//! 7. **Serving.** `GET /metrics` goes through [`api::http`] and [`api::auth`] again (unless
//!    `auth.public_metrics`). The gateway answers `304` when `If-None-Match` names the current
//!    `metrics_version`; otherwise [`service`] serves the body, rendered once per version from the
//!    committed metrics JSON the store holds, with the version's weak ETag. `GET /healthz` and
//!    `GET /prometheus` ([`api::prom`]) need no signature.
//!
//! Around that path:
//! - [`events`]: every stage, challenge, verdict and commit goes to a bounded, sequence-numbered event
//!   log and a live per-GPU board, which publishing never blocks.
//! - [`admin`]: gRPC (`talkhead.admin.v1`) on a Unix socket for `talkheadctl`, authorised by the
//!   caller's kernel credentials; its operations (status, miners, runs, scores, `watch`, pause,
//!   re-evaluate, drain, block, reload) are [`service::admin`]'s, over the same [`service`] as HTTP.
//! - [`config`]: TOML, drop-ins and the reference's `PORT`, `STATE_FILE` and `SUBNET_API_URL` into
//!   validated [`config::Settings`] (exit 78 on any problem), and which keys a reload can apply.
//! - [`daemon`]: the lifecycle: open the store, reconcile the containers a previous process left, bind
//!   the listeners, start the loop, then `READY=1`; on SIGTERM drain and close the store.
//! - [`models`]: `talkheadd models fetch | verify`: the face and speech backends' model files and ONNX
//!   Runtime, downloaded (or copied) and checked against a manifest of sizes and SHA-256 hashes.
//! - [`systemd`]: `READY`/`STATUS`/`WATCHDOG`/`STOPPING` notifications and socket activation.
//! - [`logging`]: plain, JSON or journald output, with `RUN_ID`, `MINER_HOTKEY`, `VERDICT` and the
//!   other fields as journal fields.
//! - [`clock`]: wall-clock time behind a trait, so signature windows and timestamps can be stepped in
//!   tests.
//! - [`domain`]: the validated types every layer shares, parsed once at the edge.
//!
//! The reference Python executor that all this is compatible with, and where talkheadd deliberately
//! differs from it, is described in `docs/reference.md`.
//!
//! ## Threat model
//!
//! The host also holds the validator's keys. Everything a miner controls (its image, what its container
//! writes) and everything that arrives over the network (HTTP bodies and headers, challenge payloads) is
//! hostile. HTTP callers are authenticated by sr25519 signatures from an allow-list of *public* hotkeys, so
//! the executor never needs a private key; bodies are bounded while streaming and validated whole before
//! anything is stored. Infrastructure failures are never charged to a miner.

pub mod admin;
pub mod analysis;
pub mod api;
pub mod challenges;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod engine;
pub mod events;
pub mod gpu;
#[cfg(test)]
mod layering;
pub mod logging;
pub mod models;
pub mod rounds;
pub mod runtime;
pub mod scoring;
pub mod service;
pub mod store;
pub mod systemd;

/// What this binary was built as: the profile, and the commit when the build sets `TALKHEADD_BUILD`
/// (the package build does).
pub const BUILD: &str = match option_env!("TALKHEADD_BUILD") {
    Some(build) => build,
    None if cfg!(debug_assertions) => "debug build",
    None => "release build",
};
