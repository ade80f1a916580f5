//! A coordinator's cluster listener (`talkheadd::api::workers`) on a loopback port, in the test's own
//! process, for the tests of the listener and of `talkheadd worker`.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use talkheadd::api::serve::ConnectionLimits;
use talkheadd::api::workers::{WorkerLimits, WorkersListener};
use talkheadd::cluster::attempts::{AttemptBook, AttemptSpec, SharedSettings, SpecFile};
use talkheadd::cluster::report::AcceptedReport;
use talkheadd::cluster::token::AttemptToken;
use talkheadd::config::{self, ConfigLocation};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A listener serving on a loopback port until dropped.
pub struct Listener {
    /// Its URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// The book it consults.
    pub book: Arc<Mutex<AttemptBook>>,
    /// The reports it accepted.
    pub accepted: mpsc::UnboundedReceiver<AcceptedReport>,
    files_root: std::path::PathBuf,
    shutdown: CancellationToken,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A listener serving challenge files from `files_root`, keeping uploads under `inbox`, with caps of
/// `max_video_bytes` and `max_report_bytes`.
pub async fn listen(
    files_root: &Path,
    inbox: &Path,
    max_video_bytes: u64,
    max_report_bytes: u64,
) -> Listener {
    let book = Arc::new(Mutex::new(AttemptBook::new()));
    let (tx, accepted) = mpsc::unbounded_channel();
    let limits = WorkerLimits {
        connections: ConnectionLimits {
            max_connections: 16,
            header_timeout: Duration::from_secs(10),
        },
        max_report_bytes,
        max_video_bytes,
        request_timeout: Duration::from_secs(60),
    };
    let listener = WorkersListener::new(book.clone(), inbox.to_owned(), limits, tx);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", tcp.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn(Arc::new(listener.unwrap()).serve(tcp, shutdown.clone(), Duration::from_secs(1)));
    Listener {
        url,
        book,
        accepted,
        files_root: files_root.to_owned(),
        shutdown,
    }
}

impl Listener {
    /// Issues `evaluation`'s attempt `attempt` of `image` over `files`, with the settings a
    /// coordinator configured by `config` requires of every host; its token.
    pub fn issue(
        &self,
        evaluation: &str,
        attempt: u32,
        image: &str,
        files: &[SpecFile],
        config: Option<&Path>,
    ) -> AttemptToken {
        self.issue_with(evaluation, attempt, image, files, shared_settings(config))
    }

    /// [`Self::issue`] with `settings` as they are.
    pub fn issue_with(
        &self,
        evaluation: &str,
        attempt: u32,
        image: &str,
        files: &[SpecFile],
        settings: SharedSettings,
    ) -> AttemptToken {
        self.book
            .lock()
            .unwrap()
            .issue(
                AttemptSpec {
                    evaluation: evaluation.into(),
                    attempt,
                    image: image.into(),
                    files: files.to_vec(),
                    settings,
                },
                self.files_root.clone(),
            )
            .unwrap()
    }
}

/// Every file of a challenge directory (`<root>/<challenge>/<file>`), as a spec lists them.
pub fn spec_files(root: &Path) -> Vec<SpecFile> {
    let mut files = Vec::new();
    for challenge in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(challenge.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            files.push(SpecFile {
                path: path.strip_prefix(root).unwrap().display().to_string(),
                sha256: hex::encode(Sha256::digest(&bytes)),
                size: bytes.len() as u64,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// What a coordinator configured by `config` (embedded defaults without one) requires of every host.
pub fn shared_settings(config: Option<&Path>) -> SharedSettings {
    let location = match config {
        Some(path) => ConfigLocation::Explicit(path.to_owned()),
        None => ConfigLocation::Default("/nonexistent/talkheadd.toml".into()),
    };
    let loaded = config::load(&location, &|_| None).unwrap();
    talkheadd::engine::worker::shared_settings(&loaded.settings)
}
