//! Admin plane bench: round-trip latency of `GetStatus` over the real Unix socket (p50/p99), and events
//! per second through `Watch`. The real server (`admin::serve`, peer-credential interceptors included)
//! over a real LMDB store; the client is tonic over the same socket, as talkheadctl uses it.
//!
//! `cargo bench -p talkheadd --bench admin_socket` (run as root, or as a member of admin.group). Prints
//! the figures recorded in benches/README.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use talkhead_admin_proto::v1 as pb;
use talkheadd::admin::{self, authz::AdminPolicy};
use talkheadd::clock::SystemClock;
use talkheadd::config::AdminSettings;
use talkheadd::engine::rounds_loop::LoopControl;
use talkheadd::events::{EventBus, EventKind};
use talkheadd::service::Service;
use talkheadd::service::admin::{AdminContext, ReloadReport, RuntimeInfo};
use talkheadd::store::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Endpoint, Uri};

const CALLS: usize = 5_000;
const EVENTS: u64 = 100_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.db"), StoreOptions::default()).unwrap();
    let events = EventBus::new(Arc::new(SystemClock));
    let service =
        Service::new(store, Arc::new(SystemClock), LoopControl::default()).with_admin(AdminContext {
            runtime: Arc::new(RuntimeInfo {
                started: Instant::now(),
                config_digest: "bench".into(),
                gpu_backend: "virtual (4 slots)".into(),
                gpus: talkheadd::gpu::GpuBoard::new(talkheadd::gpu::GpuInventory::describe(
                    &talkheadd::gpu::VirtualInventory::new(4),
                )),
                docker: None,
                tie_epsilon: 1e-6,
            }),
            events: events.clone(),
            reloader: Arc::new(|| Ok(ReloadReport::default())),
        });
    let policy = Arc::new(RwLock::new(AdminPolicy::resolve(&AdminSettings {
        socket: dir.path().join("admin.sock"),
        group: String::new(),
        read_group: String::new(),
        socket_mode: 0o600,
    })));
    let socket = dir.path().join("admin.sock");
    let listener = admin::socket::bind(&socket, 0o600, None).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(admin::serve(listener, service, policy, shutdown.clone()));
        let path = socket.clone();
        let channel = Endpoint::from_static("http://bench.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        let mut read = pb::read_client::ReadClient::new(channel);

        for _ in 0..200 {
            read.get_status(pb::GetStatusRequest {}).await.unwrap();
        }
        let mut samples = Vec::with_capacity(CALLS);
        let all = Instant::now();
        for _ in 0..CALLS {
            let t = Instant::now();
            read.get_status(pb::GetStatusRequest {}).await.unwrap();
            samples.push(t.elapsed());
        }
        let total = all.elapsed();
        samples.sort();
        println!(
            "GetStatus over the socket, {CALLS} sequential calls: p50 {:?}, p99 {:?}, max {:?}, {:.0} calls/s",
            percentile(&samples, 0.50),
            percentile(&samples, 0.99),
            samples[samples.len() - 1],
            CALLS as f64 / total.as_secs_f64()
        );

        let mut stream = read
            .watch(pb::WatchRequest {
                after_seq: events.last_seq(),
            })
            .await
            .unwrap()
            .into_inner();
        let publisher = events.clone();
        // The consumer reports progress; the producer stays within the broadcast buffer of it, so the
        // figure is lossless delivery throughput, not how fast a lagging client is told it missed events.
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = progress.clone();
        let started = Instant::now();
        let producer = tokio::spawn(async move {
            for i in 0..EVENTS {
                while i.saturating_sub(seen.load(std::sync::atomic::Ordering::Relaxed)) >= 2048 {
                    tokio::task::yield_now().await;
                }
                publisher.publish(EventKind::StageChanged {
                    run_id: format!("run-{i}"),
                    stage: "challenges".into(),
                });
            }
        });
        let mut received = 0u64;
        let mut missed = 0u64;
        while received + missed < EVENTS {
            let e = stream.message().await.unwrap().unwrap();
            match e.kind {
                Some(pb::event::Kind::Missed(m)) => missed += m.count,
                _ => received += 1,
            }
            progress.store(received + missed, std::sync::atomic::Ordering::Relaxed);
        }
        let elapsed = started.elapsed();
        producer.await.unwrap();
        println!(
            "Watch: {received} events delivered ({missed} reported missed) in {:.3} s = {:.0} events/s",
            elapsed.as_secs_f64(),
            received as f64 / elapsed.as_secs_f64()
        );
        drop(stream);
        shutdown.cancel();
        let _ = server.await;
    });
}
