//! Configuration: TOML file plus drop-ins plus the reference's environment variables, validated into
//! [`Settings`] at start-up.
//!
//! Order of precedence (later wins): embedded defaults, the main file (`--config`, `TALKHEADD_CONFIG`, or
//! `/etc/talkheadd/talkheadd.toml` when it exists), drop-ins `<file>.d/*.toml` in name order, then the
//! environment (`PORT`, `STATE_FILE`, `SUBNET_API_URL`). Each fragment is checked on its own for unknown
//! keys and wrong types, so errors name the file that holds the mistake. This module reads files and the
//! environment; it opens no sockets and touches no state.

mod raw;
pub mod reload;
mod settings;

pub use raw::RawConfig;
pub use settings::{
    AdminSettings, AnalysisSettings, AsrBackend, AuthSettings, ChallengeSource, ClusterEngine,
    ClusterSettings, DockerSettings, DuplicatePolicy, EvaluationSettings, FaceBackend, FaceSettings, GpuMode,
    GpuSelector, GpuSettings, HttpSettings, LogFormat, LogSettings, Settings, StoreSettings, defaults,
};

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the daemon looks when neither `--config` nor `TALKHEADD_CONFIG` names a file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/talkheadd/talkheadd.toml";

/// Exit status for a configuration error (sysexits `EX_CONFIG`); the unit sets
/// `RestartPreventExitStatus=78` so systemd does not restart into the same mistake.
pub const EXIT_CONFIG: i32 = 78;

/// The environment variables the reference executor reads, honoured for drop-in compatibility.
pub const ENV_PORT: &str = "PORT";
/// See [`ENV_PORT`].
pub const ENV_STATE_FILE: &str = "STATE_FILE";
/// See [`ENV_PORT`].
pub const ENV_SUBNET_API_URL: &str = "SUBNET_API_URL";
/// Names the configuration file, like `--config`.
pub const ENV_CONFIG: &str = "TALKHEADD_CONFIG";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The embedded default.
    Default,
    /// A file (the main file or a drop-in).
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("embedded default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// Which source last set each dotted key.
#[derive(Debug, Default, Clone)]
pub struct Origins(BTreeMap<String, Origin>);

impl Origins {
    /// The origin of `key` (or of its closest parent table), the default when nobody set it.
    pub fn origin_of(&self, key: &str) -> Origin {
        let mut k = key.split('[').next().unwrap_or(key);
        loop {
            if let Some(o) = self.0.get(k) {
                return o.clone();
            }
            match k.rsplit_once('.') {
                Some((parent, _)) => k = parent,
                None => return Origin::Default,
            }
        }
    }

    fn record(&mut self, table: &toml::Table, prefix: &str, origin: &Origin) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => self.record(t, &key, origin),
                _ => {
                    self.0.insert(key, origin.clone());
                }
            }
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The file or variable that set the value.
    pub origin: Origin,
    /// The dotted key, e.g. `http.listen`.
    pub key: String,
    /// What is wrong and what would be right.
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: key `{}`: {}", self.origin, self.key, self.problem)
    }
}

/// Why the configuration could not be loaded. The daemon prints it and exits [`EXIT_CONFIG`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file that was asked for could not be read.
    #[error("{path}: cannot read configuration file: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: key `{key}`: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The dotted key, or `(document)` when the file is not TOML at all.
        key: String,
        /// The parser's description.
        message: String,
    },
    /// An environment variable holds an impossible value.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Values that parse but are impossible.
    #[error("{}", render_problems(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn render_problems(problems: &[ConfigProblem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// The result of loading: validated settings plus what was read, for logs and `print-config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated settings.
    pub settings: Settings,
    /// The merged raw configuration (defaults not filled in).
    pub raw: RawConfig,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
}

/// Where to read the configuration from: an explicit path (must exist) or the default (may be absent).
#[derive(Debug, Clone)]
pub enum ConfigLocation {
    /// `--config` or `TALKHEADD_CONFIG`: a missing file is an error.
    Explicit(PathBuf),
    /// [`DEFAULT_CONFIG_PATH`]: a missing file means embedded defaults.
    Default(PathBuf),
}

impl ConfigLocation {
    /// Resolve `--config`, then `TALKHEADD_CONFIG`, then the default path.
    pub fn resolve(cli: Option<PathBuf>, env: &dyn Fn(&str) -> Option<String>) -> ConfigLocation {
        match cli.or_else(|| env(ENV_CONFIG).filter(|v| !v.is_empty()).map(PathBuf::from)) {
            Some(p) => ConfigLocation::Explicit(p),
            None => ConfigLocation::Default(PathBuf::from(DEFAULT_CONFIG_PATH)),
        }
    }
}

/// Load and validate. `env` reads environment variables (injected so tests need not mutate the process
/// environment).
pub fn load(location: &ConfigLocation, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigError> {
    let main = match location {
        ConfigLocation::Explicit(p) => Some(p.clone()),
        ConfigLocation::Default(p) => p.exists().then(|| p.clone()),
    };
    let mut files = Vec::new();
    if let Some(main) = main {
        files.push(main.clone());
        files.extend(drop_ins(&main)?);
    }

    let mut merged = toml::Table::new();
    let mut origins = Origins::default();
    for path in &files {
        let table = parse_fragment(path)?;
        origins.record(&table, "", &Origin::File(path.clone()));
        deep_merge(&mut merged, table);
    }
    apply_env(&mut merged, &mut origins, env)?;

    let raw: RawConfig =
        serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Syntax {
            path: files.last().cloned().unwrap_or_default(),
            key: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
    let settings = Settings::validate(&raw, &origins).map_err(ConfigError::Invalid)?;
    Ok(Loaded { settings, raw, files })
}

/// `<file>.d/*.toml`, sorted by name; a missing directory is fine.
fn drop_ins(main: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut dir = main.as_os_str().to_owned();
    dir.push(".d");
    let dir = PathBuf::from(dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Unreadable { path: dir, source }),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    out.sort();
    Ok(out)
}

/// Parse one file and check it alone against the schema, so an unknown key is blamed on its own file.
fn parse_fragment(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let syntax = |key: String, message: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        key,
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax("(document)".into(), e.to_string().trim_end().to_owned()))?;
    let _: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let message = e.inner().to_string();
        syntax(full_key(&e.path().to_string(), &message), message)
    })?;
    Ok(table)
}

/// serde reports an unknown field at its parent's path; name the field itself.
fn full_key(path: &str, message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match unknown {
        Some(field) if path == field || path.ends_with(&format!(".{field}")) => path.to_owned(),
        Some(field) if path == "." || path.is_empty() => field.to_owned(),
        Some(field) => format!("{path}.{field}"),
        None => path.to_owned(),
    }
}

fn deep_merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => deep_merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn set_key(
    merged: &mut toml::Table,
    origins: &mut Origins,
    table: &str,
    key: &str,
    value: toml::Value,
    var: &'static str,
) {
    let entry = merged
        .entry(table.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
    origins.0.insert(format!("{table}.{key}"), Origin::Env(var));
}

/// The reference executor's variables: `PORT` replaces the port of `http.listen` (keeping its address),
/// `STATE_FILE` sets `store.path`, `SUBNET_API_URL` sets `evaluation.subnet_api_url`.
fn apply_env(
    merged: &mut toml::Table,
    origins: &mut Origins,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    if let Some(port) = env(ENV_PORT).filter(|v| !v.is_empty()) {
        let port: u16 = match port.trim().parse() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(ConfigError::Env {
                    var: ENV_PORT,
                    message: format!("'{port}' is not a port number between 1 and 65535"),
                });
            }
        };
        let current = merged
            .get("http")
            .and_then(|h| h.get("listen"))
            .and_then(toml::Value::as_str)
            .unwrap_or(defaults::HTTP_LISTEN)
            .to_owned();
        let ip = current
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .map_err(|_| ConfigError::Env {
                var: ENV_PORT,
                message: format!("cannot apply to http.listen '{current}', which is not IP:port"),
            })?;
        let listen = std::net::SocketAddr::new(ip, port).to_string();
        set_key(
            merged,
            origins,
            "http",
            "listen",
            toml::Value::String(listen),
            ENV_PORT,
        );
    }
    if let Some(path) = env(ENV_STATE_FILE).filter(|v| !v.is_empty()) {
        set_key(
            merged,
            origins,
            "store",
            "path",
            toml::Value::String(path),
            ENV_STATE_FILE,
        );
    }
    if let Some(url) = env(ENV_SUBNET_API_URL).filter(|v| !v.is_empty()) {
        set_key(
            merged,
            origins,
            "evaluation",
            "subnet_api_url",
            toml::Value::String(url),
            ENV_SUBNET_API_URL,
        );
    }
    Ok(())
}

/// The effective configuration as TOML, every default filled in, secrets redacted (`print-config`).
pub fn render_effective(settings: &Settings) -> String {
    let s = settings;
    let challenges = match &s.evaluation.challenges {
        ChallengeSource::Directory(d) => format!("challenges_dir = {}\n", quote(&d.display().to_string())),
        ChallengeSource::SubnetApi(u) => format!(
            "subnet_api_url = {}\nsubnet_api_allow_insecure = {}\n",
            quote(&redact_url(u)),
            s.evaluation.subnet_api_allow_insecure
        ),
        ChallengeSource::Unconfigured => {
            "# no challenge source configured: the daemon serves the API but evaluates nothing\n".to_owned()
        }
    };
    let hotkeys: Vec<String> = s.auth.allowed_hotkeys.iter().map(|h| quote(h.as_str())).collect();
    let gpu = match s.gpu.mode {
        GpuMode::Nvml => "# GPUs discovered through NVML\n".to_owned(),
        GpuMode::Virtual(n) => format!("virtual = {n}\n"),
    };
    let devices: Vec<String> = s
        .gpu
        .devices
        .iter()
        .map(|d| match d {
            GpuSelector::Index(i) => i.to_string(),
            GpuSelector::Uuid(u) => quote(u),
        })
        .collect();
    let optional = |key: &str, value: Option<&str>| match value {
        Some(v) => format!("{key} = {}\n", quote(v)),
        None => format!("# {key} unset\n"),
    };
    let gpu = format!(
        "{gpu}devices = [{}]\nquarantine_after_faults = {}\nquarantine_secs = {}\nmax_temperature_c = {}\nvram_sample_hz = {}\nsame_model_per_round = {}\n{}{}",
        devices.join(", "),
        s.gpu.health.quarantine_after,
        s.gpu.health.quarantine_secs,
        s.gpu.max_temperature_c,
        s.gpu.vram_sample_hz,
        s.gpu.same_model_per_round,
        optional("virtual_cuda_version", s.gpu.virtual_cuda_version.as_deref()),
        optional(
            "calibration_image",
            s.gpu
                .calibration_image
                .as_ref()
                .map(crate::domain::ImageRef::as_str)
        ),
    );
    let reevaluate = toml::Value::try_from(s.evaluation.reevaluate)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "\"all\"".to_owned());
    // Nested under a `scoring` key so its sub-tables render as `[scoring.blend]` and so on.
    let scoring = [
        ("scoring", toml::Value::try_from(&s.scoring)),
        ("container", toml::Value::try_from(&s.container)),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v.ok()?)))
    .collect::<toml::Table>();
    let scoring = toml::to_string(&scoring).unwrap_or_default();
    let log_format = match s.log.format {
        LogFormat::Auto => "auto",
        LogFormat::Plain => "plain",
        LogFormat::Json => "json",
        LogFormat::Journald => "journald",
    };
    format!(
        "[http]\nlisten = {listen}\nmax_body_bytes = {mbb}\nmax_batch = {mb}\nmax_connections = {mc}\n\
         header_timeout_secs = {ht}\nrequest_timeout_secs = {rt}\n\n\
         [store]\npath = {path}\nmap_size_mb = {map}\nhistory_per_miner = {hist}\nmax_submissions = {maxs}\n\n\
         [auth]\nallowed_hotkeys = [{hotkeys}]\nmax_skew_secs = {skew}\nrequire_signature = {rs}\npublic_metrics = {pm}\n\
         replay_cache_capacity = {rc}\n\n\
         [evaluation]\n{challenges}warmup_count = {wc}\nscoring_count = {sc}\nready_timeout_secs = {rdt}\n\
         challenge_timeout_secs = {ct}\npull_timeout_secs = {pt}\nreevaluate = {reevaluate}\nwork_dir = {wd}\n\
         duplicates = \"{dup}\"\n\n\
         [docker]\nhost = {dh}\nmax_image_bytes = {mib}\nallowed_registries = [{regs}]\npull_attempts = {pa}\nimage_cache_bytes = {icb}\nprepull_ahead = {ppa}\n\n[gpu]\n{gpu}\n[admin]\nsocket = {sock}\ngroup = {ag}\nread_group = {arg}\nsocket_mode = \"{asm:04o}\"\n\n[analysis]\nconformance = \"{conf}\"\n\n[analysis.asr]\n{asr}\n{face}\n[log]\nformat = \"{log_format}\"\nlevel = {lvl}\n\n\
         {cluster}\n{scoring}",
        listen = quote(&s.http.listen.to_string()),
        mbb = s.http.max_body_bytes,
        mb = s.http.max_batch,
        mc = s.http.max_connections,
        ht = s.http.header_timeout.as_secs(),
        rt = s.http.request_timeout.as_secs(),
        path = quote(&s.store.path.display().to_string()),
        map = s.store.map_size_bytes >> 20,
        hist = s.store.history_per_miner,
        maxs = s.store.max_submissions,
        hotkeys = hotkeys.join(", "),
        skew = s.auth.max_skew_secs,
        rs = s.auth.require_signature,
        pm = s.auth.public_metrics,
        rc = s.auth.replay_cache_capacity,
        wc = s.evaluation.warmup_count,
        sc = s.evaluation.scoring_count,
        rdt = s.evaluation.ready_timeout.as_secs(),
        ct = s.evaluation.challenge_timeout.as_secs(),
        pt = s.evaluation.pull_timeout.as_secs(),
        dh = quote(&redact_url(&s.docker.host)),
        wd = quote(&s.evaluation.work_dir.display().to_string()),
        dup = match s.evaluation.duplicates {
            DuplicatePolicy::FirstWins => "first_wins",
            DuplicatePolicy::Share => "share",
        },
        mib = s.docker.max_image_bytes,
        regs = s
            .docker
            .allowed_registries
            .iter()
            .map(|r| quote(r))
            .collect::<Vec<_>>()
            .join(", "),
        pa = s.docker.pull_attempts,
        icb = s.docker.image_cache_bytes,
        ppa = s.docker.prepull_ahead,
        sock = quote(&s.admin.socket.display().to_string()),
        ag = quote(&s.admin.group),
        arg = quote(&s.admin.read_group),
        asm = s.admin.socket_mode,
        face = render_face(&s.analysis.face),
        conf = s.analysis.conformance.as_str(),
        asr = match &s.analysis.asr {
            AsrBackend::None => "backend = \"none\"\n".to_owned(),
            AsrBackend::Whisper { model, timeout } => format!(
                "backend = \"whisper\"\nmodel = {}\ntimeout_secs = {}\n",
                quote(&model.display().to_string()),
                timeout.as_secs()
            ),
        },
        lvl = quote(&s.log.level),
        cluster = render_cluster(&s.cluster),
    )
}

/// The `[cluster]` table of [`render_effective`]: the Ray keys only with the Ray engine (the local
/// engine refuses them); the token's source, never the token.
fn render_cluster(c: &ClusterSettings) -> String {
    let mut out = format!("[cluster]\nengine = \"{}\"\n", c.engine.as_str());
    if c.engine == ClusterEngine::Local {
        return out;
    }
    let optional = |key: &str, value: &Option<String>| {
        value
            .as_ref()
            .map(|v| format!("{key} = {}\n", quote(v)))
            .unwrap_or_default()
    };
    out += &optional("ray_address", &c.ray_address.as_deref().map(redact_url));
    out += &match &c.ray_token {
        Some(crate::challenges::KeySource::File(path)) => {
            format!("ray_token_file = {}\n", quote(&path.display().to_string()))
        }
        Some(crate::challenges::KeySource::Credential(name)) => {
            format!("ray_token_credential = {}\n", quote(name))
        }
        None => String::new(),
    };
    out += &format!("listen = {}\n", quote(&c.listen.to_string()));
    out += &optional("advertise_url", &c.advertise_url);
    out += &format!(
        "max_attempts = {}\njob_cpus = {}\nmax_jobs = {}\nmax_video_bytes = {}\nmax_report_bytes = {}\n",
        c.max_attempts,
        toml::Value::Float(c.job_cpus),
        c.max_jobs,
        c.max_video_bytes,
        c.max_report_bytes
    );
    out += &optional("gpu_model_resource", &c.gpu_model_resource);
    out
}

/// The `[analysis.face]` table of [`render_effective`].
fn render_face(face: &FaceSettings) -> String {
    let cascade = quote(&face.cascade.display().to_string());
    match &face.backend {
        FaceBackend::Builtin => format!("[analysis.face]\nbackend = \"builtin\"\ncascade = {cascade}\n"),
        FaceBackend::Onnx(o) => format!(
            "[analysis.face]\nbackend = \"onnx\"\ncascade = {cascade}\ndetector_model = {}\nrecognizer_model = {}\n\
             onnxruntime_library = {}\nthreads = {}\ndet_size = {}\ndet_threshold = {}\n",
            quote(&o.detector_model.display().to_string()),
            quote(&o.recognizer_model.display().to_string()),
            quote(&o.onnxruntime_library.display().to_string()),
            o.threads,
            o.det_size,
            toml::Value::Float(o.det_threshold),
        ),
    }
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// Hide `user:password@` in a URL: credentials never reach logs or `print-config`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests;
