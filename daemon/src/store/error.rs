//! [`StoreError`]: every way the store can fail, with the context an operator needs (path, table,
//! hotkey) and the underlying cause as `source`. Owns the stable reason codes of store failures; it does
//! not decide HTTP statuses (the API layer maps [`StoreError::reason`]).

use crate::rounds::RoundError;
use std::io;
use std::path::PathBuf;

/// A store call handed to the blocking pool by [`super::Store::blocking`] did not return: it panicked,
/// or the runtime is shutting down. The call's own errors come back as they are; this is the only
/// failure the hand-over adds, and each caller's error type says what it means there (`From`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store worker failed: {0}")]
pub struct WorkerFailed(pub String);

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The parent directory of the state file does not exist or cannot be resolved.
    #[error(
        "state file {}: its directory does not exist or is not accessible (create it first; talkheadd does not create directories)",
        path.display()
    )]
    ParentMissing {
        /// The state file path as given.
        path: PathBuf,
        /// Why resolving the directory failed.
        #[source]
        source: io::Error,
    },
    /// The state path names a directory; the store is a single file (LMDB `NOSUBDIR`).
    #[error(
        "state file {} is a directory; give a file path such as ./state.db (LMDB adds <file>-lock beside it)",
        path.display()
    )]
    IsDirectory {
        /// The path as given.
        path: PathBuf,
    },
    /// The state file or its directory is not writable by this process.
    #[error(
        "state file {} (or its directory, where LMDB creates <file>-lock) is not writable by this process",
        path.display()
    )]
    NotWritable {
        /// The state file.
        path: PathBuf,
        /// The refusal.
        #[source]
        source: heed::Error,
    },
    /// The file exists but is not a talkheadd LMDB state file.
    #[error("{} is not a talkheadd state file: {detail}", path.display())]
    NotStateFile {
        /// The state file.
        path: PathBuf,
        /// What was found instead.
        detail: &'static str,
    },
    /// The file is already open in this process; one environment per file.
    #[error(
        "state file {} is already open in this process; a second environment on the same file is refused",
        path.display()
    )]
    AlreadyOpen {
        /// The canonical path.
        path: PathBuf,
    },
    /// The options make no sense.
    #[error("invalid store options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: &'static str,
    },
    /// LMDB refused to open the file for another reason.
    #[error("cannot open state file {}", path.display())]
    Open {
        /// The state file.
        path: PathBuf,
        /// LMDB's error.
        #[source]
        source: heed::Error,
    },
    /// The file was written by a newer talkheadd; it was not modified.
    #[error(
        "state file {} has schema version {found} but this talkheadd supports up to {supported}: upgrade talkheadd (the file was not modified)",
        path.display()
    )]
    SchemaTooNew {
        /// The state file.
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Newest version this binary knows.
        supported: u64,
    },
    /// A migration step failed; its transaction was aborted, so the file is unchanged.
    #[error(
        "migrating state file {} from schema version {from} failed (the file was not modified)",
        path.display()
    )]
    Migration {
        /// The state file.
        path: PathBuf,
        /// Version the failing step started from.
        from: u64,
        /// The failure.
        #[source]
        source: Box<StoreError>,
    },
    /// An LMDB operation failed.
    #[error("LMDB {op} failed on table {table}{}", fmt_hotkey(hotkey))]
    Lmdb {
        /// What was being done (`get`, `put`, `commit`...).
        op: &'static str,
        /// The table.
        table: &'static str,
        /// The miner concerned, if any.
        hotkey: Option<String>,
        /// LMDB's error.
        #[source]
        source: heed::Error,
    },
    /// The memory map is full: the configured map size is too small.
    #[error(
        "state file is full (map size {map_size} bytes) while writing table {table}: raise store.map_size_mb"
    )]
    Full {
        /// Configured map size.
        map_size: usize,
        /// The table being written.
        table: &'static str,
        /// LMDB's error.
        #[source]
        source: heed::Error,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in table {table} at key {key}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The key, printable.
        key: String,
        /// The decoding failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Applying the batch would track more distinct hotkeys than allowed; nothing was written.
    #[error("batch refused: it would exceed the limit of {limit} submissions (nothing was written)")]
    SubmissionLimit {
        /// Configured limit.
        limit: usize,
    },
    /// The round rules refused the operation (infra_error result, other challenge set...).
    #[error("refused by the round rules{}", fmt_hotkey(hotkey))]
    Rejected {
        /// The miner concerned, if any.
        hotkey: Option<String>,
        /// The rule that refused.
        #[source]
        source: RoundError,
    },
    /// `close` was called while other handles to the store are alive.
    #[error(
        "state file {} is still used by {handles} other handle(s); it closes when the last one is dropped",
        path.display()
    )]
    StillInUse {
        /// The state file.
        path: PathBuf,
        /// Other live handles.
        handles: usize,
    },
    /// A test failpoint fired.
    #[cfg(test)]
    #[error("injected failure at {point}")]
    Injected {
        /// The failpoint.
        point: &'static str,
    },
}

fn fmt_hotkey(hotkey: &Option<String>) -> String {
    hotkey
        .as_deref()
        .map(|h| format!(" (hotkey {h})"))
        .unwrap_or_default()
}

impl StoreError {
    /// Stable snake_case code for the API layer, logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::ParentMissing { .. } => "store_parent_missing",
            StoreError::IsDirectory { .. } => "store_path_is_directory",
            StoreError::NotWritable { .. } => "store_not_writable",
            StoreError::NotStateFile { .. } => "store_not_state_file",
            StoreError::AlreadyOpen { .. } => "store_already_open",
            StoreError::InvalidOptions { .. } => "store_invalid_options",
            StoreError::Open { .. } => "store_open_failed",
            StoreError::SchemaTooNew { .. } => "store_schema_too_new",
            StoreError::Migration { .. } => "store_migration_failed",
            StoreError::Lmdb { .. } => "store_io",
            StoreError::Full { .. } => "store_full",
            StoreError::Corrupt { .. } => "store_corrupt",
            StoreError::SubmissionLimit { .. } => "submission_limit",
            StoreError::Rejected { source, .. } => source.reason(),
            StoreError::StillInUse { .. } => "store_in_use",
            #[cfg(test)]
            StoreError::Injected { .. } => "store_injected_failure",
        }
    }

    /// A refusal of the round rules about `hotkey`; the submission limit keeps its own variant.
    pub(crate) fn rejected(hotkey: Option<&crate::domain::Hotkey>, e: RoundError) -> StoreError {
        match e {
            RoundError::SubmissionLimit { limit, .. } => StoreError::SubmissionLimit { limit },
            other => StoreError::Rejected {
                hotkey: hotkey.map(|h| h.as_str().to_owned()),
                source: other,
            },
        }
    }
}
