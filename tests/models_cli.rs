//! `talkheadd models fetch | verify`: the real binary against an HTTP server on 127.0.0.1 inside the
//! test, serving generated "models" (and a zip and a tar.gz holding some of them) under a manifest
//! written with their real sizes and SHA-256. Covers installing and the configuration lines, `verify`,
//! cut and stalled downloads, wrong hashes, redirects, 404s, resuming a `.part` with `Range`, `--from`
//! (air-gapped), unconfirmed hashes, and `check-config` naming `talkheadd models fetch`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{WAIT, bin, output_text};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// What the server answers for a path.
#[derive(Clone)]
enum Route {
    /// The file, honouring `Range: bytes=N-`.
    File(Vec<u8>),
    /// The whole file with 200, whatever `Range` asks.
    IgnoresRange(Vec<u8>),
    /// Announces the whole file, sends `send` bytes, closes the connection.
    Cut { body: Vec<u8>, send: usize },
    /// 302 to another path.
    Redirect(String),
    /// Reads the request and never answers.
    StallBeforeHeaders,
    /// Announces the whole file, sends `send` bytes, then sends nothing more.
    StallInBody { body: Vec<u8>, send: usize },
    /// Answers `Range: bytes=N-` with a 206 of at most `chunk` bytes (a Content-Range shorter than asked).
    ShortRanges { body: Vec<u8>, chunk: usize },
    /// Answers any `Range` with a 206 of the whole file (`bytes 0-…`, not where it was asked to start);
    /// no `Range`: 200.
    WrongStart(Vec<u8>),
}

/// One request as the server saw it: path and `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct Server {
    base: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (r, s) = (routes.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (r, s) = (r.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &r, &s));
            }
        });
        Server { base, routes, seen }
    }

    fn route(&self, path: &str, route: Route) -> String {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
        self.url(path)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Holds a connection open until the client closes it (never a sleep: the client's own timeout, or
/// its exit, ends it).
fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

fn serve(mut stream: TcpStream, routes: &Mutex<HashMap<String, Route>>, seen: &Mutex<Vec<Seen>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let range = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("range")
            .then(|| value.trim().to_owned())
    });
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let route = routes.lock().unwrap().get(&path).cloned();
    let head = |status: &str, extra: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n{extra}\r\n")
    };
    let _ = match route {
        None => stream.write_all(head("404 Not Found", "", 0).as_bytes()),
        Some(Route::File(body)) => {
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok());
            match start {
                Some(s) if s >= body.len() => stream.write_all(
                    head(
                        "416 Range Not Satisfiable",
                        &format!("Content-Range: bytes */{}\r\n", body.len()),
                        0,
                    )
                    .as_bytes(),
                ),
                Some(s) => {
                    let cr = format!("Content-Range: bytes {s}-{}/{}\r\n", body.len() - 1, body.len());
                    let _ = stream.write_all(head("206 Partial Content", &cr, body.len() - s).as_bytes());
                    stream.write_all(&body[s..])
                }
                None => {
                    let _ = stream.write_all(head("200 OK", "", body.len()).as_bytes());
                    stream.write_all(&body)
                }
            }
        }
        Some(Route::IgnoresRange(body)) => {
            let _ = stream.write_all(head("200 OK", "", body.len()).as_bytes());
            stream.write_all(&body)
        }
        Some(Route::Cut { body, send }) => {
            let _ = stream.write_all(head("200 OK", "", body.len()).as_bytes());
            stream.write_all(&body[..send])
        }
        Some(Route::Redirect(to)) => {
            stream.write_all(head("302 Found", &format!("Location: {to}\r\n"), 0).as_bytes())
        }
        Some(Route::StallBeforeHeaders) => {
            hold(stream);
            return;
        }
        Some(Route::ShortRanges { body, chunk }) => {
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            let end = (start + chunk).min(body.len());
            let cr = format!("Content-Range: bytes {start}-{}/{}\r\n", end - 1, body.len());
            let _ = stream.write_all(head("206 Partial Content", &cr, end - start).as_bytes());
            stream.write_all(&body[start..end])
        }
        Some(Route::WrongStart(body)) => {
            if range.is_some() {
                let cr = format!("Content-Range: bytes 0-{}/{}\r\n", body.len() - 1, body.len());
                let _ = stream.write_all(head("206 Partial Content", &cr, body.len()).as_bytes());
            } else {
                let _ = stream.write_all(head("200 OK", "", body.len()).as_bytes());
            }
            stream.write_all(&body)
        }
        Some(Route::StallInBody { body, send }) => {
            let _ = stream.write_all(head("200 OK", "", body.len()).as_bytes());
            let _ = stream.write_all(&body[..send]);
            let _ = stream.flush();
            hold(stream);
            return;
        }
    };
    let _ = stream.flush();
}

/// Bytes that do not compress away (a xorshift stream), different per seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A zip with `entries` (name, data, deflated?), laid out as zip writers do (no data descriptors).
fn zip(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, deflate) in entries {
        let stored = if *deflate {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        } else {
            data.to_vec()
        };
        let crc = crc32fast::hash(data);
        let method: u16 = if *deflate { 8 } else { 0 };
        let offset = out.len() as u32;
        let mut common = Vec::new();
        common.extend(20u16.to_le_bytes()); // version needed
        common.extend(0u16.to_le_bytes()); // flags
        common.extend(method.to_le_bytes());
        common.extend([0u8; 4]); // time, date
        common.extend(crc.to_le_bytes());
        common.extend((stored.len() as u32).to_le_bytes());
        common.extend((data.len() as u32).to_le_bytes());
        common.extend((name.len() as u16).to_le_bytes());
        common.extend(0u16.to_le_bytes()); // extra
        out.extend(0x0403_4b50u32.to_le_bytes());
        out.extend(&common);
        out.extend(name.as_bytes());
        out.extend(&stored);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // version made by
        central.extend(&common);
        central.extend(0u16.to_le_bytes()); // comment
        central.extend([0u8; 8]); // disk, internal and external attributes
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let cd_at = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_at.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// A .tar.gz holding `lib` as `ort/lib/libort.so.1.0` and a symlink `ort/lib/libort.so` to it.
fn tar_gz(lib: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(lib.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, "ort/lib/libort.so.1.0", lib)
        .unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    link.set_cksum();
    tar.append_link(&mut link, "ort/lib/libort.so", "libort.so.1.0")
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// The four files and the archives two of them come in, as the real manifest lays them out.
struct Models {
    det: Vec<u8>,
    rec: Vec<u8>,
    lib: Vec<u8>,
    ggml: Vec<u8>,
    zip: Vec<u8>,
    tgz: Vec<u8>,
}

impl Models {
    fn new() -> Models {
        let det = noise(1, 40_000);
        let rec = noise(2, 60_000);
        let lib = noise(3, 30_000);
        let ggml = noise(4, 100_000);
        let zip = zip(&[
            ("buffalo_l/", b"", false),
            ("buffalo_l/det_10g.onnx", &det, true),
            ("buffalo_l/w600k_r50.onnx", &rec, false),
            ("buffalo_l/genderage.onnx", b"not needed", true),
        ]);
        let tgz = tar_gz(&lib);
        Models {
            det,
            rec,
            lib,
            ggml,
            zip,
            tgz,
        }
    }

    /// Serves everything at its usual path.
    fn serve(&self, server: &Server) {
        server.route("/buffalo_l.zip", Route::File(self.zip.clone()));
        server.route("/ort.tgz", Route::File(self.tgz.clone()));
        server.route("/ggml-base.bin", Route::File(self.ggml.clone()));
    }

    /// A manifest for them at `base`; `ggml_url`/`ggml_sha` override the ggml entry's.
    fn manifest(&self, base: &str, ggml_url: Option<&str>, ggml_entry: Option<String>) -> String {
        let confirmed = |data: &[u8]| {
            format!(
                "size = {}\nsha256 = \"{}\"\nconfirmed = true\n",
                data.len(),
                sha256_hex(data)
            )
        };
        let ggml = ggml_entry.unwrap_or_else(|| confirmed(&self.ggml));
        format!(
            "[[archive]]\nname = \"buffalo_l.zip\"\nurl = \"{base}/buffalo_l.zip\"\nformat = \"zip\"\n{}\n\
             [[archive]]\nname = \"ort.tgz\"\nurl = \"{base}/ort.tgz\"\nformat = \"tar.gz\"\n{}\n\
             [[file]]\nname = \"det_10g.onnx\"\nkey = \"analysis.face.detector_model\"\narchive = \"buffalo_l.zip\"\n\
             member = \"det_10g.onnx\"\n{}\n\
             [[file]]\nname = \"w600k_r50.onnx\"\nkey = \"analysis.face.recognizer_model\"\narchive = \"buffalo_l.zip\"\n\
             member = \"buffalo_l/w600k_r50.onnx\"\n{}\n\
             [[file]]\nname = \"libonnxruntime.so.1.28.0\"\nkey = \"analysis.face.onnxruntime_library\"\n\
             archive = \"ort.tgz\"\nmember = \"lib/libort.so.1.0\"\n{}\n\
             [[file]]\nname = \"ggml-base.bin\"\nkey = \"analysis.asr.model\"\nurl = \"{}\"\n{ggml}",
            confirmed(&self.zip),
            confirmed(&self.tgz),
            confirmed(&self.det),
            confirmed(&self.rec),
            confirmed(&self.lib),
            ggml_url.map_or_else(|| format!("{base}/ggml-base.bin"), str::to_owned),
        )
    }
}

/// A temporary directory with a manifest, an install directory and a place for `--from` files.
struct Case {
    tmp: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn models_dir(&self) -> PathBuf {
        self.path("models")
    }

    fn installed(&self, name: &str) -> PathBuf {
        self.models_dir().join(name)
    }

    fn write_manifest(&self, text: &str) -> PathBuf {
        let path = self.path("models.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `talkheadd models <args>` with `--dir` and `--manifest` of this case.
    fn models(&self, sub: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.arg("models")
            .arg(sub)
            .arg("--dir")
            .arg(self.models_dir())
            .arg("--manifest")
            .arg(self.path("models.toml"))
            .args(args);
        run(cmd, self.tmp.path())
    }

    /// What is in the install directory but the lock file, names sorted.
    fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.models_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// Runs a command with no proxy in the way of 127.0.0.1 and no configuration from the environment;
/// one still running after [`WAIT`] is killed and the test fails (a hang is a failure, not a stuck test).
/// A loopback server serving the generated models, and an empty case directory.
fn served() -> (Server, Models, Case) {
    let server = Server::start();
    let m = Models::new();
    m.serve(&server);
    (server, m, Case::new())
}

fn run(mut cmd: Command, cwd: &Path) -> Output {
    for var in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(var);
    }
    let child = cmd
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("TALKHEADD_CONFIG")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(WAIT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("{cmd:?} still running after {WAIT:?}");
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const ALL: [&str; 4] = [
    "det_10g.onnx",
    "ggml-base.bin",
    "libonnxruntime.so.1.28.0",
    "w600k_r50.onnx",
];

#[test]
fn a_good_fetch_installs_verified_files_prints_the_config_and_verify_checks_them() {
    let (server, m, case) = served();
    case.write_manifest(&m.manifest(&server.base, None, None));
    let out = case.models("fetch", &["--timeout", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    // Every file is there with its content, and nothing else: no .part, no archive left behind.
    assert_eq!(case.listing(), ALL, "{}", output_text(&out));
    assert_eq!(std::fs::read(case.installed("det_10g.onnx")).unwrap(), m.det);
    assert_eq!(std::fs::read(case.installed("w600k_r50.onnx")).unwrap(), m.rec);
    assert_eq!(
        std::fs::read(case.installed("libonnxruntime.so.1.28.0")).unwrap(),
        m.lib
    );
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    // Each archive was downloaded once.
    let mut paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    paths.sort();
    assert_eq!(paths, ["/buffalo_l.zip", "/ggml-base.bin", "/ort.tgz"]);
    // The configuration lines, with absolute paths, parse as the daemon's configuration would.
    let text = stdout(&out);
    let dir = case.models_dir();
    let lines = &text[text.find("[analysis.face]").expect(&text)..];
    assert!(
        lines.starts_with(&format!(
            "[analysis.face]\nbackend = \"onnx\"\ndetector_model = \"{d}/det_10g.onnx\"\n\
             recognizer_model = \"{d}/w600k_r50.onnx\"\nonnxruntime_library = \"{d}/libonnxruntime.so.1.28.0\"\n\n\
             [analysis.asr]\nbackend = \"whisper\"\nmodel = \"{d}/ggml-base.bin\"\n",
            d = dir.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("sha256 {}, verified", sha256_hex(&m.ggml))),
        "{text}"
    );
    // Plain progress lines on a stderr that is not a terminal.
    assert!(
        stderr(&out).contains("ggml-base.bin: 100% (97.7 KiB of 97.7 KiB)"),
        "{}",
        stderr(&out)
    );

    // A second fetch finds everything installed and downloads nothing.
    let again = case.models("fetch", &[]);
    assert_eq!(again.status.code(), Some(0), "{}", output_text(&again));
    assert_eq!(server.seen().len(), 3);
    assert!(
        stdout(&again).contains("ggml-base.bin: already installed, verified"),
        "{}",
        output_text(&again)
    );

    // verify passes, then names a corrupted file and a missing one.
    let ok = case.models("verify", &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", output_text(&ok));
    assert_eq!(
        stdout(&ok).lines().filter(|l| l.starts_with("ok ")).count(),
        4,
        "{}",
        stdout(&ok)
    );
    let mut bytes = m.rec.clone();
    bytes[100] ^= 1;
    std::fs::write(case.installed("w600k_r50.onnx"), &bytes).unwrap();
    std::fs::remove_file(case.installed("ggml-base.bin")).unwrap();
    let bad = case.models("verify", &[]);
    assert_eq!(bad.status.code(), Some(65), "{}", output_text(&bad));
    let report = stdout(&bad);
    assert!(report.contains("WRONG   w600k_r50.onnx: SHA-256 is"), "{report}");
    assert!(report.contains("MISSING ggml-base.bin"), "{report}");
    assert!(report.contains("ok      det_10g.onnx"), "{report}");
    assert!(
        stderr(&bad).contains("w600k_r50.onnx, ggml-base.bin"),
        "{}",
        stderr(&bad)
    );

    // fetch repairs both: the wrong file is replaced, the missing one downloaded again.
    let repaired = case.models("fetch", &[]);
    assert_eq!(repaired.status.code(), Some(0), "{}", output_text(&repaired));
    assert!(
        stderr(&repaired).contains("w600k_r50.onnx: the installed file is wrong"),
        "{}",
        stderr(&repaired)
    );
    assert_eq!(std::fs::read(case.installed("w600k_r50.onnx")).unwrap(), m.rec);
    assert_eq!(case.models("verify", &[]).status.code(), Some(0));
}

#[test]
fn a_cut_download_is_refused_and_nothing_is_installed() {
    let (server, m, case) = served();
    let url = server.route(
        "/cut.bin",
        Route::Cut {
            body: m.ggml.clone(),
            send: 30_000,
        },
    );
    case.write_manifest(&m.manifest(&server.base, Some(&url), None));
    let out = case.models("fetch", &["--timeout", "10"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("ggml-base.bin: {url}: the download was cut off after")),
        "{err}"
    );
    assert!(err.contains("1 of 4 file(s) not installed"), "{err}");
    assert!(!case.installed("ggml-base.bin").exists());
    // What arrived is kept for the next run to resume, never at the final path.
    let part = std::fs::read(case.installed("ggml-base.bin.part")).unwrap();
    assert!(
        part.len() <= 30_000 && m.ggml.starts_with(&part),
        "{}",
        part.len()
    );
    // No configuration lines for a partial install.
    assert!(!stdout(&out).contains("[analysis.asr]"), "{}", stdout(&out));
}

#[test]
fn a_wrong_hash_is_refused_and_removed() {
    let (server, m, case) = served();
    let lie = format!(
        "size = {}\nsha256 = \"{}\"\nconfirmed = true\n",
        m.ggml.len(),
        sha256_hex(b"other")
    );
    case.write_manifest(&m.manifest(&server.base, None, Some(lie)));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "ggml-base.bin: refused: SHA-256 is {}, the manifest expects {}",
            sha256_hex(&m.ggml),
            sha256_hex(b"other")
        )),
        "{err}"
    );
    assert!(err.contains("nothing installed"), "{err}");
    assert!(!case.installed("ggml-base.bin").exists());
    assert!(!case.installed("ggml-base.bin.part").exists());
    // The other files passed and are installed.
    assert!(case.installed("det_10g.onnx").exists());

    // A wrong size is refused before the body is read.
    let case = Case::new();
    let lie = format!(
        "size = 5\nsha256 = \"{}\"\nconfirmed = true\n",
        sha256_hex(&m.ggml)
    );
    case.write_manifest(&m.manifest(&server.base, None, Some(lie)));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("the server offers 100000 bytes, the manifest expects 5"),
        "{}",
        stderr(&out)
    );
    assert!(!case.installed("ggml-base.bin").exists() && !case.installed("ggml-base.bin.part").exists());

    // An archive whose hash is wrong is refused too, and none of its members installed.
    let case = Case::new();
    let text = m
        .manifest(&server.base, None, None)
        .replacen(&sha256_hex(&m.zip), &sha256_hex(b"other"), 1);
    case.write_manifest(&text);
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("buffalo_l.zip: refused: SHA-256 is"),
        "{}",
        stderr(&out)
    );
    assert!(!case.installed("det_10g.onnx").exists() && !case.installed("w600k_r50.onnx").exists());
    assert!(!case.installed("buffalo_l.zip.part").exists());
    assert!(case.installed("ggml-base.bin").exists());
}

#[test]
fn redirects_are_followed() {
    let (server, m, case) = served();
    server.route("/moved", Route::Redirect(server.url("/moved-again")));
    server.route("/moved-again", Route::Redirect("/ggml-base.bin".to_owned()));
    case.write_manifest(&m.manifest(&server.base, Some(&server.url("/moved")), None));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    let paths: Vec<String> = server.seen().into_iter().map(|s| s.path).collect();
    let at = paths.iter().position(|p| p == "/moved").unwrap();
    assert_eq!(
        paths[at..at + 3],
        ["/moved", "/moved-again", "/ggml-base.bin"],
        "{paths:?}"
    );

    // A redirect loop ends with a message, not a hang.
    server.route("/loop", Route::Redirect("/loop".to_owned()));
    let case = Case::new();
    case.write_manifest(&m.manifest(&server.base, Some(&server.url("/loop")), None));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("more than 10 redirects"),
        "{}",
        stderr(&out)
    );
}

/// A redirect that leaves https, or goes to http off the loopback, is refused (and said so, not as
/// "too many redirects"); a manifest URL that is http off the loopback is refused before anything.
#[test]
fn redirects_to_plain_http_and_http_manifest_urls_are_refused() {
    let (server, m, case) = served();
    // Nothing resolves under .invalid: were it followed, the error would be another one.
    server.route(
        "/to-http",
        Route::Redirect("http://mirror.example.invalid/ggml-base.bin".to_owned()),
    );
    case.write_manifest(&m.manifest(&server.base, Some(&server.url("/to-http")), None));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refused a redirect to http://mirror.example.invalid/ggml-base.bin"),
        "{err}"
    );
    assert!(!err.contains("more than 10 redirects"), "{err}");
    assert!(!case.installed("ggml-base.bin").exists());

    let case = Case::new();
    case.write_manifest(&m.manifest(
        &server.base,
        Some("http://mirror.example.invalid/ggml-base.bin"),
        None,
    ));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    assert!(stderr(&out).contains("is not an https URL"), "{}", stderr(&out));
}

#[test]
fn a_stalled_server_fails_within_the_timeout_with_a_clear_message() {
    let (server, m, _) = served();
    for (path, route) in [
        ("/stall-headers", Route::StallBeforeHeaders),
        (
            "/stall-body",
            Route::StallInBody {
                body: m.ggml.clone(),
                send: 1000,
            },
        ),
    ] {
        let url = server.route(path, route);
        let case = Case::new();
        case.write_manifest(&m.manifest(&server.base, Some(&url), None));
        let started = Instant::now();
        let out = case.models("fetch", &["--timeout", "1"]);
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{path}: {}", output_text(&out));
        // The idle timeout (1 s) ends it; the longest bound is the header wait, 2 × (connect + idle)
        // = 4 s; 3 s more for starting the binary on a loaded machine.
        let bound = Duration::from_secs(4 + 3);
        assert!(bound < WAIT / 2);
        assert!(took < bound, "{path}: took {took:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("{url}: no data for 1 s (the server stalled)")),
            "{path}: {err}"
        );
        assert!(!case.installed("ggml-base.bin").exists(), "{path}");
    }
}

#[test]
fn an_http_error_names_the_url() {
    let (server, m, case) = served();
    let url = server.url("/no/such/ggml-base.bin");
    case.write_manifest(&m.manifest(&server.base, Some(&url), None));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains(&format!("ggml-base.bin: {url}: HTTP 404 Not Found")),
        "{}",
        stderr(&out)
    );
    assert!(!case.installed("ggml-base.bin").exists());
    // Nothing listening: the connection error names the URL too.
    let closed = format!("http://127.0.0.1:{}/ggml-base.bin", common::free_port());
    let case = Case::new();
    case.write_manifest(&m.manifest(&server.base, Some(&closed), None));
    let out = case.models("fetch", &["--timeout", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        stderr(&out).contains(&format!("{closed}: cannot connect")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_part_file_is_resumed_with_a_range_request() {
    let (server, m, case) = served();
    case.write_manifest(&m.manifest(&server.base, None, None));
    std::fs::create_dir_all(case.models_dir()).unwrap();
    std::fs::write(case.installed("ggml-base.bin.part"), &m.ggml[..12_345]).unwrap();
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    assert!(!case.installed("ggml-base.bin.part").exists());
    let ggml: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/ggml-base.bin")
        .collect();
    assert_eq!(
        ggml,
        [Seen {
            path: "/ggml-base.bin".into(),
            range: Some("bytes=12345-".into())
        }]
    );
    assert!(stderr(&out).contains("resuming"), "{}", stderr(&out));

    // A server that answers a range with the whole file: the .part starts over, never appended to.
    server.route("/whole", Route::IgnoresRange(m.ggml.clone()));
    let case = Case::new();
    case.write_manifest(&m.manifest(&server.base, Some(&server.url("/whole")), None));
    std::fs::create_dir_all(case.models_dir()).unwrap();
    std::fs::write(case.installed("ggml-base.bin.part"), &m.ggml[..5_000]).unwrap();
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    assert!(stderr(&out).contains("starting over"), "{}", stderr(&out));

    // A cut download, then a second run: the rest is asked for and the file completes.
    server.route(
        "/flaky",
        Route::Cut {
            body: m.ggml.clone(),
            send: 40_000,
        },
    );
    let case = Case::new();
    case.write_manifest(&m.manifest(&server.base, Some(&server.url("/flaky")), None));
    assert_eq!(case.models("fetch", &[]).status.code(), Some(1));
    let have = std::fs::metadata(case.installed("ggml-base.bin.part"))
        .unwrap()
        .len();
    assert!(have > 0);
    server.route("/flaky", Route::File(m.ggml.clone()));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    let last = server
        .seen()
        .into_iter()
        .rev()
        .find(|s| s.path == "/flaky")
        .unwrap();
    assert_eq!(last.range, Some(format!("bytes={have}-")));
}

#[test]
fn from_dir_installs_archives_or_extracted_files_and_refuses_a_wrong_one() {
    let m = Models::new();
    // Every URL points at a port nobody listens on: nothing may be downloaded.
    let nowhere = format!("http://127.0.0.1:{}", common::free_port());
    let case = Case::new();
    case.write_manifest(&m.manifest(&nowhere, None, None));
    let from = case.path("copied");
    std::fs::create_dir_all(&from).unwrap();
    // The face models as the archive, the runtime as the extracted file, whisper as published.
    std::fs::write(from.join("buffalo_l.zip"), &m.zip).unwrap();
    std::fs::write(from.join("libonnxruntime.so.1.28.0"), &m.lib).unwrap();
    std::fs::write(from.join("ggml-base.bin"), &m.ggml).unwrap();
    // An archive download an earlier run left: of no use once its members are installed.
    std::fs::create_dir_all(case.models_dir()).unwrap();
    std::fs::write(case.installed("ort.tgz.part"), &m.tgz[..100]).unwrap();
    let from_arg = from.to_str().unwrap();
    let out = case.models("fetch", &["--from", from_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(case.listing(), ALL);
    assert_eq!(std::fs::read(case.installed("det_10g.onnx")).unwrap(), m.det);
    assert_eq!(
        std::fs::read(case.installed("libonnxruntime.so.1.28.0")).unwrap(),
        m.lib
    );
    assert!(stdout(&out).contains("[analysis.asr]"), "{}", stdout(&out));
    // The operator's files are left as they were.
    assert_eq!(std::fs::read(from.join("buffalo_l.zip")).unwrap(), m.zip);

    // A wrong file is refused and not installed; the copy is left alone; a missing one is named.
    let case = Case::new();
    case.write_manifest(&m.manifest(&nowhere, None, None));
    let mut wrong = m.ggml.clone();
    wrong[0] ^= 0xff;
    std::fs::write(from.join("ggml-base.bin"), &wrong).unwrap();
    std::fs::remove_file(from.join("libonnxruntime.so.1.28.0")).unwrap();
    let out = case.models("fetch", &["--from", from_arg]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(err.contains("ggml-base.bin: refused: SHA-256 is"), "{err}");
    assert!(
        err.contains(&format!(
            "libonnxruntime.so.1.28.0: not found: put {f}/libonnxruntime.so.1.28.0 or {f}/ort.tgz there",
            f = from.display()
        )),
        "{err}"
    );
    assert!(!case.installed("ggml-base.bin").exists());
    assert!(!case.installed("ggml-base.bin.part").exists());
    assert!(!case.installed("libonnxruntime.so.1.28.0").exists());
    assert_eq!(std::fs::read(from.join("ggml-base.bin")).unwrap(), wrong);
    // Only a missing file: exit 66.
    std::fs::write(from.join("ggml-base.bin"), &m.ggml).unwrap();
    let out = case.models("fetch", &["--from", from_arg]);
    assert_eq!(out.status.code(), Some(66), "{}", output_text(&out));
}

#[test]
fn an_unconfirmed_entry_prints_the_hash_it_got_and_pins_it() {
    let (server, m, case) = served();
    case.write_manifest(&m.manifest(&server.base, None, Some("confirmed = false\n".to_owned())));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = stdout(&out);
    let hash = sha256_hex(&m.ggml);
    assert!(text.contains(&format!("sha256 {hash} UNCONFIRMED")), "{text}");
    let pin = std::fs::read_to_string(case.installed("ggml-base.bin.sha256")).unwrap();
    assert_eq!(pin, format!("{hash}  ggml-base.bin\n"));
    // verify checks the pin: fine now, wrong after a change.
    assert_eq!(case.models("verify", &[]).status.code(), Some(0));
    let mut bytes = m.ggml.clone();
    bytes[7] ^= 1;
    std::fs::write(case.installed("ggml-base.bin"), &bytes).unwrap();
    let bad = case.models("verify", &[]);
    assert_eq!(bad.status.code(), Some(65), "{}", output_text(&bad));
    assert!(
        stdout(&bad).contains(&format!(
            "WRONG   ggml-base.bin: SHA-256 is {}",
            sha256_hex(&bytes)
        )),
        "{}",
        stdout(&bad)
    );
    // A manifest that pins a hash yet calls it unconfirmed is refused (exit 78).
    case.write_manifest(&m.manifest(
        &server.base,
        None,
        Some(format!("sha256 = \"{hash}\"\nconfirmed = false\n")),
    ));
    let out = case.models("verify", &[]);
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    assert!(
        stderr(&out).contains("confirmed = false takes no sha256"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_embedded_manifest_lists_the_real_files() {
    let case = Case::new();
    let mut cmd = Command::new(bin());
    cmd.args(["models", "verify", "--dir"]).arg(case.path("empty"));
    let out = run(cmd, case.tmp.path());
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
    let text = stdout(&out);
    for name in ["det_10g.onnx", "w600k_r50.onnx", "ggml-base.bin"] {
        assert!(text.contains(&format!("MISSING {name}")), "{text}");
    }
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert!(text.contains("MISSING libonnxruntime.so.1.28.0"), "{text}");
    }
}

#[test]
fn check_config_names_models_fetch_for_a_missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &str| {
        let path = dir.path().join("talkheadd.toml");
        std::fs::write(&path, format!("[gpu]\nvirtual = 1\n{config}")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&path).arg("check-config");
        run(cmd, dir.path())
    };
    let models = dir.path().join("models");
    let face = format!(
        "[analysis.face]\nbackend = \"onnx\"\ndetector_model = \"{m}/det_10g.onnx\"\n\
         recognizer_model = \"{m}/w600k_r50.onnx\"\nonnxruntime_library = \"{m}/libonnxruntime.so.1.28.0\"\n",
        m = models.display()
    );
    let out = check(&face);
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    let err = stderr(&out);
    for key in [
        "analysis.face.detector_model",
        "analysis.face.recognizer_model",
        "analysis.face.onnxruntime_library",
    ] {
        assert!(
            err.contains(&format!("key `{key}`: {}", models.display())),
            "{key}: {err}"
        );
    }
    assert!(err.contains("`talkheadd models fetch` installs it"), "{err}");
    // With the files there, the same configuration passes.
    std::fs::create_dir_all(&models).unwrap();
    for name in ["det_10g.onnx", "w600k_r50.onnx", "libonnxruntime.so.1.28.0"] {
        std::fs::write(models.join(name), b"x").unwrap();
    }
    let out = check(&face);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    // The whisper model: the configuration's own check names the command too.
    if cfg!(feature = "whisper") {
        let out = check(&format!(
            "[analysis.asr]\nbackend = \"whisper\"\nmodel = \"{}/ggml-base.bin\"\n",
            models.display()
        ));
        assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
        assert!(
            stderr(&out).contains("`talkheadd models fetch` installs ggml-base.bin"),
            "{}",
            stderr(&out)
        );
    }
}

/// A 206 shorter than asked (`bytes N-M/TOTAL` with M + 1 < TOTAL) continues the .part and the rest is
/// asked for; a 206 that does not start where the .part ends is never appended.
#[test]
fn short_and_misplaced_ranges_are_handled() {
    let (server, m, case) = served();
    let url = server.route(
        "/short",
        Route::ShortRanges {
            body: m.ggml.clone(),
            chunk: 30_000,
        },
    );
    case.write_manifest(&m.manifest(&server.base, Some(&url), None));
    std::fs::create_dir_all(case.models_dir()).unwrap();
    std::fs::write(case.installed("ggml-base.bin.part"), &m.ggml[..10_000]).unwrap();
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    let ranges: Vec<Option<String>> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/short")
        .map(|s| s.range)
        .collect();
    assert_eq!(
        ranges,
        ["bytes=10000-", "bytes=40000-", "bytes=70000-"].map(|r| Some(r.to_owned()))
    );

    let url = server.route("/wrong-start", Route::WrongStart(m.ggml.clone()));
    let case = Case::new();
    case.write_manifest(&m.manifest(&server.base, Some(&url), None));
    std::fs::create_dir_all(case.models_dir()).unwrap();
    std::fs::write(case.installed("ggml-base.bin.part"), &m.ggml[..5_000]).unwrap();
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(stderr(&out).contains("starting over"), "{}", stderr(&out));
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    let ranges: Vec<Option<String>> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/wrong-start")
        .map(|s| s.range)
        .collect();
    assert_eq!(ranges, [Some("bytes=5000-".to_owned()), None]);
}

/// A `.part` that is a symbolic link (planted by whoever can write the directory) is neither read as
/// the start of the download nor written through: it is replaced by a new file.
#[test]
fn a_symlinked_part_is_not_followed() {
    let (server, m, case) = served();
    case.write_manifest(&m.manifest(&server.base, None, None));
    std::fs::create_dir_all(case.models_dir()).unwrap();
    // The victim holds what the .part would resume from: were the link followed, the download would
    // resume at its end and append to it.
    let victim = case.path("victim");
    std::fs::write(&victim, &m.ggml[..20_000]).unwrap();
    std::os::unix::fs::symlink(&victim, case.installed("ggml-base.bin.part")).unwrap();
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(std::fs::read(&victim).unwrap(), &m.ggml[..20_000]);
    assert_eq!(std::fs::read(case.installed("ggml-base.bin")).unwrap(), m.ggml);
    let ggml: Vec<Seen> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == "/ggml-base.bin")
        .collect();
    assert_eq!(ggml.len(), 1);
    assert_eq!(ggml[0].range, None);
    // An installed file that is a link to /dev/zero is not read without end: it is replaced.
    std::fs::remove_file(case.installed("ggml-base.bin")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", case.installed("ggml-base.bin")).unwrap();
    let bad = case.models("verify", &[]);
    assert_eq!(bad.status.code(), Some(65), "{}", output_text(&bad));
    assert!(stdout(&bad).contains("not a regular file"), "{}", stdout(&bad));
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        !std::fs::symlink_metadata(case.installed("ggml-base.bin"))
            .unwrap()
            .is_symlink()
    );
}

/// A second run while one holds `<dir>/.lock` fails at once (exit 1) instead of writing to the same
/// `.part` files.
#[test]
fn a_second_run_is_refused_by_the_lock() {
    let (server, m, case) = served();
    case.write_manifest(&m.manifest(&server.base, None, None));
    std::fs::create_dir_all(case.models_dir()).unwrap();
    let lock = std::fs::File::create(case.installed(".lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    for sub in ["fetch", "verify"] {
        let started = Instant::now();
        let out = case.models(sub, &[]);
        assert_eq!(out.status.code(), Some(1), "{sub}: {}", output_text(&out));
        assert!(started.elapsed() < Duration::from_secs(10), "{sub}");
        assert!(
            stderr(&out).contains("another `talkheadd models` run is working in"),
            "{sub}: {}",
            stderr(&out)
        );
    }
    assert!(server.seen().is_empty());
    assert_eq!(case.listing(), Vec::<String>::new());
    drop(held);
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
}

/// The install directory is created 0755 and files installed 0644, whatever the umask (the daemon
/// runs as another user and must read them).
#[test]
fn modes_do_not_depend_on_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let (server, m, case) = served();
    case.write_manifest(&m.manifest(&server.base, None, None));
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "umask 077; exec \"$0\" \"$@\"",
        bin(),
        "models",
        "fetch",
        "--dir",
    ])
    .arg(case.models_dir())
    .arg("--manifest")
    .arg(case.path("models.toml"));
    let out = run(cmd, case.tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&case.models_dir()), 0o755);
    for name in ALL {
        assert_eq!(mode(&case.installed(name)), 0o644, "{name}");
    }
}

/// As root, `fetch` refuses a directory another user owns (that user could swap names for links
/// between two steps), naming the command to run instead. Runs only as root.
#[test]
fn root_refuses_a_directory_another_user_owns() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let m = Models::new();
    let case = Case::new();
    case.write_manifest(&m.manifest("http://127.0.0.1:9", None, None));
    std::fs::create_dir_all(case.models_dir()).unwrap();
    nix::unistd::chown(
        &case.models_dir(),
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();
    let out = case.models("fetch", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to run as root in a directory owned by"),
        "{err}"
    );
    assert!(err.contains("-- talkheadd models fetch`"), "{err}");
    assert_eq!(case.listing(), Vec::<String>::new());
    // verify only reads (never through a link, never unbounded): root may run it there.
    let out = case.models("verify", &[]);
    assert_eq!(out.status.code(), Some(65), "{}", output_text(&out));
}
