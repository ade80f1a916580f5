//! The cluster listener (`talkheadd::api::workers`) over real TCP and HTTP, with the worker's own client
//! (`talkheadd::cluster::coordinator`) and raw requests for what a well-behaved client never sends:
//! the spec and the challenge files reach a worker verified; videos and the report are accepted once,
//! staged under `accepted/` and handed to the coordinator; a missing or foreign token, a superseded
//! or cancelled attempt, a replay, an oversized video or report, a report that does not match its
//! uploads and a file the spec does not list are refused with their status and reason, and change
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/cluster.rs"]
mod cluster;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use talkheadd::cluster::attempts::SpecFile;
use talkheadd::cluster::coordinator::{CoordinatorClient, CoordinatorError};
use talkheadd::cluster::report::{UploadedVideo, WorkerGpu, WorkerReport};
use talkheadd::cluster::token::AttemptToken;
use talkheadd::domain::verdict::Verdict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_VIDEO: u64 = 64 << 10;
const MAX_REPORT: u64 = 16 << 10;

struct Coordinator {
    listener: cluster::Listener,
    inbox: PathBuf,
    files: Vec<SpecFile>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Coordinator {
    type Target = cluster::Listener;
    fn deref(&self) -> &cluster::Listener {
        &self.listener
    }
}

impl std::ops::DerefMut for Coordinator {
    fn deref_mut(&mut self) -> &mut cluster::Listener {
        &mut self.listener
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A listener on a loopback port over a challenge set of two files.
async fn coordinator() -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("challenges");
    let mut files = Vec::new();
    for (path, bytes) in [
        ("challenge-1/face.png", vec![7u8; 3000]),
        ("challenge-1/audio.wav", (0..=255u8).cycle().take(5000).collect()),
    ] {
        let target = root.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &bytes).unwrap();
        files.push(SpecFile {
            path: path.into(),
            sha256: sha(&bytes),
            size: bytes.len() as u64,
        });
    }
    let inbox = dir.path().join("inbox");
    let listener = cluster::listen(&root, &inbox, MAX_VIDEO, MAX_REPORT).await;
    Coordinator {
        listener,
        inbox,
        files,
        _dir: dir,
    }
}

impl Coordinator {
    /// Issues `evaluation`'s attempt `attempt`; its token.
    fn issue_attempt(&self, evaluation: &str, attempt: u32) -> AttemptToken {
        self.listener.issue(
            evaluation,
            attempt,
            "127.0.0.1:5000/miner@sha256:aa",
            &self.files,
            None,
        )
    }

    fn client(&self, evaluation: &str, attempt: u32, token: &AttemptToken) -> CoordinatorClient {
        let copy = AttemptToken::given(token.expose()).unwrap();
        CoordinatorClient::new(&self.url, evaluation, attempt, copy).unwrap()
    }

    /// Every file under the inbox, relative to it.
    fn inbox_files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.inbox, &self.inbox, &mut out);
        out.sort();
        out
    }
}

fn report(evaluation: &str, attempt: u32, videos: Vec<UploadedVideo>) -> WorkerReport {
    WorkerReport {
        evaluation: evaluation.into(),
        attempt,
        verdict: Verdict::InfraError,
        reason: Some("the worker host's Docker engine did not answer".into()),
        gpu: WorkerGpu {
            uuid: "GPU-11111111-2222-3333-4444-555555555555".into(),
            model: "virtual".into(),
            host: "worker-a".into(),
        },
        stage_times: BTreeMap::from([("pull".into(), 0.5)]),
        vram_sources: Vec::new(),
        log_tail: "ready\n".into(),
        metrics: None,
        videos,
        started_at: 1.0,
        finished_at: 2.0,
    }
}

fn refused(result: Result<impl std::fmt::Debug, CoordinatorError>) -> (u16, String) {
    match result {
        Err(CoordinatorError::Refused { status, reason, .. }) => (status, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A raw HTTP/1.1 exchange (what a misbehaving client sends); the answer's status and body.
async fn raw(url: &str, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn a_worker_fetches_verified_files_and_its_report_is_accepted_once() {
    let mut c = coordinator().await;
    let token = c.issue_attempt("e1", 1);
    let worker = c.client("e1", 1, &token);
    let spec = worker.spec().await.unwrap();
    assert_eq!(spec.files, c.files);
    let work = tempfile::tempdir().unwrap();
    worker.fetch_files(&spec, work.path()).await.unwrap();
    for f in &c.files {
        assert_eq!(sha(&std::fs::read(work.path().join(&f.path)).unwrap()), f.sha256);
    }
    let video = vec![3u8; 40_000];
    let uploaded = worker
        .upload_video("challenge-1.mp4", video.clone())
        .await
        .unwrap();
    assert_eq!((uploaded.sha256.clone(), uploaded.size), (sha(&video), 40_000));
    // A report that does not list what was uploaded is refused, and the attempt can still report.
    let (status, reason) = refused(worker.upload_report(&report("e1", 1, Vec::new())).await);
    assert_eq!((status, reason.as_str()), (400, "malformed_body"));
    let mut wrong = uploaded.clone();
    wrong.sha256 = sha(b"other");
    let (status, _) = refused(worker.upload_report(&report("e1", 1, vec![wrong])).await);
    assert_eq!(status, 400);
    assert!(c.accepted.try_recv().is_err());

    let sent = report("e1", 1, vec![uploaded.clone()]);
    worker.upload_report(&sent).await.unwrap();
    let accepted = c.accepted.recv().await.unwrap();
    assert_eq!(accepted.report, sent);
    assert_eq!(
        std::fs::read(accepted.dir.join("challenge-1.mp4")).unwrap(),
        video
    );
    let stored: WorkerReport =
        serde_json::from_slice(&std::fs::read(accepted.dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(stored, sent);
    let before = c.inbox_files();
    assert_eq!(
        before,
        vec![
            "accepted/talkheadd-e1-a1/challenge-1.mp4".to_owned(),
            "accepted/talkheadd-e1-a1/report.json".to_owned()
        ]
    );

    // A replay of the report, a late video and a late fetch: 409, nothing changes.
    let (status, reason) = refused(worker.upload_report(&sent).await);
    assert_eq!((status, reason.as_str()), (409, "already_reported"));
    let (status, _) = refused(worker.upload_video("challenge-2.mp4", vec![1; 10]).await);
    assert_eq!(status, 409);
    let (status, _) = refused(worker.spec().await);
    assert_eq!(status, 409);
    assert_eq!(c.inbox_files(), before);
    assert!(c.accepted.try_recv().is_err());
}

#[tokio::test]
async fn tokens_of_other_attempts_superseded_and_cancelled_attempts_are_refused() {
    let mut c = coordinator().await;
    let first = c.issue_attempt("e1", 1);
    let other = c.issue_attempt("e2", 1);
    // No token, a malformed one, another evaluation's: the same 401.
    let (status, body) = raw(
        &c.url,
        b"GET /v1/attempts/e1/1/spec HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\":\"unauthorized\""), "{body}");
    let (status, _) = raw(
        &c.url,
        b"GET /v1/attempts/e1/1/spec HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 401);
    let foreign = c.client("e1", 1, &other);
    assert_eq!(refused(foreign.spec().await).0, 401);
    assert_eq!(refused(foreign.upload_video("a.mp4", vec![1; 10]).await).0, 401);
    // A file the spec does not list, and one that climbs out of the challenge set: 404.
    let worker = c.client("e1", 1, &first);
    for path in [
        "challenge-1/text.txt",
        "..%2F..%2Fetc%2Fpasswd",
        "challenge-1/../challenge-1/face.png",
    ] {
        let request = format!(
            "GET /v1/attempts/e1/1/files/{path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            first.expose()
        );
        let (status, body) = raw(&c.url, request.as_bytes()).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    // Uploaded before a new attempt was issued: the old attempt's token is superseded (409) and its
    // report is refused, the new attempt's is accepted.
    worker
        .upload_video("challenge-1.mp4", vec![5; 100])
        .await
        .unwrap();
    let second = c.issue_attempt("e1", 2);
    let (status, reason) = refused(worker.upload_report(&report("e1", 1, Vec::new())).await);
    assert_eq!((status, reason.as_str()), (409, "attempt_superseded"));
    let retry = c.client("e1", 2, &second);
    assert_eq!(refused(c.client("e1", 2, &first).spec().await).0, 401);
    retry.upload_report(&report("e1", 2, Vec::new())).await.unwrap();
    assert_eq!(c.accepted.recv().await.unwrap().report.attempt, 2);
    // A cancelled evaluation accepts nothing more.
    c.book.lock().unwrap().cancel("e2", "the submission changed");
    let (status, reason) = refused(c.client("e2", 1, &other).spec().await);
    assert_eq!((status, reason.as_str()), (409, "evaluation_cancelled"));
}

#[tokio::test]
async fn oversized_uploads_are_refused_and_leave_nothing_behind() {
    let mut c = coordinator().await;
    let token = c.issue_attempt("e1", 1);
    let worker = c.client("e1", 1, &token);
    // Declared too large: refused before a byte is stored; the client still reads the answer.
    let (status, reason) = refused(
        worker
            .upload_video("big.mp4", vec![0; MAX_VIDEO as usize + 1])
            .await,
    );
    assert_eq!((status, reason.as_str()), (413, "video_too_large"));
    // Chunked, so only counting can tell.
    let mut request = format!(
        "PUT /v1/attempts/e1/1/videos/big.mp4 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        token.expose()
    )
    .into_bytes();
    for _ in 0..(MAX_VIDEO / 8192 + 2) {
        request.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        request.extend_from_slice(&[1u8; 8192]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw(&c.url, &request).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("video_too_large"), "{body}");
    // An oversized report.
    let mut big = report("e1", 1, Vec::new());
    big.log_tail = "x".repeat(MAX_REPORT as usize);
    let (status, reason) = refused(worker.upload_report(&big).await);
    assert_eq!((status, reason.as_str()), (413, "report_too_large"));
    // Nothing but the (empty) attempt directory; nothing accepted; the attempt still reports.
    assert!(c.inbox_files().is_empty(), "{:?}", c.inbox_files());
    assert!(c.accepted.try_recv().is_err());
    worker.upload_report(&report("e1", 1, Vec::new())).await.unwrap();
    assert!(c.accepted.recv().await.is_some());
}
