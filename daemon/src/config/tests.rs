//! Configuration loading and validation: every error names its file or variable, key and problem.

use super::*;
use std::collections::HashMap;
use std::io::Write;

const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

struct Fixture {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            env: HashMap::new(),
        }
    }

    /// Write the main file; its state file lives in the temp dir unless the text says otherwise.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    fn state(&self) -> String {
        format!(
            "[store]\npath = \"{}\"\n",
            self.dir.path().join("state.db").display()
        )
    }

    fn load(&self, path: &Path) -> Result<Loaded, ConfigError> {
        let env = |k: &str| self.env.get(k).cloned();
        load(&ConfigLocation::Explicit(path.to_path_buf()), &env)
    }
}

fn problems(err: ConfigError) -> Vec<ConfigProblem> {
    match err {
        ConfigError::Invalid(p) => p,
        other => panic!("expected Invalid, got {other}"),
    }
}

#[test]
fn no_file_at_all_gives_the_embedded_defaults() {
    let env = |_: &str| None;
    let loaded = load(
        &ConfigLocation::Default(PathBuf::from("/nonexistent/talkheadd.toml")),
        &env,
    )
    .unwrap();
    let s = loaded.settings;
    assert!(loaded.files.is_empty());
    assert_eq!(s.http.listen.to_string(), "127.0.0.1:8000");
    assert_eq!(s.store.path, PathBuf::from("./state.db"));
    assert_eq!(s.evaluation.warmup_count, 2);
    assert_eq!(s.evaluation.scoring_count, 5);
    assert_eq!(s.evaluation.ready_timeout.as_secs(), 600);
    assert_eq!(s.evaluation.challenge_timeout.as_secs(), 120);
    assert_eq!(s.evaluation.pull_timeout.as_secs(), 900);
    assert_eq!(s.auth.max_skew_secs, 120);
    assert!(s.auth.require_signature);
    assert_eq!(s.evaluation.challenges, ChallengeSource::Unconfigured);
    assert_eq!(s.gpu.mode, GpuMode::Nvml);
}

#[test]
fn cohort_normalisation_is_refused_by_check_config_naming_its_key() {
    let f = Fixture::new();
    let path = f.file(
        "c.toml",
        &format!("{}[scoring.efficiency]\nnormalisation = \"cohort\"\n", f.state()),
    );
    let problems = problems(f.load(&path).unwrap_err());
    assert!(
        problems
            .iter()
            .any(|p| p.key == "scoring.efficiency.normalisation" && p.problem.contains("not applied")),
        "{problems:?}"
    );
}

#[test]
fn the_store_section_is_what_the_store_opens_with() {
    let f = Fixture::new();
    let path = f.file(
        "c.toml",
        &format!(
            "{}map_size_mb = 16\nhistory_per_miner = 7\nmax_submissions = 9\n",
            f.state()
        ),
    );
    let options = f.load(&path).unwrap().settings.store.options();
    assert_eq!(
        (
            options.map_size_bytes,
            options.history_per_miner,
            options.max_submissions
        ),
        (16 << 20, 7, 9)
    );
}

#[test]
fn an_explicit_missing_file_is_an_error_naming_it() {
    let f = Fixture::new();
    let path = f.dir.path().join("absent.toml");
    let err = f.load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Unreadable { .. }));
    assert!(err.to_string().contains("absent.toml"), "{err}");
}

#[test]
fn every_design_key_is_accepted() {
    let f = Fixture::new();
    let challenges = f.dir.path().join("challenges");
    std::fs::create_dir(&challenges).unwrap();
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 65536\n\
         [store]\npath = \"{}\"\n\
         [auth]\nallowed_hotkeys = [\"{ALICE}\"]\nmax_skew_secs = 60\n\
         [evaluation]\nchallenges_dir = \"{}\"\nwarmup_count = 1\nscoring_count = 3\nready_timeout_secs = 30\n\
         challenge_timeout_secs = 20\npull_timeout_secs = 10\nreevaluate = {{ top_k = 5 }}\n\
         [docker]\nhost = \"unix:///run/docker.sock\"\n[gpu]\nvirtual = 2\n[admin]\nsocket = \"/run/t/admin.sock\"\n",
        f.dir.path().join("s.db").display(),
        challenges.display()
    );
    let s = f.load(&f.file("t.toml", &text)).unwrap().settings;
    assert_eq!(s.http.listen.port(), 9000);
    assert_eq!(s.http.max_body_bytes, 65536);
    assert_eq!(s.auth.allowed_hotkeys.len(), 1);
    assert_eq!(s.evaluation.challenges, ChallengeSource::Directory(challenges));
    assert_eq!(s.evaluation.scoring_count, 3);
    assert_eq!(s.gpu.mode, GpuMode::Virtual(2));
    assert_eq!(s.docker.host, "unix:///run/docker.sock");
    assert!(matches!(
        s.evaluation.reevaluate,
        crate::rounds::ReevaluatePolicy::TopK { .. }
    ));
}

#[test]
fn an_unknown_key_names_file_and_full_key() {
    let f = Fixture::new();
    let path = f.file("t.toml", "[http]\nlisten_addr = \"127.0.0.1:1\"\n");
    let err = f.load(&path).unwrap_err();
    let ConfigError::Syntax {
        path: p,
        key,
        message,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(p, &path);
    assert_eq!(key, "http.listen_addr");
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn a_wrong_type_names_the_key() {
    let f = Fixture::new();
    let path = f.file("t.toml", "[evaluation]\nready_timeout_secs = \"ten\"\n");
    let ConfigError::Syntax { key, .. } = f.load(&path).unwrap_err() else {
        panic!()
    };
    assert_eq!(key, "evaluation.ready_timeout_secs");
}

#[test]
fn not_toml_at_all_is_a_syntax_error() {
    let f = Fixture::new();
    let err = f.load(&f.file("t.toml", "[http\nlisten=")).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
}

#[test]
fn impossible_values_are_all_reported_at_once() {
    let f = Fixture::new();
    let text = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n[evaluation]\nready_timeout_secs = -5\nscoring_count = 0\n[gpu]\nvirtual = 0\n[auth]\nallowed_hotkeys = [\"5Grw\"]\n",
        f.state()
    );
    let path = f.file("t.toml", &text);
    let p = problems(f.load(&path).unwrap_err());
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "http.listen",
        "evaluation.ready_timeout_secs",
        "evaluation.scoring_count",
        "gpu.virtual",
        "auth.allowed_hotkeys[0]",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert!(p.iter().all(|p| p.origin == Origin::File(path.clone())));
    let text = ConfigError::Invalid(p).to_string();
    assert!(text.contains("must be between 1 and 86400 (got -5)"), "{text}");
    assert!(text.contains("t.toml: key `http.listen`: port 0"), "{text}");
}

#[test]
fn an_unwritable_state_directory_is_a_config_error() {
    let f = Fixture::new();
    let path = f.file("t.toml", "[store]\npath = \"/nonexistent-dir/state.db\"\n");
    let p = problems(f.load(&path).unwrap_err());
    assert_eq!(p[0].key, "store.path");
    assert!(p[0].problem.contains("/nonexistent-dir"), "{}", p[0].problem);
}

#[test]
fn reference_environment_variables_override_the_file() {
    let mut f = Fixture::new();
    let path = f.file("t.toml", "[http]\nlisten = \"127.0.0.2:8000\"\n");
    let state = f.dir.path().join("env.db");
    f.env.insert("PORT".into(), "9100".into());
    f.env.insert("STATE_FILE".into(), state.display().to_string());
    f.env
        .insert("SUBNET_API_URL".into(), "https://subnet.example/".into());
    let s = f.load(&path).unwrap().settings;
    assert_eq!(s.http.listen.to_string(), "127.0.0.2:9100");
    assert_eq!(s.store.path, state);
    assert_eq!(
        s.evaluation.challenges,
        ChallengeSource::SubnetApi("https://subnet.example".into())
    );
}

#[test]
fn a_bad_environment_value_names_the_variable() {
    let mut f = Fixture::new();
    let path = f.file("t.toml", &f.state());
    f.env.insert("PORT".into(), "80000".into());
    let err = f.load(&path).unwrap_err();
    assert!(err.to_string().starts_with("environment variable PORT"), "{err}");
    f.env.insert("PORT".into(), "1".into());
    f.env.insert("SUBNET_API_URL".into(), "ftp://x".into());
    let p = problems(f.load(&path).unwrap_err());
    assert_eq!(p[0].origin, Origin::Env("SUBNET_API_URL"));
}

#[test]
fn drop_ins_override_in_name_order_and_are_blamed_for_their_own_mistakes() {
    let f = Fixture::new();
    let path = f.file(
        "t.toml",
        &format!("{}[http]\nlisten = \"127.0.0.1:8001\"\n", f.state()),
    );
    f.file("t.toml.d/10-port.toml", "[http]\nlisten = \"127.0.0.1:8002\"\n");
    f.file(
        "t.toml.d/20-port.toml",
        "[http]\nlisten = \"127.0.0.1:8003\"\nmax_batch = 7\n",
    );
    f.file("t.toml.d/ignored.txt", "not toml");
    let loaded = f.load(&path).unwrap();
    assert_eq!(loaded.settings.http.listen.port(), 8003);
    assert_eq!(loaded.settings.http.max_batch, 7);
    assert_eq!(loaded.files.len(), 3);

    let bad = f.file("t.toml.d/30-bad.toml", "[http]\nmax_batch = 0\n");
    let p = problems(f.load(&path).unwrap_err());
    assert_eq!(p[0].origin, Origin::File(bad.clone()));
    f.file("t.toml.d/30-bad.toml", "[htp]\n");
    let ConfigError::Syntax { path: blamed, .. } = f.load(&path).unwrap_err() else {
        panic!()
    };
    assert_eq!(blamed, bad);
}

#[test]
fn unsigned_mode_is_refused_off_loopback() {
    let f = Fixture::new();
    let path = f.file(
        "t.toml",
        &format!(
            "{}[http]\nlisten = \"0.0.0.0:8000\"\n[auth]\nrequire_signature = false\n",
            f.state()
        ),
    );
    let p = problems(f.load(&path).unwrap_err());
    assert!(p.iter().any(|p| p.key == "auth.require_signature"), "{p:?}");
    let path = f.file(
        "u.toml",
        &format!("{}[auth]\nrequire_signature = false\n", f.state()),
    );
    assert!(!f.load(&path).unwrap().settings.auth.require_signature);
}

#[test]
fn print_config_is_valid_configuration_that_loads_back_identically() {
    let f = Fixture::new();
    let path = f.file(
        "t.toml",
        &format!(
            "{}[auth]\nallowed_hotkeys = [\"{ALICE}\"]\n[evaluation]\nreevaluate = {{ top_k = 3 }}\n",
            f.state()
        ),
    );
    let first = f.load(&path).unwrap().settings;
    let rendered = render_effective(&first);
    let again = f.load(&f.file("rendered.toml", &rendered)).unwrap().settings;
    assert_eq!(render_effective(&again), rendered);
    assert_eq!(again.auth.allowed_hotkeys, first.auth.allowed_hotkeys);
}

#[test]
fn urls_with_credentials_are_redacted() {
    assert_eq!(
        redact_url("https://user:pw@host.example/x"),
        "https://<redacted>@host.example/x"
    );
    assert_eq!(redact_url("https://host.example/a@b"), "https://host.example/a@b");
    assert_eq!(
        redact_url("unix:///var/run/docker.sock"),
        "unix:///var/run/docker.sock"
    );
}

#[test]
fn devices_and_health_keys_select_tune_and_print_back() {
    let f = Fixture::new();
    let path = f.file(
        "t.toml",
        &format!(
            "{}[gpu]\ndevices = [0, \"GPU-12345678-90ab-cdef-1234-567890abcdef\", \"3\"]\nquarantine_after_faults = 2\n\
             quarantine_secs = 30\nmax_temperature_c = 85\nvram_sample_hz = 200\nsame_model_per_round = false\n",
            f.state()
        ),
    );
    let s = f.load(&path).unwrap().settings;
    assert_eq!(
        s.gpu.devices,
        vec![
            GpuSelector::Index(0),
            GpuSelector::Uuid("GPU-12345678-90ab-cdef-1234-567890abcdef".into()),
            GpuSelector::Index(3)
        ]
    );
    assert_eq!(s.gpu.health.quarantine_after, 2);
    assert_eq!(s.gpu.health.quarantine_secs, 30.0);
    assert_eq!((s.gpu.max_temperature_c, s.gpu.vram_sample_hz), (85, 200));
    assert!(!s.gpu.same_model_per_round);
    let rendered = render_effective(&s);
    let again = f.load(&f.file("rendered.toml", &rendered)).unwrap().settings;
    assert_eq!(again.gpu.devices, s.gpu.devices);

    let bad = f.file(
        "bad.toml",
        &format!("{}[gpu]\ndevices = [\"all\"]\nvram_sample_hz = 10\n", f.state()),
    );
    let keys: Vec<String> = problems(f.load(&bad).unwrap_err())
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert!(keys.contains(&"gpu.devices".to_owned()), "{keys:?}");
    assert!(keys.contains(&"gpu.vram_sample_hz".to_owned()), "{keys:?}");
}

#[test]
fn the_onnx_face_backend_takes_its_files_and_prints_back() {
    let f = Fixture::new();
    let text = format!(
        "{}[analysis.face]\nbackend = \"onnx\"\ndetector_model = \"/m/det_10g.onnx\"\n\
         recognizer_model = \"/m/w600k_r50.onnx\"\nonnxruntime_library = \"/usr/lib/libonnxruntime.so\"\n\
         threads = 1\ndet_threshold = 0.6\n",
        f.state()
    );
    let s = f.load(&f.file("t.toml", &text)).unwrap().settings;
    let FaceBackend::Onnx(o) = &s.analysis.face.backend else {
        panic!("expected onnx, got {:?}", s.analysis.face.backend)
    };
    assert_eq!(o.detector_model, PathBuf::from("/m/det_10g.onnx"));
    assert_eq!(o.recognizer_model, PathBuf::from("/m/w600k_r50.onnx"));
    assert_eq!(o.onnxruntime_library, PathBuf::from("/usr/lib/libonnxruntime.so"));
    assert_eq!((o.threads, o.det_size, o.det_threshold), (1, 640, 0.6));
    let rendered = render_effective(&s);
    assert!(
        rendered.contains("[analysis.face]\nbackend = \"onnx\""),
        "{rendered}"
    );
    let again = f.load(&f.file("rendered.toml", &rendered)).unwrap().settings;
    assert_eq!(again.analysis.face, s.analysis.face);
    // The default is the builtin backend with Debian's cascade.
    let s = f.load(&f.file("d.toml", &f.state())).unwrap().settings;
    assert_eq!(s.analysis.face.backend, FaceBackend::Builtin);
    assert_eq!(s.analysis.face.cascade, PathBuf::from(defaults::FACE_CASCADE));
}

#[test]
fn onnx_face_problems_name_their_keys() {
    let f = Fixture::new();
    let text = format!(
        "{}[analysis.face]\nbackend = \"onnx\"\ndetector_model = \"det.onnx\"\nthreads = 0\n\
         det_size = 100\ndet_threshold = 1.5\n",
        f.state()
    );
    let p = problems(f.load(&f.file("t.toml", &text)).unwrap_err());
    let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
    for key in [
        "analysis.face.detector_model",
        "analysis.face.recognizer_model",
        "analysis.face.onnxruntime_library",
        "analysis.face.threads",
        "analysis.face.det_size",
        "analysis.face.det_threshold",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    let text = format!("{}[analysis.face]\nbackend = \"yunet\"\n", f.state());
    let p = problems(f.load(&f.file("b.toml", &text)).unwrap_err());
    assert_eq!(p[0].key, "analysis.face.backend");
    assert!(
        p[0].problem.contains("'yunet' is not builtin or onnx"),
        "{}",
        p[0].problem
    );
}

#[test]
fn the_old_flat_face_keys_still_work_but_not_beside_the_new_ones() {
    let f = Fixture::new();
    let text = format!(
        "{}[analysis]\nface_backend = \"builtin\"\nface_cascade = \"/c/haar.xml\"\n",
        f.state()
    );
    let s = f.load(&f.file("t.toml", &text)).unwrap().settings;
    assert_eq!(s.analysis.face.cascade, PathBuf::from("/c/haar.xml"));
    let text = format!(
        "{}[analysis]\nface_cascade = \"/c/haar.xml\"\n[analysis.face]\ncascade = \"/d/haar.xml\"\n",
        f.state()
    );
    let p = problems(f.load(&f.file("both.toml", &text)).unwrap_err());
    assert_eq!(p[0].key, "analysis.face_cascade");
}

#[test]
fn virtual_cuda_version_and_calibration_image_are_validated_and_print_back() {
    let f = Fixture::new();
    let image = format!("127.0.0.1:5000/calib/ref:v1@sha256:{}", "ab".repeat(32));
    let path = f.file(
        "t.toml",
        &format!(
            "{}[gpu]\nvirtual = 2\nvirtual_cuda_version = \"12.4\"\ncalibration_image = \"{image}\"\n",
            f.state()
        ),
    );
    let s = f.load(&path).unwrap().settings;
    assert_eq!(s.gpu.virtual_cuda_version.as_deref(), Some("12.4"));
    assert_eq!(
        s.gpu.calibration_image.as_ref().map(|i| i.as_str()),
        Some(image.as_str())
    );
    let again = f
        .load(&f.file("rendered.toml", &render_effective(&s)))
        .unwrap()
        .settings;
    assert_eq!(again.gpu.virtual_cuda_version, s.gpu.virtual_cuda_version);
    assert_eq!(again.gpu.calibration_image, s.gpu.calibration_image);

    // Unset by default; an unpinned image or a non-version is refused, naming the key.
    let plain = f.load(&f.file("plain.toml", &f.state())).unwrap().settings;
    assert_eq!(
        (plain.gpu.virtual_cuda_version, plain.gpu.calibration_image),
        (None, None)
    );
    let bad = f.file(
        "bad.toml",
        &format!(
            "{}[gpu]\nvirtual_cuda_version = \"12.4.1x\"\ncalibration_image = \"ref:latest\"\n",
            f.state()
        ),
    );
    let keys: Vec<String> = problems(f.load(&bad).unwrap_err())
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert!(keys.contains(&"gpu.virtual_cuda_version".to_owned()), "{keys:?}");
    assert!(keys.contains(&"gpu.calibration_image".to_owned()), "{keys:?}");
}

#[test]
fn the_speech_backend_is_a_table_and_whisper_needs_its_feature_and_model() {
    let f = Fixture::new();
    let state = f.state();
    // Default: none.
    let s = f.load(&f.file("none.toml", &state)).unwrap().settings;
    assert_eq!(s.analysis.asr, AsrBackend::None);
    assert!(render_effective(&s).contains("[analysis.asr]\nbackend = \"none\"\n"));

    // The former flat key is gone.
    let old = f.file(
        "old.toml",
        &format!("{state}[analysis]\nasr_backend = \"none\"\n"),
    );
    let err = f.load(&old).unwrap_err().to_string();
    assert!(err.contains("analysis.asr_backend`: unknown field"), "{err}");

    let bogus = f.file(
        "bogus.toml",
        &format!("{state}[analysis.asr]\nbackend = \"siri\"\n"),
    );
    let p = problems(f.load(&bogus).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "analysis.asr.backend");
    assert!(p[0].problem.contains("none, whisper"), "{}", p[0].problem);

    let stray = f.file(
        "stray.toml",
        &format!("{state}[analysis.asr]\nmodel = \"/m.bin\"\n"),
    );
    let p = problems(f.load(&stray).unwrap_err());
    assert_eq!(p[0].key, "analysis.asr.model", "{p:?}");
    let stray = f.file(
        "stray-timeout.toml",
        &format!("{state}[analysis.asr]\ntimeout_secs = 5\n"),
    );
    let p = problems(f.load(&stray).unwrap_err());
    assert_eq!(p[0].key, "analysis.asr.timeout_secs", "{p:?}");

    let model = f.file("ggml-tiny.bin", "not checked here");
    let whisper = f.file(
        "whisper.toml",
        &format!(
            "{state}[analysis.asr]\nbackend = \"whisper\"\nmodel = \"{}\"\n",
            model.display()
        ),
    );
    let missing = f.file(
        "missing.toml",
        &format!("{state}[analysis.asr]\nbackend = \"whisper\"\nmodel = \"/nonexistent/m.bin\"\n"),
    );
    let no_model = f.file(
        "nomodel.toml",
        &format!("{state}[analysis.asr]\nbackend = \"whisper\"\n"),
    );
    if cfg!(feature = "whisper") {
        let s = f.load(&whisper).unwrap().settings;
        assert_eq!(
            s.analysis.asr,
            AsrBackend::Whisper {
                model: model.clone(),
                timeout: std::time::Duration::from_secs(120),
            }
        );
        let rendered = render_effective(&s);
        assert!(rendered.contains("backend = \"whisper\"\nmodel = "), "{rendered}");
        assert!(rendered.contains("\ntimeout_secs = 120\n"), "{rendered}");
        let bounded = f.file(
            "bounded.toml",
            &format!(
                "{state}[analysis.asr]\nbackend = \"whisper\"\nmodel = \"{}\"\ntimeout_secs = 0\n",
                model.display()
            ),
        );
        let p = problems(f.load(&bounded).unwrap_err());
        assert_eq!(p[0].key, "analysis.asr.timeout_secs", "{p:?}");
        let p = problems(f.load(&missing).unwrap_err());
        assert_eq!(p[0].key, "analysis.asr.model");
        assert!(p[0].problem.contains("not a readable file"), "{p:?}");
    } else {
        // Asking for whisper in a build without it names the feature.
        let p = problems(f.load(&whisper).unwrap_err());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "analysis.asr.backend");
        assert!(
            p[0].problem.contains("cargo feature `whisper`"),
            "{}",
            p[0].problem
        );
    }
    let p = problems(f.load(&no_model).unwrap_err());
    assert!(
        p.iter()
            .any(|p| p.key == "analysis.asr.model" && p.problem.contains("ggml")),
        "{p:?}"
    );
}

#[test]
fn a_plain_http_subnet_api_is_refused_unless_loopback_or_explicitly_accepted() {
    let f = Fixture::new();
    let with = |url: &str, extra: &str| {
        let text = format!(
            "{}[evaluation]\nsubnet_api_url = \"{url}\"\nsigning_key_file = \"/etc/talkheadd/hotkey.json\"\n{extra}",
            f.state()
        );
        f.load(&f.file("api.toml", &text))
    };
    for url in [
        "http://10.0.0.1:8000/sn108",
        "http://api.example.org",
        "http://127.0.0.1.example.org:80",
        "http://user@127.0.0.1@evil.example.org",
        // A backslash ends the host for the HTTP client (WHATWG URL parsing): the host is
        // evil.example.org, whatever a split on '@' would say (TOML escapes the backslash).
        "http://evil.example.org\\\\@127.0.0.1/",
    ] {
        let p = problems(with(url, "").unwrap_err());
        let p = p
            .iter()
            .find(|p| p.key == "evaluation.subnet_api_url")
            .unwrap_or_else(|| panic!("{url}: {p:?}"));
        assert!(
            p.problem.contains("clear text") && p.problem.contains("subnet_api_allow_insecure"),
            "{url}: {}",
            p.problem
        );
    }
    for url in [
        "https://api.example.org",
        "http://127.0.0.1:8000",
        "http://127.8.9.10/api",
        "http://localhost:9000",
        "http://[::1]:8000/x",
    ] {
        let s = with(url, "").unwrap_or_else(|e| panic!("{url}: {e}")).settings;
        assert_eq!(
            s.evaluation.challenges,
            ChallengeSource::SubnetApi(url.to_owned()),
            "{url}"
        );
    }
    let s = with("http://10.0.0.1:8000/sn108", "subnet_api_allow_insecure = true\n")
        .unwrap()
        .settings;
    assert!(s.evaluation.subnet_api_allow_insecure);
    assert_eq!(
        s.evaluation.challenges,
        ChallengeSource::SubnetApi("http://10.0.0.1:8000/sn108".into())
    );
    // print-config says so.
    let printed = render_effective(&s);
    assert!(printed.contains("subnet_api_allow_insecure = true"), "{printed}");
}

#[test]
fn analysis_conformance_is_strict_by_default_penalty_on_request_and_nothing_else() {
    use crate::analysis::decode::Conformance;
    let f = Fixture::new();
    let default = f.file("d.toml", &f.state());
    let settings = f.load(&default).unwrap().settings;
    assert_eq!(settings.analysis.conformance, Conformance::Strict);
    let penalty = f.file(
        "p.toml",
        &format!("{}[analysis]\nconformance = \"penalty\"\n", f.state()),
    );
    let settings = f.load(&penalty).unwrap().settings;
    assert_eq!(settings.analysis.conformance, Conformance::Penalty);
    // print-config writes it, and it loads back.
    assert!(render_effective(&settings).contains("[analysis]\nconformance = \"penalty\""));
    let lenient = f.file(
        "l.toml",
        &format!("{}[analysis]\nconformance = \"lenient\"\n", f.state()),
    );
    let p = problems(f.load(&lenient).unwrap_err());
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "analysis.conformance");
    assert!(
        p[0].problem.contains("'lenient' is not strict"),
        "{}",
        p[0].problem
    );
}

/// A Ray coordinator's `[cluster]` table with `extra` keys.
fn ray_cluster(extra: &str) -> String {
    format!(
        "[cluster]\nengine = \"ray\"\nray_address = \"http://10.0.0.1:8265/\"\n\
         ray_token_file = \"/etc/talkheadd/ray-token\"\nlisten = \"10.0.0.2:8790\"\n\
         advertise_url = \"http://10.0.0.2:8790\"\n{extra}"
    )
}

#[test]
fn the_cluster_engine_is_local_by_default_and_ray_takes_its_keys_and_prints_back() {
    let f = Fixture::new();
    let s = f.load(&f.file("local.toml", &f.state())).unwrap().settings;
    assert_eq!(s.cluster.engine, ClusterEngine::Local);
    assert!(render_effective(&s).contains("[cluster]\nengine = \"local\"\n"));

    let text = format!(
        "{}{}",
        f.state(),
        ray_cluster(
            "max_attempts = 5\njob_cpus = 2.5\ngpu_model_resource = \"gpu-model-h100\"\nmax_jobs = 8\n\
             max_video_bytes = 1048576\nmax_report_bytes = 131072\n"
        )
    );
    let s = f.load(&f.file("ray.toml", &text)).unwrap().settings;
    let c = &s.cluster;
    assert_eq!(c.engine, ClusterEngine::Ray);
    assert_eq!(c.ray_address.as_deref(), Some("http://10.0.0.1:8265"));
    assert_eq!(
        c.ray_token,
        Some(crate::challenges::KeySource::File(PathBuf::from(
            "/etc/talkheadd/ray-token"
        )))
    );
    assert_eq!(c.listen, "10.0.0.2:8790".parse().unwrap());
    assert_eq!(c.advertise_url.as_deref(), Some("http://10.0.0.2:8790"));
    assert_eq!((c.max_attempts, c.job_cpus, c.max_jobs), (5, 2.5, 8));
    assert_eq!(c.gpu_model_resource.as_deref(), Some("gpu-model-h100"));
    assert_eq!((c.max_video_bytes, c.max_report_bytes), (1 << 20, 128 << 10));
    // Printed back, it loads back the same (the token's source, never a token).
    let rendered = render_effective(&s);
    let again = f.load(&f.file("rendered.toml", &rendered)).unwrap().settings;
    assert_eq!(render_effective(&again), rendered);

    // Defaults, and the credential instead of the file.
    let text = format!(
        "{}{}",
        f.state(),
        ray_cluster("").replace(
            "ray_token_file = \"/etc/talkheadd/ray-token\"",
            "ray_token_credential = \"ray-token\""
        )
    );
    let c = f.load(&f.file("cred.toml", &text)).unwrap().settings.cluster;
    assert_eq!(
        c.ray_token,
        Some(crate::challenges::KeySource::Credential("ray-token".into()))
    );
    assert_eq!((c.max_attempts, c.job_cpus, c.max_jobs), (3, 1.0, 16));
    assert_eq!((c.max_video_bytes, c.max_report_bytes), (256 << 20, 4 << 20));
    assert_eq!(c.gpu_model_resource, None);
}

#[test]
fn cluster_problems_name_their_keys() {
    let f = Fixture::new();
    let keys_of = |text: &str, name: &str| -> Vec<String> {
        let err = f
            .load(&f.file(name, &format!("{}{text}", f.state())))
            .unwrap_err();
        problems(err).into_iter().map(|p| p.key).collect()
    };
    // The Ray engine needs its address, token and advertised URL.
    let keys = keys_of("[cluster]\nengine = \"ray\"\n", "bare.toml");
    for key in [
        "cluster.ray_address",
        "cluster.ray_token_file",
        "cluster.advertise_url",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    assert_eq!(
        keys_of("[cluster]\nengine = \"k8s\"\n", "engine.toml"),
        ["cluster.engine"]
    );
    // Ray keys under the local engine are a half-made change.
    assert_eq!(
        keys_of(
            "[cluster]\nmax_jobs = 4\nadvertise_url = \"http://10.0.0.2:8790\"\n",
            "local.toml"
        ),
        ["cluster.advertise_url", "cluster.max_jobs"]
    );
    let bad = [
        ("ray_address = \"ftp://x\"\n", "cluster.ray_address"),
        ("listen = \"10.0.0.2:0\"\n", "cluster.listen"),
        ("listen = \"nowhere\"\n", "cluster.listen"),
        ("max_attempts = 0\n", "cluster.max_attempts"),
        ("job_cpus = 0.0\n", "cluster.job_cpus"),
        ("max_jobs = 0\n", "cluster.max_jobs"),
        ("gpu_model_resource = \"a b\"\n", "cluster.gpu_model_resource"),
        ("max_video_bytes = 10\n", "cluster.max_video_bytes"),
        ("max_report_bytes = 10\n", "cluster.max_report_bytes"),
        ("ray_token_credential = \"t\"\n", "cluster.ray_token_file"),
    ];
    for (i, (line, key)) in bad.iter().enumerate() {
        let text = ray_cluster(line)
            .replace(
                "ray_address = \"http://10.0.0.1:8265/\"\n",
                if line.starts_with("ray_address") {
                    ""
                } else {
                    "ray_address = \"http://10.0.0.1:8265/\"\n"
                },
            )
            .replace(
                "listen = \"10.0.0.2:8790\"\n",
                if line.starts_with("listen") {
                    ""
                } else {
                    "listen = \"10.0.0.2:8790\"\n"
                },
            );
        assert_eq!(keys_of(&text, &format!("bad{i}.toml")), [*key], "{line}");
    }
    // An advertised URL that could smuggle words into the job's entrypoint.
    let text = ray_cluster("").replace("http://10.0.0.2:8790\"", "http://10.0.0.2:8790/;reboot\"");
    assert_eq!(keys_of(&text, "advertise.toml"), ["cluster.advertise_url"]);
    // Calibration runs on this host's GPUs: not with the Ray engine.
    let image = format!("127.0.0.1:5000/calib@sha256:{}", "e".repeat(64));
    let text = format!("[gpu]\ncalibration_image = \"{image}\"\n{}", ray_cluster(""));
    assert_eq!(keys_of(&text, "calib.toml"), ["gpu.calibration_image"]);
}
