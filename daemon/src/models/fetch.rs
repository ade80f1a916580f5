//! Downloading one file over HTTPS into `<dir>/<name>.part` (through the install directory's
//! descriptor, hashed as it is written: [`super::install`]): resumed with a `Range` request when a
//! `.part` is there (started over when the server answers the whole file or another range; asked
//! again for the rest when it answers a shorter range), redirects followed (at most [`MAX_REDIRECTS`],
//! never from https to http, never to http but on the loopback), a connect timeout and an idle timeout
//! on every read, so a stalled server fails with a message instead of hanging. Checking and installing
//! what arrived is the caller's business.

use super::install::{Finished, InstallDir};
use super::manifest::{Expect, secure_url};
use super::progress::Progress;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// The most a download whose size the manifest does not give may grow to.
pub const UNKNOWN_SIZE_LIMIT: u64 = 8 << 30;
/// Requests for one file (a server answering short ranges is asked again for the rest) before giving up.
pub const MAX_ROUNDS: usize = 4096;

/// Why a download failed. What already arrived stays in the `.part` file (for the next try to resume),
/// except where the variant says it was removed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The HTTP client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// No connection, or the request failed before a response.
    #[error("{url}: {detail}")]
    Request {
        /// The URL asked for.
        url: String,
        /// What failed.
        detail: String,
    },
    /// Nothing arrived for the idle timeout.
    #[error(
        "{url}: no data for {} s (the server stalled) after {got} bytes; run the command again to \
         resume, or raise --timeout",
        secs.as_secs_f64()
    )]
    Stalled {
        /// The URL asked for.
        url: String,
        /// The idle timeout.
        secs: Duration,
        /// Bytes in the `.part` file.
        got: u64,
    },
    /// The response's headers did not all arrive in time (a server trickling them).
    #[error(
        "{url}: no complete answer within {} s (the server stalled); run the command again, or raise \
         --timeout",
        secs.as_secs_f64()
    )]
    NoAnswer {
        /// The URL asked for.
        url: String,
        /// The bound on the wait for the headers.
        secs: Duration,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}{}", via.as_ref().map(|v| format!(" (redirected to {v})")).unwrap_or_default())]
    Status {
        /// The URL asked for.
        url: String,
        /// The status.
        status: StatusCode,
        /// The URL that answered, after redirects, when different.
        via: Option<String>,
    },
    /// The connection ended before the whole body arrived.
    #[error("{url}: the download was cut off after {got} bytes ({detail}); run the command again to resume")]
    Interrupted {
        /// The URL asked for.
        url: String,
        /// Bytes in the `.part` file.
        got: u64,
        /// What the client saw.
        detail: String,
    },
    /// The server offers a different size than the manifest's, or sends more; the `.part` was removed.
    #[error("{url}: refused: {detail}; removed {}", part.display())]
    WrongSize {
        /// The URL asked for.
        url: String,
        /// What differs.
        detail: String,
        /// The removed `.part` file.
        part: PathBuf,
    },
    /// Reading or writing the `.part` file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What to do with the `.part` file, given the server's answer to a request for its remainder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// The body continues the `.part` file.
    Append,
    /// The body is the whole file: empty the `.part` file first.
    FromZero,
    /// The `.part` file already holds the whole file (416 naming its size).
    Complete,
    /// The answer does not fit the `.part` file: empty it and ask again for the whole file.
    Restart,
    /// An error status (or one this client does not handle).
    Fail,
}

/// Decides from the status and `Content-Range` of a response to a request for bytes `have..`
/// (`have = 0`: no `Range` header was sent).
pub fn range_decision(have: u64, status: u16, content_range: Option<&str>) -> RangeDecision {
    match status {
        200 => RangeDecision::FromZero,
        206 => match content_range.and_then(parse_content_range) {
            Some(ContentRange::Bytes { start, .. }) if start == have => {
                if have == 0 {
                    RangeDecision::FromZero
                } else {
                    RangeDecision::Append
                }
            }
            _ => RangeDecision::Restart,
        },
        416 if have > 0 => match content_range.and_then(parse_content_range) {
            Some(ContentRange::Unsatisfied { total }) if total == have => RangeDecision::Complete,
            _ => RangeDecision::Restart,
        },
        _ => RangeDecision::Fail,
    }
}

/// A `Content-Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes start-end/total` (`total` unknown: `*`).
    Bytes {
        /// First byte.
        start: u64,
        /// Last byte.
        end: u64,
        /// Size of the whole file.
        total: Option<u64>,
    },
    /// `bytes */total`: the range asked for is past the end.
    Unsatisfied {
        /// Size of the whole file.
        total: u64,
    },
}

/// Parses a `Content-Range` header value.
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    if range == "*" {
        return Some(ContentRange::Unsatisfied {
            total: total.parse().ok()?,
        });
    }
    let (start, end) = range.split_once('-')?;
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    if end < start {
        return None;
    }
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange::Bytes { start, end, total })
}

/// What a response to be written announces: the whole file's size, if it says, and the offset in the
/// file where its body ends. A 206 says both in its `Content-Range` (`bytes start-end/total`: the body
/// ends at `end + 1`, which may be short of `total`); a 200 is the whole file, `Content-Length` long.
pub fn response_bounds(
    partial: bool,
    content_range: Option<ContentRange>,
    content_length: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    match (partial, content_range) {
        (true, Some(ContentRange::Bytes { end, total, .. })) => (total, end.checked_add(1)),
        (true, _) => (None, None),
        (false, _) => (content_length, content_length),
    }
}

/// Why a redirect from `previous` (the first being the URL asked for) to `next` is not followed, if
/// it is not: one that leaves https, or one to an http URL off the loopback.
pub fn redirect_refusal(previous: &[Url], next: &Url) -> Option<String> {
    if next.scheme() == "https" {
        return None;
    }
    if previous.iter().any(|u| u.scheme() == "https") {
        return Some(format!(
            "refused a redirect from https to {next} (a downgrade to an unencrypted URL)"
        ));
    }
    if !secure_url(next) {
        return Some(format!(
            "refused a redirect to {next}: only https is followed (http only on the loopback)"
        ));
    }
    None
}

/// The redirect policy: at most [`MAX_REDIRECTS`], none that [`redirect_refusal`] refuses.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // `previous` starts with the URL asked for, which is no redirect.
        if attempt.previous().len() > MAX_REDIRECTS {
            let why = format!("more than {MAX_REDIRECTS} redirects");
            attempt.error(why)
        } else if let Some(why) = redirect_refusal(attempt.previous(), attempt.url()) {
            attempt.error(why)
        } else {
            attempt.follow()
        }
    })
}

/// An HTTP(S) client with the download's timeouts.
pub struct Http {
    client: reqwest::Client,
    idle: Duration,
    connect: Duration,
}

impl Http {
    /// A client that gives up connecting after `connect` and waiting for any data after `idle`.
    pub fn new(connect: Duration, idle: Duration) -> Result<Http, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .read_timeout(idle)
            .redirect(redirect_policy())
            .user_agent(concat!(
                "talkheadd/",
                env!("CARGO_PKG_VERSION"),
                " (models fetch)"
            ))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Http {
            client,
            idle,
            connect,
        })
    }

    fn request_error(&self, url: &str, e: &reqwest::Error, got: u64) -> FetchError {
        let detail = if e.is_redirect() {
            // The policy's own words: too many redirects, or a refused one.
            std::error::Error::source(e).map_or_else(|| error_chain(e), ToString::to_string)
        } else if e.is_connect() {
            // Before is_timeout: a connect timeout is both.
            if e.is_timeout() {
                format!(
                    "cannot connect: no connection within {} s",
                    self.connect.as_secs_f64()
                )
            } else {
                format!("cannot connect: {}", error_chain(e))
            }
        } else if e.is_timeout() {
            return FetchError::Stalled {
                url: url.to_owned(),
                secs: self.idle,
                got,
            };
        } else {
            error_chain(e)
        };
        FetchError::Request {
            url: url.to_owned(),
            detail,
        }
    }

    /// Downloads `url` into `<dir>/<part_name>`, resuming what is there. Returns the synced `.part`
    /// (its descriptor and what was written and read through it) when the body has ended; the caller
    /// checks it against the manifest.
    pub async fn download(
        &self,
        url: &str,
        dir: &InstallDir,
        part_name: &str,
        expect: &Expect,
        label: &str,
    ) -> Result<Finished, FetchError> {
        let path = dir.join(part_name);
        let io = |source| FetchError::Io {
            path: path.clone(),
            source,
        };
        let limit = expect.size.unwrap_or(UNKNOWN_SIZE_LIMIT);
        let mut part = dir.resume_part(part_name, limit).map_err(io)?;
        let mut restarted = false;
        for _ in 0..MAX_ROUNDS {
            let have = part.size();
            if have > 0 && expect.size == Some(have) {
                eprintln!("{label}: {} already downloaded", path.display());
                return part.finish().map_err(io);
            }
            let mut request = self.client.get(url);
            if have > 0 {
                request = request.header(RANGE, format!("bytes={have}-"));
                eprintln!("{label}: resuming {url} at byte {have}");
            } else {
                eprintln!("{label}: downloading {url}");
            }
            // reqwest bounds each connect and read; this bounds the whole wait for the headers, across
            // redirects, in case a server trickles them.
            let headers_deadline = (self.connect + self.idle) * 2;
            let mut response = match tokio::time::timeout(headers_deadline, request.send()).await {
                Err(_) => {
                    return Err(FetchError::NoAnswer {
                        url: url.to_owned(),
                        secs: headers_deadline,
                    });
                }
                Ok(Err(e)) => return Err(self.request_error(url, &e, have)),
                Ok(Ok(r)) => r,
            };
            let status = response.status();
            let via = (response.url().as_str() != url).then(|| response.url().to_string());
            let content_range = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let decision = range_decision(have, status.as_u16(), content_range.as_deref());
            match decision {
                RangeDecision::Fail => {
                    return Err(FetchError::Status {
                        url: url.to_owned(),
                        status,
                        via,
                    });
                }
                RangeDecision::Complete => return part.finish().map_err(io),
                RangeDecision::Restart if !restarted => {
                    eprintln!(
                        "{label}: the server's answer ({status}, Content-Range {}) does not continue the \
                         {have} bytes there; starting over",
                        content_range.as_deref().unwrap_or("missing")
                    );
                    restarted = true;
                    part = dir.create_part(part_name).map_err(io)?;
                    continue;
                }
                RangeDecision::Restart => {
                    return Err(FetchError::Request {
                        url: url.to_owned(),
                        detail: format!("answered {status} with a range that fits nothing asked for"),
                    });
                }
                RangeDecision::Append => {}
                RangeDecision::FromZero => {
                    if have > 0 {
                        eprintln!(
                            "{label}: the server sent the whole file instead of the rest; starting over"
                        );
                        part = dir.create_part(part_name).map_err(io)?;
                    }
                }
            }
            let partial = status == StatusCode::PARTIAL_CONTENT;
            let (total, end) = response_bounds(
                partial,
                content_range.as_deref().and_then(parse_content_range),
                response.content_length(),
            );
            if let (Some(total), Some(size)) = (total, expect.size)
                && total != size
            {
                drop(part);
                dir.remove_if_there(part_name).map_err(io)?;
                return Err(FetchError::WrongSize {
                    url: url.to_owned(),
                    detail: format!("the server offers {total} bytes, the manifest expects {size}"),
                    part: path.clone(),
                });
            }
            let mut progress = Progress::start(label, expect.size.or(total), part.size());
            let outcome = loop {
                let got = part.size();
                let chunk = match tokio::time::timeout(self.idle, response.chunk()).await {
                    Err(_) => {
                        break Err(FetchError::Stalled {
                            url: url.to_owned(),
                            secs: self.idle,
                            got,
                        });
                    }
                    Ok(Err(e)) if e.is_timeout() => break Err(self.request_error(url, &e, got)),
                    Ok(Err(e)) => {
                        break Err(FetchError::Interrupted {
                            url: url.to_owned(),
                            got,
                            detail: error_chain(&e),
                        });
                    }
                    Ok(Ok(None)) => break Ok(()),
                    Ok(Ok(Some(chunk))) => chunk,
                };
                let after = got.saturating_add(chunk.len() as u64);
                if after > limit {
                    break Err(FetchError::WrongSize {
                        url: url.to_owned(),
                        detail: format!("the server sends more than {limit} bytes"),
                        part: path.clone(),
                    });
                }
                if end.is_some_and(|end| after > end) {
                    break Err(FetchError::Request {
                        url: url.to_owned(),
                        detail: format!(
                            "the server sends more than the {} bytes it announced",
                            end.unwrap_or_default()
                        ),
                    });
                }
                if let Err(e) = part.write_all(&chunk) {
                    break Err(io(e));
                }
                progress.advance(chunk.len() as u64);
            };
            progress.finish();
            let flushed = part.flush();
            if let Err(e @ FetchError::WrongSize { .. }) = outcome {
                drop(part);
                dir.remove_if_there(part_name).map_err(io)?;
                return Err(e);
            }
            outcome?;
            flushed.map_err(io)?;
            let got = part.size();
            if let Some(end) = end
                && got < end
            {
                return Err(FetchError::Interrupted {
                    url: url.to_owned(),
                    got,
                    detail: format!("{end} bytes announced"),
                });
            }
            // A range that ends before the file does: ask for the rest.
            if partial && total.or(expect.size).is_some_and(|whole| got < whole) {
                continue;
            }
            return part.finish().map_err(io);
        }
        Err(FetchError::Request {
            url: url.to_owned(),
            detail: format!("{MAX_ROUNDS} requests did not complete the file"),
        })
    }
}

/// An error and its causes, for people.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some(ContentRange::Bytes {
                start: 100,
                end: 199,
                total: Some(200)
            })
        );
        assert_eq!(
            parse_content_range("bytes 0-9/*"),
            Some(ContentRange::Bytes {
                start: 0,
                end: 9,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */200"),
            Some(ContentRange::Unsatisfied { total: 200 })
        );
        for bad in [
            "",
            "bytes",
            "items 0-1/2",
            "bytes 5-1/9",
            "bytes a-b/c",
            "bytes */x",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_answer_to_a_range_request_decides_the_part_file() {
        use RangeDecision::*;
        // A fresh download.
        assert_eq!(range_decision(0, 200, None), FromZero);
        // The server resumes where the .part ends.
        assert_eq!(range_decision(100, 206, Some("bytes 100-199/200")), Append);
        // It ignores Range and sends everything: start over, never append the whole file.
        assert_eq!(range_decision(100, 200, None), FromZero);
        // A range that does not start where the .part ends (or none at all) is never appended.
        assert_eq!(range_decision(100, 206, Some("bytes 0-199/200")), Restart);
        assert_eq!(range_decision(100, 206, None), Restart);
        // Past the end: complete if the server's size is the .part's, else start over.
        assert_eq!(range_decision(200, 416, Some("bytes */200")), Complete);
        assert_eq!(range_decision(300, 416, Some("bytes */200")), Restart);
        assert_eq!(range_decision(0, 416, Some("bytes */200")), Fail);
        for status in [404, 403, 500, 204, 302] {
            assert_eq!(range_decision(0, status, None), Fail, "{status}");
        }
        // A 206's Content-Range gives the whole size and where its body ends, which may be short.
        let short = parse_content_range("bytes 100-149/200");
        assert_eq!(response_bounds(true, short, Some(50)), (Some(200), Some(150)));
        assert_eq!(
            response_bounds(true, parse_content_range("bytes 100-199/*"), Some(100)),
            (None, Some(200))
        );
        assert_eq!(response_bounds(false, None, Some(250)), (Some(250), Some(250)));
        assert_eq!(response_bounds(false, None, None), (None, None));
        let end = parse_content_range(&format!("bytes 0-{}/*", u64::MAX));
        assert_eq!(response_bounds(true, end, None), (None, None));
    }

    #[test]
    fn redirects_never_leave_https_nor_go_to_http_off_the_loopback() {
        let url = |u: &str| Url::parse(u).unwrap();
        let https = [url("https://example.org/m.bin")];
        assert_eq!(
            redirect_refusal(&https, &url("https://cdn.example.org/m.bin")),
            None
        );
        let e = redirect_refusal(&https, &url("http://cdn.example.org/m.bin")).unwrap();
        assert!(e.contains("from https to http://cdn.example.org/m.bin"), "{e}");
        // Not even to the loopback once on https.
        assert!(redirect_refusal(&https, &url("http://127.0.0.1/m.bin")).is_some());
        let local = [url("http://127.0.0.1:8000/m.bin")];
        assert_eq!(redirect_refusal(&local, &url("http://localhost:9/m")), None);
        assert_eq!(redirect_refusal(&local, &url("https://example.org/m")), None);
        assert!(redirect_refusal(&local, &url("http://example.org/m")).is_some());
        assert!(redirect_refusal(&local, &url("ftp://127.0.0.1/m")).is_some());
    }
}
