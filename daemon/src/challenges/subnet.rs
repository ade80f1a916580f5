//! The Subnet API source: `GET {SUBNET_API_URL}/challenge`, signed with the executor's hotkey as the
//! reference does (docs/reference.md#auth-challenge), then parsed by [`parse_payload`].
//!
//! Owns the HTTP exchange: connect and total timeouts, no redirects, the status checked before any byte
//! of the body is looked at, the body streamed under a hard cap (no decompression is enabled, so the
//! cap is on what arrives), and the classification of failures into transient (network, timeout, 5xx,
//! 408, 429) and permanent ones.
//!
//! Must not: follow a redirect (the signed headers would go to another host), parse a non-2xx body,
//! buffer more than `max_payload_bytes`, retry on its own (the caller owns backoff), accept a base URL
//! with credentials, a query or a fragment, or read any host path a payload names. The usual proxy
//! environment variables (`HTTPS_PROXY`, `NO_PROXY`) are honoured, as in any reqwest client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, CONTENT_LENGTH, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url, redirect};

use super::Limits;
use super::error::{ChallengeError, sanitize};
use super::payload::parse_payload;
use super::set::ChallengeSet;
use super::signer::Signer;
use crate::domain::hotkey::Hotkey;

/// The path appended to the base URL, and the path the signature covers (the reference signs this
/// literal path even when the base URL has a path prefix).
pub const CHALLENGE_PATH: &str = "/challenge";

/// Largest initial body buffer reserved from a `Content-Length`, whatever it announces.
const INITIAL_BODY_CAPACITY: usize = 1024 * 1024;

/// Timeouts of one `/challenge` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTimeouts {
    /// TCP + TLS connection establishment.
    pub connect: Duration,
    /// The whole exchange, body included.
    pub total: Duration,
}

impl Default for FetchTimeouts {
    /// 10 s to connect, 120 s in total (payloads carry base64 media and may be tens of MiB; the
    /// reference used 30 s for everything).
    fn default() -> Self {
        FetchTimeouts {
            connect: Duration::from_secs(10),
            total: Duration::from_secs(120),
        }
    }
}

/// A configured client for the Subnet API's `/challenge`.
#[derive(Debug)]
pub struct SubnetApiSource {
    client: reqwest::Client,
    url: Url,
    signer: Signer,
    limits: Limits,
}

impl SubnetApiSource {
    /// Builds the client for `base_url` (`http` or `https`, no credentials, query or fragment; a path
    /// prefix is kept and `/challenge` appended). Uses the default [`Limits`]; see
    /// [`SubnetApiSource::with_limits`].
    pub fn new(
        base_url: &str,
        signer: Signer,
        timeouts: FetchTimeouts,
    ) -> Result<SubnetApiSource, ChallengeError> {
        let url = challenge_url(base_url)?;
        let client = reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.total)
            .user_agent(concat!("talkheadd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ChallengeError::Client { source })?;
        if url.scheme() == "http" {
            tracing::warn!(
                url = %url,
                "subnet API URL is plain http: the signed request can be replayed and the challenges altered in transit"
            );
        }
        Ok(SubnetApiSource {
            client,
            url,
            signer,
            limits: Limits::default(),
        })
    }

    /// Replaces the limits used for the body cap and for validation.
    pub fn with_limits(mut self, limits: Limits) -> SubnetApiSource {
        self.limits = limits;
        self
    }

    /// The full URL requested.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// The hotkey the requests are signed with.
    pub fn hotkey(&self) -> &Hotkey {
        self.signer.hotkey()
    }

    /// Fetches, validates and returns the current challenge set, signing with the system clock.
    pub async fn fetch(&self) -> Result<ChallengeSet, ChallengeError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.fetch_at(now).await
    }

    /// [`SubnetApiSource::fetch`] with the signing timestamp given (integer unix seconds).
    pub async fn fetch_at(&self, unix_secs: u64) -> Result<ChallengeSet, ChallengeError> {
        let body = self.fetch_body(unix_secs).await?;
        let limits = self.limits.clone();
        // Base64 and media decoding of up to `max_payload_bytes` is CPU work: off the async threads.
        let set = tokio::task::spawn_blocking(move || parse_payload(&body, &limits))
            .await
            .map_err(|e| ChallengeError::Internal {
                detail: e.to_string(),
            })??;
        tracing::debug!(url = %self.url, challenges = set.len(), hash = set.hash(), "fetched the challenge set");
        Ok(set)
    }

    /// The signed request, the status check and the capped body read.
    async fn fetch_body(&self, unix_secs: u64) -> Result<Vec<u8>, ChallengeError> {
        let url_text = self.url.to_string();
        let headers = self.signer.signed_headers(CHALLENGE_PATH, unix_secs);
        let mut request = self
            .client
            .get(self.url.clone())
            .header(ACCEPT, "application/json");
        for (name, value) in headers.pairs() {
            request = request.header(name, value);
        }
        let mut response = request.send().await.map_err(|e| transport(&url_text, e))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .map(|v| sanitize(&String::from_utf8_lossy(v.as_bytes())));
            return Err(ChallengeError::Redirect {
                url: url_text,
                status: status.as_u16(),
                location,
            });
        }
        if !status.is_success() {
            return Err(ChallengeError::HttpStatus {
                url: url_text,
                status: status.as_u16(),
                retry_after_secs: retry_after(&response, status),
            });
        }
        let limit = self.limits.max_payload_bytes;
        let announced = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(len) = announced.filter(|len| *len > limit) {
            return Err(ChallengeError::PayloadTooLarge {
                len: Some(len),
                limit,
            });
        }
        let capacity = announced
            .and_then(|len| usize::try_from(len).ok())
            .unwrap_or(0)
            .min(INITIAL_BODY_CAPACITY);
        let mut body = Vec::with_capacity(capacity);
        while let Some(chunk) = response.chunk().await.map_err(|e| transport(&url_text, e))? {
            let total = (body.len() as u64).saturating_add(chunk.len() as u64);
            if total > limit {
                return Err(ChallengeError::PayloadTooLarge {
                    len: Some(total),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// `{base}/challenge` after checking the base URL.
fn challenge_url(base_url: &str) -> Result<Url, ChallengeError> {
    let bad = |detail: &str| ChallengeError::BadUrl {
        url: sanitize(&redact_userinfo(base_url)),
        detail: detail.to_owned(),
    };
    let mut url = Url::parse(base_url.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not allowed"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed"));
    }
    let path = format!("{}{CHALLENGE_PATH}", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// `scheme://***@host/...` for a URL text carrying credentials, so errors never echo a password.
fn redact_userinfo(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_owned();
    };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..scheme_end + 3], &rest[at..]),
        None => text.to_owned(),
    }
}

fn transport(url: &str, source: reqwest::Error) -> ChallengeError {
    if source.is_timeout() {
        ChallengeError::Timeout {
            url: url.to_owned(),
            source,
        }
    } else {
        ChallengeError::Transport {
            url: url.to_owned(),
            source,
        }
    }
}

/// Integer `Retry-After` on the statuses where it means something.
fn retry_after(response: &reqwest::Response, status: StatusCode) -> Option<u64> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    response
        .headers()
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
}

#[cfg(test)]
#[path = "subnet_tests.rs"]
mod tests;
