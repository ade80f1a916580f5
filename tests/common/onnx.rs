//! The `onnx` face backend's test set-up, shared by `tests/onnx_face.rs` and
//! `tests/insightface_parity.rs`: the generated models and the ONNX Runtime library `tests/setup.sh`
//! puts in `$TALKHEAD_ONNX_TEST_DIR` (default `/opt/talkhead-test/onnx`).

use std::path::PathBuf;
use talkheadd::analysis::face::OnnxFaceConfig;

/// Where `tests/setup.sh` wrote the test models and linked the library.
pub fn test_dir() -> PathBuf {
    std::env::var_os("TALKHEAD_ONNX_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/talkhead-test/onnx"))
}

/// The backend's configuration on the test models (one thread, det_size 640, threshold 0.5, as
/// buffalo_l's defaults); a missing file fails with what to run.
pub fn config() -> OnnxFaceConfig {
    let dir = test_dir();
    let config = OnnxFaceConfig {
        onnxruntime_library: dir.join("libonnxruntime.so"),
        detector_model: dir.join("det_10g_test.onnx"),
        recognizer_model: dir.join("w600k_r50_test.onnx"),
        threads: 1,
        det_size: 640,
        det_threshold: 0.5,
    };
    for p in [
        &config.onnxruntime_library,
        &config.detector_model,
        &config.recognizer_model,
    ] {
        assert!(
            p.is_file(),
            "{} is missing: run tests/setup.sh (it installs onnx, onnxruntime and insightface and writes the test models)",
            p.display()
        );
    }
    config
}
