//! The miner file protocol on the host side (docs/reference.md#miner-protocol), done safely.
//!
//! A job directory holds four sibling directories: `input/` (bind-mounted read-only at `/input`),
//! `output/` (bind-mounted read-write at `/output`, the only place the container can write),
//! `collected/` (never mounted: outputs are copied here before anything analyses them) and `staging/`
//! (never mounted: a challenge's files are written and synced there, then renamed into `input/`,
//! `task.json` last). A miner never sees a half-written challenge, and no file of a challenge is
//! visible before its clock starts (a miner watching `/input` gets no head start on the face or the
//! audio while they are written). Everything under `output/` is hostile: it is opened with `O_NOFOLLOW` and
//! `O_NONBLOCK`, must be a regular file, and is read up to a size cap; the tree's size and entry count
//! are watched against the quota. Readiness and results are detected with inotify on close/rename, so
//! detection costs microseconds instead of the reference's 100 ms polling.
//!
//! A result counts only if it was written after its task was placed: placing a challenge first removes
//! any `<id>.json`/`<id>.mp4` already there (a miner can guess challenge ids and plant answers while it
//! loads), and a result whose inode last changed before the placement is refused as [`OutputError::Stale`]
//! (a miner racing the removal). Both times come from the kernel's filesystem clock, so they compare
//! without any clock of ours in between.
//!
//! Must not: follow a symlink the container made, open a FIFO or device, read unbounded data, or put a
//! scoring reference anywhere the container can see.

use inotify::{Inotify, WatchMask};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio_stream::StreamExt;

/// `O_NOFOLLOW` | `O_NONBLOCK` | `O_CLOEXEC`: never follow the last component, never block on a FIFO.
pub const HOSTILE_OPEN_FLAGS: i32 = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;

/// The readiness marker a miner writes once its model is loaded.
pub const READY_FILE: &str = "ready.txt";

/// `/input/task.json` (docs/reference.md#task-json).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskJson<'a> {
    /// Challenge id (validated: a safe file name).
    pub challenge_id: &'a str,
    /// The transcript, when the challenge has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    /// Seed for deterministic generation.
    pub seed: u64,
    /// Expected frame rate.
    pub fps: u32,
    /// Expected square resolution.
    pub resolution: u32,
    /// Longest acceptable output, seconds.
    pub max_seconds: u32,
}

/// Why an output file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    /// Not there.
    #[error("{name} is missing")]
    Missing {
        /// File name.
        name: String,
    },
    /// A symlink, FIFO, socket, device or directory instead of a regular file.
    #[error("{name} is not a regular file (symlinks, FIFOs and devices are refused)")]
    NotRegular {
        /// File name.
        name: String,
    },
    /// Larger than the cap.
    #[error("{name} is larger than {cap} bytes")]
    TooLarge {
        /// File name.
        name: String,
        /// The cap.
        cap: u64,
    },
    /// Written before its task was placed (planted in advance, not an answer to the task).
    #[error("{name} was written before its task was placed")]
    Stale {
        /// File name.
        name: String,
    },
    /// An I/O error on the host side.
    #[error("reading {name}: {reason}")]
    Io {
        /// File name.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// Space used under `output/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes allocated (st_blocks × 512, so sparse files count what they really use, and apparent size
    /// otherwise, whichever is larger).
    pub bytes: u64,
    /// Directory entries seen.
    pub entries: u64,
}

/// A filesystem timestamp (seconds, nanoseconds), as the kernel stamps inodes: comparable only with
/// other stamps of the same filesystem clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChangeTime(i64, i64);

impl ChangeTime {
    fn of(meta: &fs::Metadata) -> ChangeTime {
        ChangeTime(meta.ctime(), meta.ctime_nsec())
    }
}

/// When a challenge was placed.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The instant taken just before the challenge's first file appeared in `input/`: its clock
    /// starts here.
    pub visible_from: Instant,
    /// The input directory's change time once `task.json` was renamed into it. A file created or
    /// changed after the placement carries a change time at least this late, as long as the wall
    /// clock the kernel stamps inodes with did not step back meanwhile
    /// ([`Placement::wall_clock_stepped_back`]); a file planted before it carries an earlier one.
    pub stamp: ChangeTime,
    /// The wall clock at `visible_from`.
    wall: SystemTime,
}

/// How far the wall clock may fall behind the monotonic clock before a step back is assumed.
const CLOCK_STEP_TOLERANCE: Duration = Duration::from_secs(1);

impl Placement {
    /// Whether the wall clock stepped back since the placement (NTP stepping, a VM resumed, an
    /// operator's `date`): change times are then no proof of when a result was written, and a
    /// result must be neither accepted nor refused on them.
    pub fn wall_clock_stepped_back(&self) -> bool {
        stepped_back(self.wall, self.visible_from, SystemTime::now(), Instant::now())
    }
}

/// [`Placement::wall_clock_stepped_back`] with both clocks' readings passed in.
fn stepped_back(wall_then: SystemTime, mono_then: Instant, wall_now: SystemTime, mono_now: Instant) -> bool {
    let mono = mono_now.saturating_duration_since(mono_then);
    match wall_now.duration_since(wall_then) {
        Ok(wall) => wall + CLOCK_STEP_TOLERANCE < mono,
        Err(_) => true,
    }
}

/// One evaluation's directories.
#[derive(Debug)]
pub struct JobDir {
    root: PathBuf,
    input: PathBuf,
    output: PathBuf,
    collected: PathBuf,
    staging: PathBuf,
}

impl JobDir {
    /// Create `jobs_root/<run_id>/{input,output,collected}`. `container_owner` is the uid:gid the
    /// container runs as when it differs from ours (only possible when we are root): `output/` is then
    /// handed to it; otherwise it stays ours with mode 0700.
    pub fn create(jobs_root: &Path, run_id: &str, container_owner: Option<(u32, u32)>) -> io::Result<JobDir> {
        let root = jobs_root.join(run_id);
        fs::DirBuilder::new()
            .mode(0o711)
            .recursive(true)
            .create(jobs_root)?;
        fs::DirBuilder::new().mode(0o711).create(&root)?;
        let input = root.join("input");
        let output = root.join("output");
        let collected = root.join("collected");
        let staging = root.join("staging");
        fs::DirBuilder::new().mode(0o755).create(&input)?;
        fs::DirBuilder::new().mode(0o700).create(&output)?;
        fs::DirBuilder::new().mode(0o700).create(&collected)?;
        fs::DirBuilder::new().mode(0o700).create(&staging)?;
        if let Some((uid, gid)) = container_owner {
            nix::unistd::chown(
                &output,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )?;
        }
        Ok(JobDir {
            root,
            input,
            output,
            collected,
            staging,
        })
    }

    /// Host path bind-mounted at `/input` (read-only).
    pub fn input_dir(&self) -> &Path {
        &self.input
    }

    /// Host path bind-mounted at `/output`.
    pub fn output_dir(&self) -> &Path {
        &self.output
    }

    /// Never-mounted directory holding copies of outputs for analysis.
    pub fn collected_dir(&self) -> &Path {
        &self.collected
    }

    /// Place a challenge: its result names in `output/` are cleared, then face and audio, then
    /// `task.json` last, each atomically. Returns when and as of which filesystem stamp `task.json`
    /// became visible (see [`Placement`]).
    pub fn stage_challenge(&self, face: &[u8], audio: &[u8], task: &TaskJson<'_>) -> io::Result<Placement> {
        // The previous challenge's task goes first, so a miner never pairs an old task with new media.
        remove_if_present(&self.input.join("task.json"))?;
        // Answers planted before the task: best effort, as the miner owns `output/` (a directory it
        // made under the name stays, and is refused as not a regular file when read).
        for suffix in ["json", "mp4"] {
            let _ = remove_if_present(&self.output.join(format!("{}.{suffix}", task.challenge_id)));
        }
        let json = serde_json::to_vec(task).map_err(io::Error::other)?;
        let files: [(&str, &[u8]); 3] = [("face.png", face), ("audio.wav", audio), ("task.json", &json)];
        for (name, bytes) in files {
            write_synced(&self.staging.join(name), bytes)?;
        }
        // The clock starts before the first file appears in `input/`: what the miner can see of this
        // challenge, it sees on the clock.
        let visible_from = Instant::now();
        let wall = SystemTime::now();
        for (name, _) in files {
            fs::rename(self.staging.join(name), self.input.join(name))?;
        }
        let stamp = ChangeTime::of(&fs::metadata(&self.input)?);
        Ok(Placement {
            visible_from,
            stamp,
            wall,
        })
    }

    /// Remove the current challenge's inputs.
    pub fn clear_challenge(&self) -> io::Result<()> {
        for name in ["task.json", "face.png", "audio.wav"] {
            remove_if_present(&self.input.join(name))?;
        }
        Ok(())
    }

    /// Whether `name` exists in `output/` (without following it).
    pub fn output_exists(&self, name: &str) -> bool {
        fs::symlink_metadata(self.output.join(name)).is_ok()
    }

    /// Read a small output file (e.g. `{id}.json`) safely, at most `cap` bytes; with `written_after`,
    /// a file last changed before that placement is [`OutputError::Stale`].
    pub fn read_output(
        &self,
        name: &str,
        cap: u64,
        written_after: Option<&Placement>,
    ) -> Result<Vec<u8>, OutputError> {
        let (mut file, len) = self.open_output(name, cap, written_after)?;
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        Read::by_ref(&mut file)
            .take(cap + 1)
            .read_to_end(&mut buf)
            .map_err(|e| OutputError::Io {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        if buf.len() as u64 > cap {
            return Err(OutputError::TooLarge {
                name: name.to_owned(),
                cap,
            });
        }
        Ok(buf)
    }

    /// Copy an output file (e.g. `{id}.mp4`) into `collected/`, out of the container's reach; returns
    /// the copy's path. At most `cap` bytes are read; the copy is written by us with mode 0600.
    /// `written_after` as for [`JobDir::read_output`].
    pub fn collect_output(
        &self,
        name: &str,
        cap: u64,
        written_after: Option<&Placement>,
    ) -> Result<PathBuf, OutputError> {
        let (file, _) = self.open_output(name, cap, written_after)?;
        let dest = self.collected.join(name);
        let io_err = |e: io::Error| OutputError::Io {
            name: name.to_owned(),
            reason: e.to_string(),
        };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&dest)
            .map_err(io_err)?;
        let copied = io::copy(&mut file.take(cap + 1), &mut out).map_err(io_err)?;
        if copied > cap {
            drop(out);
            let _ = fs::remove_file(&dest);
            return Err(OutputError::TooLarge {
                name: name.to_owned(),
                cap,
            });
        }
        Ok(dest)
    }

    fn open_output(
        &self,
        name: &str,
        cap: u64,
        written_after: Option<&Placement>,
    ) -> Result<(File, u64), OutputError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(OutputError::NotRegular {
                name: name.to_owned(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(HOSTILE_OPEN_FLAGS)
            .open(self.output.join(name))
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::ENOENT) => OutputError::Missing {
                    name: name.to_owned(),
                },
                // ELOOP: the last component is a symlink. ENXIO: a socket or a FIFO without a writer.
                Some(nix::libc::ELOOP | nix::libc::ENXIO) => OutputError::NotRegular {
                    name: name.to_owned(),
                },
                _ => OutputError::Io {
                    name: name.to_owned(),
                    reason: e.to_string(),
                },
            })?;
        // fstat on the descriptor we hold: what we read is what we checked.
        let meta = file.metadata().map_err(|e| OutputError::Io {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        if !meta.file_type().is_file() {
            return Err(OutputError::NotRegular {
                name: name.to_owned(),
            });
        }
        if meta.len() > cap {
            return Err(OutputError::TooLarge {
                name: name.to_owned(),
                cap,
            });
        }
        if written_after.is_some_and(|p| ChangeTime::of(&meta) < p.stamp) {
            return Err(OutputError::Stale {
                name: name.to_owned(),
            });
        }
        Ok((file, meta.len()))
    }

    /// Space and entries used under `output/`, walking without following links. Stops counting once
    /// `entry_limit` is passed (the caller has its answer by then).
    pub fn output_usage(&self, entry_limit: u64) -> io::Result<Usage> {
        usage_of(&self.output, entry_limit)
    }

    /// Remove the whole job directory (best effort on what the container left unreadable).
    pub fn remove(self) -> io::Result<()> {
        make_removable(&self.output);
        fs::remove_dir_all(&self.root)
    }
}

/// Space and entries used under `dir` (see [`JobDir::output_usage`]); a free function so the quota
/// watcher can run it on a blocking thread without borrowing the job.
pub fn usage_of(dir: &Path, entry_limit: u64) -> io::Result<Usage> {
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            // A directory the miner made unreadable, or removed meanwhile: what we cannot see we
            // cannot count; the entry itself was counted in its parent.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            usage.entries += 1;
            if usage.entries > entry_limit {
                return Ok(usage);
            }
            let Ok(meta) = entry.metadata() else { continue };
            usage.bytes = usage
                .bytes
                .saturating_add(meta.len().max(meta.blocks().saturating_mul(512)));
            if meta.file_type().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Let us delete what the container created as our own uid (directories it made read-only).
fn make_removable(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let path = entry.path();
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o700));
            make_removable(&path);
        }
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Write `path` (a fresh file of ours, replacing whatever was there) and sync it.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    remove_if_present(path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

/// Watches `output/` for files that are complete: closed after writing, or renamed into place.
pub struct OutputWatcher {
    events: inotify::EventStream<Vec<u8>>,
}

impl OutputWatcher {
    /// Start watching. Create it before the container starts so no event is missed.
    pub fn new(job: &JobDir) -> io::Result<OutputWatcher> {
        let inotify = Inotify::init()?;
        inotify
            .watches()
            .add(job.output_dir(), WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)?;
        Ok(OutputWatcher {
            events: inotify.into_event_stream(vec![0u8; 4096])?,
        })
    }

    /// Wait until `name` is complete in `output/`; returns when it was seen. Checks the directory
    /// first, so a file finished before the call is found too. An event for a file that is no longer
    /// there (queued before the call, e.g. for an answer planted and since removed) is passed over.
    /// Cancel-safe: drop the future to stop.
    pub async fn wait_for(&mut self, job: &JobDir, name: &str) -> io::Result<Instant> {
        if job.output_exists(name) {
            return Ok(Instant::now());
        }
        while let Some(event) = self.events.next().await {
            let event = event?;
            if event.name.as_deref().is_some_and(|n| n == name) && job.output_exists(name) {
                return Ok(Instant::now());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "inotify stream ended",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn job() -> (tempfile::TempDir, JobDir) {
        let dir = tempfile::tempdir().unwrap();
        let job = JobDir::create(&dir.path().join("jobs"), "run-1", None).unwrap();
        (dir, job)
    }

    fn task(id: &str) -> TaskJson<'_> {
        TaskJson {
            challenge_id: id,
            text: Some("hello"),
            seed: 123,
            fps: 25,
            resolution: 512,
            max_seconds: 5,
        }
    }

    #[test]
    fn staging_is_atomic_and_leaves_no_temporaries() {
        let (_d, job) = job();
        job.stage_challenge(b"face", b"audio", &task("c1")).unwrap();
        let mut names: Vec<String> = fs::read_dir(job.input_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["audio.wav", "face.png", "task.json"]);
        // Written in the never-mounted staging directory, then moved: nothing left there.
        assert_eq!(fs::read_dir(&job.staging).unwrap().count(), 0);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(job.input_dir().join("task.json")).unwrap()).unwrap();
        assert_eq!(json["challenge_id"], "c1");
        assert_eq!(json["fps"], 25);
        job.clear_challenge().unwrap();
        assert_eq!(fs::read_dir(job.input_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_planted_symlink_in_input_is_replaced_not_followed() {
        let (d, job) = job();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        symlink(&victim, job.input_dir().join("face.png")).unwrap();
        symlink(&victim, job.input_dir().join(".face.png.tmp")).unwrap();
        job.stage_challenge(b"face", b"audio", &task("c1")).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(job.input_dir().join("face.png")).unwrap(), b"face");
    }

    #[test]
    fn answers_planted_before_the_task_are_removed_or_refused_as_stale() {
        let (_d, job) = job();
        let out = job.output_dir();
        // Planted while loading, under the names the next task will use: removed by the placement.
        fs::write(out.join("c1.json"), br#"{"success":true}"#).unwrap();
        fs::write(out.join("c1.mp4"), b"video").unwrap();
        // A file the placement does not remove (a miner racing the removal leaves the same trace).
        fs::write(out.join("c9.json"), br#"{"success":true}"#).unwrap();
        let planted = ChangeTime::of(&fs::metadata(out.join("c9.json")).unwrap());
        // Place until the filesystem clock has moved past the planted file's stamp (a coarse clock
        // can give both the same stamp; a file of the same tick would be accepted).
        let mut placement = job.stage_challenge(b"face", b"audio", &task("c1")).unwrap();
        while placement.stamp <= planted {
            placement = job.stage_challenge(b"face", b"audio", &task("c1")).unwrap();
        }
        assert!(!job.output_exists("c1.json") && !job.output_exists("c1.mp4"));
        assert_eq!(
            job.read_output("c9.json", 1024, Some(&placement)),
            Err(OutputError::Stale {
                name: "c9.json".into()
            })
        );
        assert!(matches!(
            job.collect_output("c9.json", 1024, Some(&placement)),
            Err(OutputError::Stale { .. })
        ));
        // Without a placement to compare with, the same file reads.
        assert!(job.read_output("c9.json", 1024, None).is_ok());
        // Written after the placement: accepted.
        fs::write(out.join("c1.json"), br#"{"success":true}"#).unwrap();
        fs::write(out.join("c1.mp4"), b"video").unwrap();
        assert!(job.read_output("c1.json", 1024, Some(&placement)).is_ok());
        assert!(job.collect_output("c1.mp4", 1024, Some(&placement)).is_ok());
    }

    #[test]
    fn a_wall_clock_that_falls_behind_the_monotonic_one_is_a_step_back() {
        let (wall, mono) = (SystemTime::now(), Instant::now());
        let later = |d: Duration| mono + d;
        // In step: 10 s on both.
        assert!(!stepped_back(
            wall,
            mono,
            wall + Duration::from_secs(10),
            later(Duration::from_secs(10))
        ));
        // Stepped forward: not a step back (a forward step cannot make a planted file look fresh).
        assert!(!stepped_back(
            wall,
            mono,
            wall + Duration::from_secs(100),
            later(Duration::from_secs(1))
        ));
        // Wall clock behind where it was, or 5 s short of the monotonic time: stepped back.
        assert!(stepped_back(
            wall,
            mono,
            wall - Duration::from_secs(2),
            later(Duration::from_secs(1))
        ));
        assert!(stepped_back(
            wall,
            mono,
            wall + Duration::from_secs(5),
            later(Duration::from_secs(10))
        ));
    }

    #[test]
    fn outputs_are_read_only_when_regular_and_small() {
        let (d, job) = job();
        let out = job.output_dir();
        fs::write(out.join("ok.json"), br#"{"success":true}"#).unwrap();
        assert_eq!(
            job.read_output("ok.json", 1024, None).unwrap(),
            br#"{"success":true}"#
        );

        let secret = d.path().join("secret");
        fs::write(&secret, b"hotkey private key").unwrap();
        symlink(&secret, out.join("c1.mp4")).unwrap();
        assert_eq!(
            job.read_output("c1.mp4", 1024, None),
            Err(OutputError::NotRegular {
                name: "c1.mp4".into()
            })
        );
        assert!(matches!(
            job.collect_output("c1.mp4", 1024, None),
            Err(OutputError::NotRegular { .. })
        ));

        nix::unistd::mkfifo(
            &out.join("fifo.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        assert_eq!(
            job.read_output("fifo.json", 1024, None),
            Err(OutputError::NotRegular {
                name: "fifo.json".into()
            })
        );

        fs::create_dir(out.join("dir.json")).unwrap();
        assert_eq!(
            job.read_output("dir.json", 1024, None),
            Err(OutputError::NotRegular {
                name: "dir.json".into()
            })
        );

        fs::write(out.join("big.json"), vec![b'x'; 2048]).unwrap();
        assert_eq!(
            job.read_output("big.json", 1024, None),
            Err(OutputError::TooLarge {
                name: "big.json".into(),
                cap: 1024
            })
        );
        assert_eq!(
            job.read_output("none.json", 1024, None),
            Err(OutputError::Missing {
                name: "none.json".into()
            })
        );
        assert!(matches!(
            job.read_output("../secret", 1024, None),
            Err(OutputError::NotRegular { .. })
        ));
    }

    #[test]
    fn collected_copies_are_out_of_the_output_tree_and_capped() {
        let (_d, job) = job();
        fs::write(job.output_dir().join("c1.mp4"), vec![7u8; 5000]).unwrap();
        let copy = job.collect_output("c1.mp4", 10_000, None).unwrap();
        assert!(copy.starts_with(job.collected_dir()));
        assert_eq!(fs::read(&copy).unwrap().len(), 5000);
        fs::write(job.output_dir().join("c2.mp4"), vec![7u8; 5000]).unwrap();
        assert!(matches!(
            job.collect_output("c2.mp4", 100, None),
            Err(OutputError::TooLarge { .. })
        ));
        assert!(!job.collected_dir().join("c2.mp4").exists());
    }

    #[test]
    fn usage_counts_nested_files_without_following_links() {
        let (d, job) = job();
        let out = job.output_dir();
        fs::create_dir_all(out.join("a/b")).unwrap();
        fs::write(out.join("a/b/f"), vec![1u8; 10_000]).unwrap();
        fs::write(out.join("g"), vec![1u8; 3000]).unwrap();
        let big = d.path().join("big");
        fs::write(&big, vec![1u8; 1_000_000]).unwrap();
        symlink(&big, out.join("link")).unwrap();
        let u = job.output_usage(1000).unwrap();
        assert_eq!(u.entries, 5);
        assert!(u.bytes >= 13_000 && u.bytes < 1_000_000, "{u:?}");
        assert!(job.output_usage(2).unwrap().entries > 2);
    }

    #[test]
    fn removal_clears_directories_the_miner_locked() {
        let (_d, job) = job();
        let locked = job.output_dir().join("locked");
        fs::create_dir(&locked).unwrap();
        fs::write(locked.join("f"), b"x").unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let root = job.root.clone();
        job.remove().unwrap();
        assert!(!root.exists());
    }

    #[tokio::test]
    async fn the_watcher_sees_completed_and_renamed_files_only_by_name() {
        let (_d, job) = job();
        let mut watcher = OutputWatcher::new(&job).unwrap();
        let out = job.output_dir().to_path_buf();
        let writer = std::thread::spawn(move || {
            fs::write(out.join("other.json"), b"{}").unwrap();
            fs::write(out.join(".c1.json.tmp"), b"{}").unwrap();
            fs::rename(out.join(".c1.json.tmp"), out.join("c1.json")).unwrap();
        });
        let seen = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            watcher.wait_for(&job, "c1.json"),
        )
        .await
        .expect("watcher timed out")
        .unwrap();
        writer.join().unwrap();
        assert!(job.output_exists("c1.json"));
        assert!(seen.elapsed().as_secs() < 10);
        // Already present: found immediately.
        watcher.wait_for(&job, "other.json").await.unwrap();
    }

    #[tokio::test]
    async fn an_event_queued_for_a_file_since_removed_is_not_a_result() {
        let (_d, job) = job();
        let mut watcher = OutputWatcher::new(&job).unwrap();
        let out = job.output_dir();
        // Planted (its event queued, unread), then removed by the placement of its task.
        fs::write(out.join("c1.json"), b"{}").unwrap();
        fs::write(out.join("ready.txt"), b"ready").unwrap();
        watcher.wait_for(&job, "ready.txt").await.unwrap();
        job.stage_challenge(b"face", b"audio", &task("c1")).unwrap();
        // Only the stale event is there to read: the wait must not end on it.
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            watcher.wait_for(&job, "c1.json"),
        )
        .await;
        assert!(
            early.is_err(),
            "a queued event for a removed file was taken for the result"
        );
        fs::write(out.join("c1.json"), b"{}").unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            watcher.wait_for(&job, "c1.json"),
        )
        .await
        .expect("watcher timed out")
        .unwrap();
    }
}
