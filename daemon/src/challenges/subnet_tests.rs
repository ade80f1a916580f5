//! Tests of the Subnet API source against a local hyper server on 127.0.0.1: every payload form, the
//! status classes, the body cap, timeouts, redirects and the signature the requests carry.
//!
//! Must not: listen on anything but loopback, or reach the network.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use schnorrkel::{PublicKey, Signature};
use serde_json::json;
use tokio::net::TcpListener;

use super::super::testkit::{b64, b64url, png, wav_default};
use super::*;
use crate::challenges::signer::{
    HEADER_HOTKEY, HEADER_SIGNATURE, HEADER_TIMESTAMP, SIGNING_CONTEXT, legacy_message,
};
use crate::challenges::{ChallengeError, Signer};

/// What the handler tells the server to send.
#[derive(Clone)]
enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// 200 with a chunked body (no Content-Length) of `count` copies of `chunk`.
    Chunked { chunk: Bytes, count: usize },
    /// 200 whose body sends `first` and then stalls for `stall`.
    StallBody { first: Bytes, stall: Duration },
    /// The inner reply after a delay before the headers.
    Delayed(Duration, Box<Reply>),
}

fn ok(body: impl Into<Vec<u8>>) -> Reply {
    Reply::Full {
        status: 200,
        headers: vec![("content-type", "application/json".into())],
        body: body.into(),
    }
}

fn status(code: u16) -> Reply {
    Reply::Full {
        status: code,
        headers: vec![],
        body: payload_dicts().into_bytes(),
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A body that yields `count` chunks, with no size hint (so hyper sends it chunked).
struct Repeat {
    chunk: Bytes,
    remaining: usize,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        self.remaining -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

/// A body that sends one chunk and then nothing until the sleep ends.
struct Stall {
    first: Option<Bytes>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

type TestResponse = Response<BoxBody<Bytes, Infallible>>;

fn build(reply: Reply) -> Pin<Box<dyn Future<Output = TestResponse> + Send>> {
    Box::pin(async move {
        match reply {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut response = Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                response.body(Full::new(Bytes::from(body)).boxed()).unwrap()
            }
            Reply::Chunked { chunk, count } => Response::builder()
                .status(200)
                .body(BoxBody::new(Repeat {
                    chunk,
                    remaining: count,
                }))
                .unwrap(),
            Reply::StallBody { first, stall } => Response::builder()
                .status(200)
                .body(BoxBody::new(Stall {
                    first: Some(first),
                    sleep: Box::pin(tokio::time::sleep(stall)),
                }))
                .unwrap(),
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                build(*inner).await
            }
        }
    })
}

/// Starts a loopback server answering every request through `handler` (given the request path).
async fn serve(handler: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(handler);
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = Arc::clone(&handler);
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    log.lock().unwrap().push(Seen {
                        method: req.method().to_string(),
                        path: req.uri().path().to_owned(),
                        headers: req.headers().clone(),
                    });
                    let reply = handler(req.uri().path());
                    async move { Ok::<_, Infallible>(build(reply).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server { addr, seen }
}

fn signer() -> Signer {
    Signer::from_mini_secret(&[7; 32]).unwrap()
}

fn source(base: &str) -> SubnetApiSource {
    SubnetApiSource::new(
        base,
        signer(),
        FetchTimeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_secs(20),
        },
    )
    .unwrap()
}

fn quick(base: &str) -> SubnetApiSource {
    SubnetApiSource::new(
        base,
        signer(),
        FetchTimeouts {
            connect: Duration::from_secs(2),
            total: Duration::from_millis(400),
        },
    )
    .unwrap()
}

fn payload_dicts() -> String {
    json!({"challenges": [
        {"challenge_id": "c-a", "text": "hello there", "face_base64": b64(&png(64, 64)), "audio_base64": b64(&wav_default())},
        {"challenge_id": "c-b", "face_base64": format!("data:image/png;base64,{}", b64url(&png(64, 64))), "audio_base64": b64url(&wav_default())},
    ]})
    .to_string()
}

fn payload_lists() -> String {
    json!([
        ["first", b64(&wav_default()), b64(&png(64, 64))],
        [null, b64(&wav_default()), b64(&png(80, 64)), "extra"],
    ])
    .to_string()
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers.get(name).unwrap().to_str().unwrap()
}

fn assert_signed(seen: &Seen, signer: &Signer, expected_ts: Option<u64>) {
    assert_eq!(seen.method, "GET");
    let hotkey = header(seen, HEADER_HOTKEY);
    assert_eq!(hotkey, signer.hotkey().as_str());
    let ts: u64 = header(seen, HEADER_TIMESTAMP).parse().unwrap();
    if let Some(expected) = expected_ts {
        assert_eq!(ts, expected);
    }
    let signature = hex::decode(header(seen, HEADER_SIGNATURE)).unwrap();
    let public = PublicKey::from_bytes(signer.hotkey().public_key()).unwrap();
    let signature = Signature::from_bytes(&signature).unwrap();
    // The message always names "/challenge", whatever the base URL's path prefix.
    let message = legacy_message(CHALLENGE_PATH, ts, hotkey);
    assert!(
        public
            .verify_simple(SIGNING_CONTEXT, message.as_bytes(), &signature)
            .is_ok()
    );
    assert!(
        public
            .verify_simple(
                SIGNING_CONTEXT,
                legacy_message("/update", ts, hotkey).as_bytes(),
                &signature
            )
            .is_err()
    );
}

#[tokio::test]
async fn dict_payload_is_fetched_with_verifiable_signed_headers() {
    let server = serve(|_| ok(payload_dicts())).await;
    let src = source(&server.base());
    assert_eq!(src.url(), format!("{}/challenge", server.base()));
    let set = src.fetch_at(1_700_000_000).await.unwrap();
    let ids: Vec<_> = set.iter().map(|c| c.id().to_string()).collect();
    assert_eq!(ids, ["c-a", "c-b"]);
    assert_eq!(set.challenges()[0].text(), Some("hello there"));
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/challenge");
    assert_signed(&seen[0], &signer(), Some(1_700_000_000));
    // The same body always gives the same set hash.
    let again = src.fetch_at(1_700_000_001).await.unwrap();
    assert_eq!(again.hash(), set.hash());
}

#[tokio::test]
async fn list_payload_under_a_path_prefix_signs_the_bare_path() {
    let server = serve(|_| ok(payload_lists())).await;
    let src = source(&format!("{}/api/v1/", server.base()));
    let set = src.fetch().await.unwrap();
    let ids: Vec<_> = set.iter().map(|c| c.id().to_string()).collect();
    assert_eq!(ids, ["challenge-0", "challenge-1"]);
    let seen = server.seen();
    assert_eq!(seen[0].path, "/api/v1/challenge");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let ts: u64 = header(&seen[0], HEADER_TIMESTAMP).parse().unwrap();
    assert!(ts.abs_diff(now) <= 5, "{ts} vs {now}");
    assert_signed(&seen[0], &signer(), None);
}

#[tokio::test]
async fn top_level_list_of_dicts_is_accepted() {
    let body = json!([{"face_base64": b64(&png(64, 64)), "audio_base64": b64(&wav_default())}]).to_string();
    let server = serve(move |_| ok(body.clone())).await;
    let set = source(&server.base()).fetch().await.unwrap();
    assert_eq!(set.challenges()[0].id().as_str(), "challenge-0");
}

#[tokio::test]
async fn server_errors_are_transient_and_never_parsed() {
    for code in [500, 502, 503, 504, 429, 408] {
        let server = serve(move |_| status(code)).await;
        let err = source(&server.base()).fetch().await.unwrap_err();
        assert!(
            matches!(&err, ChallengeError::HttpStatus { status, .. } if *status == code),
            "{err}"
        );
        assert!(err.is_transient(), "{code}");
        assert!(err.to_string().contains(&code.to_string()), "{err}");
    }
    let server = serve(|_| Reply::Full {
        status: 503,
        headers: vec![("retry-after", "7".into())],
        body: vec![],
    })
    .await;
    let err = source(&server.base()).fetch().await.unwrap_err();
    assert_eq!(err.retry_after_secs(), Some(7));
}

#[tokio::test]
async fn client_errors_are_permanent_and_never_parsed() {
    for code in [400, 401, 403, 404, 410] {
        // The error body is a perfectly valid payload: it must still be refused.
        let server = serve(move |_| status(code)).await;
        let err = source(&server.base()).fetch().await.unwrap_err();
        assert!(
            matches!(&err, ChallengeError::HttpStatus { status, .. } if *status == code),
            "{err}"
        );
        assert!(!err.is_transient(), "{code}");
        assert_eq!(err.reason(), "http_status");
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = serve(|path| {
        if path == "/challenge" {
            Reply::Full {
                status: 302,
                headers: vec![("location", "/elsewhere".into())],
                body: vec![],
            }
        } else {
            ok(payload_dicts())
        }
    })
    .await;
    let err = source(&server.base()).fetch().await.unwrap_err();
    assert!(
        matches!(&err, ChallengeError::Redirect { status: 302, location: Some(l), .. } if l == "/elsewhere"),
        "{err}"
    );
    assert!(!err.is_transient());
    let paths: Vec<_> = server.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/challenge"]);
}

#[tokio::test]
async fn oversized_bodies_are_cut_off() {
    let limits = Limits {
        max_payload_bytes: 64 * 1024,
        ..Limits::default()
    };
    // Announced too large: refused from Content-Length.
    let server = serve(|_| ok(vec![b' '; 100 * 1024])).await;
    let err = source(&server.base())
        .with_limits(limits.clone())
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ChallengeError::PayloadTooLarge {
                len: Some(102_400),
                limit: 65_536
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());
    // Chunked with no length, endless in practice: refused while streaming.
    let server = serve(|_| Reply::Chunked {
        chunk: Bytes::from(vec![b' '; 8 * 1024]),
        count: 1_000_000,
    })
    .await;
    let err = source(&server.base())
        .with_limits(limits.clone())
        .fetch()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChallengeError::PayloadTooLarge { limit: 65_536, .. }),
        "{err}"
    );
    // Just under the cap passes the transfer (and then fails as JSON, which proves it was read).
    let server = serve(|_| Reply::Chunked {
        chunk: Bytes::from(vec![b' '; 8 * 1024]),
        count: 8,
    })
    .await;
    let err = source(&server.base())
        .with_limits(limits)
        .fetch()
        .await
        .unwrap_err();
    assert!(matches!(&err, ChallengeError::PayloadJson { .. }), "{err}");
}

#[tokio::test]
async fn slow_servers_time_out_transiently() {
    let server = serve(|_| Reply::Delayed(Duration::from_secs(5), Box::new(ok(payload_dicts())))).await;
    let err = quick(&server.base()).fetch().await.unwrap_err();
    assert!(matches!(&err, ChallengeError::Timeout { .. }), "{err}");
    assert!(err.is_transient());

    let server = serve(|_| Reply::StallBody {
        first: Bytes::from_static(b"{\"challenges\": ["),
        stall: Duration::from_secs(5),
    })
    .await;
    let err = quick(&server.base()).fetch().await.unwrap_err();
    assert!(matches!(&err, ChallengeError::Timeout { .. }), "{err}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = source(&format!("http://{addr}")).fetch().await.unwrap_err();
    assert!(
        matches!(
            &err,
            ChallengeError::Transport { .. } | ChallengeError::Timeout { .. }
        ),
        "{err}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn bad_payloads_are_permanent() {
    let server = serve(|_| ok(json!({"challenges_dir": "/root/.bittensor"}).to_string())).await;
    let err = source(&server.base()).fetch().await.unwrap_err();
    assert!(
        matches!(
            &err,
            ChallengeError::HostPathRefused {
                key: "challenges_dir",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_transient());

    let server = serve(|_| ok("<html>oops</html>")).await;
    let err = source(&server.base()).fetch().await.unwrap_err();
    assert!(matches!(&err, ChallengeError::PayloadJson { .. }), "{err}");
    assert!(!err.is_transient());
}

#[test]
fn base_urls_are_checked() {
    for bad in [
        "ftp://example.org",
        "file:///etc/passwd",
        "http://user:pass@example.org",
        "https://token@example.org/x",
        "https://example.org/?x=1",
        "https://example.org/#frag",
        "not a url",
        "",
    ] {
        let err = SubnetApiSource::new(bad, signer(), FetchTimeouts::default()).unwrap_err();
        assert!(matches!(&err, ChallengeError::BadUrl { .. }), "{bad}: {err}");
        assert!(
            !err.to_string().contains(":pass@") && !err.to_string().contains("token"),
            "{err}"
        );
    }
    for (base, url) in [
        ("https://api.example.org", "https://api.example.org/challenge"),
        ("https://api.example.org/", "https://api.example.org/challenge"),
        (
            "http://10.0.0.1:8000/sn108//",
            "http://10.0.0.1:8000/sn108/challenge",
        ),
    ] {
        let src = SubnetApiSource::new(base, signer(), FetchTimeouts::default()).unwrap();
        assert_eq!(src.url(), url);
        assert_eq!(src.hotkey(), signer().hotkey());
    }
}

#[test]
fn errors_and_fetch_futures_can_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}
    assert_send_sync::<ChallengeError>();
    assert_send_sync::<SubnetApiSource>();
    assert_send_sync::<ChallengeSet>();
    let src = SubnetApiSource::new("http://127.0.0.1:9", signer(), FetchTimeouts::default()).unwrap();
    let future = src.fetch();
    assert_send(&future);
}
