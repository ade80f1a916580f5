//! The `onnx` face backend: InsightFace buffalo_l (SCRFD `det_10g.onnx` + ArcFace `w600k_r50.onnx`)
//! run through ONNX Runtime, dlopened from the configured library.
//!
//! Owns: loading the runtime once per process and the two sessions (bounded threads, checked
//! signatures, every failure naming its configuration key), running them, [`OnnxFaceBackend`] as a
//! [`FaceDetector`] (`"scrfd"`, boxes with landmarks), and [`ArcFaceIdentity`], the identity backend of
//! `identity_mode = "insightface"`: cosine of ArcFace embeddings between the reference face and each
//! sampled frame's face (docs/reference.md#component-identity). The arithmetic lives in [`super::scrfd`] and
//! [`super::align`].
//!
//! Must not: decide scores or gates, read files after construction, or turn an inference failure into
//! a missing face silently: a failed detection is recorded and the identity backend of the same
//! analysis reports it as a validator-side error.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{Tensor, ValueType};

use super::align::{self, ARCFACE_SIDE};
use super::identity::{IdentityBackend, IdentityError, IdentityInput};
use super::scrfd::{self, Detection, Letterbox, STRIDES, StrideOutputs};
use super::{FaceBox, FaceDetector, Frame, detect_largest};
use crate::scoring::IdentityMode;

/// Where the backend's files are and how hard it may work (`[analysis.face]` with `backend = "onnx"`).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxFaceConfig {
    /// `libonnxruntime.so` (absolute path).
    pub onnxruntime_library: PathBuf,
    /// SCRFD detector, e.g. buffalo_l's `det_10g.onnx`.
    pub detector_model: PathBuf,
    /// ArcFace recogniser, e.g. buffalo_l's `w600k_r50.onnx`.
    pub recognizer_model: PathBuf,
    /// Intra-op threads of each session (inference runs one frame at a time per session).
    pub threads: usize,
    /// Detector input side when the model's input size is dynamic (det_10g's is): 640 as the
    /// reference's `det_size`.
    pub det_size: u32,
    /// Detection score threshold (the reference's 0.5).
    pub det_threshold: f64,
}

/// A start-up failure of the backend, naming the configuration key to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnnxLoadError {
    /// The ONNX Runtime library could not be loaded.
    #[error("analysis.face.onnxruntime_library {path}: {reason}")]
    Library {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The detector model could not be loaded or is not an SCRFD with keypoints.
    #[error("analysis.face.detector_model {path}: {reason}")]
    Detector {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The recogniser model could not be loaded or is not an ArcFace.
    #[error("analysis.face.recognizer_model {path}: {reason}")]
    Recognizer {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The path ONNX Runtime was loaded from: `ort` keeps one library per process and silently ignores a
/// second path, so a different one is refused here instead.
static RUNTIME: Mutex<Option<PathBuf>> = Mutex::new(None);

fn load_runtime(path: &Path) -> Result<(), OnnxLoadError> {
    let err = |reason: String| OnnxLoadError::Library {
        path: path.to_owned(),
        reason,
    };
    let mut loaded = RUNTIME.lock().unwrap_or_else(PoisonError::into_inner);
    match loaded.as_deref() {
        Some(p) if p == path => return Ok(()),
        Some(p) => {
            return Err(err(format!(
                "ONNX Runtime is already loaded from {} in this process",
                p.display()
            )));
        }
        None => {}
    }
    if !path.is_file() {
        return Err(err(
            "no such file (the onnxruntime shared library, e.g. libonnxruntime.so.1.28.0)".into(),
        ));
    }
    // Telemetry off: a validator host reports nothing to anyone.
    ort::init_from(path)
        .map_err(|e| err(e.to_string()))?
        .with_name("talkheadd")
        .with_telemetry(false)
        .commit();
    *loaded = Some(path.to_owned());
    Ok(())
}

/// A CPU session with bounded threads: `threads` intra-op threads that block instead of spinning, no
/// inter-op pool, so analysis never takes more than its share of a host that also runs miners.
fn open_session(path: &Path, threads: usize) -> Result<Session, String> {
    if !path.is_file() {
        return Err("no such file".into());
    }
    Session::builder()
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
        .and_then(|b| Ok(b.with_intra_threads(threads)?))
        .and_then(|b| Ok(b.with_inter_threads(1)?))
        .and_then(|b| Ok(b.with_parallel_execution(false)?))
        .and_then(|b| Ok(b.with_intra_op_spinning(false)?))
        .and_then(|mut b| b.commit_from_file(path))
        .map_err(|e| e.to_string())
}

/// The dimensions of a tensor outlet (`-1` for dynamic ones), or `None` if it is not an f32 tensor.
fn f32_dims(ty: &ValueType) -> Option<Vec<i64>> {
    match ty {
        ValueType::Tensor { ty, shape, .. } if *ty == ort::value::TensorElementType::Float32 => {
            Some(shape.to_vec())
        }
        _ => None,
    }
}

/// Faces per recogniser call when the model takes any batch size (80 frames → 6 calls; bounds memory).
const DYNAMIC_BATCH: usize = 16;

/// The name and `[N, H, W]` (`-1` where dynamic) of a model's one `N×3×H×W` float input, after
/// checking that it has `outputs` outputs; the error says what `model` should look like.
fn image_input(session: &Session, model: &str, outputs: usize) -> Result<(String, [i64; 3]), String> {
    let [input] = session.inputs() else {
        return Err(format!("{} inputs, {model} has 1", session.inputs().len()));
    };
    let Some(&[n, 3, h, w]) = f32_dims(input.dtype()).as_deref() else {
        return Err(format!("input is not an N×3×H×W float tensor ({model})"));
    };
    if session.outputs().len() != outputs {
        return Err(format!(
            "{} outputs, {model} has {outputs}",
            session.outputs().len()
        ));
    }
    Ok((input.name().to_owned(), [n, h, w]))
}

/// SCRFD + ArcFace through ONNX Runtime. Each session runs one call at a time (a mutex per session):
/// with several analyses in flight they queue rather than multiply the threads in use.
pub struct OnnxFaceBackend {
    detector: Mutex<Session>,
    det_input: String,
    /// `(width, height)` of the detector input.
    det_size: (u32, u32),
    det_threshold: f32,
    recognizer: Mutex<Session>,
    rec_input: String,
    /// Faces per recogniser call: the model's fixed batch, or [`DYNAMIC_BATCH`] at most.
    rec_batch: usize,
    /// The model's batch dimension is fixed: every call must fill it.
    rec_fixed_batch: bool,
}

impl std::fmt::Debug for OnnxFaceBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxFaceBackend")
            .field("det_size", &self.det_size)
            .field("det_threshold", &self.det_threshold)
            .finish_non_exhaustive()
    }
}

impl OnnxFaceBackend {
    /// Loads the runtime (once per process) and both models, checking that they have det_10g's and
    /// w600k_r50's signatures.
    pub fn load(config: &OnnxFaceConfig) -> Result<Self, OnnxLoadError> {
        load_runtime(&config.onnxruntime_library)?;
        let threads = config.threads.max(1);

        let det_err = |reason: String| OnnxLoadError::Detector {
            path: config.detector_model.clone(),
            reason,
        };
        let detector = open_session(&config.detector_model, threads).map_err(det_err)?;
        let (det_input, [_, h, w]) = image_input(&detector, "SCRFD det_10g", 9).map_err(det_err)?;
        let side = i64::from(config.det_size);
        let (h, w) = (if h > 0 { h } else { side }, if w > 0 { w } else { side });
        let fits = |v: i64| v % 32 == 0 && (32..=4096).contains(&v);
        if !(fits(h) && fits(w)) {
            return Err(det_err(format!("input size {w}x{h} is not a multiple of 32")));
        }
        let det_size = (w as u32, h as u32);

        let rec_err = |reason: String| OnnxLoadError::Recognizer {
            path: config.recognizer_model.clone(),
            reason,
        };
        let recognizer = open_session(&config.recognizer_model, threads).map_err(rec_err)?;
        let (rec_input, [n, h, w]) = image_input(&recognizer, "ArcFace", 1).map_err(rec_err)?;
        let side = i64::from(ARCFACE_SIDE);
        if !((h == side || h < 0) && (w == side || w < 0)) {
            return Err(rec_err(format!("input is {w}x{h}, ArcFace takes 112x112")));
        }
        let rec_fixed_batch = n > 0;
        let rec_batch = if rec_fixed_batch {
            n as usize
        } else {
            DYNAMIC_BATCH
        };
        Ok(OnnxFaceBackend {
            detector: Mutex::new(detector),
            det_input,
            det_size,
            det_threshold: config.det_threshold as f32,
            recognizer: Mutex::new(recognizer),
            rec_input,
            rec_batch,
            rec_fixed_batch,
        })
    }

    /// `(width, height)` of the detector input: the model's own size, or `det_size` square where the
    /// model's is dynamic (as det_10g's is).
    pub fn det_input_size(&self) -> (u32, u32) {
        self.det_size
    }

    /// Every face SCRFD finds in `frame` (after NMS), in frame pixels.
    pub fn detect_faces(&self, frame: &Frame) -> Result<Vec<Detection>, String> {
        if !frame.is_well_formed() {
            return Ok(Vec::new());
        }
        let (w, h) = self.det_size;
        let Some(lb) = Letterbox::new(frame.width, frame.height, w, h) else {
            return Ok(Vec::new());
        };
        let input = Tensor::from_array((
            [1usize, 3, h as usize, w as usize],
            scrfd::input_tensor(frame, &lb),
        ))
        .map_err(|e| format!("detector input: {e}"))?;
        let mut session = self.detector.lock().unwrap_or_else(PoisonError::into_inner);
        let outputs = session
            .run(ort::inputs![self.det_input.as_str() => input])
            .map_err(|e| format!("detector: {e}"))?;
        // Outputs in det_10g's order, as InsightFace reads them: scores, boxes, keypoints, each for
        // strides 8, 16, 32. Shapes may carry a batch dimension of 1; only the values matter.
        let tensor = |i: usize| {
            outputs[i]
                .try_extract_tensor::<f32>()
                .map(|(_, data)| data)
                .map_err(|e| format!("detector output {i}: {e}"))
        };
        let mut strides = Vec::with_capacity(STRIDES.len());
        for (k, &stride) in STRIDES.iter().enumerate() {
            strides.push(StrideOutputs {
                stride,
                scores: tensor(k)?,
                bboxes: tensor(k + 3)?,
                kps: tensor(k + 6)?,
            });
        }
        scrfd::decode(&strides, &lb, self.det_threshold).map_err(|e| format!("detector output layout: {e}"))
    }

    /// L2-normalised ArcFace embeddings of aligned 112×112 crops, one per crop (`None` for a crop
    /// whose embedding is all zeros or not finite).
    pub fn embed(&self, crops: &[Frame]) -> Result<Vec<Option<Vec<f32>>>, String> {
        let side = ARCFACE_SIDE as usize;
        let mut out = Vec::with_capacity(crops.len());
        for chunk in crops.chunks(self.rec_batch) {
            let mut data = Vec::with_capacity(self.rec_batch * 3 * side * side);
            for crop in chunk {
                if crop.width != ARCFACE_SIDE || crop.height != ARCFACE_SIDE || !crop.is_well_formed() {
                    return Err("recogniser input is not a 112x112 crop".into());
                }
                align::push_input(crop, &mut data);
            }
            // A fixed-batch model gets its batch filled with black crops; their embeddings are dropped.
            let n = if self.rec_fixed_batch {
                self.rec_batch
            } else {
                chunk.len()
            };
            data.resize(n * 3 * side * side, -1.0);
            let input = Tensor::from_array(([n, 3, side, side], data))
                .map_err(|e| format!("recogniser input: {e}"))?;
            let mut session = self.recognizer.lock().unwrap_or_else(PoisonError::into_inner);
            let outputs = session
                .run(ort::inputs![self.rec_input.as_str() => input])
                .map_err(|e| format!("recogniser: {e}"))?;
            let (_, values) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("recogniser output: {e}"))?;
            if values.is_empty() || values.len() % n != 0 {
                return Err(format!(
                    "recogniser output has {} values for {n} faces",
                    values.len()
                ));
            }
            let dim = values.len() / n;
            out.extend(
                values
                    .chunks_exact(dim)
                    .take(chunk.len())
                    .map(align::l2_normalised),
            );
        }
        Ok(out)
    }
}

thread_local! {
    /// Detector failures on this thread since the identity backend last looked: `(count, first)`.
    /// An analysis runs detection and then identity on one thread, so this attributes a failure to
    /// the analysis it happened in without widening the [`FaceDetector`] seam.
    static DETECT_FAILURES: RefCell<(usize, Option<String>)> = const { RefCell::new((0, None)) };
}

fn record_failure(e: String) {
    DETECT_FAILURES.with(|f| {
        let mut f = f.borrow_mut();
        f.0 += 1;
        f.1.get_or_insert(e);
    });
}

/// Forgets this thread's detector failures (see [`super::forget_detection_failures`]).
pub(super) fn forget_failures() {
    let _ = take_failures();
}

fn take_failures() -> Option<String> {
    DETECT_FAILURES.with(|f| {
        let (n, first) = std::mem::take(&mut *f.borrow_mut());
        (n > 0).then(|| {
            format!(
                "face detection failed on {n} frame(s): {}",
                first.unwrap_or_default()
            )
        })
    })
}

impl FaceDetector for OnnxFaceBackend {
    fn detect(&self, frame: &Frame) -> Vec<FaceBox> {
        match self.detect_faces(frame) {
            Ok(dets) => dets
                .into_iter()
                .map(|d| FaceBox {
                    x1: d.bbox[0],
                    y1: d.bbox[1],
                    x2: d.bbox[2],
                    y2: d.bbox[3],
                    score: d.score,
                    landmarks: Some(d.kps),
                })
                .collect(),
            Err(e) => {
                record_failure(e);
                Vec::new()
            }
        }
    }

    fn name(&self) -> &'static str {
        "scrfd"
    }
}

/// `identity_mode = "insightface"`: ArcFace cosine similarity between the largest face of the
/// reference image (found with the reference's pad retry) and the largest face of each frame, clamped
/// to `[0, 1]`; 0 for a frame without a face. No face in the reference is
/// [`IdentityError::ReferenceUnusable`] (the reference's `insightface_no_ref_face`), and a detection
/// or inference failure anywhere in the analysis is [`IdentityError::Backend`].
#[derive(Debug, Clone)]
pub struct ArcFaceIdentity {
    backend: Arc<OnnxFaceBackend>,
}

impl ArcFaceIdentity {
    /// The identity backend over a loaded [`OnnxFaceBackend`] (the same one that detects the faces).
    pub fn new(backend: Arc<OnnxFaceBackend>) -> Self {
        ArcFaceIdentity { backend }
    }
}

impl IdentityBackend for ArcFaceIdentity {
    fn name(&self) -> &'static str {
        "arcface"
    }

    fn mode(&self) -> IdentityMode {
        IdentityMode::Insightface
    }

    fn similarities(&self, input: &IdentityInput<'_>) -> Result<Vec<f64>, IdentityError> {
        let failed = |e: Option<String>| e.map_or(Ok(()), |e| Err(IdentityError::Backend(e)));
        // Failures while the frames were searched come first: those frames were reported faceless.
        failed(take_failures())?;
        let reference = detect_largest(self.backend.as_ref(), input.reference);
        failed(take_failures())?;
        let reference = reference
            .and_then(|b| b.landmarks)
            .and_then(|kps| align::align(input.reference, &kps))
            .ok_or_else(|| IdentityError::ReferenceUnusable("no face found in the reference image".into()))?;

        let mut crops = vec![reference];
        let mut slots = Vec::with_capacity(input.frames.len());
        for (frame, face) in input.frames.iter().zip(input.faces) {
            let crop = face
                .and_then(|b| b.landmarks)
                .and_then(|kps| align::align(frame, &kps));
            slots.push(crop.map(|c| {
                crops.push(c);
                crops.len() - 1
            }));
        }
        let embeddings = self.backend.embed(&crops).map_err(IdentityError::Backend)?;
        let reference = embeddings
            .first()
            .cloned()
            .flatten()
            // The same for every miner of the round: the challenge's image, not this host.
            .ok_or_else(|| {
                IdentityError::ReferenceUnusable("the reference face has a zero embedding".into())
            })?;
        Ok(slots
            .iter()
            .map(|slot| {
                slot.and_then(|i| embeddings.get(i).cloned().flatten())
                    .map_or(0.0, |e| align::cosine(&reference, &e).clamp(0.0, 1.0))
            })
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn detector_failures_belong_to_the_analysis_of_their_thread() {
        // Recorded on this thread, then reported once by the identity step that follows.
        record_failure("session lost".into());
        record_failure("again".into());
        let reported = take_failures().unwrap();
        assert!(
            reported.contains("2 frame(s)") && reported.contains("session lost"),
            "{reported}"
        );
        assert_eq!(take_failures(), None);
        // An analysis that ended before its identity step leaves failures behind: the next analysis on
        // the thread starts by forgetting them.
        record_failure("left by an aborted analysis".into());
        crate::analysis::face::forget_detection_failures();
        assert_eq!(take_failures(), None);
        // Another thread never sees them.
        record_failure("here".into());
        std::thread::spawn(|| assert_eq!(take_failures(), None))
            .join()
            .unwrap();
        assert!(take_failures().is_some());
    }
}
