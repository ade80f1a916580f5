//! The Docker Engine through bollard: connection and version negotiation, pulls by digest with
//! verification, container lifecycle, log tails, and the labelled-container queries reconciliation uses.
//!
//! Owns every call to the engine and the translation of engine errors into [`RuntimeError`]s that say
//! whose fault they are. Must not decide what a container may do: the create body comes from
//! [`super::spec`], the security boundary, and is re-audited here before it is sent.

use super::pull::{self, PullFailure};
use crate::domain::ImageRef;
use bollard::Docker;
use bollard::query_parameters::{
    CreateImageOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::time::Duration;

/// Label every container the daemon creates carries (docs/reference.md#container-labels).
pub const RUN_LABEL: &str = super::spec::LABEL_RUN;

/// Failures talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be reached at start-up.
    #[error(
        "Docker engine not reachable at {host}: {reason}; install docker.io and start it (systemctl start docker)"
    )]
    Unreachable {
        /// The configured endpoint.
        host: String,
        /// What failed.
        reason: String,
    },
    /// A pull failed; [`PullFailure`] says whose fault.
    #[error("pull of {image} failed: {}", .failure.reason())]
    Pull {
        /// The image.
        image: String,
        /// Classification.
        failure: PullFailure,
    },
    /// The pulled content is not what was asked for.
    #[error("pulled image {image} does not carry the requested digest {digest}")]
    DigestMismatch {
        /// The image.
        image: String,
        /// The requested digest.
        digest: String,
    },
    /// Any other engine call failed (infrastructure).
    #[error("Docker API call {call} failed: {reason}")]
    Api {
        /// Which call.
        call: &'static str,
        /// What the engine said.
        reason: String,
    },
    /// The create body failed the security audit (a bug upstream: never sent).
    #[error("container spec refused by the security audit: {0}")]
    Audit(String),
}

/// What a successful pull left on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// Local image id (`sha256:…` of the config).
    pub id: String,
    /// Size on disk in bytes, as the engine reports it.
    pub size_bytes: u64,
    /// Environment baked into the image (for the CUDA requirement check).
    pub env: Vec<String>,
    /// Labels baked into the image.
    pub labels: HashMap<String, String>,
}

/// What removing an image reference did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Removed (or untagged).
    Removed,
    /// It was not there.
    Missing,
    /// A container uses it; kept.
    InUse,
}

/// Final state of a container, as inspected after it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerOutcome {
    /// Still running.
    pub running: bool,
    /// Exit code, when it exited.
    pub exit_code: Option<i64>,
    /// Killed by the kernel's OOM killer for exceeding its memory limit.
    pub oom_killed: bool,
    /// The engine's error string, if any.
    pub error: Option<String>,
}

/// A handle on the engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    host: String,
    /// This daemon's instance id (`talkhead.instance` on its containers).
    instance: String,
}

fn api(call: &'static str) -> impl Fn(bollard::errors::Error) -> RuntimeError {
    move |e| RuntimeError::Api {
        call,
        reason: pull::sanitise(&e.to_string()),
    }
}

impl Engine {
    /// Connect to `host` (`unix:///…` or `tcp://…`), negotiate the API version and ping. `instance` is
    /// the daemon's instance id (the store's): only containers labelled with it are this daemon's.
    pub async fn connect(host: &str, instance: &str) -> Result<Engine, RuntimeError> {
        let unreachable = |reason: String| RuntimeError::Unreachable {
            host: host.to_owned(),
            reason,
        };
        let docker = Docker::connect_with_host(host).map_err(|e| unreachable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        docker.ping().await.map_err(|e| unreachable(e.to_string()))?;
        Ok(Engine {
            docker,
            host: host.to_owned(),
            instance: instance.to_owned(),
        })
    }

    /// No engine: for a Ray coordinator, whose runs execute on the GPU hosts' engines and which must
    /// start on a host without one. Nothing calls it in that mode; were anything to, the call would
    /// fail as an unreachable engine (it points at a closed loopback port).
    pub fn absent(instance: &str) -> Result<Engine, RuntimeError> {
        let host = "none (cluster coordinator)";
        let docker = Docker::connect_with_http("http://127.0.0.1:1", 5, bollard::API_DEFAULT_VERSION)
            .map_err(|e| RuntimeError::Unreachable {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Engine {
            docker,
            host: host.to_owned(),
            instance: instance.to_owned(),
        })
    }

    /// The configured endpoint.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// This daemon's instance id, for the `talkhead.instance` label.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether the engine answers right now (used to wait out a dockerd restart).
    pub async fn ping(&self) -> bool {
        self.docker.ping().await.is_ok()
    }

    /// Pull `image` by digest (one attempt, bounded by `timeout`), then verify that the local image
    /// carries the requested digest. The tag is never used: only the digest decides what is fetched.
    pub async fn pull(&self, image: &ImageRef, timeout: Duration) -> Result<PulledImage, RuntimeError> {
        let pinned = image.pinned();
        let options = CreateImageOptionsBuilder::default().from_image(&pinned).build();
        let fail = |failure: PullFailure| RuntimeError::Pull {
            image: pinned.clone(),
            failure,
        };
        // Progress messages seen: a pull that times out with none never heard from the registry.
        let progress = std::sync::atomic::AtomicU64::new(0);
        let pulling = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = item {
                    let status = match &e {
                        bollard::errors::Error::DockerResponseServerError { status_code, .. } => {
                            Some(*status_code)
                        }
                        _ => None,
                    };
                    return Err(fail(pull::classify(status, &e.to_string())));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, pulling).await {
            Ok(result) => result?,
            Err(_) => {
                let heard = match progress.load(std::sync::atomic::Ordering::Relaxed) {
                    0 => pull::NOTHING_HEARD.to_owned(),
                    n => format!("{n} progress messages"),
                };
                return Err(fail(PullFailure::Infra(format!(
                    "pull did not finish within {timeout:?} ({heard})"
                ))));
            }
        }
        self.local(image).await?.ok_or(RuntimeError::DigestMismatch {
            image: pinned,
            digest: image.digest(),
        })
    }

    /// The image if it is on the host under its pinned reference, verified to carry the requested
    /// digest; `None` when it is not there.
    pub async fn local(&self, image: &ImageRef) -> Result<Option<PulledImage>, RuntimeError> {
        let pinned = image.pinned();
        let inspect = match self.docker.inspect_image(&pinned).await {
            Ok(i) => i,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(api("inspect_image")(e)),
        };
        let wanted = format!("{}@{}", pinned_repository(image), image.digest());
        let digests = inspect.repo_digests.clone().unwrap_or_default();
        if !digests.iter().any(|d| d == &wanted) {
            return Err(RuntimeError::DigestMismatch {
                image: pinned,
                digest: image.digest(),
            });
        }
        let config = inspect.config.unwrap_or_default();
        Ok(Some(PulledImage {
            id: inspect.id.unwrap_or_default(),
            size_bytes: inspect.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            env: config.env.unwrap_or_default(),
            labels: config.labels.unwrap_or_default(),
        }))
    }

    /// The local image id (`sha256:…`) that `reference` (a tag or a digest reference) names, or `None`
    /// when the engine has no such reference.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(i.id),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(api("inspect_image")(e)),
        }
    }

    /// Add the reference `repo:tag` to the local image `id`.
    pub async fn tag(&self, id: &str, repo: &str, tag: &str) -> Result<(), RuntimeError> {
        let options = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
        self.docker
            .tag_image(id, Some(options))
            .await
            .map_err(api("tag_image"))
    }

    /// Whether any container, running or not, was created from the local image `id`.
    pub async fn image_in_use(&self, id: &str) -> Result<bool, RuntimeError> {
        let list = self.containers("ancestor", vec![id.to_owned()]).await?;
        Ok(!list.is_empty())
    }

    /// Every container, running or not, matching the list filter `filter` with `values`.
    async fn containers(
        &self,
        filter: &str,
        values: Vec<String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let filters = HashMap::from([(filter.to_owned(), values)]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(api("list_containers"))
    }

    /// Remove one reference (`repository@sha256:…` or a tag) the daemon made. Not forced: an image a
    /// container still uses is kept ([`Removal::InUse`]); removing a reference the image shares with
    /// other tags only untags it.
    pub async fn remove_image(&self, pinned: &str) -> Result<Removal, RuntimeError> {
        let options = RemoveImageOptionsBuilder::default()
            .force(false)
            .noprune(false)
            .build();
        match self.docker.remove_image(pinned, Some(options), None).await {
            Ok(_) => Ok(Removal::Removed),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(Removal::Missing)
            }
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {
                Ok(Removal::InUse)
            }
            Err(e) => Err(api("remove_image")(e)),
        }
    }

    /// Create a container from an audited spec; returns its id.
    pub async fn create(
        &self,
        name: &str,
        body: bollard::models::ContainerCreateBody,
    ) -> Result<String, RuntimeError> {
        let options = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(name)
            .build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(api("create_container"))?;
        Ok(created.id)
    }

    /// Start a created container.
    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(api("start_container"))
    }

    /// Inspect a container's state.
    pub async fn outcome(&self, id: &str) -> Result<ContainerOutcome, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
            .map_err(api("inspect_container"))?;
        let state = inspect.state.unwrap_or_default();
        Ok(ContainerOutcome {
            running: state.running.unwrap_or(false),
            exit_code: if state.running.unwrap_or(false) {
                None
            } else {
                state.exit_code
            },
            oom_killed: state.oom_killed.unwrap_or(false),
            error: state.error.filter(|e| !e.is_empty()),
        })
    }

    /// SIGKILL a container; one that already stopped or vanished is fine.
    pub async fn kill(&self, id: &str) -> Result<(), RuntimeError> {
        let options = KillContainerOptionsBuilder::default().signal("SIGKILL").build();
        match self.docker.kill_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(api("kill_container")(e)),
        }
    }

    /// Force-remove a container and its anonymous volumes; a missing one is fine.
    pub async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(api("remove_container")(e)),
        }
    }

    /// Whether something outside the miner stopped a container that exited by itself, from the
    /// engine's event log since `since_unix` (up to now): `Some(reason)` when a `kill` event with a
    /// signal other than SIGKILL is recorded (dockerd stopping containers on shutdown, an operator's
    /// `docker stop`; the daemon itself only ever sends SIGKILL), or when neither the container's
    /// `start` nor its `die` is recorded (dockerd keeps events in memory: it restarted since). A
    /// missing `start` alone is not enough: dockerd keeps only its last 256 events, so on a busy
    /// engine a long run's `start` can fall out while its recent `die` is still there, and that exit
    /// is the miner's own. A process inside the container cannot produce either signal, so a miner
    /// cannot disguise its own crash this way.
    pub async fn stopped_externally(
        &self,
        id: &str,
        since_unix: u64,
    ) -> Result<Option<String>, RuntimeError> {
        // Now, to the nanosecond: a whole second in the future would keep the stream open until then.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let until = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
        let filters = HashMap::from([
            ("container".to_owned(), vec![id.to_owned()]),
            ("type".to_owned(), vec!["container".to_owned()]),
        ]);
        let options = bollard::query_parameters::EventsOptionsBuilder::default()
            .since(&since_unix.to_string())
            .until(&until)
            .filters(&filters)
            .build();
        let mut stream = self.docker.events(Some(options));
        let (mut started, mut died) = (false, false);
        while let Some(event) = stream.next().await {
            let event = event.map_err(api("events"))?;
            let signal = event
                .actor
                .as_ref()
                .and_then(|a| a.attributes.as_ref())
                .and_then(|a| a.get("signal"))
                .cloned();
            match event.action.as_deref() {
                Some("start") => started = true,
                Some("die") => died = true,
                Some("kill") if !matches!(signal.as_deref(), Some("9" | "SIGKILL" | "KILL")) => {
                    return Ok(Some(format!(
                        "the container was stopped from outside (signal {}): dockerd shutting down or an operator",
                        signal.unwrap_or_default()
                    )));
                }
                _ => {}
            }
        }
        Ok((!started && !died).then(|| {
            "the engine has no record of the container's start or exit: dockerd restarted during the run"
                .to_owned()
        }))
    }

    /// The last `max_bytes` of a container's stdout and stderr, lossily decoded.
    pub async fn log_tail(&self, id: &str, max_bytes: usize) -> Result<String, RuntimeError> {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("200")
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(api("logs"))?;
            bytes.extend_from_slice(&chunk.into_bytes());
            if bytes.len() > 4 * max_bytes {
                bytes.drain(..bytes.len() - max_bytes);
            }
        }
        let start = bytes.len().saturating_sub(max_bytes);
        Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
    }

    /// Ids of every container (running or not) this daemon instance labelled, with their run ids.
    /// Containers of other instances on the same engine (another daemon, a test) are not listed.
    pub async fn labelled_containers(&self) -> Result<Vec<(String, String)>, RuntimeError> {
        // Docker ANDs several label filters: the run label must be there and the instance ours.
        let ours = format!("{}={}", super::spec::LABEL_INSTANCE, self.instance);
        let list = self.run_containers(vec![RUN_LABEL.to_owned(), ours]).await?;
        Ok(list.into_iter().map(|(id, run, _)| (id, run)).collect())
    }

    /// Containers matching every label filter in `labels` that carry a run label: (id, run id,
    /// whether they carry an instance label).
    async fn run_containers(&self, labels: Vec<String>) -> Result<Vec<(String, String, bool)>, RuntimeError> {
        let list = self.containers("label", labels).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.as_ref()?;
                let run = labels.get(RUN_LABEL)?.clone();
                let has_instance = labels.contains_key(super::spec::LABEL_INSTANCE);
                Some((c.id?, run, has_instance))
            })
            .collect())
    }

    /// Kill and remove every evaluation container whose `talkhead.instance` label `is_dead` says
    /// belongs to a process that is gone (a cluster worker killed with its host's job, whose container
    /// still holds a GPU). Containers of live instances are left alone. Returns their run ids.
    pub async fn reap_dead_instances(
        &self,
        is_dead: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, RuntimeError> {
        let list = self.containers("label", vec![RUN_LABEL.to_owned()]).await?;
        let dead = list.into_iter().filter_map(|c| {
            let labels = c.labels.as_ref()?;
            let instance = labels.get(super::spec::LABEL_INSTANCE)?;
            (instance != &self.instance && is_dead(instance))
                .then(|| Some((c.id?, labels.get(RUN_LABEL)?.clone())))
                .flatten()
        });
        self.kill_and_remove(dead, "removed a container left by a cluster worker that is gone")
            .await
    }

    /// Kill and remove containers with a run label but no instance label: left by a talkheadd from
    /// before instance labels (an upgrade with runs in flight), still holding a GPU. Called at
    /// start-up only; returns their run ids.
    pub async fn reconcile_unlabelled_orphans(&self) -> Result<Vec<String>, RuntimeError> {
        let list = self.run_containers(vec![RUN_LABEL.to_owned()]).await?;
        let unlabelled = list
            .into_iter()
            .filter(|(_, _, has_instance)| !has_instance)
            .map(|(id, run, _)| (id, run));
        self.kill_and_remove(
            unlabelled,
            "removed an evaluation container left by an older talkheadd",
        )
        .await
    }

    /// Kill and remove every container of this instance (same store) whose run is not in `keep`: at
    /// start-up (keep nothing) what a previous process left, after a dockerd restart what the
    /// interrupted runs left. Returns their run ids; those evaluations are re-queued.
    pub async fn reconcile_orphans(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<Vec<String>, RuntimeError> {
        let orphans = self.labelled_containers().await?;
        let orphans = orphans.into_iter().filter(|(_, run)| !keep.contains(run));
        self.kill_and_remove(orphans, "removed an orphaned evaluation container")
            .await
    }

    /// Kill and remove each (container id, run id), logging `what` for each; returns the run ids.
    async fn kill_and_remove(
        &self,
        containers: impl Iterator<Item = (String, String)>,
        what: &str,
    ) -> Result<Vec<String>, RuntimeError> {
        let mut runs = Vec::new();
        for (id, run) in containers {
            self.kill(&id).await?;
            self.remove(&id).await?;
            tracing::warn!(container = %id, run_id = %run, "{what}");
            runs.push(run);
        }
        Ok(runs)
    }

    /// The underlying client, for the job layer's file transfers.
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

/// `[registry/]repository` as the engine records it in RepoDigests (Docker Hub names are unqualified).
fn pinned_repository(image: &ImageRef) -> String {
    match image.registry() {
        Some(r) => format!("{r}/{}", image.repository()),
        None => image.repository().to_owned(),
    }
}
