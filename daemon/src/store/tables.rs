//! The named, typed LMDB tables and their key/value encodings, plus the typed accessors of the `meta`
//! table. Owns the on-disk layout of schema version [`super::schema::CURRENT_VERSION`]; it takes no
//! decisions (that is `rounds`) and opens no transactions (callers own them).
//!
//! | table         | key                                   | value                           |
//! |---------------|---------------------------------------|---------------------------------|
//! | `meta`        | key name (str)                        | u64 big-endian / f64 bits / str |
//! | `submissions` | hotkey                                | JSON `SubmissionRecord`         |
//! | `staged`      | hotkey                                | JSON `StagedResult`             |
//! | `committed`   | hotkey                                | header JSON, `\n`, metrics JSON (v3) |
//! | `runs`        | hotkey, 0x00, sequence (u64 BE)       | JSON `RunRecord`                |
//! | `controls`    | `block/hotkey/…`, `block/digest/…`    | JSON `BlockRecord` (v2)         |
//! | `images`      | digest-pinned image reference         | JSON `PulledImageRecord`        |
//!
//! Run keys sort by (hotkey, sequence), so one miner's history is a contiguous, time-ordered range; an
//! SS58 hotkey never contains 0x00, so the separator makes prefixes unambiguous.

use super::{RunRecord, StoreError};
use crate::rounds::{
    CommittedHeader, CommittedResult, MinerSnapshot, MinerState, RoundCounters, StagedResult,
    SubmissionRecord,
};
use heed::types::{Bytes, SerdeJson, Str};
use heed::{Database, Env, MdbError, RoTxn, RwTxn, WithoutTls};
use serde::Deserialize;

pub(crate) const META: &str = "meta";
pub(crate) const SUBMISSIONS: &str = "submissions";
pub(crate) const STAGED: &str = "staged";
pub(crate) const COMMITTED: &str = "committed";
pub(crate) const RUNS: &str = "runs";
pub(crate) const CONTROLS: &str = "controls";
pub(crate) const IMAGES: &str = "images";

/// Named databases the environment may hold (the tables above, with room for later schema versions).
pub(crate) const MAX_DBS: u32 = 16;

pub(crate) mod meta_key {
    pub(crate) const SCHEMA_VERSION: &str = "schema_version";
    pub(crate) const METRICS_VERSION: &str = "metrics_version";
    pub(crate) const ROUND: &str = "round";
    pub(crate) const GENERATION: &str = "generation";
    pub(crate) const RUN_SEQ: &str = "run_seq";
    pub(crate) const CHALLENGE_SET_HASH: &str = "challenge_set_hash";
    pub(crate) const LAST_COMMIT_AT: &str = "last_commit_at";
    /// Random id of this store, written on first open: labels the containers its daemon creates so
    /// that start-up reconciliation touches only its own (several daemons may share one engine).
    pub(crate) const INSTANCE_ID: &str = "instance_id";
}

pub(crate) type MetaDb = Database<Str, Bytes>;
pub(crate) type SubmissionsDb = Database<Str, SerdeJson<SubmissionRecord>>;
pub(crate) type StagedDb = Database<Str, SerdeJson<StagedResult>>;
pub(crate) type CommittedDb = Database<Str, CommittedCodec>;
pub(crate) type RunsDb = Database<Bytes, SerdeJson<RunRecord>>;
pub(crate) type ControlsDb = Database<Str, SerdeJson<super::controls::BlockRecord>>;
pub(crate) type ImagesDb = Database<Str, SerdeJson<super::images::PulledImageRecord>>;

/// A committed result on disk (v3): its [`CommittedHeader`] as JSON, a newline, then its metrics as
/// JSON. Compact JSON never contains a raw newline, so the split is unambiguous; the header decodes
/// without scanning the metrics, and `/metrics` copies the metrics text without decoding it.
pub(crate) struct CommittedCodec;

impl CommittedCodec {
    /// The header's and the metrics' JSON text of an encoded record.
    pub(crate) fn split(bytes: &[u8]) -> Result<(&[u8], &[u8]), heed::BoxedError> {
        let at = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("committed record without its header separator")?;
        Ok((&bytes[..at], &bytes[at + 1..]))
    }

    /// The header alone.
    pub(crate) fn header(bytes: &[u8]) -> Result<CommittedHeader, heed::BoxedError> {
        Ok(serde_json::from_slice(Self::split(bytes)?.0)?)
    }
}

impl<'a> heed::BytesEncode<'a> for CommittedCodec {
    type EItem = CommittedResult;

    fn bytes_encode(item: &'a CommittedResult) -> Result<std::borrow::Cow<'a, [u8]>, heed::BoxedError> {
        let mut out = serde_json::to_vec(&item.header())?;
        out.push(b'\n');
        serde_json::to_writer(&mut out, &item.metrics)?;
        Ok(std::borrow::Cow::Owned(out))
    }
}

impl<'a> heed::BytesDecode<'a> for CommittedCodec {
    type DItem = CommittedResult;

    fn bytes_decode(bytes: &'a [u8]) -> Result<CommittedResult, heed::BoxedError> {
        let (header, metrics) = Self::split(bytes)?;
        let header: CommittedHeader = serde_json::from_slice(header)?;
        Ok(CommittedResult {
            generation: header.generation,
            evaluated_round: header.evaluated_round,
            carried: header.carried,
            metrics: serde_json::from_slice(metrics)?,
        })
    }
}

/// [`CommittedCodec`]'s header alone (the metrics text is not read).
pub(crate) struct CommittedHeaderCodec;

impl heed::BytesDecode<'_> for CommittedHeaderCodec {
    type DItem = CommittedHeader;

    fn bytes_decode(bytes: &[u8]) -> Result<CommittedHeader, heed::BoxedError> {
        CommittedCodec::header(bytes)
    }
}

/// The part of a staged result that pending checks need; serde skips the metrics document.
#[derive(Deserialize)]
struct StagedHeader {
    generation: u64,
}

/// Map a heed error to a [`StoreError`] with context.
pub(crate) fn lmdb_err(
    op: &'static str,
    table: &'static str,
    hotkey: Option<&str>,
    map_size: usize,
) -> impl FnOnce(heed::Error) -> StoreError {
    move |e| match e {
        heed::Error::Mdb(MdbError::MapFull) => StoreError::Full {
            map_size,
            table,
            source: e,
        },
        heed::Error::Decoding(source) => StoreError::Corrupt {
            table,
            key: hotkey.unwrap_or("?").to_owned(),
            source,
        },
        source => StoreError::Lmdb {
            op,
            table,
            hotkey: hotkey.map(str::to_owned),
            source,
        },
    }
}

fn corrupt(table: &'static str, key: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        key: key.to_owned(),
        source: detail.into().into(),
    }
}

/// Key of one run record.
pub(crate) fn run_key(hotkey: &str, seq: u64) -> Vec<u8> {
    let mut k = run_prefix(hotkey);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Common prefix of one miner's run records.
pub(crate) fn run_prefix(hotkey: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(hotkey.len() + 9);
    k.extend_from_slice(hotkey.as_bytes());
    k.push(0);
    k
}

/// Sequence number at the end of a run key.
pub(crate) fn run_seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

// --- meta codec (free functions: migrations use them before `Tables` exists) -----------------------

pub(crate) fn get_u64(db: MetaDb, txn: &RoTxn, key: &'static str) -> Result<Option<u64>, StoreError> {
    let raw = db.get(txn, key).map_err(lmdb_err("get", META, None, 0))?;
    raw.map(|b| {
        <[u8; 8]>::try_from(b)
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(META, key, "expected an 8-byte big-endian u64"))
    })
    .transpose()
}

pub(crate) fn put_u64(
    db: MetaDb,
    wtxn: &mut RwTxn,
    key: &'static str,
    v: u64,
    map_size: usize,
) -> Result<(), StoreError> {
    db.put(wtxn, key, &v.to_be_bytes())
        .map_err(lmdb_err("put", META, None, map_size))
}

fn get_f64(db: MetaDb, txn: &RoTxn, key: &'static str) -> Result<Option<f64>, StoreError> {
    Ok(get_u64(db, txn, key)?.map(f64::from_bits))
}

fn get_str(db: MetaDb, txn: &RoTxn, key: &'static str) -> Result<Option<String>, StoreError> {
    let raw = db.get(txn, key).map_err(lmdb_err("get", META, None, 0))?;
    raw.map(|b| {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| corrupt(META, key, "expected UTF-8"))
    })
    .transpose()
}

/// Bytes of randomness in an instance id (hex-encoded: 32 characters).
const INSTANCE_ID_BYTES: usize = 16;

/// This store's instance id, created (random, from the kernel's CSPRNG) in `wtxn` if the file has none.
pub(crate) fn instance_id(db: MetaDb, wtxn: &mut RwTxn, map_size: usize) -> Result<String, StoreError> {
    if let Some(id) = get_str(db, wtxn, meta_key::INSTANCE_ID)? {
        return Ok(id);
    }
    let mut bytes = [0u8; INSTANCE_ID_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| lmdb_err("read /dev/urandom", META, None, map_size)(heed::Error::Io(e)))?;
    let id = hex::encode(bytes);
    db.put(wtxn, meta_key::INSTANCE_ID, id.as_bytes())
        .map_err(lmdb_err("put", META, None, map_size))?;
    Ok(id)
}

fn require(v: Option<u64>, key: &'static str) -> Result<u64, StoreError> {
    v.ok_or_else(|| corrupt(META, key, "missing meta key"))
}

/// Handles of every table, valid for the life of the environment.
#[derive(Clone, Copy)]
pub(crate) struct Tables {
    pub(crate) meta: MetaDb,
    pub(crate) submissions: SubmissionsDb,
    pub(crate) staged: StagedDb,
    pub(crate) committed: CommittedDb,
    pub(crate) runs: RunsDb,
    pub(crate) controls: ControlsDb,
    pub(crate) images: ImagesDb,
    /// Reported by [`StoreError::Full`].
    pub(crate) map_size: usize,
}

impl Tables {
    /// Create (or open) every table in `wtxn`; the handles stay valid once it commits.
    pub(crate) fn create(
        env: &Env<WithoutTls>,
        wtxn: &mut RwTxn,
        map_size: usize,
    ) -> Result<Tables, StoreError> {
        let e = |table| lmdb_err("create_database", table, None, map_size);
        Ok(Tables {
            meta: env.create_database(wtxn, Some(META)).map_err(e(META))?,
            submissions: env
                .create_database(wtxn, Some(SUBMISSIONS))
                .map_err(e(SUBMISSIONS))?,
            staged: env.create_database(wtxn, Some(STAGED)).map_err(e(STAGED))?,
            committed: env.create_database(wtxn, Some(COMMITTED)).map_err(e(COMMITTED))?,
            runs: env.create_database(wtxn, Some(RUNS)).map_err(e(RUNS))?,
            controls: env.create_database(wtxn, Some(CONTROLS)).map_err(e(CONTROLS))?,
            images: env.create_database(wtxn, Some(IMAGES)).map_err(e(IMAGES))?,
            map_size,
        })
    }

    /// Error mapper with this store's map size.
    pub(crate) fn err(
        &self,
        op: &'static str,
        table: &'static str,
        hotkey: Option<&str>,
    ) -> impl FnOnce(heed::Error) -> StoreError {
        lmdb_err(op, table, hotkey, self.map_size)
    }

    /// Round counters from `meta`.
    pub(crate) fn counters(&self, txn: &RoTxn) -> Result<RoundCounters, StoreError> {
        use meta_key::*;
        Ok(RoundCounters {
            round: require(get_u64(self.meta, txn, ROUND)?, ROUND)?,
            metrics_version: require(get_u64(self.meta, txn, METRICS_VERSION)?, METRICS_VERSION)?,
            generation: require(get_u64(self.meta, txn, GENERATION)?, GENERATION)?,
            challenge_set_hash: get_str(self.meta, txn, CHALLENGE_SET_HASH)?,
            last_commit_at: get_f64(self.meta, txn, LAST_COMMIT_AT)?,
        })
    }

    /// `metrics_version` alone (one key read).
    pub(crate) fn metrics_version(&self, txn: &RoTxn) -> Result<u64, StoreError> {
        require(
            get_u64(self.meta, txn, meta_key::METRICS_VERSION)?,
            meta_key::METRICS_VERSION,
        )
    }

    /// Write the counters that differ between `old` and `new` (and only those).
    pub(crate) fn put_counters(
        &self,
        wtxn: &mut RwTxn,
        old: &RoundCounters,
        new: &RoundCounters,
    ) -> Result<(), StoreError> {
        use meta_key::*;
        let m = self.map_size;
        if old.round != new.round {
            put_u64(self.meta, wtxn, ROUND, new.round, m)?;
        }
        if old.metrics_version != new.metrics_version {
            put_u64(self.meta, wtxn, METRICS_VERSION, new.metrics_version, m)?;
        }
        if old.generation != new.generation {
            put_u64(self.meta, wtxn, GENERATION, new.generation, m)?;
        }
        if old.challenge_set_hash != new.challenge_set_hash {
            match &new.challenge_set_hash {
                Some(h) => self
                    .meta
                    .put(wtxn, CHALLENGE_SET_HASH, h.as_bytes())
                    .map_err(self.err("put", META, None))?,
                None => {
                    self.meta
                        .delete(wtxn, CHALLENGE_SET_HASH)
                        .map_err(self.err("delete", META, None))?;
                }
            }
        }
        if old.last_commit_at.map(f64::to_bits) != new.last_commit_at.map(f64::to_bits) {
            match new.last_commit_at {
                Some(t) => put_u64(self.meta, wtxn, LAST_COMMIT_AT, t.to_bits(), m)?,
                None => {
                    self.meta
                        .delete(wtxn, LAST_COMMIT_AT)
                        .map_err(self.err("delete", META, None))?;
                }
            }
        }
        Ok(())
    }

    /// The light view of one miner (metrics documents are skipped, not materialised).
    pub(crate) fn snapshot(&self, txn: &RoTxn, hotkey: &str) -> Result<Option<MinerSnapshot>, StoreError> {
        let Some(record) =
            self.submissions
                .get(txn, hotkey)
                .map_err(self.err("get", SUBMISSIONS, Some(hotkey)))?
        else {
            return Ok(None);
        };
        self.snapshot_of(txn, record).map(Some)
    }

    /// The light view of a miner whose record was already read.
    pub(crate) fn snapshot_of(
        &self,
        txn: &RoTxn,
        record: SubmissionRecord,
    ) -> Result<MinerSnapshot, StoreError> {
        let h = record.hotkey.as_str();
        let staged_generation = self
            .staged
            .remap_data_type::<SerdeJson<StagedHeader>>()
            .get(txn, h)
            .map_err(self.err("get", STAGED, Some(h)))?
            .map(|s| s.generation);
        let committed = self
            .committed
            .remap_data_type::<CommittedHeaderCodec>()
            .get(txn, h)
            .map_err(self.err("get", COMMITTED, Some(h)))?;
        Ok(MinerSnapshot {
            record,
            staged_generation,
            committed,
        })
    }

    /// Everything about a miner whose record was already read.
    pub(crate) fn miner_state(
        &self,
        txn: &RoTxn,
        record: SubmissionRecord,
    ) -> Result<MinerState, StoreError> {
        let h = record.hotkey.as_str();
        let staged = self
            .staged
            .get(txn, h)
            .map_err(self.err("get", STAGED, Some(h)))?;
        let committed = self
            .committed
            .get(txn, h)
            .map_err(self.err("get", COMMITTED, Some(h)))?;
        Ok(MinerState {
            record,
            staged,
            committed,
        })
    }

    /// Every submission record, in hotkey order.
    pub(crate) fn all_records(&self, txn: &RoTxn) -> Result<Vec<SubmissionRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .submissions
            .iter(txn)
            .map_err(self.err("iter", SUBMISSIONS, None))?
        {
            let (_, record) = item.map_err(self.err("iter", SUBMISSIONS, None))?;
            out.push(record);
        }
        Ok(out)
    }
}
