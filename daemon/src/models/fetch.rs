//! Downloading one file over HTTP(S) into `<dir>/<name>.part`: resumed with a `Range` request when a
//! `.part` is there (started over when the server answers the whole file), redirects followed (at most
//! [`MAX_REDIRECTS`]), a connect timeout and an idle timeout on every read, so a stalled server fails
//! with a message instead of hanging. Checking and installing what arrived is the caller's business.

use super::manifest::{Expect, overlong};
use super::progress::Progress;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 10;
/// The most a download whose size the manifest does not give may grow to.
pub const UNKNOWN_SIZE_LIMIT: u64 = 8 << 30;

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

/// The size a response announces for the whole file, from the bytes already there and its headers.
pub fn announced_total(decision: RangeDecision, have: u64, content_length: Option<u64>) -> Option<u64> {
    match decision {
        RangeDecision::Append => content_length.map(|l| have + l),
        RangeDecision::FromZero => content_length,
        _ => None,
    }
}

/// An HTTP(S) client with the download's timeouts.
pub struct Http {
    client: reqwest::Client,
    idle: Duration,
    connect: Duration,
}

/// The length of a file, 0 when it is not there.
fn len_of(path: &Path) -> Result<u64, FetchError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(FetchError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Http {
    /// A client that gives up connecting after `connect` and waiting for any data after `idle`.
    pub fn new(connect: Duration, idle: Duration) -> Result<Http, FetchError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .read_timeout(idle)
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
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
        if e.is_timeout() {
            return FetchError::Stalled {
                url: url.to_owned(),
                secs: self.idle,
                got,
            };
        }
        let detail = if e.is_redirect() {
            format!("more than {MAX_REDIRECTS} redirects")
        } else if e.is_connect() {
            format!("cannot connect: {}", error_chain(e))
        } else {
            error_chain(e)
        };
        FetchError::Request {
            url: url.to_owned(),
            detail,
        }
    }

    /// Downloads `url` into `part`, resuming what is there. Returns when the body has ended; the
    /// caller checks the `.part` file against the manifest.
    pub async fn download(
        &self,
        url: &str,
        part: &Path,
        expect: &Expect,
        label: &str,
    ) -> Result<(), FetchError> {
        let io = |source| FetchError::Io {
            path: part.to_owned(),
            source,
        };
        let limit = expect.size.unwrap_or(UNKNOWN_SIZE_LIMIT);
        let mut restarted = false;
        loop {
            let mut have = len_of(part)?;
            if overlong(expect, have) {
                tokio::fs::remove_file(part).await.map_err(io)?;
                have = 0;
            }
            if have > 0 && expect.size == Some(have) {
                eprintln!("{label}: {} already downloaded", part.display());
                return Ok(());
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
                    return Err(FetchError::Stalled {
                        url: url.to_owned(),
                        secs: self.idle,
                        got: have,
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
            let mut file = match decision {
                RangeDecision::Fail => {
                    return Err(FetchError::Status {
                        url: url.to_owned(),
                        status,
                        via,
                    });
                }
                RangeDecision::Complete => return Ok(()),
                RangeDecision::Restart if !restarted => {
                    eprintln!(
                        "{label}: the server's answer ({status}, Content-Range {}) does not continue the \
                         {have} bytes there; starting over",
                        content_range.as_deref().unwrap_or("missing")
                    );
                    restarted = true;
                    tokio::fs::remove_file(part).await.map_err(io)?;
                    continue;
                }
                RangeDecision::Restart => {
                    return Err(FetchError::Request {
                        url: url.to_owned(),
                        detail: format!("answered {status} with a range that fits nothing asked for"),
                    });
                }
                // Never through a symbolic link planted at the `.part` path.
                RangeDecision::Append => tokio::fs::OpenOptions::new()
                    .append(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(part)
                    .await
                    .map_err(io)?,
                RangeDecision::FromZero => {
                    if have > 0 {
                        eprintln!(
                            "{label}: the server sent the whole file instead of the rest; starting over"
                        );
                    }
                    have = 0;
                    tokio::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .custom_flags(nix::libc::O_NOFOLLOW)
                        .open(part)
                        .await
                        .map_err(io)?
                }
            };
            let announced = announced_total(decision, have, response.content_length());
            if let (Some(total), Some(size)) = (announced, expect.size)
                && total != size
            {
                drop(file);
                tokio::fs::remove_file(part).await.map_err(io)?;
                return Err(FetchError::WrongSize {
                    url: url.to_owned(),
                    detail: format!("the server offers {total} bytes, the manifest expects {size}"),
                    part: part.to_owned(),
                });
            }
            let mut progress = Progress::start(label, expect.size.or(announced), have);
            let mut got = have;
            let outcome = loop {
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
                if got + chunk.len() as u64 > limit {
                    break Err(FetchError::WrongSize {
                        url: url.to_owned(),
                        detail: format!("the server sends more than {limit} bytes"),
                        part: part.to_owned(),
                    });
                }
                if let Err(e) = file.write_all(&chunk).await {
                    break Err(io(e));
                }
                got += chunk.len() as u64;
                progress.advance(chunk.len() as u64);
            };
            progress.finish();
            let flushed = match file.flush().await {
                Ok(()) => file.sync_all().await,
                Err(e) => Err(e),
            };
            drop(file);
            if let Err(FetchError::WrongSize { .. }) = &outcome {
                tokio::fs::remove_file(part).await.map_err(io)?;
            }
            outcome?;
            flushed.map_err(io)?;
            if let Some(total) = announced
                && got < total
            {
                return Err(FetchError::Interrupted {
                    url: url.to_owned(),
                    got,
                    detail: format!("{total} bytes announced"),
                });
            }
            return Ok(());
        }
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
        assert_eq!(announced_total(Append, 100, Some(100)), Some(200));
        assert_eq!(announced_total(FromZero, 100, Some(250)), Some(250));
        assert_eq!(announced_total(FromZero, 0, None), None);
    }
}
