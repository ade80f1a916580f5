//! What the daemon's HTTP/1 listeners on TCP share (the validators' gateway, [`super::http`], and the
//! cluster's workers' listener, [`super::workers`]): accepting connections under a cap and draining them
//! on shutdown ([`serve`]), reading a request's body within a limit ([`read_body`], or streamed to a
//! sink with [`stream_body`]), and answering a request refused before its body was read without
//! resetting the connection under a client that is still sending it ([`Discards`]).
//!
//! A request refused before its body was read (too large, unauthenticated, wrong type...) is answered at
//! once, and the rest of its body is then read and discarded, bounded in bytes, time and how many at
//! once, before the connection closes (not for a stalled body, nor for a client waiting for a
//! `100 Continue` it never got): clients that write their whole body before reading the answer (Python's
//! `http.client`, hence `requests`, which validators use) would otherwise see the close as a
//! connection reset and never read the status and its JSON reason.

use super::error::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest header block accepted (hyper's read buffer; requests with bigger headers get 431).
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most bytes of a refused body read and discarded after the answer, and for how long: enough for the
/// bodies validators send, bounded so a refused client cannot hold a connection slot for long.
const DISCARD_BYTES: u64 = 64 << 20;
const DISCARD_TIME: Duration = Duration::from_secs(10);
/// Most refused bodies discarded at once: each holds its connection's slot while it lasts, so a flood
/// of refused requests must not hold the connection cap for long; beyond it a refused request's
/// connection closes at once.
const MAX_DISCARDS: usize = 16;
/// Most bytes reserved for a body before they arrive (a declared length is only a claim).
const BODY_RESERVE: usize = 1 << 20;

/// An answer.
pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// How a listener holds its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; further clients wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send its request's headers.
    pub header_timeout: Duration,
}

/// Accept connections on `listener` until `shutdown` fires, answering each request with `handle`, then
/// stop accepting and give in-flight requests up to `drain` to finish. `name` names the listener in
/// the logs.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    drain: Duration,
    name: &'static str,
    handle: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // Waiting for a slot before accepting leaves excess clients in the kernel backlog instead of
        // holding unbounded sockets.
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on accept.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        let svc = service_fn(move |req| {
            let answer = handle(req);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(MAX_HEADER_BYTES.max(8192))
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = name, "HTTP connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!(listener = name, ?drain, "HTTP drain deadline passed; closing remaining connections"),
    }
}

/// A request's body until a handler has read it to its end.
pub(crate) struct RequestBody {
    /// `None` once read to its end.
    unread: Option<Incoming>,
    /// Whether it was polled: for a client that sent `Expect: 100-continue`, hyper then told it to
    /// send the body.
    polled: bool,
}

impl RequestBody {
    /// The body of a request not read yet.
    pub(crate) fn new(body: Incoming) -> RequestBody {
        RequestBody {
            unread: Some(body),
            polled: false,
        }
    }
}

/// The refused bodies being read and dropped after their answer (at most [`MAX_DISCARDS`] at once).
pub(crate) struct Discards(Arc<Semaphore>);

impl Default for Discards {
    fn default() -> Discards {
        Discards(Arc::new(Semaphore::new(MAX_DISCARDS)))
    }
}

impl Discards {
    /// `response` to a request whose handler has finished with `body`: as it is when the body was
    /// read to its end (or the client stalled, or waits for a `100 Continue` it never got), otherwise
    /// with `Connection: close`, the rest of the body read and dropped meanwhile (at most
    /// [`DISCARD_BYTES`] for at most [`DISCARD_TIME`]), so the connection closes after the client has
    /// sent everything instead of resetting under it.
    pub(crate) fn finish(
        &self,
        parts: &Parts,
        body: RequestBody,
        mut response: HttpResponse,
        timed_out: bool,
    ) -> HttpResponse {
        let told_not_to_send = expects_continue(parts) && !body.polled;
        let mut rest = match body.unread {
            Some(rest) if !rest.is_end_stream() && !timed_out && !told_not_to_send => rest,
            _ => return response,
        };
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        let Ok(permit) = self.0.clone().try_acquire_owned() else {
            tracing::debug!("too many refused bodies being discarded; closing at once");
            return response;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let mut discarded = 0u64;
            let drained = tokio::time::timeout(DISCARD_TIME, async {
                while discarded <= DISCARD_BYTES {
                    match rest.frame().await {
                        Some(Ok(frame)) => {
                            discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                        }
                        Some(Err(_)) | None => return true,
                    }
                }
                false
            })
            .await;
            if drained != Ok(true) {
                tracing::debug!(discarded, "stopped discarding a refused request body; closing");
            }
        });
        response
    }
}

/// The `Content-Length` a request declares, if any.
pub(crate) fn declared_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Read the body, refusing it as soon as it is known to exceed `limit` (from `Content-Length`, or while
/// streaming for chunked bodies). The body is taken out of `body` only once read to its end; a
/// refused one stays there, for [`Discards::finish`].
pub(crate) async fn read_body(
    headers: &hyper::HeaderMap,
    body: &mut RequestBody,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let reserve = declared_length(headers).map_or(0, |n| usize::try_from(n).unwrap_or(0));
    let mut collected = Vec::with_capacity(reserve.min(BODY_RESERVE).min(limit));
    stream_body(headers, body, limit as u64, |data| {
        collected.extend_from_slice(data);
        Ok(())
    })
    .await?;
    Ok(Bytes::from(collected))
}

/// Hand the body to `sink` chunk by chunk, refusing it as [`read_body`] does; `sink`'s error is a
/// [`ApiError::BodyRead`]-like failure of the listener's own (it is returned as given).
pub(crate) async fn stream_body(
    headers: &hyper::HeaderMap,
    body: &mut RequestBody,
    limit: u64,
    mut sink: impl FnMut(&[u8]) -> Result<(), ApiError>,
) -> Result<u64, ApiError> {
    let too_large = || ApiError::BodyTooLarge {
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
    };
    if declared_length(headers).is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let Some(incoming) = body.unread.as_mut() else {
        return Ok(0);
    };
    body.polled = true;
    let mut received = 0u64;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
            if received > limit {
                return Err(too_large());
            }
            sink(data)?;
        }
    }
    body.unread = None;
    Ok(received)
}

/// Whether the client waits for `100 Continue` before sending its body (curl does for large ones): an
/// answer sent first tells it not to send at all, so there is nothing to discard.
fn expects_continue(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: String) -> HttpResponse {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// The JSON answer to an error (`{"error": reason, "message": …}`), logged by its class.
pub(crate) fn error_response(e: &ApiError) -> HttpResponse {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(error = %e, reason = e.reason(), "request failed");
    } else {
        tracing::debug!(error = %e, reason = e.reason(), "request rejected");
    }
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json");
    if let ApiError::MethodNotAllowed { allow } = e {
        builder = builder.header(header::ALLOW, *allow);
    }
    builder.body(Full::new(Bytes::from(e.body()))).unwrap_or_default()
}
