//! The validator-facing HTTP gateway on hyper 1: `POST /update`, `GET /metrics` (reference-compatible,
//! signed), `GET /healthz` and `GET /prometheus`.
//!
//! Everything that arrives here is hostile until proven otherwise: headers are authenticated before the
//! body is read, bodies are bounded while streaming (a `Content-Length` over the limit is refused before
//! a byte is read), every item of a batch is validated before anything is stored, and each request has a
//! deadline. Connections are capped by a semaphore and drained gracefully on shutdown.

//! Its connections, body limits and the answer to a request refused before its body was read are
//! [`super::serve`]'s.

use super::auth::{Authenticator, Authorized};
use super::error::{ApiError, ItemProblem};
use super::prom::PromMetrics;
use super::serve::{
    ConnectionLimits, Discards, HttpResponse, RequestBody, error_response, json_response, read_body, serve,
};
use crate::config::HttpSettings;
use crate::domain::{Hotkey, ImageRef, Submission};
use crate::service::Service;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The routes the gateway knows; also the `route` label of request metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Update,
    Metrics,
    Healthz,
    Prometheus,
    Other,
}

impl Route {
    fn of(path: &str) -> Route {
        match path {
            "/update" => Route::Update,
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/prometheus" => Route::Prometheus,
            _ => Route::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Update => "/update",
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Prometheus => "/prometheus",
            Route::Other => "other",
        }
    }
}

/// The gateway's shared state.
pub struct Gateway {
    service: Service,
    auth: Arc<Authenticator>,
    prom: Arc<PromMetrics>,
    limits: HttpSettings,
    public_metrics: bool,
    discards: Discards,
}

impl Gateway {
    /// Assemble a gateway.
    pub fn new(
        service: Service,
        auth: Arc<Authenticator>,
        prom: Arc<PromMetrics>,
        limits: HttpSettings,
        public_metrics: bool,
    ) -> Gateway {
        Gateway {
            service,
            auth,
            prom,
            limits,
            public_metrics,
            discards: Discards::default(),
        }
    }

    /// Accept connections until `shutdown` fires, then stop accepting and give in-flight requests up to
    /// `drain` to finish.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken, drain: Duration) {
        let limits = ConnectionLimits {
            max_connections: self.limits.max_connections,
            header_timeout: self.limits.header_timeout,
        };
        serve(listener, limits, shutdown, drain, "gateway", move |req| {
            let gateway = Arc::clone(&self);
            async move { gateway.handle(req).await }
        })
        .await;
    }

    /// Answer one request (never fails: errors become JSON answers).
    pub async fn handle(&self, req: Request<Incoming>) -> HttpResponse {
        let route = Route::of(req.uri().path());
        let (parts, body) = req.into_parts();
        let mut body = RequestBody::new(body);
        let dispatched = self.dispatch(route, &parts, &mut body);
        let (response, timed_out) = match tokio::time::timeout(self.limits.request_timeout, dispatched).await
        {
            Ok(Ok(r)) => (r, false),
            Ok(Err(e)) => (error_response(&e), false),
            Err(_) => (error_response(&ApiError::Timeout), true),
        };
        self.prom
            .observe_request(route.label(), response.status().as_u16());
        self.discards.finish(&parts, body, response, timed_out)
    }

    async fn dispatch(
        &self,
        route: Route,
        parts: &Parts,
        body: &mut RequestBody,
    ) -> Result<HttpResponse, ApiError> {
        match (route, &parts.method) {
            (Route::Update, &Method::POST) => self.update(parts, body).await,
            (Route::Update, _) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
            (Route::Metrics, &Method::GET | &Method::HEAD) => self.metrics(parts).await,
            (Route::Metrics, _) => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
            (Route::Healthz, &Method::GET | &Method::HEAD) => self.healthz().await,
            (Route::Prometheus, &Method::GET) => self.prometheus().await,
            (Route::Healthz | Route::Prometheus, _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
            (Route::Other, _) => Err(ApiError::NotFound(sanitise(parts.uri.path()))),
        }
    }

    fn authenticate(&self, parts: &Parts) -> Result<Authorized, ApiError> {
        let now = self.service.clock().now_unix();
        Ok(self.auth.check_headers(
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &parts.headers,
            now,
        )?)
    }

    async fn update(&self, parts: &Parts, body: &mut RequestBody) -> Result<HttpResponse, ApiError> {
        let authorized = self.authenticate(parts)?;
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            let is_json = ct
                .to_str()
                .ok()
                .and_then(|v| v.split(';').next())
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
            if !is_json {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let body = read_body(&parts.headers, body, self.limits.max_body_bytes).await?;
        self.auth.check_body(&authorized, &body)?;
        let batch = parse_batch(&body, self.limits.max_batch)?;
        let count = batch.len();
        let report = self.service.update_submissions(batch).await?;
        tracing::info!(
            caller = authorized.hotkey().map_or("anonymous", |h| h.as_str()),
            scheme = authorized.scheme().as_str(),
            count,
            inserted = report.inserted,
            image_changed = report.image_changed,
            submit_time_changed = report.submit_time_changed,
            "submissions updated"
        );
        Ok(json_response(
            StatusCode::OK,
            serde_json::json!({ "count": count }).to_string(),
        ))
    }

    async fn metrics(&self, parts: &Parts) -> Result<HttpResponse, ApiError> {
        if !self.public_metrics {
            let authorized = self.authenticate(parts)?;
            // GET carries no body; a signed digest must still match the empty one.
            self.auth.check_body(&authorized, &[])?;
        }
        let version = self.service.metrics_version().await?;
        if if_none_match(parts.headers.get(header::IF_NONE_MATCH), version) {
            return Ok(
                with_etag(Response::builder().status(StatusCode::NOT_MODIFIED), version)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default(),
            );
        }
        let (version, body) = self.service.metrics_body().await?;
        let body = if parts.method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        Ok(with_etag(Response::builder().status(StatusCode::OK), version)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Full::new(body))
            .unwrap_or_default())
    }

    async fn healthz(&self) -> Result<HttpResponse, ApiError> {
        let version = self.service.metrics_version().await?;
        let body = serde_json::json!({ "status": "ok", "metrics_version": version });
        Ok(json_response(StatusCode::OK, body.to_string()))
    }

    async fn prometheus(&self) -> Result<HttpResponse, ApiError> {
        let text = self.prom.render(&self.service).await?;
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(text)))
            .unwrap_or_default())
    }
}

/// Validate a whole `/update` body. Any bad item rejects the batch, listing every problem.
pub fn parse_batch(body: &[u8], max_batch: usize) -> Result<Vec<Submission>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedBody(format!("body is not valid JSON: {e}")))?;
    let Some(items) = value.as_array() else {
        return Err(ApiError::MalformedBody(
            "body must be a JSON array of {\"hotkey\", \"image_ref\", \"submit_time\"} objects".into(),
        ));
    };
    if items.len() > max_batch {
        return Err(ApiError::BatchTooLarge {
            got: items.len(),
            limit: max_batch,
        });
    }
    let mut batch = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match parse_item(item) {
            Ok(s) => batch.push(s),
            Err(mut p) => {
                for problem in &mut p {
                    problem.index = index;
                }
                problems.extend(p);
            }
        }
    }
    if problems.is_empty() {
        Ok(batch)
    } else {
        Err(ApiError::InvalidItems(problems))
    }
}

fn parse_item(item: &serde_json::Value) -> Result<Submission, Vec<ItemProblem>> {
    let problem = |field: &'static str, reason: String| ItemProblem {
        index: 0,
        field,
        reason,
    };
    let Some(obj) = item.as_object() else {
        return Err(vec![problem(
            "(item)",
            "must be an object with hotkey, image_ref and submit_time".into(),
        )]);
    };
    let mut problems = Vec::new();
    let hotkey = match obj.get("hotkey") {
        Some(serde_json::Value::String(s)) => Hotkey::parse(s)
            .map_err(|e| problems.push(problem("hotkey", e.to_string())))
            .ok(),
        Some(_) => {
            problems.push(problem("hotkey", "must be a string".into()));
            None
        }
        None => {
            problems.push(problem("hotkey", "is required".into()));
            None
        }
    };
    let image_ref = match obj.get("image_ref") {
        Some(serde_json::Value::String(s)) => ImageRef::parse(s)
            .map_err(|e| problems.push(problem("image_ref", e.to_string())))
            .ok(),
        Some(_) => {
            problems.push(problem("image_ref", "must be a string".into()));
            None
        }
        None => {
            problems.push(problem("image_ref", "is required".into()));
            None
        }
    };
    let submit_time = match obj.get("submit_time") {
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Some(t),
            _ => {
                problems.push(problem(
                    "submit_time",
                    "must be a finite, non-negative number of Unix seconds".into(),
                ));
                None
            }
        },
        Some(_) => {
            problems.push(problem("submit_time", "must be a number".into()));
            None
        }
        None => {
            problems.push(problem("submit_time", "is required".into()));
            None
        }
    };
    match (hotkey, image_ref, submit_time) {
        (Some(hotkey), Some(image_ref), Some(submit_time)) if problems.is_empty() => Ok(Submission {
            hotkey,
            image_ref,
            submit_time,
        }),
        _ => Err(problems),
    }
}

/// The weak ETag of a metrics version.
pub fn etag(version: u64) -> String {
    format!("W/\"metrics-{version}\"")
}

/// `If-None-Match` matches when it lists this version's tag (weak comparison) or `*`.
fn if_none_match(header: Option<&HeaderValue>, version: u64) -> bool {
    let Some(value) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let wanted = format!("\"metrics-{version}\"");
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == wanted)
}

fn with_etag(builder: hyper::http::response::Builder, version: u64) -> hyper::http::response::Builder {
    builder.header(header::ETAG, etag(version))
}

/// A path echoed in an error: bounded and printable.
fn sanitise(path: &str) -> String {
    crate::domain::text::echo(path, 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn etag_matching_follows_weak_comparison() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(if_none_match(Some(&h("W/\"metrics-3\"")), 3));
        assert!(if_none_match(Some(&h("\"metrics-3\"")), 3));
        assert!(if_none_match(Some(&h("W/\"metrics-1\", W/\"metrics-3\"")), 3));
        assert!(if_none_match(Some(&h("*")), 3));
        assert!(!if_none_match(Some(&h("W/\"metrics-2\"")), 3));
        assert!(!if_none_match(None, 3));
        assert_eq!(etag(7), "W/\"metrics-7\"");
    }

    #[test]
    fn a_valid_batch_parses() {
        let body =
            format!(r#"[{{"hotkey":"{ALICE}","image_ref":"m/x@sha256:{D}","submit_time":12.5,"extra":1}}]"#);
        let batch = parse_batch(body.as_bytes(), 10).unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].submit_time, 12.5);
    }

    #[test]
    fn every_bad_item_is_reported_with_its_index_and_field() {
        let body = format!(
            r#"[{{"hotkey":"{ALICE}","image_ref":"m/x@sha256:{D}","submit_time":1}},
                {{"hotkey":"nope","image_ref":"m/x:latest","submit_time":-1}},
                7,
                {{"image_ref":"m/x@sha256:{D}","submit_time":"1"}}]"#
        );
        let Err(ApiError::InvalidItems(p)) = parse_batch(body.as_bytes(), 10) else {
            panic!("expected InvalidItems")
        };
        let fields: Vec<(usize, &str)> = p.iter().map(|p| (p.index, p.field)).collect();
        assert_eq!(
            fields,
            vec![
                (1, "hotkey"),
                (1, "image_ref"),
                (1, "submit_time"),
                (2, "(item)"),
                (3, "hotkey"),
                (3, "submit_time")
            ]
        );
    }

    #[test]
    fn shape_and_size_errors() {
        assert!(matches!(parse_batch(b"{}", 10), Err(ApiError::MalformedBody(_))));
        assert!(matches!(parse_batch(b"[", 10), Err(ApiError::MalformedBody(_))));
        assert!(matches!(
            parse_batch(b"[1,2,3]", 2),
            Err(ApiError::BatchTooLarge { got: 3, limit: 2 })
        ));
        assert_eq!(parse_batch(b"[]", 2).unwrap().len(), 0);
    }
}
