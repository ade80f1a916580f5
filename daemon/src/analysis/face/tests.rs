//! Tests of the face module: the largest-face and pad-retry rules with stub detectors, and the Haar
//! detector on the shared fixture portraits.
//!
//! The Haar tests need Debian's `opencv-data` cascade and the shared fixtures; when either is absent
//! they say so on stderr and return, so that a build box without them still runs the rest.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::*;

/// Debian `opencv-data`'s frontal-face cascade.
pub(crate) const CASCADE: &str = "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml";

pub(crate) fn fixtures_dir() -> PathBuf {
    let rel = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/challenges");
    if rel.is_dir() {
        rel
    } else {
        PathBuf::from("/work/shared/fixtures/challenges")
    }
}

/// Decodes a fixture portrait into an RGB24 frame, with the daemon's image decoder.
pub(crate) fn load_png(path: &Path) -> Frame {
    let image = crate::challenges::decode_rgb(&std::fs::read(path).unwrap()).unwrap();
    Frame::rgb(image.width, image.height, image.pixels)
}

/// The Haar detector and the fixture portraits, or `None` (with a note) when they are not installed.
pub(crate) fn haar_and_faces() -> Option<(HaarDetector, Vec<(String, Frame)>)> {
    // tests/setup.sh installs opencv-data: a missing cascade is a broken test machine, not a skip.
    assert!(
        Path::new(CASCADE).is_file(),
        "{CASCADE} is missing (apt-get install opencv-data)"
    );
    let dir = fixtures_dir();
    let mut faces = Vec::new();
    for i in 0..7 {
        let p = dir.join(format!("challenge-{i}/face.png"));
        if p.is_file() {
            faces.push((format!("challenge-{i}"), load_png(&p)));
        }
    }
    assert_eq!(faces.len(), 7, "fixture faces missing under {}", dir.display());
    Some((HaarDetector::from_opencv_xml(CASCADE).unwrap(), faces))
}

fn fb(x1: f32, y1: f32, x2: f32, y2: f32) -> FaceBox {
    FaceBox {
        x1,
        y1,
        x2,
        y2,
        score: 1.0,
        landmarks: None,
    }
}

/// Counts the searches of a wrapped detector.
struct Counting<'a> {
    inner: &'a dyn FaceDetector,
    full: Cell<usize>,
}
impl FaceDetector for Counting<'_> {
    fn detect(&self, frame: &Frame) -> Vec<FaceBox> {
        self.full.set(self.full.get() + 1);
        self.inner.detect(frame)
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}

struct Fixed(Vec<FaceBox>);
impl FaceDetector for Fixed {
    fn detect(&self, _: &Frame) -> Vec<FaceBox> {
        self.0.clone()
    }
    fn name(&self) -> &'static str {
        "fixed"
    }
}

/// Finds a box only on frames at least `min_w` wide (i.e. only on the padded retry).
struct OnlyWhenPadded {
    min_w: u32,
}
impl FaceDetector for OnlyWhenPadded {
    fn detect(&self, frame: &Frame) -> Vec<FaceBox> {
        if frame.width >= self.min_w {
            vec![fb(40.0, 50.0, 140.0, 170.0)]
        } else {
            Vec::new()
        }
    }
    fn name(&self) -> &'static str {
        "only-when-padded"
    }
}

fn grey_frame(w: u32, h: u32, v: u8) -> Frame {
    Frame::rgb(w, h, vec![v; (w * h * 3) as usize])
}

#[test]
fn largest_is_by_real_area_not_x2_times_y2() {
    // The reference's key x2·y2 prefers the small bottom-right box (400·400 > 300·250).
    let big = fb(0.0, 0.0, 300.0, 250.0); // area 75 000
    let small = fb(350.0, 350.0, 400.0, 400.0); // area 2 500, x2·y2 = 160 000
    assert_eq!(largest(&[small, big]), Some(big));
    assert_eq!(largest(&[]), None);
    let nan = fb(f32::NAN, 0.0, 10.0, 10.0);
    let inverted = fb(10.0, 10.0, 0.0, 0.0);
    assert_eq!(largest(&[nan, inverted]), None);
    assert_eq!(big.area(), 75_000.0);
}

#[test]
fn pad_retry_boxes_come_back_in_frame_coordinates() {
    let frame = grey_frame(100, 80, 128);
    // pad = max(32, 0.1·100) = 32, padded 164×144.
    assert_eq!(retry_padding(&frame), 32);
    let d = OnlyWhenPadded { min_w: 150 };
    let b = detect_largest(&d, &frame).unwrap();
    // (40, 50, 140, 170) − 32 = (8, 18, 108, 138), clipped to the 100×80 frame.
    assert_eq!((b.x1, b.y1, b.x2, b.y2), (8.0, 18.0, 100.0, 80.0));
    // No retry needed: the first pass's box is returned untouched.
    let fixed = Fixed(vec![fb(1.0, 2.0, 30.0, 40.0)]);
    assert_eq!(detect_largest(&fixed, &frame), Some(fb(1.0, 2.0, 30.0, 40.0)));
    // Malformed frames give no face and no panic.
    let bad = Frame::rgb(10, 10, vec![0; 7]);
    assert_eq!(detect_largest(&fixed, &bad), None);
    assert_eq!(retry_padding(&grey_frame(1000, 10, 0)), 100);
}

#[test]
fn haar_finds_the_fixture_faces_roughly_centred() {
    let Some((det, faces)) = haar_and_faces() else {
        return;
    };
    for (name, f) in &faces {
        let boxes = det.detect(f);
        let b = largest(&boxes).unwrap_or_else(|| panic!("{name}: no face in {boxes:?}"));
        let (cx, cy) = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
        let (w, h) = (f.width as f32, f.height as f32);
        assert!(
            (cx - w / 2.0).abs() < 0.25 * w && (cy - h / 2.0).abs() < 0.3 * h,
            "{name}: {b:?}"
        );
        assert!(b.width() > 0.15 * w && b.width() < 0.95 * w, "{name}: {b:?}");
        assert!(
            b.x1 >= 0.0 && b.y1 >= 0.0 && b.x2 <= w && b.y2 <= h,
            "{name}: {b:?}"
        );
        eprintln!("{name}: {} boxes, largest {b:?}", boxes.len());
    }
}

#[test]
fn haar_finds_nothing_in_flat_or_tiny_images() {
    let Some((det, _)) = haar_and_faces() else { return };
    assert!(det.detect(&grey_frame(512, 512, 128)).is_empty());
    assert!(det.detect(&grey_frame(10, 10, 128)).is_empty());
    assert!(det.detect(&grey_frame(0, 0, 0)).is_empty());
    assert!(det.detect(&Frame::rgb(64, 64, vec![1; 5])).is_empty());
    assert!(detect_largest(&det, &grey_frame(512, 512, 128)).is_none());
}

#[test]
fn haar_boxes_scale_with_the_frame() {
    // The same portrait at 256×256 gives a box about half the size, in its own coordinates.
    let Some((det, faces)) = haar_and_faces() else {
        return;
    };
    let (_, f) = &faces[0];
    let grey = crate::analysis::image::Grey::from_frame(f).unwrap();
    let (g, _, _) = crate::analysis::image::downscale_grey_region(&grey, 256, [0, 0, 256, 256]).unwrap();
    let small = Frame::rgb(256, 256, g.px.iter().flat_map(|&p| [p, p, p]).collect());
    let a = largest(&det.detect(f)).unwrap();
    let b = largest(&det.detect(&small)).unwrap();
    assert!((a.width() / b.width() - 2.0).abs() < 0.2, "{a:?} vs {b:?}");
}

#[test]
fn haar_detects_alike_from_rgb_grey_frames_and_a_given_plane() {
    let Some((det, faces)) = haar_and_faces() else {
        return;
    };
    for (name, f) in &faces {
        // The per-frame passes hand over the grey plane they computed: the same boxes come back.
        let grey = crate::analysis::image::Grey::from_frame(f).unwrap();
        assert_eq!(det.detect_grey(f, &grey), det.detect(f), "{name}");
        // A grey frame (the decoder's delivery to this backend) is detected like its RGB original.
        let as_grey = Frame::grey(f.width, f.height, grey.px.clone());
        assert_eq!(det.detect(&as_grey), det.detect(f), "{name}");
        // A plane of another size is not this frame's: nothing is mapped through it.
        let (half, _, _) =
            crate::analysis::image::downscale_grey_region(&grey, grey.w / 2, [0, 0, grey.w, grey.h]).unwrap();
        assert!(det.detect_grey(f, &half).is_empty(), "{name}");
    }
}

#[test]
fn tracking_reports_a_missing_face_on_its_own_frame() {
    let Some((det, faces)) = haar_and_faces() else {
        return;
    };
    let face = faces[0].1.clone();
    let blank = grey_frame(face.width, face.height, 128);
    let frames = vec![face.clone(), face.clone(), blank, face.clone(), face];
    let boxes = track_largest(&det, &frames);
    let found: Vec<bool> = boxes.iter().map(Option::is_some).collect();
    assert_eq!(found, vec![true, true, false, true, true]);
    assert!(track_largest(&det, &[]).is_empty());
}

#[test]
fn haar_searches_every_frame_and_timing() {
    let Some((det, faces)) = haar_and_faces() else {
        return;
    };
    let f = &faces[0].1;
    let frames: Vec<Frame> = (0..80).map(|_| f.clone()).collect();
    // One full search per frame (the pad retry only where the first finds nothing).
    let counting = Counting {
        inner: &det,
        full: Cell::new(0),
    };
    assert!(track_largest(&counting, &frames).iter().all(Option::is_some));
    assert_eq!(counting.full.get(), 80);
    // Timings, printed with --nocapture: the best of several runs (robust to a busy box).
    if cfg!(debug_assertions) {
        eprintln!("haar timing: run the tests with --release");
        return;
    }
    let best = |n: usize, run: &dyn Fn()| {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .fold(f64::INFINITY, f64::min)
    };
    let t_full = best(10, &|| {
        std::hint::black_box(det.detect(std::hint::black_box(f)));
    });
    let t_seq = best(5, &|| {
        std::hint::black_box(track_largest(&det, &frames));
    });
    eprintln!(
        "haar 512×512: full {t_full:.2} ms, 80-frame track {t_seq:.1} ms ({:.2} ms/frame)",
        t_seq / 80.0
    );
    // Loose: a full search must stay well under 20 ms even on a shared box.
    assert!(t_full < 20.0, "{t_full} ms");
}

#[test]
fn tree_cascades_work_and_tilted_ones_are_refused() {
    // alt2 is made of two-node trees (the general path); the smile cascade uses tilted features.
    let dir = Path::new("/usr/share/opencv4/haarcascades");
    let Some((_, faces)) = haar_and_faces() else {
        return;
    };
    let alt2 = HaarDetector::from_opencv_xml(dir.join("haarcascade_frontalface_alt2.xml")).unwrap();
    for (name, f) in &faces {
        let b = largest(&alt2.detect(f)).unwrap_or_else(|| panic!("{name}: alt2 found no face"));
        assert!(
            (b.x1 + b.x2) / 2.0 > 150.0 && (b.x1 + b.x2) / 2.0 < 362.0,
            "{name}: {b:?}"
        );
    }
    let smile = HaarDetector::from_opencv_xml(dir.join("haarcascade_smile.xml"));
    assert!(matches!(smile, Err(CascadeError::Invalid(_))));
}

/// A sequence made from one portrait: `frame(i)` gives frame i.
fn sequence(n: usize, frame: impl Fn(usize) -> Frame) -> Vec<Frame> {
    (0..n).map(frame).collect()
}

/// `f` with deterministic uniform noise (±`amp` on every channel): at ±2 what a lossy codec leaves on
/// a still (near-identical frames), at ±20 and more grain a miner could add.
pub(crate) fn with_noise(f: &Frame, seed: u64, amp: i32) -> Frame {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let px = f
        .rgb_pixels()
        .iter()
        .map(|&v| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let d = (s % (2 * amp as u64 + 1)) as i32 - amp;
            (i32::from(v) + d).clamp(0, 255) as u8
        })
        .collect();
    Frame::rgb(f.width, f.height, px)
}

/// `f` shifted by (`dx`, `dy`) pixels, the uncovered edge repeated: a head moving in the frame.
fn shifted(f: &Frame, dx: i32, dy: i32) -> Frame {
    let (w, h) = (f.width as i32, f.height as i32);
    let src = f.rgb_pixels();
    let mut px = Vec::with_capacity(src.len());
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = ((x - dx).clamp(0, w - 1), (y - dy).clamp(0, h - 1));
            let i = (sy * w + sx) as usize * 3;
            px.extend_from_slice(&src[i..i + 3]);
        }
    }
    Frame::rgb(f.width, f.height, px)
}

#[test]
fn tracking_equals_per_frame_detection_on_identical_noisy_and_moving_faces() {
    let Some((det, faces)) = haar_and_faces() else {
        return;
    };
    for (name, f) in &faces {
        let kinds: [(&str, Vec<Frame>); 3] = [
            ("identical", sequence(20, |_| f.clone())),
            ("noisy", sequence(20, |i| with_noise(f, i as u64, 2))),
            // 0–3 px per frame, back and forth: well inside what a talking head moves.
            (
                "moving",
                sequence(20, |i| shifted(f, (i % 7) as i32 - 3, (i % 5) as i32 - 2)),
            ),
        ];
        for (kind, frames) in &kinds {
            let per_frame: Vec<Option<FaceBox>> = frames.iter().map(|fr| detect_largest(&det, fr)).collect();
            let tracked = track_largest(&det, frames);
            assert!(
                per_frame.iter().all(Option::is_some),
                "{name} {kind}: per-frame detection lost the face"
            );
            assert_eq!(
                tracked, per_frame,
                "{name} {kind}: the tracker's boxes differ from per-frame detection"
            );
            if *kind == "identical" {
                // One box throughout: the box centre never moves (bbox smoothness 1).
                assert!(tracked.iter().all(|b| *b == tracked[0]), "{name}");
            }
        }
    }
}
