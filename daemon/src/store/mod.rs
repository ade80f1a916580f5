//! The persistent store: one LMDB environment (heed) in a single data file, with named typed tables,
//! a schema version with migrations, and the round state machine of [`crate::rounds`] applied
//! transactionally.
//!
//! Owns: opening the file (NOSUBDIR, one environment per file per process), the table layout, and the
//! rule "one decision = one write transaction": every mutating call reads the records it touches, asks
//! `rounds` what to do and applies the answer with per-key puts/deletes in the same transaction (never
//! clear-and-rewrite). Must not: decide round rules itself, hold a transaction across anything but its
//! own reads and writes, create directories, or block an async executor (calls are synchronous; the
//! async caller runs them on a blocking thread).

mod calibration;
mod controls;
mod error;
mod gpus;
mod images;
mod metrics_body;
mod registry;
mod schema;
mod tables;
#[cfg(test)]
mod tests;

pub use crate::rounds::{
    DiscardReason, EvaluationTicket, MetricsRow, RankInput, ReevaluatePolicy, RoundCommit, StageOutcome,
    UpsertReport,
};
pub use calibration::{CalibrationRecord, KEPT_CALIBRATIONS};
pub use controls::{BlockRecord, BlockTarget, MinerView, ReevaluateOutcome};
pub use error::{StoreError, WorkerFailed};
pub use images::PulledImageRecord;
pub use metrics_body::{MetricsBodyRow, render_metrics_body};
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;

use crate::domain::{EvaluationMetrics, Hotkey, Submission, Verdict};
use crate::rounds::{
    MinerState, RoundCounters, StageDecision, is_pending, plan_challenge_set, plan_commit, plan_remove,
    plan_stage, plan_upsert, sort_metrics_rows, sort_tickets,
};
use heed::types::DecodeIgnore;
use heed::{EnvFlags, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};
use registry::PathClaim;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tables::{COMMITTED, META, RUNS, STAGED, SUBMISSIONS, Tables, meta_key};

/// LMDB needs the map size to be a multiple of the OS page size; 64 KiB is a multiple of every page
/// size in use (4, 16 and 64 KiB), so sizes are rounded up to it.
const MAP_SIZE_GRANULE: usize = 64 * 1024;
/// Smallest accepted map size.
const MIN_MAP_SIZE: usize = 1 << 20;

/// How the store is opened (the config layer builds it from its validated settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Maximum size of the data file (LMDB map size). Rounded up to a multiple of 64 KiB; at least 1 MiB.
    /// The file grows as needed up to this size; writes beyond it fail with [`StoreError::Full`].
    pub map_size_bytes: usize,
    /// Run records kept per miner (the oldest are pruned); at least 1.
    pub history_per_miner: usize,
    /// Most distinct hotkeys tracked; an upsert that would exceed it is refused whole.
    pub max_submissions: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            map_size_bytes: 1 << 30,
            history_per_miner: 50,
            max_submissions: 4096,
        }
    }
}

impl StoreOptions {
    /// Validate, returning the effective map size.
    fn effective_map_size(&self) -> Result<usize, StoreError> {
        if self.history_per_miner == 0 {
            return Err(StoreError::InvalidOptions {
                reason: "history_per_miner must be at least 1",
            });
        }
        if self.max_submissions == 0 {
            return Err(StoreError::InvalidOptions {
                reason: "max_submissions must be at least 1",
            });
        }
        if self.map_size_bytes < MIN_MAP_SIZE {
            return Err(StoreError::InvalidOptions {
                reason: "map_size_bytes must be at least 1 MiB",
            });
        }
        self.map_size_bytes
            .div_ceil(MAP_SIZE_GRANULE)
            .checked_mul(MAP_SIZE_GRANULE)
            .filter(|&s| isize::try_from(s).is_ok())
            .ok_or(StoreError::InvalidOptions {
                reason: "map_size_bytes is too large for this platform",
            })
    }
}

/// A JSON document exactly as the store wrote it, to be copied verbatim (no re-encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredJson<'t>(&'t [u8]);

impl StoredJson<'_> {
    /// The JSON text.
    pub fn as_bytes(&self) -> &[u8] {
        self.0
    }
}

/// A `/metrics` row as the store holds it ([`Store::with_metrics_json`]): the fields of
/// [`MetricsRow`], borrowed from the memory map.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMetricsRow<'t> {
    /// The miner's SS58 address.
    pub hotkey: std::borrow::Cow<'t, str>,
    /// Its current image reference.
    pub image_ref: std::borrow::Cow<'t, str>,
    /// Its current submission time.
    pub submit_time: f64,
    /// The committed metrics' JSON.
    pub metrics: StoredJson<'t>,
    /// See [`MetricsRow::carried_over`].
    pub carried_over: bool,
}

/// `GET /metrics` as stored: its ETag counter and the rows with committed metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsView {
    /// ETag counter (`W/"metrics-<metrics_version>"`).
    pub metrics_version: u64,
    /// Miners with committed metrics, sorted by (submit_time, hotkey).
    pub rows: Vec<MetricsRow>,
}

/// One evaluation run, kept in the bounded per-miner history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run identifier (also the container label `talkhead.run`).
    pub run_id: String,
    /// The miner.
    pub hotkey: Hotkey,
    /// The image that ran, as given.
    pub image_ref: String,
    /// Generation of the submission that was evaluated.
    pub generation: u64,
    /// Round the run belonged to.
    pub round: u64,
    /// Outcome.
    pub verdict: Verdict,
    /// Human-readable detail of the outcome.
    pub reason: Option<String>,
    /// Seconds per stage.
    pub stage_times: BTreeMap<String, f64>,
    /// The metrics produced, if any.
    pub metrics: Option<EvaluationMetrics>,
    /// Unix start time.
    pub started_at: f64,
    /// Unix end time.
    pub finished_at: f64,
    /// The last lines the container wrote (bounded), for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    /// What operators should know beyond the verdict (e.g. an image CUDA requirement that could not be
    /// read and was not trusted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Where the run's image came from: `pulled` (by this run), `cached` (pulled by the daemon for an
    /// earlier run), `pre_pulled` (pulled ahead of this run) or `foreign` (on the host before, not the
    /// daemon's); absent when the run ended before its image was available, and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_source: Option<String>,
}

/// Result of [`Store::remove_submissions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveReport {
    /// Miners that existed and were removed.
    pub removed: usize,
    /// `metrics_version` after the removal.
    pub metrics_version: u64,
}

/// Identity and counters of the open round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundState {
    /// Number of the open round (1 for the first).
    pub number: u64,
    /// Hash of its challenge set, once fetched.
    pub challenge_set_hash: Option<String>,
    /// ETag counter of `/metrics`.
    pub metrics_version: u64,
    /// Unix time of the last commit.
    pub last_commit_at: Option<f64>,
}

/// Gauges for Prometheus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionCounts {
    /// Tracked hotkeys.
    pub submissions: u64,
    /// Miners waiting for evaluation in the open round.
    pub pending: u64,
    /// Staged results.
    pub staged: u64,
    /// Miners with committed metrics.
    pub committed: u64,
}

#[cfg(test)]
type Failpoint = Box<dyn Fn(&'static str) -> Result<(), StoreError> + Send + Sync>;

/// Handle to the open store. Cheap to clone; the file closes when the last handle is dropped (or
/// through [`Store::close`]).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Field order matters: `env` drops (closing the file) before `claim` releases the path.
struct Inner {
    tables: Tables,
    instance_id: String,
    env: heed::Env<WithoutTls>,
    path: PathBuf,
    opts: StoreOptions,
    claim: PathClaim,
    #[cfg(test)]
    failpoint: std::sync::Mutex<Option<Failpoint>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

/// Open the LMDB environment. The only `unsafe` of the store.
#[allow(unsafe_code)]
fn open_env(path: &Path, map_size: usize) -> Result<heed::Env<WithoutTls>, heed::Error> {
    // Without TLS, read transactions are not tied to a thread's reader slot: calls may run on any
    // blocking-pool thread.
    let mut options = EnvOpenOptions::new().read_txn_without_tls();
    options.map_size(map_size).max_dbs(tables::MAX_DBS);
    // SAFETY: NO_SUB_DIR only makes LMDB use `path` as the data file and `path-lock` as the lock file
    // instead of a directory; it is not one of the flags that weaken durability or locking (NO_SYNC,
    // NO_META_SYNC, NO_LOCK, WRITE_MAP...), none of which is ever set.
    unsafe { options.flags(EnvFlags::NO_SUB_DIR) };
    // SAFETY: a memory map is unsound only if the file changes behind LMDB's back. Every caller holds a
    // `PathClaim` on the canonical path for the Env's whole life, so this process has at most one Env
    // per file (LMDB's own rule: closing a second descriptor would drop the process's locks), and every
    // access goes through LMDB transactions; other processes are serialised by LMDB's lock file
    // (`<path>-lock`, never NO_LOCK). talkheadd never writes the data file outside LMDB, and the state
    // directory is local (systemd StateDirectory), not a network filesystem.
    unsafe { options.open(path) }
}

/// Turn an open failure into what the operator needs to fix.
fn open_error(given: &Path, canonical: &Path, e: heed::Error) -> StoreError {
    match e {
        heed::Error::EnvAlreadyOpened => StoreError::AlreadyOpen {
            path: canonical.to_owned(),
        },
        heed::Error::Io(ref io)
            if matches!(
                io.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            StoreError::NotWritable {
                path: given.to_owned(),
                source: e,
            }
        }
        heed::Error::Mdb(MdbError::Invalid) => StoreError::NotStateFile {
            path: given.to_owned(),
            detail: "not an LMDB file (the Python executor's state.db is SQLite: use a new path)",
        },
        heed::Error::Mdb(MdbError::VersionMismatch) => StoreError::NotStateFile {
            path: given.to_owned(),
            detail: "written by an incompatible LMDB version",
        },
        source => StoreError::Open {
            path: given.to_owned(),
            source,
        },
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn len_u64(
    t: &Tables,
    txn: &RoTxn,
    table: &'static str,
    len: impl FnOnce(&RoTxn) -> heed::Result<u64>,
) -> Result<u64, StoreError> {
    len(txn).map_err(t.err("len", table, None))
}

impl Store {
    /// Runs `op` on a clone of this handle on tokio's blocking pool: the one way async code calls the
    /// store (every call is synchronous LMDB work that must not run on an executor thread). `op`'s own
    /// result comes back unchanged; if it never returns (it panicked, or the runtime is shutting down)
    /// the caller gets its error type's conversion of [`WorkerFailed`].
    pub async fn blocking<T, E>(
        &self,
        op: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<WorkerFailed> + Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || op(&store)).await {
            Ok(result) => result,
            Err(e) => Err(E::from(WorkerFailed(e.to_string()))),
        }
    }

    /// Open (creating if needed) the state file at `path`.
    ///
    /// The environment is the single data file at `path` (LMDB `NOSUBDIR`; LMDB adds `<path>-lock`).
    /// The directory must already exist and be writable. An older schema is migrated before use; a newer
    /// one is refused without touching the file; a second open of the same file in this process is
    /// refused with [`StoreError::AlreadyOpen`].
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let map_size = opts.effective_map_size()?;
        let canonical = registry::resolve(path)?;
        let claim = PathClaim::acquire(&canonical)?;
        let env = open_env(&canonical, map_size).map_err(|e| open_error(path, &canonical, e))?;
        let (tables, instance_id) = schema::prepare(&env, &canonical, map_size)?;
        tracing::info!(path = %canonical.display(), map_size, "state store open");
        Ok(Store {
            inner: Arc::new(Inner {
                tables,
                instance_id,
                env,
                path: canonical,
                opts,
                claim,
                #[cfg(test)]
                failpoint: std::sync::Mutex::new(None),
            }),
        })
    }

    /// The canonical path of the data file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This store's instance id: 32 lowercase hex characters, random, fixed for the life of the file.
    /// The daemon labels its containers with it (`talkhead.instance`).
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    fn t(&self) -> &Tables {
        &self.inner.tables
    }

    fn rtxn(&self) -> Result<RoTxn<'_, WithoutTls>, StoreError> {
        self.inner
            .env
            .read_txn()
            .map_err(self.t().err("read_txn", "env", None))
    }

    fn wtxn(&self) -> Result<RwTxn<'_>, StoreError> {
        self.inner
            .env
            .write_txn()
            .map_err(self.t().err("write_txn", "env", None))
    }

    fn commit(&self, wtxn: RwTxn<'_>, table: &'static str) -> Result<(), StoreError> {
        wtxn.commit().map_err(self.t().err("commit", table, None))
    }

    #[cfg(test)]
    fn failpoint(&self, point: &'static str) -> Result<(), StoreError> {
        let guard = self.inner.failpoint.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map_or(Ok(()), |f| f(point))
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn failpoint(&self, _point: &'static str) -> Result<(), StoreError> {
        Ok(())
    }

    /// A small store at `path` for the engine's tests (16 MiB map, 5 runs per miner, 10 miners).
    #[cfg(test)]
    pub(crate) fn open_small(path: &Path) -> Store {
        let options = StoreOptions {
            map_size_bytes: 16 << 20,
            history_per_miner: 5,
            max_submissions: 10,
        };
        Store::open(path, options).unwrap_or_else(|e| unreachable!("opening a test store: {e}"))
    }

    /// Install (or remove) a failpoint called at named points inside write transactions.
    #[cfg(test)]
    pub(crate) fn set_failpoint(&self, f: Option<Failpoint>) {
        *self.inner.failpoint.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    /// Apply a batch of submissions in one transaction (see [`crate::rounds::plan_upsert`]).
    ///
    /// If the batch would make the number of distinct hotkeys exceed `max_submissions`, nothing is
    /// written and [`StoreError::SubmissionLimit`] is returned.
    pub fn upsert_submissions(&self, batch: &[Submission], now: f64) -> Result<UpsertReport, StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let counters = t.counters(&wtxn)?;
        let mut existing = BTreeMap::new();
        for s in batch {
            if !existing.contains_key(&s.hotkey)
                && let Some(snap) = t.snapshot(&wtxn, s.hotkey.as_str())?
            {
                existing.insert(s.hotkey.clone(), snap);
            }
        }
        let total = len_u64(t, &wtxn, SUBMISSIONS, |x| t.submissions.len(x))?;
        let plan = plan_upsert(
            &counters,
            batch,
            &existing,
            usize::try_from(total).unwrap_or(usize::MAX),
            self.inner.opts.max_submissions,
            now,
        )
        .map_err(|e| StoreError::rejected(None, e))?;
        if plan.changes.is_empty() {
            // Nothing changes: dropping the transaction aborts it, no write at all.
            return Ok(plan.report);
        }
        for change in &plan.changes {
            let h = change.record.hotkey.as_str();
            t.submissions
                .put(&mut wtxn, h, &change.record)
                .map_err(t.err("put", SUBMISSIONS, Some(h)))?;
            if change.drop_staged {
                t.staged
                    .delete(&mut wtxn, h)
                    .map_err(t.err("delete", STAGED, Some(h)))?;
            }
            if change.drop_committed {
                t.committed
                    .delete(&mut wtxn, h)
                    .map_err(t.err("delete", COMMITTED, Some(h)))?;
            }
            self.failpoint("upsert.after_change")?;
        }
        let next = RoundCounters {
            generation: plan.generation,
            metrics_version: plan.metrics_version,
            ..counters.clone()
        };
        t.put_counters(&mut wtxn, &counters, &next)?;
        self.commit(wtxn, SUBMISSIONS)?;
        tracing::debug!(
            inserted = plan.report.inserted,
            image_changed = plan.report.image_changed,
            submit_time_changed = plan.report.submit_time_changed,
            metrics_version = plan.report.metrics_version,
            "submissions upserted"
        );
        Ok(plan.report)
    }

    /// Remove miners (deregistered, abandoned) with their staged and committed results and their run
    /// history, in one transaction (see [`crate::rounds::plan_remove`]). Unknown hotkeys are ignored.
    /// Nothing else ever deletes a submission, so this is what keeps `max_submissions` from filling up
    /// with hotkeys that left the subnet.
    pub fn remove_submissions(&self, hotkeys: &[Hotkey]) -> Result<RemoveReport, StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let counters = t.counters(&wtxn)?;
        let mut existing = BTreeMap::new();
        for h in hotkeys {
            if !existing.contains_key(h)
                && let Some(snap) = t.snapshot(&wtxn, h.as_str())?
            {
                existing.insert(h.clone(), snap);
            }
        }
        let plan = plan_remove(&counters, hotkeys, &existing);
        if plan.removed.is_empty() {
            return Ok(RemoveReport {
                removed: 0,
                metrics_version: counters.metrics_version,
            });
        }
        for hotkey in &plan.removed {
            let h = hotkey.as_str();
            t.submissions
                .delete(&mut wtxn, h)
                .map_err(t.err("delete", SUBMISSIONS, Some(h)))?;
            t.staged
                .delete(&mut wtxn, h)
                .map_err(t.err("delete", STAGED, Some(h)))?;
            t.committed
                .delete(&mut wtxn, h)
                .map_err(t.err("delete", COMMITTED, Some(h)))?;
            let prefix = tables::run_prefix(h);
            let keys = self.run_keys(&wtxn, &prefix, h)?;
            for key in &keys {
                t.runs
                    .delete(&mut wtxn, key)
                    .map_err(t.err("delete", RUNS, Some(h)))?;
            }
        }
        let next = RoundCounters {
            metrics_version: plan.metrics_version,
            ..counters.clone()
        };
        t.put_counters(&mut wtxn, &counters, &next)?;
        self.commit(wtxn, SUBMISSIONS)?;
        tracing::info!(removed = plan.removed.len(), "submissions removed");
        Ok(RemoveReport {
            removed: plan.removed.len(),
            metrics_version: plan.metrics_version,
        })
    }

    /// Keys of one miner's runs, oldest first.
    fn run_keys(&self, txn: &RoTxn, prefix: &[u8], h: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let t = self.t();
        let mut keys = Vec::new();
        for item in t
            .runs
            .remap_data_type::<DecodeIgnore>()
            .prefix_iter(txn, prefix)
            .map_err(t.err("prefix_iter", RUNS, Some(h)))?
        {
            let (key, ()) = item.map_err(t.err("prefix_iter", RUNS, Some(h)))?;
            keys.push(key.to_vec());
        }
        Ok(keys)
    }

    /// What `GET /metrics` serves: miners with committed metrics, sorted by (submit_time, hotkey).
    pub fn metrics_view(&self) -> Result<MetricsView, StoreError> {
        let rtxn = self.rtxn()?;
        let (metrics_version, mut rows) = self.committed_rows(&rtxn, |committed, submission| {
            let c = <tables::CommittedCodec as heed::BytesDecode>::bytes_decode(committed)?;
            let r: crate::rounds::SubmissionRecord = serde_json::from_slice(submission)?;
            Ok((r.generation == c.generation).then_some(MetricsRow {
                hotkey: r.hotkey,
                image_ref: r.image_ref,
                submit_time: r.submit_time,
                metrics: c.metrics,
                carried_over: c.carried,
            }))
        })?;
        sort_metrics_rows(&mut rows);
        Ok(MetricsView {
            metrics_version,
            rows,
        })
    }

    /// The same rows as [`Self::metrics_view`] as the store holds them: strings and each miner's
    /// metrics JSON text borrowed from the memory map (never decoded, scanned or re-validated: the
    /// store wrote them), handed to `render` inside one read transaction. Serving `/metrics` this way
    /// copies the stored text instead of parsing and re-encoding ~100,000 numbers per 1,024 miners.
    pub fn with_metrics_json<R>(
        &self,
        render: impl FnOnce(u64, &[StoredMetricsRow<'_>]) -> R,
    ) -> Result<R, StoreError> {
        /// The fields of a stored `SubmissionRecord` a row needs, borrowed (no SS58 or reference
        /// re-validation: both were validated before they were stored).
        #[derive(Deserialize)]
        struct SubmissionJson<'a> {
            #[serde(borrow)]
            hotkey: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            image_ref: std::borrow::Cow<'a, str>,
            submit_time: f64,
            generation: u64,
        }
        let rtxn = self.rtxn()?;
        let (version, mut rows) = self.committed_rows(&rtxn, |committed, submission| {
            let (header, metrics) = tables::CommittedCodec::split(committed)?;
            let header: crate::rounds::CommittedHeader = serde_json::from_slice(header)?;
            let r: SubmissionJson<'_> = serde_json::from_slice(submission)?;
            Ok((r.generation == header.generation).then_some(StoredMetricsRow {
                hotkey: r.hotkey,
                image_ref: r.image_ref,
                submit_time: r.submit_time,
                metrics: StoredJson(metrics),
                carried_over: header.carried,
            }))
        })?;
        // The order of `sort_metrics_rows` (a hotkey's address orders it).
        rows.sort_by(|a, b| {
            crate::rounds::submission_order((a.submit_time, &a.hotkey), (b.submit_time, &b.hotkey))
        });
        Ok(render(version, &rows))
    }

    /// One row per committed result whose submission is unchanged since, unsorted: `row` gets the
    /// stored committed record and submission record and returns `None` when their generations
    /// differ.
    fn committed_rows<'t, R>(
        &self,
        rtxn: &'t RoTxn<'_, WithoutTls>,
        row: impl Fn(&'t [u8], &'t [u8]) -> Result<Option<R>, heed::BoxedError>,
    ) -> Result<(u64, Vec<R>), StoreError> {
        let t = self.t();
        let metrics_version = t.metrics_version(rtxn)?;
        let mut rows = Vec::new();
        let committed = t.committed.remap_data_type::<heed::types::Bytes>();
        let submissions = t.submissions.remap_data_type::<heed::types::Bytes>();
        for item in committed.iter(rtxn).map_err(t.err("iter", COMMITTED, None))? {
            let (h, bytes) = item.map_err(t.err("iter", COMMITTED, None))?;
            let submission = submissions
                .get(rtxn, h)
                .map_err(t.err("get", SUBMISSIONS, Some(h)))?;
            let built = match submission {
                Some(submission) => row(bytes, submission)
                    .map_err(|e| t.err("decode", COMMITTED, Some(h))(heed::Error::Decoding(e)))?,
                None => None,
            };
            match built {
                Some(r) => rows.push(r),
                // Never serve metrics of another image: the rules keep these consistent, so a
                // mismatch is a bug to log, not a row to show.
                None => tracing::warn!(hotkey = h, "committed result without matching submission skipped"),
            }
        }
        Ok((metrics_version, rows))
    }

    /// The ETag counter alone (one key read).
    pub fn metrics_version(&self) -> Result<u64, StoreError> {
        let rtxn = self.rtxn()?;
        self.t().metrics_version(&rtxn)
    }

    /// Tickets of every pending miner of the open round, sorted by (submit_time, hotkey).
    pub fn pending(&self) -> Result<Vec<EvaluationTicket>, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        let round = t.counters(&rtxn)?.round;
        let mut out = Vec::new();
        for record in t.all_records(&rtxn)? {
            let snap = t.snapshot_of(&rtxn, record)?;
            if is_pending(&snap) {
                out.push(EvaluationTicket {
                    hotkey: snap.record.hotkey,
                    image_ref: snap.record.image_ref,
                    generation: snap.record.generation,
                    submit_time: snap.record.submit_time,
                    round,
                });
            }
        }
        sort_tickets(&mut out);
        Ok(out)
    }

    /// Stage the result of `ticket`, or discard it if the ticket is stale (see
    /// [`crate::rounds::plan_stage`]). An `infra_error` result is refused with
    /// [`StoreError::Rejected`] (`result_not_committable`): the engine retries.
    pub fn stage_result(
        &self,
        ticket: &EvaluationTicket,
        metrics: EvaluationMetrics,
    ) -> Result<StageOutcome, StoreError> {
        let t = self.t();
        let h = ticket.hotkey.as_str();
        let mut wtxn = self.wtxn()?;
        let counters = t.counters(&wtxn)?;
        let snap = t.snapshot(&wtxn, h)?;
        let decision = plan_stage(&counters, snap.as_ref(), ticket, metrics)
            .map_err(|e| StoreError::rejected(Some(&ticket.hotkey), e))?;
        match decision {
            StageDecision::Discard(reason) => {
                drop(wtxn);
                tracing::info!(hotkey = h, %reason, "result discarded");
                Ok(StageOutcome::Discarded { reason })
            }
            StageDecision::Stage(staged) => {
                t.staged
                    .put(&mut wtxn, h, &*staged)
                    .map_err(t.err("put", STAGED, Some(h)))?;
                self.commit(wtxn, STAGED)?;
                Ok(StageOutcome::Staged)
            }
        }
    }

    /// Append a run to the miner's history, pruning it to the newest `history_per_miner` runs in the
    /// same transaction (only that miner's oldest keys are deleted).
    pub fn record_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let t = self.t();
        let h = run.hotkey.as_str();
        let mut wtxn = self.wtxn()?;
        let seq = tables::get_u64(t.meta, &wtxn, meta_key::RUN_SEQ)?
            .unwrap_or(0)
            .saturating_add(1);
        t.runs
            .put(&mut wtxn, &tables::run_key(h, seq), run)
            .map_err(t.err("put", RUNS, Some(h)))?;
        tables::put_u64(t.meta, &mut wtxn, meta_key::RUN_SEQ, seq, t.map_size)?;
        let keys = self.run_keys(&wtxn, &tables::run_prefix(h), h)?;
        let excess = keys.len().saturating_sub(self.inner.opts.history_per_miner);
        for key in keys.iter().take(excess) {
            t.runs
                .delete(&mut wtxn, key)
                .map_err(t.err("delete", RUNS, Some(h)))?;
        }
        self.commit(wtxn, RUNS)
    }

    /// The newest `limit` runs of `hotkey`, newest first.
    pub fn runs_for(&self, hotkey: &Hotkey, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let t = self.t();
        let h = hotkey.as_str();
        let rtxn = self.rtxn()?;
        let prefix = tables::run_prefix(h);
        let mut out = Vec::new();
        for item in t
            .runs
            .rev_prefix_iter(&rtxn, &prefix)
            .map_err(t.err("prefix_iter", RUNS, Some(h)))?
            .take(limit)
        {
            let (_, run) = item.map_err(t.err("prefix_iter", RUNS, Some(h)))?;
            out.push(run);
        }
        Ok(out)
    }

    /// Commit the open round if no miner is pending and at least one result is staged (see
    /// [`crate::rounds::plan_commit`]): staged → committed for every staged miner, round + 1,
    /// metrics_version + 1, challenge set cleared, carry-over decided by `policy` with `rank` — all in
    /// one transaction.
    pub fn commit_round_if_complete(
        &self,
        policy: &ReevaluatePolicy,
        rank: &dyn Fn(&[RankInput<'_>]) -> Vec<usize>,
    ) -> Result<Option<RoundCommit>, StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let counters = t.counters(&wtxn)?;
        let records = t.all_records(&wtxn)?;
        // Cheap pass on headers first: the metrics documents are decoded only for a real commit.
        let mut any_staged = false;
        for r in &records {
            let snap = t.snapshot_of(&wtxn, r.clone())?;
            if is_pending(&snap) {
                return Ok(None);
            }
            any_staged |= snap.staged_generation == Some(r.generation);
        }
        if !any_staged {
            return Ok(None);
        }
        let miners = records
            .into_iter()
            .map(|r| t.miner_state(&wtxn, r))
            .collect::<Result<Vec<MinerState>, StoreError>>()?;
        let Some(plan) = plan_commit(&counters, &miners, policy, rank, unix_now()) else {
            return Ok(None);
        };
        for h in &plan.clear_staged {
            t.staged
                .delete(&mut wtxn, h.as_str())
                .map_err(t.err("delete", STAGED, Some(h.as_str())))?;
        }
        self.failpoint("commit.after_clear_staged")?;
        for (h, result) in &plan.put_committed {
            t.committed.put(&mut wtxn, h.as_str(), result).map_err(t.err(
                "put",
                COMMITTED,
                Some(h.as_str()),
            ))?;
            self.failpoint("commit.after_put")?;
        }
        self.failpoint("commit.before_counters")?;
        t.put_counters(&mut wtxn, &counters, &plan.counters)?;
        self.commit(wtxn, COMMITTED)?;
        tracing::info!(
            round = plan.commit.round,
            committed = plan.commit.committed,
            carried = plan.commit.carried,
            metrics_version = plan.commit.metrics_version,
            "round committed"
        );
        Ok(Some(plan.commit))
    }

    /// Identity and counters of the open round.
    pub fn round_state(&self) -> Result<RoundState, StoreError> {
        let rtxn = self.rtxn()?;
        let c = self.t().counters(&rtxn)?;
        Ok(RoundState {
            number: c.round,
            challenge_set_hash: c.challenge_set_hash,
            metrics_version: c.metrics_version,
            last_commit_at: c.last_commit_at,
        })
    }

    /// Record the open round's challenge-set hash. Setting the same hash again is a no-op; a different
    /// hash within the same round is refused (`challenge_set_mismatch`): every miner of a round must
    /// see the same set.
    pub fn set_challenge_set(&self, hash: &str) -> Result<(), StoreError> {
        let t = self.t();
        let mut wtxn = self.wtxn()?;
        let counters = t.counters(&wtxn)?;
        let Some(h) = plan_challenge_set(&counters, hash).map_err(|e| StoreError::rejected(None, e))? else {
            return Ok(());
        };
        let next = RoundCounters {
            challenge_set_hash: Some(h),
            ..counters.clone()
        };
        t.put_counters(&mut wtxn, &counters, &next)?;
        self.commit(wtxn, META)
    }

    /// Gauges for Prometheus.
    pub fn counts(&self) -> Result<SubmissionCounts, StoreError> {
        let t = self.t();
        let rtxn = self.rtxn()?;
        let mut pending = 0;
        for record in t.all_records(&rtxn)? {
            if is_pending(&t.snapshot_of(&rtxn, record)?) {
                pending += 1;
            }
        }
        Ok(SubmissionCounts {
            submissions: len_u64(t, &rtxn, SUBMISSIONS, |x| t.submissions.len(x))?,
            pending,
            staged: len_u64(t, &rtxn, STAGED, |x| t.staged.len(x))?,
            committed: len_u64(t, &rtxn, COMMITTED, |x| t.committed.len(x))?,
        })
    }

    /// Size of the data file on disk (0 if it cannot be read).
    pub fn file_size_bytes(&self) -> u64 {
        std::fs::metadata(&self.inner.path).map_or(0, |m| m.len())
    }

    /// Close the store and wait until LMDB has closed the file, so the same path can be reopened.
    ///
    /// Refused with [`StoreError::StillInUse`] while other clones of this handle are alive (waiting
    /// for them here could deadlock); this handle is dropped either way.
    pub fn close(self) -> Result<(), StoreError> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                let Inner { env, claim, .. } = inner;
                env.prepare_for_closing().wait();
                drop(claim);
                Ok(())
            }
            Err(inner) => Err(StoreError::StillInUse {
                path: inner.path.clone(),
                handles: Arc::strong_count(&inner).saturating_sub(1),
            }),
        }
    }
}
