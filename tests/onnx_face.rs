//! The `onnx` face backend end to end through a real ONNX Runtime: SCRFD decoding, ArcFace alignment
//! and embedding, and the identity component in `insightface` mode.
//!
//! Needs what `tests/setup.sh` prepares in `$TALKHEAD_ONNX_TEST_DIR` (default
//! `/opt/talkhead-test/onnx`): `det_10g_test.onnx` and `w600k_r50_test.onnx` written by
//! `tests/onnx/make_models.py` (the real buffalo_l signatures, outputs that are simple functions of the
//! input; see that script), and `libonnxruntime.so` from the `onnxruntime` wheel. Without them every
//! test here fails, naming the set-up step: run `tests/setup.sh`, then
//! `cargo test -p talkheadd --test onnx_face`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::onnx::{config, test_dir};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use talkheadd::analysis::components::{
    AnalysisContext, AnalysisOptions, Frame, IdentityBackend, IdentityError, IdentityInput, Media,
    analyse_with,
};
use talkheadd::analysis::face::{
    ArcFaceIdentity, FaceDetector, OnnxFaceBackend, OnnxLoadError, track_largest,
};
use talkheadd::config::{self, ConfigLocation, FaceBackend, Settings};
use talkheadd::scoring::IdentityMode;

/// The test models' constants (tests/onnx/make_models.py): box distances and keypoint offsets in
/// stride units, and the score of a cell full of red.
const BOX: [f32; 4] = [1.0, 1.5, 2.0, 2.5];
const KPS: [f32; 10] = [0.0, 0.0, 1.0, 0.0, 0.5, 0.6, 0.1, 1.1, 0.9, 1.1];

fn backend() -> Arc<OnnxFaceBackend> {
    static BACKEND: OnceLock<Arc<OnnxFaceBackend>> = OnceLock::new();
    BACKEND
        .get_or_init(|| Arc::new(OnnxFaceBackend::load(&config()).unwrap()))
        .clone()
}

/// A 1280×720 frame of colour (0, g, b) with, when `face` is set, the 64×64 block at (640, 384)
/// coloured `face` (its R channel is what the test detector sees).
fn frame(g: u8, b: u8, face: Option<[u8; 3]>) -> Frame {
    let (w, h) = (1280u32, 720u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let inside = (640..704).contains(&x) && (384..448).contains(&y);
            match face {
                Some(px) if inside => rgb.extend(px),
                _ => rgb.extend([0, g, b]),
            }
        }
    }
    Frame::rgb(w, h, rgb)
}

#[test]
fn scrfd_decodes_letterboxed_anchors_to_frame_pixels() {
    let backend = backend();
    let dets = backend
        .detect_faces(&frame(255, 255, Some([255, 255, 255])))
        .unwrap();
    assert_eq!(dets.len(), 1, "two anchors of one cell, merged by NMS: {dets:?}");
    let d = dets[0];
    // 1280×720 letterboxed into 640×640 at scale 0.5: the block fills stride-32 cell (x 10, y 6),
    // anchor centre (320, 192). Box = centre ∓ BOX·32, keypoints = centre + KPS·32, then ÷ 0.5.
    let (cx, cy, s, scale) = (320.0f32, 192.0f32, 32.0f32, 0.5f32);
    let expect_box = [
        (cx - BOX[0] * s) / scale,
        (cy - BOX[1] * s) / scale,
        (cx + BOX[2] * s) / scale,
        (cy + BOX[3] * s) / scale,
    ];
    assert_eq!(expect_box, [576.0, 288.0, 768.0, 544.0]);
    for (got, want) in d.bbox.iter().zip(expect_box) {
        assert!((got - want).abs() < 1e-3, "box {:?} vs {expect_box:?}", d.bbox);
    }
    for (i, kp) in d.kps.iter().enumerate() {
        let want = [(cx + KPS[2 * i] * s) / scale, (cy + KPS[2 * i + 1] * s) / scale];
        assert!(
            (kp[0] - want[0]).abs() < 1e-3 && (kp[1] - want[1]).abs() < 1e-3,
            "kp {i}: {kp:?} vs {want:?}"
        );
    }
    // sigmoid(20 · ((255 − 127.5)/128 − 0.5)): the mean of the cell's R plane, normalised as SCRFD's.
    let want_score = 1.0 / (1.0 + (-20.0f32 * ((255.0 - 127.5) / 128.0 - 0.5)).exp());
    assert!((d.score - want_score).abs() < 1e-5, "{} vs {want_score}", d.score);

    // The same through the FaceDetector seam, with landmarks for alignment.
    let boxes = backend.detect(&frame(255, 255, Some([255, 0, 0])));
    assert_eq!(boxes.len(), 1);
    assert_eq!(boxes[0].landmarks.map(|l| l.len()), Some(5));
    assert_eq!(backend.name(), "scrfd");
}

#[test]
fn the_detector_sees_rgb_not_bgr() {
    let backend = backend();
    // The test detector reads input channel 0 only: a red block is a face, a blue one is not. Fed BGR
    // (the reference's bug, docs/reference.md#weakness-11), it would be the other way round.
    assert_eq!(
        backend
            .detect_faces(&frame(0, 0, Some([255, 0, 0])))
            .unwrap()
            .len(),
        1
    );
    assert!(
        backend
            .detect_faces(&frame(0, 0, Some([0, 0, 255])))
            .unwrap()
            .is_empty()
    );
    assert!(backend.detect_faces(&frame(0, 0, None)).unwrap().is_empty());
}

#[test]
fn arcface_similarity_between_reference_and_frames() {
    let backend = backend();
    let identity = ArcFaceIdentity::new(backend.clone());
    // A "person" is a (G, B) colour over the whole frame; the face block adds red only.
    let person = |g: u8, b: u8| frame(g, b, Some([255, g, b]));
    let reference = person(255, 255);
    // The test recogniser's embedding is (mean G, mean B) of the aligned crop, normalised as ArcFace
    // input: the crop lies inside the frame, so a (255, 255) person embeds as (1, 1), (255, 0) as
    // (1, −1), (255, 128) as (1, 0.5/127.5).
    let frames = vec![
        person(255, 255),
        person(255, 255),
        person(255, 0),
        person(255, 128),
        frame(255, 255, None),
    ];
    let faces = track_largest(backend.as_ref(), &frames);
    assert_eq!(faces.iter().filter(|f| f.is_some()).count(), 4);
    let hists = vec![None; frames.len()];
    let input = IdentityInput {
        reference: &reference,
        frames: &frames,
        faces: &faces,
        frame_histograms: &hists,
    };
    let sims = identity.similarities(&input).unwrap();
    let b = 0.5f64 / 127.5;
    let partial = (1.0 + b) / (2f64.sqrt() * (1.0 + b * b).sqrt());
    let want = [1.0, 1.0, 0.0, partial, 0.0];
    for (got, want) in sims.iter().zip(want) {
        assert!((got - want).abs() < 1e-5, "{sims:?} vs {want}");
    }
    assert_eq!(identity.mode(), IdentityMode::Insightface);

    // A reference without a face: the reference's insightface_no_ref_face, an explicit error.
    let faceless = frame(255, 255, None);
    let input = IdentityInput {
        reference: &faceless,
        ..input
    };
    assert!(matches!(
        identity.similarities(&input),
        Err(IdentityError::ReferenceUnusable(_))
    ));
}

#[test]
fn the_analysis_reports_insightface_identity_and_detect_ratio() {
    let backend = backend();
    let identity = ArcFaceIdentity::new(backend.clone());
    let person = |g: u8, b: u8| frame(g, b, Some([255, g, b]));
    let reference = person(255, 255);
    let frames: Vec<Frame> = (0..8)
        .map(|i| match i {
            3 => person(255, 0),
            7 => frame(255, 255, None),
            _ => person(255, 255),
        })
        .collect();
    let audio = vec![0.0f32; 16_000];
    let media = Media {
        frames: &frames,
        fps: 25.0,
        video_audio: &audio,
        source_audio: &audio,
        reference_face: &reference,
    };
    let context = AnalysisContext {
        identity: &identity,
        transcript: None,
        hypothesis: None,
        options: AnalysisOptions::default(),
    };
    let a = analyse_with(&media, backend.as_ref(), &context);
    assert_eq!(a.debug.detector, "scrfd");
    assert_eq!(a.debug.identity_backend, "arcface");
    assert_eq!(a.components.identity_mode, IdentityMode::Insightface);
    assert_eq!(a.debug.frames_with_face, 7);
    assert!((a.components.face_detect_ratio - 7.0 / 8.0).abs() < 1e-12);
    // Similarities 1 ×6, 0 ×2: mean 0.75, p10 (numpy linear) 0 → 0.75·0.75 + 0.25·0 = 0.5625.
    assert!(
        (a.components.identity - 0.5625).abs() < 1e-5,
        "{}",
        a.components.identity
    );
    assert!(a.debug.identity.error.is_none());
}

#[test]
fn load_failures_name_their_key() {
    // Make sure the good library is the process's one, then break one file at a time.
    let good = config();
    backend();
    let mut c = good.clone();
    c.detector_model = good.recognizer_model.clone();
    let e = OnnxFaceBackend::load(&c).unwrap_err();
    assert!(matches!(e, OnnxLoadError::Detector { .. }), "{e}");
    assert!(e.to_string().starts_with("analysis.face.detector_model "), "{e}");

    let mut c = good.clone();
    c.recognizer_model = good.detector_model.clone();
    let e = OnnxFaceBackend::load(&c).unwrap_err();
    assert!(
        e.to_string().starts_with("analysis.face.recognizer_model "),
        "{e}"
    );

    let mut c = good.clone();
    c.recognizer_model = test_dir().join("missing.onnx");
    let e = OnnxFaceBackend::load(&c).unwrap_err();
    assert!(e.to_string().contains("no such file"), "{e}");

    let mut c = good.clone();
    c.onnxruntime_library = good.detector_model.clone();
    let e = OnnxFaceBackend::load(&c).unwrap_err();
    assert!(
        e.to_string().starts_with("analysis.face.onnxruntime_library "),
        "{e}"
    );
}

/// Settings read by talkheadd's configuration loader from a file whose `[analysis.face]` table points
/// at the test models and adds `face_keys`; `analysis_keys` go in `[analysis]` (the old flat names).
fn settings_from_file(dir: &Path, analysis_keys: &str, face_keys: &str) -> Settings {
    let models = test_dir();
    let file = dir.join("talkheadd.toml");
    std::fs::write(
        &file,
        format!(
            "[store]\npath = \"{}\"\n[analysis]\n{analysis_keys}\n[analysis.face]\n\
             onnxruntime_library = \"{}\"\ndetector_model = \"{}\"\nrecognizer_model = \"{}\"\n{face_keys}\n",
            dir.join("state.db").display(),
            models.join("libonnxruntime.so").display(),
            models.join("det_10g_test.onnx").display(),
            models.join("w600k_r50_test.onnx").display(),
        ),
    )
    .unwrap();
    config::load(&ConfigLocation::Explicit(file), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"))
        .settings
}

/// The backend the daemon would load from `settings` (what `default_analyzer` does with it).
fn backend_of(settings: &Settings) -> OnnxFaceBackend {
    let FaceBackend::Onnx(onnx) = &settings.analysis.face.backend else {
        panic!(
            "expected the onnx backend, got {:?}",
            settings.analysis.face.backend
        )
    };
    OnnxFaceBackend::load(onnx).unwrap()
}

/// A 1280×720 black frame with a `side`×`side` block of red `r` at (640, 384).
fn red_block(side: u32, r: u8) -> Frame {
    let (w, h) = (1280u32, 720u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let inside = (640..640 + side).contains(&x) && (384..384 + side).contains(&y);
            rgb.extend(if inside { [r, 0, 0] } else { [0, 0, 0] });
        }
    }
    Frame::rgb(w, h, rgb)
}

/// `analysis.face.backend = "onnx"` (and its old name `analysis.face_backend`) in a configuration
/// file gives the daemon's analyser SCRFD detection with ArcFace identity, where the default is the
/// Haar detector with the histogram identity. `analysis.face.threads = 3` reaches the sessions,
/// which load and detect; the intra-op thread count changes no result, so nothing else about it is
/// observable here.
#[tokio::test]
async fn the_face_backend_key_picks_scrfd_and_arcface_for_the_daemons_analyser() {
    let dir = tempfile::tempdir().unwrap();
    backend(); // this process's ONNX Runtime is the test one
    for (analysis_keys, face_keys) in [
        ("", "backend = \"onnx\"\nthreads = 3"),
        ("face_backend = \"onnx\"", "threads = 3"),
    ] {
        let settings = settings_from_file(dir.path(), analysis_keys, face_keys);
        let analyzer = talkheadd::analysis::default_analyzer(&settings.analysis)
            .await
            .unwrap();
        let described = analyzer.describe();
        assert!(
            described.contains("scrfd face detector") && described.contains("arcface identity"),
            "{analysis_keys} {face_keys}: {described}"
        );
        let FaceBackend::Onnx(onnx) = &settings.analysis.face.backend else {
            unreachable!()
        };
        assert_eq!(onnx.threads, 3);
        let dets = backend_of(&settings).detect_faces(&red_block(64, 255)).unwrap();
        assert_eq!(dets.len(), 1, "{dets:?}");
    }
    // Without the key: the builtin backend (Debian's cascade, as tests/setup.sh installs it).
    let settings = settings_from_file(dir.path(), "", "");
    assert_eq!(settings.analysis.face.backend, FaceBackend::Builtin);
    let analyzer = talkheadd::analysis::default_analyzer(&settings.analysis)
        .await
        .unwrap();
    let described = analyzer.describe();
    assert!(
        described.contains("haar face detector") && !described.contains("arcface"),
        "{described}"
    );
}

/// `analysis.face.det_size` is the side of the detector input when the model's is dynamic (det_10g's
/// and the test model's are). At 320 a 1280×720 frame is scaled by 0.25 instead of 0.5: a 128-pixel
/// face fills one stride-32 cell and is found at the same place (its left eye, keypoint offset 0, is
/// the anchor centre (640, 384) in frame pixels at both sizes), while a 64-pixel face covers only a
/// quarter of a cell and is lost. The test model's box distances are fixed in stride units, so the box
/// in frame pixels is 32·BOX/scale: twice as large at 320, which pins the input size too.
#[test]
fn det_size_from_the_configuration_sets_the_detector_input() {
    let dir = tempfile::tempdir().unwrap();
    backend();
    let at_640 = backend_of(&settings_from_file(dir.path(), "", "backend = \"onnx\""));
    let at_320 = backend_of(&settings_from_file(
        dir.path(),
        "",
        "backend = \"onnx\"\ndet_size = 320",
    ));
    assert_eq!(at_640.det_input_size(), (640, 640));
    assert_eq!(at_320.det_input_size(), (320, 320));

    let eye_at_anchor = |d: &&talkheadd::analysis::face::scrfd::Detection| {
        (d.kps[0][0] - 640.0).abs() < 1e-3 && (d.kps[0][1] - 384.0).abs() < 1e-3
    };
    let big = red_block(128, 255);
    let found_640 = at_640.detect_faces(&big).unwrap();
    let d640 = found_640
        .iter()
        .find(eye_at_anchor)
        .unwrap_or_else(|| panic!("{found_640:?}"));
    let found_320 = at_320.detect_faces(&big).unwrap();
    assert_eq!(found_320.len(), 1, "{found_320:?}");
    let d320 = found_320
        .iter()
        .find(eye_at_anchor)
        .unwrap_or_else(|| panic!("{found_320:?}"));
    let box_at = |scale: f32| {
        let (cx, cy, s) = (640.0 * scale, 384.0 * scale, 32.0);
        [
            (cx - BOX[0] * s) / scale,
            (cy - BOX[1] * s) / scale,
            (cx + BOX[2] * s) / scale,
            (cy + BOX[3] * s) / scale,
        ]
    };
    for (d, scale) in [(d640, 0.5), (d320, 0.25)] {
        for (got, want) in d.bbox.iter().zip(box_at(scale)) {
            assert!((got - want).abs() < 1e-3, "scale {scale}: {:?}", d.bbox);
        }
    }
    assert_eq!(box_at(0.25), [512.0, 192.0, 896.0, 704.0]);

    let small = red_block(64, 255);
    assert_eq!(at_640.detect_faces(&small).unwrap().len(), 1);
    assert!(at_320.detect_faces(&small).unwrap().is_empty());
}

/// `analysis.face.det_threshold` reaches the decoder: a face scoring about 0.52 (a cell of red 192:
/// sigmoid(20 · ((192 − 127.5)/128 − 0.5))) is found at 0.15 and at the default 0.5 but not at 0.95,
/// while a full-red face (0.99995) passes all three.
#[test]
fn det_threshold_from_the_configuration_drops_weaker_faces() {
    let dir = tempfile::tempdir().unwrap();
    backend();
    let at = |threshold: &str| {
        backend_of(&settings_from_file(
            dir.path(),
            "",
            &format!("backend = \"onnx\"\n{threshold}"),
        ))
    };
    let (low, default, high) = (at("det_threshold = 0.15"), at(""), at("det_threshold = 0.95"));
    let weak = red_block(64, 192);
    let score = 1.0 / (1.0 + (-20.0f32 * ((192.0 - 127.5) / 128.0 - 0.5)).exp());
    assert!((0.5..0.55).contains(&score), "{score}");
    for b in [&low, &default] {
        let dets = b.detect_faces(&weak).unwrap();
        assert_eq!(dets.len(), 1, "{dets:?}");
        assert!((dets[0].score - score).abs() < 1e-4, "{dets:?}");
    }
    assert!(high.detect_faces(&weak).unwrap().is_empty());
    let strong = red_block(64, 255);
    for b in [&low, &default, &high] {
        assert_eq!(b.detect_faces(&strong).unwrap().len(), 1);
    }
}
