//! The cluster listener (`cluster.listen`): the coordinator's door for its workers only, never for
//! validators. A worker started by Ray for an attempt fetches its spec and its challenge files here and
//! uploads its scored videos and its run report; every request names the attempt in its path
//! (`/v1/attempts/<evaluation>/<attempt>/…`) and presents that attempt's bearer token.
//!
//! Routes:
//! - `GET  …/spec`: the attempt's [`AttemptSpec`] (image, challenge files with their SHA-256);
//! - `GET  …/files/<path>`: one file the spec lists, served only if it still has the listed size and
//!   hash on this host;
//! - `PUT  …/videos/<name>`: one scored video, streamed to disk and hashed while it arrives, within
//!   `max_video_bytes` and [`MAX_VIDEOS`] per attempt;
//! - `PUT  …/report`: the [`WorkerReport`](crate::cluster::report::WorkerReport) (within `max_report_bytes`), which must list exactly the
//!   videos received with the hashes computed here. It is accepted at most once per attempt: the
//!   attempt's directory moves from `partial/` to `accepted/` under the inbox and the
//!   [`AcceptedReport`] goes to the coordinator.
//!
//! Who may do what is [`AttemptBook`]'s decision (401 for an unknown attempt or a wrong token, 409 for
//! a superseded or cancelled attempt and for a replay, 404 for a file the spec does not list); this
//! module owns the HTTP, the files and the hashing. A refused request changes nothing. Without TLS
//! the listener must sit on a private network (docs/cluster.md).

use super::error::ApiError;
use super::serve::{
    ConnectionLimits, Discards, HttpResponse, RequestBody, error_response, json_response, read_body, serve,
    stream_body,
};
use crate::cluster::attempts::{AttemptBook, Refusal, Upload};
use crate::cluster::job::submission_id;
use crate::cluster::report::{AcceptedReport, MAX_VIDEOS, UploadedVideo, check_report, is_video_name};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The path prefix of every route.
pub const PREFIX: &str = "/v1/attempts/";

/// The listener's caps.
#[derive(Debug, Clone, Copy)]
pub struct WorkerLimits {
    /// Connections and header time.
    pub connections: ConnectionLimits,
    /// Most bytes of one report.
    pub max_report_bytes: u64,
    /// Most bytes of one video.
    pub max_video_bytes: u64,
    /// Time a request may take, body included.
    pub request_timeout: Duration,
}

/// The videos received for one attempt: name → (SHA-256, size), as hashed here.
type Received = BTreeMap<String, (String, u64)>;

/// The cluster listener's shared state.
pub struct WorkersListener {
    book: Arc<Mutex<AttemptBook>>,
    inbox: PathBuf,
    limits: WorkerLimits,
    discards: Discards,
    received: Mutex<BTreeMap<(String, u32), Received>>,
    accepted: mpsc::UnboundedSender<AcceptedReport>,
}

/// A parsed route.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Spec,
    File(&'a str),
    Video(&'a str),
    Report,
}

/// `(evaluation, attempt, route)` of a path under [`PREFIX`].
fn parse_path(path: &str) -> Option<(&str, u32, Route<'_>)> {
    let rest = path.strip_prefix(PREFIX)?;
    let (evaluation, rest) = rest.split_once('/')?;
    let (attempt, rest) = rest.split_once('/')?;
    let attempt: u32 = attempt.parse().ok().filter(|a| *a > 0)?;
    if evaluation.is_empty() {
        return None;
    }
    let route = match rest.split_once('/') {
        None if rest == "spec" => Route::Spec,
        None if rest == "report" => Route::Report,
        Some(("files", file)) => Route::File(file),
        Some(("videos", name)) => Route::Video(name),
        _ => return None,
    };
    Some((evaluation, attempt, route))
}

impl WorkersListener {
    /// A listener over `book`, serving each attempt's challenge files from where the book says and keeping uploads under
    /// `inbox` (`partial/` while they arrive, `accepted/` once their report is); accepted reports go
    /// to `accepted`.
    pub fn new(
        book: Arc<Mutex<AttemptBook>>,
        inbox: PathBuf,
        limits: WorkerLimits,
        accepted: mpsc::UnboundedSender<AcceptedReport>,
    ) -> std::io::Result<WorkersListener> {
        for dir in ["partial", "accepted"] {
            std::fs::create_dir_all(inbox.join(dir))?;
        }
        Ok(WorkersListener {
            book,
            inbox,
            limits,
            discards: Discards::default(),
            received: Mutex::new(BTreeMap::new()),
            accepted,
        })
    }

    /// Accept connections until `shutdown` fires, then drain for up to `drain`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken, drain: Duration) {
        let limits = self.limits.connections;
        serve(listener, limits, shutdown, drain, "cluster", move |req| {
            let listener = Arc::clone(&self);
            async move { listener.handle(req).await }
        })
        .await;
    }

    /// Answer one request (never fails: errors become JSON answers).
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let (parts, body) = req.into_parts();
        let mut body = RequestBody::new(body);
        let answered = tokio::time::timeout(self.limits.request_timeout, self.dispatch(&parts, &mut body));
        let (response, timed_out) = match answered.await {
            Ok(Ok(r)) => (r, false),
            Ok(Err(e)) => (error_response(&e), false),
            Err(_) => (error_response(&ApiError::Timeout), true),
        };
        self.discards.finish(&parts, body, response, timed_out)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, AttemptBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn dispatch(&self, parts: &Parts, body: &mut RequestBody) -> Result<HttpResponse, ApiError> {
        let path = parts.uri.path();
        let Some((evaluation, attempt, route)) = parse_path(path) else {
            return Err(ApiError::NotFound(crate::domain::text::echo(path, 128)));
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match (route, &parts.method) {
            (Route::Spec, &Method::GET) => {
                let spec = self.book().spec(evaluation, attempt, token)?.clone();
                let text = serde_json::to_string(&spec).map_err(|e| ApiError::Storage(e.to_string()))?;
                Ok(json_response(StatusCode::OK, text))
            }
            (Route::File(path), &Method::GET) => {
                let (file, root) = {
                    let book = self.book();
                    let (file, root) = book.file(evaluation, attempt, path, token)?;
                    (file.clone(), root.join(&file.path))
                };
                let bytes = read_listed(&root, file.size, &file.sha256).await?;
                Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(Full::new(bytes))
                    .unwrap_or_default())
            }
            (Route::Video(name), &Method::PUT) => {
                self.video(parts, body, evaluation, attempt, name, token).await
            }
            (Route::Report, &Method::PUT) => self.report(parts, body, evaluation, attempt, token).await,
            (Route::Spec | Route::File(_), _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
            (Route::Video(_) | Route::Report, _) => Err(ApiError::MethodNotAllowed { allow: "PUT" }),
        }
    }

    /// The attempt's directory while its uploads arrive.
    fn partial_dir(&self, evaluation: &str, attempt: u32) -> Result<PathBuf, ApiError> {
        let name = submission_id(evaluation, attempt).map_err(|e| ApiError::MalformedBody(e.to_string()))?;
        Ok(self.inbox.join("partial").join(name))
    }

    async fn video(
        &self,
        parts: &Parts,
        body: &mut RequestBody,
        evaluation: &str,
        attempt: u32,
        name: &str,
        token: Option<&str>,
    ) -> Result<HttpResponse, ApiError> {
        let size = super::serve::declared_length(&parts.headers).unwrap_or(0);
        self.book().may_upload(
            evaluation,
            attempt,
            token,
            Upload::Video,
            size,
            self.limits.max_video_bytes,
        )?;
        if !is_video_name(name) {
            return Err(ApiError::MalformedBody(format!(
                "{:?} is not a plain video name",
                crate::domain::text::echo(name, 64)
            )));
        }
        let key = (evaluation.to_owned(), attempt);
        let count = self.received_of(&key).len();
        if count >= MAX_VIDEOS && !self.received_of(&key).contains_key(name) {
            return Err(ApiError::Refused(Refusal::TooManyVideos { limit: MAX_VIDEOS }));
        }
        let dir = self.partial_dir(evaluation, attempt)?;
        std::fs::create_dir_all(&dir).map_err(storage)?;
        // A unique temporary name: concurrent uploads of one name do not interleave, the last renamed wins.
        let mut temp = tempfile::Builder::new()
            .prefix(".upload-")
            .tempfile_in(&dir)
            .map_err(storage)?;
        let mut hasher = Sha256::new();
        let limit = self.limits.max_video_bytes;
        let size = stream_body(&parts.headers, body, limit, |chunk| {
            hasher.update(chunk);
            temp.write_all(chunk).map_err(storage)
        })
        .await
        .map_err(|e| over_cap(e, Upload::Video, limit))?;
        let sha256 = hex::encode(hasher.finalize());
        temp.as_file().sync_all().map_err(storage)?;
        // Only now, with the whole video on disk: the attempt may have been superseded meanwhile.
        let book = self.book();
        book.may_upload(evaluation, attempt, token, Upload::Video, size, limit)?;
        temp.persist(dir.join(name)).map_err(|e| storage(e.error))?;
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .insert(name.to_owned(), (sha256.clone(), size));
        drop(book);
        let video = UploadedVideo {
            name: name.to_owned(),
            sha256,
            size,
        };
        let text = serde_json::to_string(&video).map_err(|e| ApiError::Storage(e.to_string()))?;
        Ok(json_response(StatusCode::OK, text))
    }

    fn received_of(&self, key: &(String, u32)) -> Received {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    async fn report(
        &self,
        parts: &Parts,
        body: &mut RequestBody,
        evaluation: &str,
        attempt: u32,
        token: Option<&str>,
    ) -> Result<HttpResponse, ApiError> {
        let limit = self.limits.max_report_bytes;
        let declared = super::serve::declared_length(&parts.headers).unwrap_or(0);
        self.book()
            .may_upload(evaluation, attempt, token, Upload::Report, declared, limit)?;
        let bytes = read_body(&parts.headers, body, usize::try_from(limit).unwrap_or(usize::MAX))
            .await
            .map_err(|e| over_cap(e, Upload::Report, limit))?;
        let key = (evaluation.to_owned(), attempt);
        let checked = self.received_of(&key);
        let report = check_report(&bytes, evaluation, attempt, &checked)
            .map_err(|e| ApiError::MalformedBody(e.to_string()))?;
        let partial = self.partial_dir(evaluation, attempt)?;
        std::fs::create_dir_all(&partial).map_err(storage)?;
        let written = partial.join("report.json");
        write_synced(&written, &bytes)?;
        let accepted_dir = self
            .inbox
            .join("accepted")
            .join(partial.file_name().unwrap_or_default());
        {
            // Accepting and moving the directory happen under the book's lock: a concurrent replay
            // sees the attempt reported, never a half-moved directory.
            let mut book = self.book();
            // Videos are stored under the same lock: one that arrived after the check would be moved
            // with the directory without being in the manifest.
            if self.received_of(&key) != checked {
                let _ = std::fs::remove_file(&written);
                return Err(ApiError::MalformedBody(
                    "a video arrived while the report was being checked: upload the report again".into(),
                ));
            }
            if let Err(refused) = book.accept_report(evaluation, attempt, token) {
                // A concurrent twin was accepted (or the attempt superseded) meanwhile: leave nothing.
                let _ = std::fs::remove_file(&written);
                return Err(refused.into());
            }
            std::fs::rename(&partial, &accepted_dir).map_err(|e| {
                tracing::error!(evaluation, attempt, error = %e, "an accepted report could not be moved; the attempt is lost");
                storage(e)
            })?;
        }
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        tracing::info!(evaluation, attempt, verdict = ?report.verdict, host = %report.gpu.host, "worker report accepted");
        let _ = self.accepted.send(AcceptedReport {
            report,
            dir: accepted_dir,
        });
        Ok(json_response(
            StatusCode::OK,
            serde_json::json!({ "accepted": true }).to_string(),
        ))
    }
}

/// A body found over its cap while it streamed, as the refusal of that upload (what arrived beyond
/// the cap is not counted, so the size is the first byte over it).
fn over_cap(e: ApiError, what: Upload, limit: u64) -> ApiError {
    match e {
        ApiError::BodyTooLarge { .. } => ApiError::Refused(Refusal::too_large(what, limit + 1, limit)),
        other => other,
    }
}

fn storage(e: std::io::Error) -> ApiError {
    ApiError::Storage(e.to_string())
}

/// Writes `bytes` to `path` and syncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ApiError> {
    let mut f = std::fs::File::create(path).map_err(storage)?;
    f.write_all(bytes).map_err(storage)?;
    f.sync_all().map_err(storage)
}

/// The bytes of a listed challenge file, if it still has the listed size and SHA-256 (a file changed on
/// this host is the coordinator's failure, never sent with a hash it does not have).
async fn read_listed(path: &Path, size: u64, sha256: &str) -> Result<Bytes, ApiError> {
    let meta = tokio::fs::metadata(path).await.map_err(storage)?;
    if meta.len() != size {
        return Err(ApiError::Storage(format!(
            "challenge file {} is {} bytes, the spec lists {size}",
            path.display(),
            meta.len()
        )));
    }
    let bytes = tokio::fs::read(path).await.map_err(storage)?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != sha256 {
        return Err(ApiError::Storage(format!(
            "challenge file {} changed on disk since its spec was issued",
            path.display()
        )));
    }
    Ok(Bytes::from(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_an_attempt_and_a_route() {
        assert_eq!(parse_path("/v1/attempts/e1/2/spec"), Some(("e1", 2, Route::Spec)));
        assert_eq!(
            parse_path("/v1/attempts/e1/2/report"),
            Some(("e1", 2, Route::Report))
        );
        assert_eq!(
            parse_path("/v1/attempts/e1/2/files/challenge-1/face.png"),
            Some(("e1", 2, Route::File("challenge-1/face.png")))
        );
        assert_eq!(
            parse_path("/v1/attempts/e1/2/videos/c1.mp4"),
            Some(("e1", 2, Route::Video("c1.mp4")))
        );
        for bad in [
            "/v1/attempts/e1/0/spec",
            "/v1/attempts/e1/x/spec",
            "/v1/attempts//2/spec",
            "/v1/attempts/e1/2/other",
            "/v1/attempts/e1/2",
            "/update",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }
}
