//! Test harness shared by the integration tests: runs the real `talkheadd` binary with a temporary
//! config and state file, owns its `NOTIFY_SOCKET` (waiting for `READY=1` instead of sleeping), and
//! speaks plain HTTP/1.1 over real TCP.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod media;
pub mod onnx;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for anything the harness waits on; a test that hits it has failed.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_talkheadd")
}

/// The seven real challenges in `../shared/fixtures/challenges` (beside the project root).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/challenges")
        .canonicalize()
        .unwrap()
}

/// A finished command's stdout then stderr, for assertion messages and matching.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A loopback port nobody is listening on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Config of a bench daemon evaluating the bundled challenges without signatures and with small
/// container limits; `evaluation` adds `[evaluation]` keys, `tables` whole tables (e.g. `[gpu]`).
pub fn bench_config(dir: &Path, evaluation: &str, tables: &str) -> String {
    format!(
        "[auth]\nrequire_signature = false\n\
         [evaluation]\n{evaluation}challenges_dir = \"{}\"\nready_timeout_secs = 60\nchallenge_timeout_secs = 30\n\
         work_dir = \"{}\"\n{tables}\
         [container]\ncpus = 1.0\nmemory_bytes = 536870912\nshm_bytes = 67108864\ntmp_bytes = 67108864\n\
         var_tmp_bytes = 16777216\noutput_bytes = 67108864\n",
        fixtures().display(),
        dir.join("jobs").display()
    )
}

/// A running daemon and everything it owns.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    notify: UnixDatagram,
    pub notifications: Vec<String>,
}

/// Configuration pieces for a test daemon.
pub struct Setup {
    pub dir: tempfile::TempDir,
    /// Extra keys for the harness's `[http]` table.
    pub http: String,
    /// Extra keys for the harness's `[admin]` table.
    pub admin: String,
    /// The admin socket (default `<dir>/admin.sock`).
    pub admin_socket: Option<PathBuf>,
    /// Extra TOML tables.
    pub extra: String,
}

impl Setup {
    pub fn new(extra: &str) -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            http: String::new(),
            admin: String::new(),
            admin_socket: None,
            extra: extra.to_owned(),
        }
    }
}

impl Setup {
    /// Write `<dir>/talkheadd.toml` for a daemon listening on `port`; returns its path.
    pub fn write_config(&self, port: u16) -> PathBuf {
        let dir = self.dir.path();
        let socket = self
            .admin_socket
            .clone()
            .unwrap_or_else(|| dir.join("admin.sock"));
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:{port}\"\n{}[store]\npath = \"{}\"\n[admin]\nsocket = \"{}\"\n{}{}",
            self.http,
            dir.join("state.db").display(),
            socket.display(),
            self.admin,
            self.extra
        );
        // Test hosts have no NVML: one virtual slot unless the test chose its own [gpu].
        let text = if self.extra.contains("[gpu]") {
            text
        } else {
            text + "[gpu]\nvirtual = 1\n"
        };
        let config = dir.join("talkheadd.toml");
        std::fs::write(&config, text).unwrap();
        config
    }
}

impl Daemon {
    /// Start with `[store] path` and `[http] listen` chosen by the harness plus `extra` TOML.
    pub fn start(setup: &Setup) -> Daemon {
        let dir = setup.dir.path().to_path_buf();
        let state = dir.join("state.db");
        let port = free_port();
        let config = setup.write_config(port);
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config)
            .env_remove("TALKHEADD_CONFIG")
            .env_remove("PORT")
            .env_remove("STATE_FILE")
            .env_remove("SUBNET_API_URL");
        Daemon::spawn(&mut cmd, dir, state, config, port)
    }

    /// The daemon's process id (the round_slots bench reads its CPU time from `/proc`).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Spawn a prepared command, owning its NOTIFY_SOCKET, and wait for READY=1.
    pub fn spawn(cmd: &mut Command, dir: PathBuf, state: PathBuf, config: PathBuf, port: u16) -> Daemon {
        let socket_path = dir.join(format!("notify-{port}.sock"));
        let _ = std::fs::remove_file(&socket_path);
        let notify = UnixDatagram::bind(&socket_path).unwrap();
        // Short reads so an early exit is noticed; the overall bound is WAIT.
        notify.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let child = cmd
            .env("NOTIFY_SOCKET", &socket_path)
            .env("RUST_LOG", "talkheadd=debug")
            // Plain `key=value` fields in the log the tests read (no ANSI colour codes).
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("daemon-{port}.log"))).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut daemon = Daemon {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            state,
            config,
            notify,
            notifications: Vec::new(),
        };
        daemon.wait_for("READY=1");
        daemon
    }

    /// Block until a notification containing `needle` arrives (bounded by [`WAIT`]).
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_within(needle, WAIT)
    }

    /// Block until a notification containing `needle` arrives, for at most `limit`.
    pub fn wait_for_within(&mut self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self.notifications.iter().find(|n| n.contains(needle)) {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no '{needle}' notification; log:\n{}",
                self.log()
            );
            if let Ok(Some(status)) = self.child.try_wait() {
                // What it sent before exiting is already queued on the socket: read all of it before
                // deciding (STOPPING=1 is often sent just before a quick exit).
                self.drain_notifications();
                if let Some(found) = self.notifications.iter().find(|n| n.contains(needle)) {
                    return found.clone();
                }
                panic!("daemon exited ({status}) before '{needle}'; log:\n{}", self.log());
            }
            let mut buf = [0u8; 4096];
            match self.notify.recv(&mut buf) {
                Ok(n) => self
                    .notifications
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("waiting for '{needle}': {e}; daemon log:\n{}", self.log()),
            }
        }
    }

    /// Reads every notification already queued, without waiting.
    fn drain_notifications(&mut self) {
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            self.notifications
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.notify.set_nonblocking(false).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("daemon-{}.log", self.addr.port()))).unwrap_or_default()
    }

    /// SIGTERM, expect STOPPING=1, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.wait_for("STOPPING=1");
        let status = self.child.wait().unwrap();
        assert!(
            self.log().contains("state store closed"),
            "store not closed cleanly:\n{}",
            self.log()
        );
        status
    }

    pub fn request(&self, req: &HttpRequest) -> HttpResponse {
        send(self.addr, req)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request to send.
#[derive(Clone, Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body chunked instead of with Content-Length.
    pub chunked: bool,
}

impl HttpRequest {
    pub fn new(method: &str, path: &str) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            ..Default::default()
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> HttpRequest {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn headers(mut self, h: &BTreeMap<String, String>) -> HttpRequest {
        for (k, v) in h {
            self.headers.push((k.clone(), v.clone()));
        }
        self
    }
    pub fn body(mut self, b: impl Into<Vec<u8>>) -> HttpRequest {
        self.body = b.into();
        self
    }
}

/// A parsed response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
    /// The `error` reason of a JSON error body.
    pub fn reason(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

/// One request on a fresh connection (`Connection: close`), read to EOF.
pub fn send(addr: SocketAddr, req: &HttpRequest) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n",
        req.method, req.path
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if req.chunked {
        head.push_str("Transfer-Encoding: chunked\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        for chunk in req.body.chunks(4096) {
            // The server may close as soon as the limit is passed: stop writing then.
            if stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .is_err()
                || stream.write_all(chunk).is_err()
                || stream.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
    } else {
        if !req.body.is_empty() || req.method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let _ = stream.write_all(&req.body);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("incomplete HTTP response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Where the bittensor-wallet interpreter lives (installed by `tests/run.sh`).
pub fn bt_python() -> PathBuf {
    if let Ok(p) = std::env::var("TALKHEAD_BT_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}

/// Headers signed by the real `bittensor_wallet` library through `tests/interop/bt_sign.py`.
pub fn bt_sign(args: &[&str]) -> BTreeMap<String, String> {
    let python = bt_python();
    assert!(
        python.exists(),
        "{} not found: run tests/run.sh (it installs bittensor-wallet into .venv) or set TALKHEAD_BT_PYTHON",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/interop/bt_sign.py");
    let out = Command::new(python).arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "bt_sign.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Signs requests the way a validator does, with a deterministic sr25519 key (schnorrkel, context
/// `substrate`, as substrate/bittensor keypairs sign).
pub struct Signer {
    pub keypair: schnorrkel::Keypair,
    pub hotkey: String,
}

impl Signer {
    pub fn from_seed(seed: u8) -> Signer {
        let keypair = schnorrkel::MiniSecretKey::from_bytes(&[seed; 32])
            .unwrap()
            .expand_to_keypair(schnorrkel::ExpansionMode::Ed25519);
        let hotkey = talkheadd::domain::Hotkey::from_public_key(keypair.public.to_bytes()).to_string();
        Signer { keypair, hotkey }
    }

    fn sign(&self, message: &str) -> String {
        let ctx = schnorrkel::signing_context(b"substrate");
        hex::encode(self.keypair.sign(ctx.bytes(message.as_bytes())).to_bytes())
    }

    /// Reference (legacy) headers for `path` at `ts`.
    pub fn legacy(&self, path: &str, ts: i64) -> BTreeMap<String, String> {
        let sig = self.sign(&format!("<Bytes>{path}:{ts}:{}</Bytes>", self.hotkey));
        BTreeMap::from([
            ("X-Hotkey".into(), self.hotkey.clone()),
            ("X-Timestamp".into(), ts.to_string()),
            ("X-Signature".into(), sig),
        ])
    }

    /// talkhead-v1 headers binding method, path, query, nonce and body.
    pub fn strong(
        &self,
        method: &str,
        path: &str,
        query: &str,
        ts: i64,
        nonce: &str,
        body: &[u8],
    ) -> BTreeMap<String, String> {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(body));
        let message = format!(
            "<Bytes>talkhead-v1\n{method}\n{path}\n{query}\n{ts}\n{nonce}\n{digest}\n{}</Bytes>",
            self.hotkey
        );
        BTreeMap::from([
            ("X-Auth-Scheme".into(), "talkhead-v1".into()),
            ("X-Hotkey".into(), self.hotkey.clone()),
            ("X-Timestamp".into(), ts.to_string()),
            ("X-Nonce".into(), nonce.to_owned()),
            ("X-Content-SHA256".into(), digest),
            ("X-Signature".into(), self.sign(&message)),
        ])
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub const DIGEST_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const DIGEST_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A JSON `/update` body.
/// One submission per signer with the image of the same index, submitted at 1000 + index.
pub fn numbered_submissions<'a>(signers: &'a [Signer], refs: &[String]) -> Vec<(&'a str, String, f64)> {
    signers
        .iter()
        .zip(refs)
        .enumerate()
        .map(|(i, (s, r))| (s.hotkey.as_str(), r.clone(), 1000.0 + i as f64))
        .collect()
}

pub fn update_body(items: &[(&str, String, f64)]) -> Vec<u8> {
    let rows: Vec<serde_json::Value> = items
        .iter()
        .map(|(h, i, t)| serde_json::json!({"hotkey": h, "image_ref": i, "submit_time": t}))
        .collect();
    serde_json::to_vec(&rows).unwrap()
}

/// A configuration for one evaluation of the test miner on this host, in `dir`: one virtual GPU slot,
/// `warmups` warm-up and `scored` scored challenges, short timeouts and small container limits.
pub fn small_evaluation_config(dir: &Path, warmups: usize, scored: usize) -> PathBuf {
    let text = format!(
        "[evaluation]\nwarmup_count = {warmups}\nscoring_count = {scored}\nready_timeout_secs = 30\n\
         challenge_timeout_secs = 20\npull_timeout_secs = 120\n\
         [docker]\npull_attempts = 2\n[gpu]\nvirtual = 1\n\
         [container]\ncpus = 1.0\nmemory_bytes = 536870912\nshm_bytes = 67108864\ntmp_bytes = 67108864\n\
         var_tmp_bytes = 16777216\noutput_bytes = 67108864\n"
    );
    let path = dir.join("talkheadd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `POST /update` of `(hotkey, image, submit time)` rows to an unsigned test daemon; must be accepted.
pub fn submit(d: &Daemon, miners: &[(String, String, f64)]) {
    let rows: Vec<(&str, String, f64)> = miners
        .iter()
        .map(|(h, i, t)| (h.as_str(), i.clone(), *t))
        .collect();
    let r = d.request(&HttpRequest::new("POST", "/update").body(update_body(&rows)));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// `GET /metrics` of an unsigned test daemon: each committed miner's metrics document by hotkey.
pub fn metrics_by_hotkey(d: &Daemon) -> BTreeMap<String, serde_json::Value> {
    let r = d.request(&HttpRequest::new("GET", "/metrics"));
    assert_eq!(r.status, 200);
    r.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["hotkey"].as_str().unwrap().to_owned(), row["metrics"].clone()))
        .collect()
}

/// The daemon's state file, opened by the test (the daemon is stopped, or not started yet).
pub fn open_state(state: &Path) -> talkheadd::store::Store {
    talkheadd::store::Store::open(
        state,
        talkheadd::store::StoreOptions {
            map_size_bytes: 64 << 20,
            history_per_miner: 20,
            max_submissions: 100,
        },
    )
    .unwrap()
}

/// The run history of `hotkey` in a stopped daemon's state file, newest first.
pub fn runs_of(state: &Path, hotkey: &str) -> Vec<talkheadd::store::RunRecord> {
    let store = open_state(state);
    let runs = store
        .runs_for(&talkheadd::domain::Hotkey::parse(hotkey).unwrap(), 20)
        .unwrap();
    store.close().unwrap();
    runs
}

/// Every log tail of `hotkey`'s runs, joined.
pub fn run_logs(state: &Path, hotkey: &str) -> String {
    runs_of(state, hotkey)
        .iter()
        .filter_map(|r| r.log_tail.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Ids of every container (running or not) on this machine's engine carrying every label filter of
/// `labels` (`key` or `key=value`).
pub fn containers_labelled(labels: &[String]) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-aq", "--no-trunc"]);
    for label in labels {
        cmd.args(["--filter", &format!("label={label}")]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every container on this machine's engine that talkheadd labelled (`talkhead.managed=true`).
pub fn managed_containers() -> Vec<String> {
    containers_labelled(&["talkhead.managed=true".to_owned()])
}
