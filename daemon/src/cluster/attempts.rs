//! The coordinator's book of job attempts, as the cluster listener will consult it: which attempts
//! were issued, what each may fetch, and whether its report may still be accepted.
//!
//! Pure decisions, no I/O: the listener (HTTP) asks, this answers with a value or a [`Refusal`] that
//! carries its HTTP status and a stable reason. Rules:
//! - a request names its evaluation and attempt and presents that attempt's bearer token; an unknown
//!   attempt and a wrong token are the same 401 (no oracle for which attempts exist);
//! - issuing a new attempt of an evaluation supersedes the earlier ones: their tokens still
//!   authenticate (so their workers learn why), but every request of theirs is a 409;
//! - a report is accepted at most once per attempt; a replay is a 409 and changes nothing;
//! - a cancelled evaluation (submission changed, pause, shutdown) accepts nothing more (409);
//! - a worker may fetch exactly the files its spec lists, by their relative paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::token::{AttemptToken, TokenDigest, bearer};

/// One file of an attempt's challenge set, as the spec lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecFile {
    /// Relative path under the challenge directory (`challenge-1/face.png`).
    pub path: String,
    /// Hex SHA-256 of its bytes: the worker refuses anything else.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// What must be the same on every host for scores to compare: the coordinator's values, which a
/// worker applies over its own configuration (counts, timeouts, the whole `[scoring]` table) or must
/// already agree with (the analysis backends, which are its host's installation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSettings {
    /// `evaluation.warmup_count`.
    pub warmup_count: usize,
    /// `evaluation.scoring_count`.
    pub scoring_count: usize,
    /// `evaluation.ready_timeout_secs`.
    pub ready_timeout_secs: f64,
    /// `evaluation.challenge_timeout_secs`.
    pub challenge_timeout_secs: f64,
    /// The whole `[scoring]` table (profile included).
    pub scoring: crate::scoring::ScoringConfig,
    /// `analysis.face.backend` (`builtin`, `onnx`).
    pub face_backend: String,
    /// `analysis.asr.backend` (`none`, `whisper`).
    pub asr_backend: String,
    /// `analysis.conformance` (`strict`, `penalty`).
    pub conformance: String,
}

/// What a worker fetches first: everything it needs to run the attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptSpec {
    /// The evaluation's id.
    pub evaluation: String,
    /// The attempt number (1, 2, …).
    pub attempt: u32,
    /// The image, pinned by digest.
    pub image: String,
    /// The challenge files.
    pub files: Vec<SpecFile>,
    /// The settings every host must share.
    pub settings: SharedSettings,
}

/// What a worker uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// The run report (`cluster.max_report_bytes`).
    Report,
    /// A scored video (`cluster.max_video_bytes`).
    Video,
}

/// Why a worker's request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, a wrong one, or an attempt this coordinator never issued.
    #[error("unknown attempt or wrong token")]
    Unauthorized,
    /// A later attempt of the same evaluation was issued.
    #[error("attempt {attempt} of {evaluation} was superseded by attempt {current}")]
    Superseded {
        /// The evaluation.
        evaluation: String,
        /// The attempt asked about.
        attempt: u32,
        /// The current attempt.
        current: u32,
    },
    /// The evaluation no longer matters.
    #[error("evaluation {0} was cancelled: {1}")]
    Cancelled(String, String),
    /// This attempt's report was accepted already.
    #[error("the report of attempt {attempt} of {evaluation} was accepted already")]
    AlreadyReported {
        /// The evaluation.
        evaluation: String,
        /// The attempt.
        attempt: u32,
    },
    /// A path the spec does not list.
    #[error("{0:?} is not a file of this attempt")]
    NoSuchFile(String),
    /// A report larger than the cap.
    #[error("a report of {size} bytes exceeds cluster.max_report_bytes ({limit})")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// A video larger than the cap.
    #[error("a video of {size} bytes exceeds cluster.max_video_bytes ({limit})")]
    VideoTooLarge {
        /// Its size (declared, or what arrived before the cap).
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// More videos than an attempt may upload.
    #[error("an attempt uploads at most {limit} videos")]
    TooManyVideos {
        /// The cap.
        limit: usize,
    },
}

impl Refusal {
    /// `what` of `size` bytes over its cap `limit`.
    pub fn too_large(what: Upload, size: u64, limit: u64) -> Refusal {
        match what {
            Upload::Report => Refusal::TooLarge { size, limit },
            Upload::Video => Refusal::VideoTooLarge { size, limit },
        }
    }

    /// The HTTP status the listener answers with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthorized => 401,
            Refusal::NoSuchFile(_) => 404,
            Refusal::Superseded { .. } | Refusal::Cancelled(..) | Refusal::AlreadyReported { .. } => 409,
            Refusal::TooLarge { .. } | Refusal::VideoTooLarge { .. } | Refusal::TooManyVideos { .. } => 413,
        }
    }

    /// A stable reason string for the JSON body.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Superseded { .. } => "attempt_superseded",
            Refusal::Cancelled(..) => "evaluation_cancelled",
            Refusal::AlreadyReported { .. } => "already_reported",
            Refusal::NoSuchFile(_) => "no_such_file",
            Refusal::TooLarge { .. } => "report_too_large",
            Refusal::VideoTooLarge { .. } => "video_too_large",
            Refusal::TooManyVideos { .. } => "too_many_videos",
        }
    }
}

/// A relative path of plain names (`[A-Za-z0-9._-]`, no `.` or `..`, at most 8 levels and 255 bytes):
/// what a spec may list and a worker may write under its job directory.
pub fn is_plain_relative_path(path: &str) -> bool {
    path.len() <= 255
        && path.split('/').count() <= 8
        && path.split('/').all(|name| {
            !name.is_empty()
                && name != "."
                && name != ".."
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

struct Attempt {
    digest: TokenDigest,
    spec: AttemptSpec,
    /// The coordinator's directory the spec's file paths are relative to.
    files_root: PathBuf,
    reported: bool,
}

#[derive(Default)]
struct Evaluation {
    attempts: BTreeMap<u32, Attempt>,
    cancelled: Option<String>,
}

/// The attempts this coordinator issued.
#[derive(Default)]
pub struct AttemptBook {
    evaluations: BTreeMap<String, Evaluation>,
}

impl AttemptBook {
    /// An empty book.
    pub fn new() -> AttemptBook {
        AttemptBook::default()
    }

    /// Issues `spec`'s attempt (superseding the evaluation's earlier ones), its files served from
    /// under `files_root`, and returns its token. Refuses a spec whose attempt is not newer than the
    /// evaluation's latest, or that lists a path that is not plain.
    pub fn issue(&mut self, spec: AttemptSpec, files_root: PathBuf) -> Result<AttemptToken, String> {
        if let Some(bad) = spec.files.iter().find(|f| !is_plain_relative_path(&f.path)) {
            return Err(format!(
                "spec file path {:?} is not a plain relative path",
                bad.path
            ));
        }
        let evaluation = self.evaluations.entry(spec.evaluation.clone()).or_default();
        if let Some((&latest, _)) = evaluation.attempts.last_key_value()
            && spec.attempt <= latest
        {
            return Err(format!(
                "attempt {} of {} is not newer than attempt {latest}",
                spec.attempt, spec.evaluation
            ));
        }
        let token = AttemptToken::generate().map_err(|e| format!("no randomness for a token: {e}"))?;
        evaluation.cancelled = None;
        evaluation.attempts.insert(
            spec.attempt,
            Attempt {
                digest: token.digest(),
                spec,
                files_root,
                reported: false,
            },
        );
        Ok(token)
    }

    /// Forgets the evaluation once its result is the coordinator's: its attempts' requests are the
    /// 401 of an unknown attempt from now on (nothing of theirs could change anything any more).
    pub fn forget(&mut self, evaluation: &str) {
        self.evaluations.remove(evaluation);
    }

    /// The evaluation no longer matters: every request of its attempts is refused from now on.
    pub fn cancel(&mut self, evaluation: &str, why: &str) {
        if let Some(e) = self.evaluations.get_mut(evaluation) {
            e.cancelled = Some(why.to_owned());
        }
    }

    /// The attempt a request is for, if `authorization` (the header's value) is its token and the
    /// attempt is still current.
    fn current(
        &self,
        evaluation: &str,
        attempt: u32,
        authorization: Option<&str>,
    ) -> Result<(&Evaluation, &Attempt), Refusal> {
        let token = authorization.and_then(bearer).ok_or(Refusal::Unauthorized)?;
        let e = self.evaluations.get(evaluation).ok_or(Refusal::Unauthorized)?;
        let a = e.attempts.get(&attempt).ok_or(Refusal::Unauthorized)?;
        if !a.digest.verify(token) {
            return Err(Refusal::Unauthorized);
        }
        if let Some(why) = &e.cancelled {
            return Err(Refusal::Cancelled(evaluation.to_owned(), why.clone()));
        }
        let current = e.attempts.last_key_value().map_or(attempt, |(&n, _)| n);
        if current != attempt {
            return Err(Refusal::Superseded {
                evaluation: evaluation.to_owned(),
                attempt,
                current,
            });
        }
        Ok((e, a))
    }

    /// `GET …/spec`.
    pub fn spec(
        &self,
        evaluation: &str,
        attempt: u32,
        authorization: Option<&str>,
    ) -> Result<&AttemptSpec, Refusal> {
        let (_, a) = self.current(evaluation, attempt, authorization)?;
        if a.reported {
            return Err(Refusal::AlreadyReported {
                evaluation: evaluation.to_owned(),
                attempt,
            });
        }
        Ok(&a.spec)
    }

    /// `GET …/files/<path>`: the listed file and the directory its path is relative to (the listener
    /// serves its bytes from there).
    pub fn file(
        &self,
        evaluation: &str,
        attempt: u32,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<(&SpecFile, &Path), Refusal> {
        let spec = self.spec(evaluation, attempt, authorization)?;
        let (_, a) = self.current(evaluation, attempt, authorization)?;
        let file = spec
            .files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| Refusal::NoSuchFile(path.to_owned()))?;
        Ok((file, &a.files_root))
    }

    /// `PUT …/report` or `PUT …/videos/<name>` of `size` bytes (declared, or counted while streaming)
    /// under the cap `limit`: whether it may be read and stored. Ask before reading (with the declared
    /// size) and again once a video is on disk (the attempt may have been superseded meanwhile);
    /// [`Self::accept_report`] after a report is parsed.
    pub fn may_upload(
        &self,
        evaluation: &str,
        attempt: u32,
        authorization: Option<&str>,
        what: Upload,
        size: u64,
        limit: u64,
    ) -> Result<(), Refusal> {
        self.spec(evaluation, attempt, authorization)?;
        if size > limit {
            return Err(Refusal::too_large(what, size, limit));
        }
        Ok(())
    }

    /// Marks the attempt's report accepted: the one time it succeeds, the caller stages the result;
    /// any later call is [`Refusal::AlreadyReported`] (or whatever else refuses it now).
    pub fn accept_report(
        &mut self,
        evaluation: &str,
        attempt: u32,
        authorization: Option<&str>,
    ) -> Result<(), Refusal> {
        self.spec(evaluation, attempt, authorization)?;
        if let Some(a) = self
            .evaluations
            .get_mut(evaluation)
            .and_then(|e| e.attempts.get_mut(&attempt))
        {
            a.reported = true;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn spec(evaluation: &str, attempt: u32) -> AttemptSpec {
        AttemptSpec {
            evaluation: evaluation.into(),
            attempt,
            image: "127.0.0.1:5000/m@sha256:aa".into(),
            files: vec![SpecFile {
                path: "challenge-1/face.png".into(),
                sha256: "00".repeat(32),
                size: 10,
            }],
            settings: SharedSettings {
                warmup_count: 1,
                scoring_count: 2,
                ready_timeout_secs: 30.0,
                challenge_timeout_secs: 20.0,
                scoring: crate::scoring::ScoringConfig::default(),
                face_backend: "builtin".into(),
                asr_backend: "none".into(),
                conformance: "strict".into(),
            },
        }
    }

    fn auth(token: &AttemptToken) -> String {
        format!("Bearer {}", token.expose())
    }

    #[test]
    fn only_the_attempts_own_token_opens_it_and_strangers_learn_nothing() {
        let mut book = AttemptBook::new();
        let token = book.issue(spec("e1", 1), PathBuf::from("/sets/h")).unwrap();
        let other = book.issue(spec("e2", 1), PathBuf::from("/sets/h")).unwrap();
        assert_eq!(
            book.spec("e1", 1, Some(&auth(&token))).unwrap().image,
            "127.0.0.1:5000/m@sha256:aa"
        );
        // Another attempt's token, none, a malformed header, an attempt or evaluation never issued:
        // the same 401.
        for (e, a, h) in [
            ("e1", 1, Some(auth(&other))),
            ("e1", 1, None),
            ("e1", 1, Some(token.expose().to_owned())),
            ("e1", 2, Some(auth(&token))),
            ("e9", 1, Some(auth(&token))),
        ] {
            let refused = book.spec(e, a, h.as_deref()).unwrap_err();
            assert_eq!(
                (refused.status(), refused.reason()),
                (401, "unauthorized"),
                "{e} {a} {h:?}"
            );
        }
    }

    #[test]
    fn a_report_is_accepted_once_and_a_superseded_or_cancelled_attempt_is_told_why() {
        let mut book = AttemptBook::new();
        let first = book.issue(spec("e1", 1), PathBuf::from("/sets/h")).unwrap();
        let h1 = auth(&first);
        assert_eq!(
            book.may_upload("e1", 1, Some(&h1), Upload::Report, 100, 1000),
            Ok(())
        );
        let big = book
            .may_upload("e1", 1, Some(&h1), Upload::Report, 1001, 1000)
            .unwrap_err();
        assert_eq!((big.status(), big.reason()), (413, "report_too_large"));
        let big = book
            .may_upload("e1", 1, Some(&h1), Upload::Video, 1001, 1000)
            .unwrap_err();
        assert_eq!((big.status(), big.reason()), (413, "video_too_large"));
        assert_eq!(
            book.may_upload("e1", 1, Some(&h1), Upload::Video, 1000, 1000),
            Ok(())
        );
        book.accept_report("e1", 1, Some(&h1)).unwrap();
        let replay = book.accept_report("e1", 1, Some(&h1)).unwrap_err();
        assert_eq!((replay.status(), replay.reason()), (409, "already_reported"));
        assert!(book.spec("e1", 1, Some(&h1)).is_err());

        // A retry supersedes attempt 1: its late upload is a 409 that names the current attempt.
        let second = book.issue(spec("e1", 2), PathBuf::from("/sets/h")).unwrap();
        let late = book.accept_report("e1", 1, Some(&h1)).unwrap_err();
        assert_eq!(
            late,
            Refusal::Superseded {
                evaluation: "e1".into(),
                attempt: 1,
                current: 2
            }
        );
        assert_eq!(late.status(), 409);
        let h2 = auth(&second);
        assert!(book.spec("e1", 2, Some(&h2)).is_ok());
        // An attempt that is not newer is refused at issue.
        assert!(book.issue(spec("e1", 2), PathBuf::from("/sets/h")).is_err());
        assert!(book.issue(spec("e1", 1), PathBuf::from("/sets/h")).is_err());

        book.cancel("e1", "the submission changed");
        let cancelled = book.accept_report("e1", 2, Some(&h2)).unwrap_err();
        assert_eq!(
            (cancelled.status(), cancelled.reason()),
            (409, "evaluation_cancelled")
        );
        // A new attempt after a cancellation is current again.
        let third = book.issue(spec("e1", 3), PathBuf::from("/sets/h")).unwrap();
        assert!(book.accept_report("e1", 3, Some(&auth(&third))).is_ok());
        // Forgotten once its result is staged: every attempt of it is an unknown one.
        book.forget("e1");
        for (attempt, token) in [(3, &third), (2, &second)] {
            let gone = book.spec("e1", attempt, Some(&auth(token))).unwrap_err();
            assert_eq!((gone.status(), gone.reason()), (401, "unauthorized"));
        }
    }

    #[test]
    fn only_listed_plain_paths_are_served_or_issued() {
        let mut book = AttemptBook::new();
        let token = book.issue(spec("e1", 1), PathBuf::from("/sets/h")).unwrap();
        let h = auth(&token);
        assert_eq!(
            book.file("e1", 1, "challenge-1/face.png", Some(&h))
                .unwrap()
                .0
                .size,
            10
        );
        for path in [
            "challenge-1/audio.wav",
            "../etc/passwd",
            "challenge-1/../face.png",
            "",
        ] {
            assert_eq!(
                book.file("e1", 1, path, Some(&h)).unwrap_err().status(),
                404,
                "{path}"
            );
        }
        for bad in [
            "../x",
            "/abs",
            "a//b",
            "a/./b",
            "a/b c",
            "a\\b",
            "",
            &"a/".repeat(9),
        ] {
            assert!(!is_plain_relative_path(bad), "{bad:?}");
            let mut s = spec("e2", 1);
            s.files[0].path = bad.to_owned();
            assert!(book.issue(s, PathBuf::from("/sets/h")).is_err(), "{bad:?}");
        }
        assert!(is_plain_relative_path("challenge-1/face.png"));
    }
}
