//! The daemon's lifecycle: open the store, start the gateway, tell systemd we are ready, wait for a
//! signal, drain, close the store. Owns start-up ordering and shutdown deadlines, nothing else.

use crate::admin::{self, authz::AdminPolicy, grpc::SharedPolicy};
use crate::api::auth::{AuthPolicy, Authenticator};
use crate::api::http::Gateway;
use crate::api::prom::PromMetrics;
use crate::challenges::{FetchTimeouts, Signer, SubnetApiSource};
use crate::clock::SystemClock;
use crate::config::{self, ChallengeSource, ClusterEngine, ConfigLocation, Settings};
use crate::engine::rounds_loop::{EvaluationLoop, LoopControl, Source};
use crate::engine::run::RunEnv;
use crate::events::EventBus;
use crate::gpu::GpuInventory;
use crate::runtime::Engine;
use crate::service::Service;
use crate::service::admin::{AdminContext, ReloadReport, Reloader, RuntimeInfo};
use crate::store::{Store, StoreError};
use crate::systemd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Time in-flight HTTP requests get after SIGTERM; shorter than the unit's `TimeoutStopSec`.
pub const HTTP_DRAIN: Duration = Duration::from_secs(10);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error("cannot open the state store: {0}")]
    Store(#[from] StoreError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another talkheadd or the reference executor running?)")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// A blocking task failed.
    #[error("internal task failed: {0}")]
    Task(String),
    /// The Docker engine could not be reached.
    #[error(transparent)]
    Docker(#[from] crate::runtime::RuntimeError),
    /// The evaluation engine cannot be set up with this configuration.
    #[error("{0}")]
    Engine(String),
    /// The admin socket could not be set up.
    #[error(transparent)]
    AdminSocket(#[from] crate::admin::socket::SocketError),
}

impl DaemonError {
    /// Process exit code: 78 for problems the operator fixes in the configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Engine(_) => 78,
            _ => 1,
        }
    }
}

/// What the daemon serves for a Ray cluster's workers: the listener and its socket.
struct ClusterDoor {
    listener: Arc<crate::api::workers::WorkersListener>,
    tcp: TcpListener,
    jobs: crate::api::prom::JobCountsSource,
}

/// Build the evaluation loop when a challenge source is configured: connect to Docker (with the local
/// engine), reconcile what a previous instance left behind, and pick the GPU inventory and analyser;
/// with the Ray engine, the executor and the workers' listener instead of Docker.
async fn evaluation_loop(
    settings: &Arc<Settings>,
    store: &Store,
    control: &LoopControl,
    events: &EventBus,
    inventory: Arc<dyn GpuInventory>,
) -> Result<Option<(EvaluationLoop, Engine, Option<ClusterDoor>)>, DaemonError> {
    let source = match &settings.evaluation.challenges {
        ChallengeSource::Unconfigured => {
            tracing::warn!(
                "no challenge source configured (evaluation.challenges_dir or subnet_api_url): serving the API only"
            );
            return Ok(None);
        }
        ChallengeSource::Directory(dir) => Source::Directory(dir.clone()),
        ChallengeSource::SubnetApi(url) => {
            let key = settings.evaluation.signing_key.clone().ok_or_else(|| {
                DaemonError::Engine(
                    "evaluation.subnet_api_url needs a signing key: set evaluation.signing_key_file or evaluation.signing_key_credential".into(),
                )
            })?;
            let signer = Signer::load(&key).map_err(|e| DaemonError::Engine(format!("signing key: {e}")))?;
            let api = SubnetApiSource::new(url, signer, FetchTimeouts::default())
                .map_err(|e| DaemonError::Engine(format!("evaluation.subnet_api_url: {e}")))?;
            Source::Api(Box::new(api))
        }
    };
    let ray = settings.cluster.engine == ClusterEngine::Ray;
    let engine = if ray {
        // The coordinator runs no container: its GPU hosts have the engines.
        Engine::absent(store.instance_id())?
    } else {
        let engine = Engine::connect(&settings.docker.host, store.instance_id()).await?;
        tracing::info!(host = %settings.docker.host, instance = store.instance_id(), "Docker engine connected");
        let mut orphans = engine.reconcile_orphans(&Default::default()).await?;
        orphans.extend(engine.reconcile_unlabelled_orphans().await?);
        if !orphans.is_empty() {
            tracing::warn!(
                count = orphans.len(),
                "removed containers of interrupted runs; their miners are still pending and will be re-run"
            );
        }
        engine
    };
    let work_dir = settings.evaluation.work_dir.clone();
    tokio::task::spawn_blocking(move || clear_work_dir(&work_dir))
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))?
        .map_err(|e| {
            DaemonError::Engine(format!(
                "evaluation.work_dir {}: {e}",
                settings.evaluation.work_dir.display()
            ))
        })?;
    let env = Arc::new(
        RunEnv::assemble(engine, store, settings.clone(), events.clone())
            .await
            .map_err(DaemonError::Engine)?,
    );
    let docker = env.engine.clone();
    let mut evaluation = EvaluationLoop::new(env, store.clone(), source, inventory, control.clone());
    let door = if ray {
        let (executor, door) = ray_coordinator(settings, store).await?;
        evaluation = evaluation.with_executor(executor);
        Some(door)
    } else {
        None
    };
    Ok(Some((evaluation, docker, door)))
}

/// The Ray coordinator's parts: the Jobs API client (its token read from `cluster.ray_token_file` or
/// the credential), the book of attempts, the workers' listener bound on `cluster.listen`, and the
/// executor that resumed what a previous process left on the cluster.
async fn ray_coordinator(
    settings: &Arc<Settings>,
    store: &Store,
) -> Result<(Arc<dyn crate::engine::executor::Executor>, ClusterDoor), DaemonError> {
    use crate::api::serve::ConnectionLimits;
    use crate::api::workers::{WorkerLimits, WorkersListener};
    use crate::cluster::attempts::AttemptBook;
    use crate::cluster::ray_jobs::{RayError, RayJobs};
    use crate::engine::ray::{RayExecutor, RayPlacement};
    let c = &settings.cluster;
    let config = |key: &str, why: String| DaemonError::Engine(format!("{key}: {why}"));
    let (Some(address), Some(source), Some(advertise)) = (&c.ray_address, &c.ray_token, &c.advertise_url)
    else {
        return Err(config(
            "cluster",
            "engine = \"ray\" needs ray_address, ray_token_file and advertise_url".into(),
        ));
    };
    let token = crate::challenges::read_secret(source)
        .map_err(|e| config("cluster.ray_token_file", e.to_string()))?;
    let token = String::from_utf8(token)
        .map_err(|_| config("cluster.ray_token_file", "the token is not UTF-8 text".into()))?
        .trim()
        .to_owned();
    let jobs = RayJobs::new(address, Some(token)).map_err(|e| config("cluster.ray_address", e))?;
    match jobs.version().await {
        Ok(v) => {
            tracing::info!(ray = %v.ray_version, address = %config::redact_url(address), "Ray cluster reachable")
        }
        Err(e @ RayError::Unauthorized { .. }) => {
            return Err(config("cluster.ray_token_file", e.to_string()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "the Ray cluster does not answer yet; jobs are submitted once it does")
        }
    }
    let work_dir = &settings.evaluation.work_dir;
    let inbox = work_dir.with_file_name("cluster-inbox");
    // Uploads of a previous process belong to attempts whose tokens died with it.
    let _ = std::fs::remove_dir_all(&inbox);
    let book = Arc::new(std::sync::Mutex::new(AttemptBook::new()));
    let (accepted_tx, accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    let limits = WorkerLimits {
        connections: ConnectionLimits {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
        },
        max_report_bytes: c.max_report_bytes,
        max_video_bytes: c.max_video_bytes,
        request_timeout: Duration::from_secs(600),
    };
    let listener = WorkersListener::new(book.clone(), inbox.clone(), limits, accepted_tx)
        .map_err(|e| config("evaluation.work_dir", format!("{}: {e}", inbox.display())))?;
    let tcp = TcpListener::bind(c.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: c.listen,
            source,
        })?;
    let worker_binary = std::env::current_exe()
        .map_err(|e| DaemonError::Engine(format!("cannot name this binary for the workers: {e}")))?
        .display()
        .to_string();
    let executor = Arc::new(RayExecutor::new(
        jobs,
        book,
        RayPlacement {
            advertise_url: advertise.clone(),
            max_attempts: c.max_attempts,
            job_cpus: c.job_cpus,
            gpu_model_resource: c.gpu_model_resource.clone(),
            worker_binary,
            instance: store.instance_id().to_owned(),
            poll: Duration::from_secs(1),
        },
        crate::engine::worker::shared_settings(settings),
        crate::engine::rounds_loop::sets_dir(work_dir),
    ));
    executor.resume().await;
    tokio::spawn(executor.clone().route_reports(accepted_rx));
    let counts = executor.clone();
    Ok((
        executor,
        ClusterDoor {
            listener: Arc::new(listener),
            tcp,
            jobs: Arc::new(move || counts.job_counts()),
        },
    ))
}

/// The GPUs evaluations may use: this host's, or a Ray coordinator's job slots (the cluster's GPU hosts
/// measure their own).
fn gpu_inventory(settings: &Settings) -> Result<(Arc<dyn GpuInventory>, String), DaemonError> {
    if settings.cluster.engine == ClusterEngine::Ray {
        let slots = settings.cluster.max_jobs;
        return Ok((
            Arc::new(crate::gpu::VirtualInventory::cluster_jobs(slots)),
            format!("ray ({slots} job slots)"),
        ));
    }
    crate::gpu::open_inventory(&settings.gpu).map_err(|e| DaemonError::Engine(e.to_string()))
}

/// Re-read the configuration from where it came from and apply what can change while running: the
/// HTTP allow-list and the admin groups. Everything else is reported as needing a restart.
struct Reload {
    location: ConfigLocation,
    current: std::sync::Mutex<Arc<Settings>>,
    auth: Arc<Authenticator>,
    policy: SharedPolicy,
}

impl Reload {
    fn apply(&self) -> Result<ReloadReport, String> {
        let env = |name: &str| std::env::var(name).ok();
        let loaded =
            config::load(&self.location, &env).map_err(|e| format!("configuration not reloaded:\n{e}"))?;
        let new = Arc::new(loaded.settings);
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (applied, needs_restart) =
            config::reload::partition(config::reload::changed_keys(&current, &new));
        if applied.iter().any(|k| k == "auth.allowed_hotkeys") {
            self.auth.set_allowed(&new.auth.allowed_hotkeys);
        }
        if applied.iter().any(|k| k.starts_with("admin.")) {
            *self
                .policy
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = AdminPolicy::resolve(&new.admin);
        }
        // Keys that need a restart keep their running values, so only the applied ones move forward.
        if needs_restart.is_empty() {
            *current = new;
        } else {
            let mut merged = (**current).clone();
            merged.auth.allowed_hotkeys = new.auth.allowed_hotkeys.clone();
            merged.admin.group = new.admin.group.clone();
            merged.admin.read_group = new.admin.read_group.clone();
            *current = Arc::new(merged);
        }
        tracing::info!(?applied, ?needs_restart, "configuration reloaded");
        Ok(ReloadReport {
            applied,
            needs_restart,
        })
    }
}

/// Remove job directories left by a previous instance (their containers are gone by now).
fn clear_work_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// Run until SIGTERM or SIGINT. `location` is where the configuration came from (for reloads).
pub async fn run(settings: Settings, location: ConfigLocation) -> Result<(), DaemonError> {
    let started = std::time::Instant::now();
    let settings = Arc::new(settings);
    let store_settings = settings.store.clone();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&store_settings.path, store_settings.options()))
            .await
            .map_err(|e| DaemonError::Task(e.to_string()))??;
    tracing::info!(path = %settings.store.path.display(), "state store open");

    if !settings.auth.require_signature {
        tracing::warn!(
            listen = %settings.http.listen,
            "auth.require_signature = false: requests are NOT authenticated (allowed only on loopback)"
        );
    }
    if settings.auth.public_metrics {
        tracing::info!("auth.public_metrics = true: GET /metrics is served without a signature");
    }

    // GPUs before anything is bound: a host without NVML and without gpu.virtual is a configuration
    // error (exit 78) even when no challenge source is set yet, so the mistake shows at install time.
    let (inventory, gpu_backend) = gpu_inventory(&settings)?;

    // The admin socket first: binding sets the process umask for an instant, before any other thread
    // of ours creates files.
    let policy: SharedPolicy = Arc::new(std::sync::RwLock::new(AdminPolicy::resolve(&settings.admin)));
    let socket_gid = {
        let p = policy.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        p.read.gid.or(p.control.gid)
    };
    let (admin_listener, admin_from_systemd) = match systemd::take_unix_listener(systemd::ADMIN_FD_NAME) {
        Some(listener) => {
            tracing::info!("admin socket passed by systemd (socket activation)");
            (listener, true)
        }
        None => (
            admin::socket::bind(&settings.admin.socket, settings.admin.socket_mode, socket_gid)?,
            false,
        ),
    };

    let control = LoopControl::default();
    let events = EventBus::new(Arc::new(SystemClock));
    let idle_board = crate::gpu::GpuBoard::new(inventory.describe());
    let evaluation = evaluation_loop(&settings, &store, &control, &events, inventory).await?;
    let (evaluation, docker, gpus, door) = match evaluation {
        Some((l, engine, door)) => {
            let board = l.board();
            let docker = (settings.cluster.engine == ClusterEngine::Local).then_some(engine);
            (Some(l), docker, board, door)
        }
        None => (None, None, idle_board, None),
    };
    let auth = Arc::new(Authenticator::new(AuthPolicy {
        allowed: settings.auth.allowed_hotkeys.clone(),
        max_skew_secs: settings.auth.max_skew_secs,
        replay_capacity: settings.auth.replay_cache_capacity,
        require_signature: settings.auth.require_signature,
    }));
    let reload = Arc::new(Reload {
        location,
        current: std::sync::Mutex::new(settings.clone()),
        auth: auth.clone(),
        policy: policy.clone(),
    });
    let reloader: Reloader = {
        let reload = reload.clone();
        Arc::new(move || reload.apply())
    };
    let service = Service::new(store.clone(), Arc::new(SystemClock), control).with_admin(AdminContext {
        runtime: Arc::new(RuntimeInfo {
            started,
            config_digest: config::reload::digest(&settings),
            gpu_backend,
            gpus,
            docker,
            tie_epsilon: settings.scoring.tie_epsilon,
        }),
        events: events.clone(),
        reloader,
    });
    let gateway = Arc::new(Gateway::new(
        service.clone(),
        auth.clone(),
        PromMetrics::with_cluster(door.as_ref().map(|d| d.jobs.clone())),
        settings.http.clone(),
        settings.auth.public_metrics,
    ));

    let listen_error = |source| DaemonError::Listen {
        addr: settings.http.listen,
        source,
    };
    // Optionally socket-activated too (FileDescriptorName=http); otherwise bound here.
    let listener = match systemd::take_tcp_listener("http") {
        Some(std_listener) => {
            std_listener.set_nonblocking(true).map_err(listen_error)?;
            TcpListener::from_std(std_listener).map_err(listen_error)?
        }
        None => TcpListener::bind(settings.http.listen)
            .await
            .map_err(listen_error)?,
    };
    let local = listener.local_addr().map_err(|source| DaemonError::Listen {
        addr: settings.http.listen,
        source,
    })?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(Arc::clone(&gateway).serve(listener, shutdown.clone(), HTTP_DRAIN));
    let cluster_server = door.map(|door| {
        tracing::info!(listen = %settings.cluster.listen, advertise = settings.cluster.advertise_url.as_deref().unwrap_or_default(), "cluster listener for the workers listening");
        tokio::spawn(door.listener.serve(door.tcp, shutdown.clone(), HTTP_DRAIN))
    });
    let evaluator = evaluation.map(|l| tokio::spawn(l.run(shutdown.clone())));
    // With an evaluation loop the watchdog is fed from its tick; without one, from here.
    let mut api_only_watchdog = systemd::watchdog_interval()
        .filter(|_| evaluator.is_none())
        .map(tokio::time::interval);
    let admin_server = tokio::spawn(admin::serve(
        admin_listener,
        service.clone(),
        policy,
        shutdown.clone(),
    ));
    tracing::info!(socket = %settings.admin.socket.display(), "admin socket listening");

    tracing::info!(listen = %local, "HTTP gateway listening");
    systemd::ready(&format!("serving HTTP on {local}"));

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = async { match api_only_watchdog.as_mut() { Some(t) => t.tick().await, None => std::future::pending().await } } => {
                systemd::watchdog();
            }
            _ = sighup.recv() => {
                let reload = reload.clone();
                match tokio::task::spawn_blocking(move || reload.apply()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the running configuration stays"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: reload task failed"),
                }
            }
        }
    }
    systemd::stopping();
    shutdown.cancel();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    match admin_server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "admin server failed"),
        Err(e) => tracing::error!(error = %e, "admin server task failed"),
    }
    // A socket we bound ourselves is removed so the next start finds no stale file; systemd's stays
    // (it keeps queueing connections and starts us again).
    if !admin_from_systemd {
        let _ = std::fs::remove_file(&settings.admin.socket);
    }
    if let Some(server) = cluster_server
        && let Err(e) = server.await
    {
        tracing::error!(error = %e, "cluster listener task failed");
    }
    if let Some(evaluator) = evaluator {
        // A run in flight sees the cancellation, kills its container and returns an infrastructure
        // outcome: nothing is staged for it and it re-runs after restart.
        if let Err(e) = evaluator.await {
            tracing::error!(error = %e, "evaluation loop task failed");
        }
    }
    drop(gateway);
    drop(service);
    let closed = tokio::task::spawn_blocking(move || store.close())
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))?;
    match closed {
        Ok(()) => tracing::info!("state store closed; bye"),
        // Committed data is durable either way; LMDB releases the environment when the process exits.
        Err(e) => {
            tracing::warn!(error = %e, "state store still in use at exit; leaving it to process teardown")
        }
    }
    Ok(())
}
