//! The open round's challenge set, as an effect of the evaluation loop: the one in memory, the one
//! persisted for the round, or a fresh one (from a directory or the Subnet API) persisted and recorded
//! in the store. A round's set is persisted under `<work_dir>/../challenge-sets/<hash>/` before its hash
//! is recorded, so a restarted daemon resumes the round on exactly the same challenges.

use super::blocking::{LoopError, blocking, blocking_challenges};
use crate::challenges::{ChallengeSet, Limits, SubnetApiSource, load_directory};
use crate::config::Settings;
use crate::store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a round's challenges come from.
pub enum Source {
    /// A local directory.
    Directory(PathBuf),
    /// The Subnet API.
    Api(Box<SubnetApiSource>),
}

/// The round's set and where new ones come from.
pub(super) struct RoundSet {
    source: Source,
    sets_dir: PathBuf,
    /// The set of the round under way, once known.
    pub(super) current: Option<Arc<ChallengeSet>>,
}

impl RoundSet {
    /// Sets persist beside the work directory ([`sets_dir`]).
    pub(super) fn new(source: Source, work_dir: &Path) -> RoundSet {
        RoundSet {
            source,
            sets_dir: sets_dir(work_dir),
            current: None,
        }
    }

    /// The open round's challenge set: the one in memory, the persisted one, or a fresh one recorded in
    /// the store.
    pub(super) async fn get(
        &mut self,
        store: &Store,
        settings: &Settings,
    ) -> Result<Arc<ChallengeSet>, LoopError> {
        let round = blocking(store, move |s| s.round_state()).await?;
        if let (Some(hash), Some(current)) = (&round.challenge_set_hash, &self.current)
            && current.hash() == hash
        {
            return Ok(current.clone());
        }
        let set = match &round.challenge_set_hash {
            Some(hash) => {
                let dir = self.sets_dir.join(hash);
                let set = blocking_challenges(move || load_directory(&dir, &Limits::default())).await?;
                if set.hash() != hash {
                    return Err(LoopError::Internal(format!(
                        "persisted challenge set {hash} has changed on disk"
                    )));
                }
                set
            }
            None => {
                let set = match &self.source {
                    Source::Directory(dir) => {
                        let dir = dir.clone();
                        blocking_challenges(move || load_directory(&dir, &Limits::default())).await?
                    }
                    Source::Api(api) => api.fetch().await.map_err(LoopError::Challenges)?,
                };
                let e = &settings.evaluation;
                set.ensure_enough(e.warmup_count, e.scoring_count)
                    .map_err(LoopError::Challenges)?;
                persist_set(&self.sets_dir, &set)
                    .map_err(|e| LoopError::Internal(format!("persisting the challenge set: {e}")))?;
                let hash = set.hash().to_owned();
                blocking(store, move |store| store.set_challenge_set(&hash)).await?;
                tracing::info!(
                    round = round.number,
                    hash = set.hash(),
                    challenges = set.len(),
                    "challenge set fixed for the round"
                );
                set
            }
        };
        let set = Arc::new(set);
        self.current = Some(set.clone());
        Ok(set)
    }
}

/// Where rounds' sets persist, each under its hash: `<work_dir>/../challenge-sets` (a cluster
/// coordinator serves its workers the files from there).
pub fn sets_dir(work_dir: &Path) -> PathBuf {
    work_dir.with_file_name("challenge-sets")
}

/// Write the set in the challenge-directory format, atomically (temporary directory, then rename).
pub(super) fn persist_set(sets_dir: &Path, set: &ChallengeSet) -> std::io::Result<()> {
    let final_dir = sets_dir.join(set.hash());
    if final_dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(sets_dir)?;
    let tmp = sets_dir.join(format!(".{}.tmp", set.hash()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp)?;
    for c in set.iter() {
        let dir = tmp.join(c.id().as_str());
        std::fs::create_dir(&dir)?;
        std::fs::write(dir.join("face.png"), c.face())?;
        std::fs::write(dir.join("audio.wav"), c.audio())?;
        if let Some(text) = c.text() {
            std::fs::write(dir.join("text.txt"), text)?;
        }
    }
    std::fs::rename(&tmp, &final_dir)
}
