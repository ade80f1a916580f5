//! Schema versioning: decide what an opened file is (fresh, older, current, newer, foreign) and bring it
//! to [`CURRENT_VERSION`] before any table is used. Owns the migration steps; it must never modify a file
//! it refuses (newer schema, not ours) and every migration runs in the single write transaction that
//! also records the new version, so a failed step leaves the file untouched.

use super::StoreError;
use super::tables::{self, MetaDb, RunsDb, SubmissionsDb, Tables, meta_key};
use crate::rounds::CommittedResult;
use heed::types::{Bytes, DecodeIgnore, SerdeJson, Str};
use heed::{Database, Env, RwTxn, WithoutTls};
use std::path::Path;

/// Schema version this binary writes.
pub const CURRENT_VERSION: u64 = 3;

/// One migration step, run inside the opening write transaction (the last argument is the map size).
type Migration = fn(&Env<WithoutTls>, &mut RwTxn, usize) -> Result<(), StoreError>;

/// Migration steps: `MIGRATIONS[v]` turns version `v` into `v + 1`.
const MIGRATIONS: [Migration; CURRENT_VERSION as usize] = [v0_to_v1, v1_to_v2, v2_to_v3];

/// Check the file's version (read-only), then migrate or initialise it and open every table, in one
/// write transaction.
/// Returns the tables and the store's instance id (created on first open).
pub(crate) fn prepare(
    env: &Env<WithoutTls>,
    path: &Path,
    map_size: usize,
) -> Result<(Tables, String), StoreError> {
    let found = detect(env, path)?;
    let mut wtxn = env
        .write_txn()
        .map_err(tables::lmdb_err("write_txn", tables::META, None, map_size))?;
    if let Some(v) = found {
        for from in v..CURRENT_VERSION {
            let step = MIGRATIONS
                .get(usize::try_from(from).unwrap_or(usize::MAX))
                .ok_or(StoreError::SchemaTooNew {
                    path: path.to_owned(),
                    found: v,
                    supported: CURRENT_VERSION,
                })?;
            step(env, &mut wtxn, map_size).map_err(|e| StoreError::Migration {
                path: path.to_owned(),
                from,
                source: Box::new(e),
            })?;
            tracing::info!(path = %path.display(), from, to = from + 1, "state file migrated");
        }
    }
    let t = Tables::create(env, &mut wtxn, map_size)?;
    if found.is_none() {
        initialise(t.meta, &mut wtxn, map_size)?;
    }
    tables::put_u64(
        t.meta,
        &mut wtxn,
        meta_key::SCHEMA_VERSION,
        CURRENT_VERSION,
        map_size,
    )?;
    // Older files get one on their first open by this version: an added key older binaries ignore.
    let instance = tables::instance_id(t.meta, &mut wtxn, map_size)?;
    wtxn.commit()
        .map_err(tables::lmdb_err("commit", tables::META, None, map_size))?;
    Ok((t, instance))
}

/// `None` for a fresh file, `Some(version)` for one of ours (0 when it predates the version key).
/// Refuses newer and foreign files without writing anything.
fn detect(env: &Env<WithoutTls>, path: &Path) -> Result<Option<u64>, StoreError> {
    let rtxn = env
        .read_txn()
        .map_err(tables::lmdb_err("read_txn", tables::META, None, 0))?;
    let meta: Option<MetaDb> = env
        .open_database(&rtxn, Some(tables::META))
        .map_err(tables::lmdb_err("open_database", tables::META, None, 0))?;
    let found = match meta {
        Some(meta) => Some(tables::get_u64(meta, &rtxn, meta_key::SCHEMA_VERSION)?.unwrap_or(0)),
        None => {
            // No meta table: fresh only if the environment holds nothing at all.
            let main: Option<Database<Bytes, DecodeIgnore>> = env
                .open_database(&rtxn, None)
                .map_err(tables::lmdb_err("open_database", "main", None, 0))?;
            let empty = match main {
                Some(db) => db
                    .is_empty(&rtxn)
                    .map_err(tables::lmdb_err("is_empty", "main", None, 0))?,
                None => true,
            };
            if !empty {
                return Err(StoreError::NotStateFile {
                    path: path.to_owned(),
                    detail: "an LMDB environment without talkheadd's meta table",
                });
            }
            None
        }
    };
    drop(rtxn);
    match found {
        Some(v) if v > CURRENT_VERSION => Err(StoreError::SchemaTooNew {
            path: path.to_owned(),
            found: v,
            supported: CURRENT_VERSION,
        }),
        other => Ok(other),
    }
}

/// Meta keys of a fresh file (the schema version is written by [`prepare`]).
fn initialise(meta: MetaDb, wtxn: &mut RwTxn, map_size: usize) -> Result<(), StoreError> {
    tables::put_u64(meta, wtxn, meta_key::METRICS_VERSION, 0, map_size)?;
    tables::put_u64(meta, wtxn, meta_key::ROUND, 1, map_size)?;
    tables::put_u64(meta, wtxn, meta_key::GENERATION, 0, map_size)?;
    tables::put_u64(meta, wtxn, meta_key::RUN_SEQ, 0, map_size)?;
    Ok(())
}

/// v0 (files written before the schema version existed): `meta` held only `metrics_version`, there was
/// no round number, generation counter, run sequence or `runs` table. Initialise the missing keys from
/// the data: round 1, the generation counter at the highest generation stored (so new generations
/// stay unique), the run sequence after the highest run key if runs exist.
/// v2 adds the `controls` table (operator blocks); [`Tables::create`] creates it empty, so there is
/// nothing to convert. The version bump makes an older binary refuse the file instead of ignoring
/// the blocks.
fn v1_to_v2(_env: &Env<WithoutTls>, _wtxn: &mut RwTxn, _map_size: usize) -> Result<(), StoreError> {
    Ok(())
}

/// v3 stores each committed result as its header's JSON, a newline and its metrics' JSON
/// ([`tables::CommittedCodec`]) instead of one JSON document, so `/metrics` can copy the metrics text
/// without decoding it: re-encode every committed record, unchanged in content.
fn v2_to_v3(env: &Env<WithoutTls>, wtxn: &mut RwTxn, map_size: usize) -> Result<(), StoreError> {
    let e = |op| tables::lmdb_err(op, tables::COMMITTED, None, map_size);
    let old: Option<Database<Str, SerdeJson<CommittedResult>>> = env
        .open_database(wtxn, Some(tables::COMMITTED))
        .map_err(e("open_database"))?;
    let Some(old) = old else {
        return Ok(());
    };
    let mut records = Vec::new();
    for item in old.iter(wtxn).map_err(e("iter"))? {
        let (hotkey, record) = item.map_err(e("iter"))?;
        records.push((hotkey.to_owned(), record));
    }
    let new = old.remap_data_type::<tables::CommittedCodec>();
    for (hotkey, record) in &records {
        new.put(wtxn, hotkey, record).map_err(tables::lmdb_err(
            "put",
            tables::COMMITTED,
            Some(hotkey),
            map_size,
        ))?;
    }
    Ok(())
}

fn v0_to_v1(env: &Env<WithoutTls>, wtxn: &mut RwTxn, map_size: usize) -> Result<(), StoreError> {
    let e = |op, table| tables::lmdb_err(op, table, None, map_size);
    let meta: MetaDb = env
        .create_database(wtxn, Some(tables::META))
        .map_err(e("create_database", tables::META))?;
    if tables::get_u64(meta, wtxn, meta_key::METRICS_VERSION)?.is_none() {
        tables::put_u64(meta, wtxn, meta_key::METRICS_VERSION, 0, map_size)?;
    }
    if tables::get_u64(meta, wtxn, meta_key::ROUND)?.is_none() {
        tables::put_u64(meta, wtxn, meta_key::ROUND, 1, map_size)?;
    }
    if tables::get_u64(meta, wtxn, meta_key::GENERATION)?.is_none() {
        let subs: Option<SubmissionsDb> = env
            .open_database(wtxn, Some(tables::SUBMISSIONS))
            .map_err(e("open_database", tables::SUBMISSIONS))?;
        let mut max = 0;
        if let Some(subs) = subs {
            for item in subs.iter(wtxn).map_err(e("iter", tables::SUBMISSIONS))? {
                let (_, record) = item.map_err(e("iter", tables::SUBMISSIONS))?;
                max = max.max(record.generation);
            }
        }
        tables::put_u64(meta, wtxn, meta_key::GENERATION, max, map_size)?;
    }
    if tables::get_u64(meta, wtxn, meta_key::RUN_SEQ)?.is_none() {
        let runs: Option<RunsDb> = env
            .open_database(wtxn, Some(tables::RUNS))
            .map_err(e("open_database", tables::RUNS))?;
        let mut max = 0;
        if let Some(runs) = runs {
            let keys = runs.remap_data_type::<DecodeIgnore>();
            for item in keys.iter(wtxn).map_err(e("iter", tables::RUNS))? {
                let (key, ()) = item.map_err(e("iter", tables::RUNS))?;
                max = max.max(tables::run_seq_of(key).unwrap_or(0));
            }
        }
        tables::put_u64(meta, wtxn, meta_key::RUN_SEQ, max, map_size)?;
    }
    Ok(())
}
