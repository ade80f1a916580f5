//! The daemon's lifecycle: open the store, start the gateway, tell systemd we are ready, wait for a
//! signal, drain, close the store. Owns start-up ordering and shutdown deadlines, nothing else.

use crate::api::auth::{AuthPolicy, Authenticator};
use crate::api::http::Gateway;
use crate::api::prom::PromMetrics;
use crate::clock::SystemClock;
use crate::config::Settings;
use crate::service::Service;
use crate::store::{Store, StoreError, StoreOptions};
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
}

/// Run until SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> Result<(), DaemonError> {
    let store_settings = settings.store.clone();
    let store = tokio::task::spawn_blocking(move || {
        Store::open(
            &store_settings.path,
            StoreOptions {
                map_size_bytes: store_settings.map_size_bytes,
                history_per_miner: store_settings.history_per_miner,
                max_submissions: store_settings.max_submissions,
            },
        )
    })
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

    let service = Service::new(store.clone(), Arc::new(SystemClock));
    let auth = Authenticator::new(AuthPolicy {
        allowed: settings.auth.allowed_hotkeys.clone(),
        max_skew_secs: settings.auth.max_skew_secs,
        replay_capacity: settings.auth.replay_cache_capacity,
        require_signature: settings.auth.require_signature,
    });
    let gateway = Arc::new(Gateway::new(
        service,
        auth,
        PromMetrics::new(),
        settings.http.clone(),
        settings.auth.public_metrics,
    ));

    let listener = TcpListener::bind(settings.http.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: settings.http.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| DaemonError::Listen {
        addr: settings.http.listen,
        source,
    })?;

    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;

    let shutdown = CancellationToken::new();
    let server = tokio::spawn(Arc::clone(&gateway).serve(listener, shutdown.clone(), HTTP_DRAIN));

    tracing::info!(listen = %local, "HTTP gateway listening");
    systemd::ready(&format!("serving HTTP on {local}"));

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => {
                tracing::warn!("SIGHUP received: configuration reload is not supported yet; restart to apply changes");
            }
        }
    }
    systemd::stopping();
    shutdown.cancel();
    if let Err(e) = server.await {
        tracing::error!(error = %e, "HTTP server task failed");
    }
    drop(gateway);
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
