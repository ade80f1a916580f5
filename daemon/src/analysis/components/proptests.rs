//! Property tests: on arbitrary small inputs — empty frames, one frame, mismatched sizes, malformed
//! buffers, NaN/±inf audio, empty or odd texts — every component and every field the scoring core
//! reads is finite and in `[0, 1]`, and nothing panics.

use proptest::prelude::*;

use super::*;
use crate::analysis::face::FaceDetector;

/// Reports a box derived from the frame size (possibly partly outside, inverted, or NaN).
struct Boxer(f32, f32, f32, f32);
impl FaceDetector for Boxer {
    fn detect(&self, frame: &Frame) -> Vec<FaceBox> {
        let (w, h) = (frame.width as f32, frame.height as f32);
        vec![FaceBox {
            x1: self.0 * w,
            y1: self.1 * h,
            x2: self.2 * w,
            y2: self.3 * h,
            score: 1.0,
            landmarks: None,
        }]
    }
    fn name(&self) -> &'static str {
        "boxer"
    }
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        // Well-formed, small, any content.
        (0u32..12, 0u32..12, any::<u64>()).prop_map(|(w, h, seed)| {
            let mut s = seed;
            let rgb = (0..w * h * 3)
                .map(|_| {
                    s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (s >> 56) as u8
                })
                .collect();
            Frame::rgb(w, h, rgb)
        }),
        // Malformed buffer.
        (0u32..8, 0u32..8, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(w, h, rgb)| Frame::rgb(w, h, rgb)),
    ]
}

fn sample() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -1.5f32..1.5,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(0.0f32),
    ]
}

fn in_unit(v: f64) -> bool {
    v.is_finite() && (0.0..=1.0).contains(&v)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn everything_stays_in_the_unit_interval(
        frames in prop::collection::vec(frame(), 0..14),
        reference in frame(),
        video_audio in prop::collection::vec(sample(), 0..3000),
        source_audio in prop::collection::vec(sample(), 0..3000),
        fps in prop_oneof![Just(25.0f64), Just(f64::NAN), -5.0f64..100.0],
        b in (-0.5f32..1.5, -0.5f32..1.5, -0.5f32..1.5, -0.5f32..1.5),
        texts in (proptest::option::of("[a-z ,.]{0,20}"), proptest::option::of("[a-z ,.]{0,20}")),
    ) {
        let media = Media {
            frames: &frames,
            fps,
            video_audio: &video_audio,
            source_audio: &source_audio,
            reference_face: &reference,
        };
        let det = Boxer(b.0, b.1, b.2, b.3);
        let a = analyse(&media, &det, texts.0.as_deref(), texts.1.as_deref());
        let c = &a.components;
        let fields = [c.identity, c.lipsync, c.audio, c.video, c.temporal, c.penalty, c.wer];
        for v in fields.into_iter().chain([c.sync_c, c.sync_d, c.face_detect_ratio]) {
            prop_assert!(in_unit(v), "{c:?}");
        }
        let d = &a.debug;
        let p = &d.penalties;
        let pens = [p.freeze, p.loop_, p.face_missing, p.offscreen, p.mouth_occlusion, p.silent_mismatch];
        for v in pens.into_iter().chain([p.desync_spikes, p.penalty]) {
            prop_assert!(in_unit(v), "{p:?}");
        }
        let v = &d.video;
        for v in [v.blur, v.brightness_contrast, v.face_size, v.artifacts, v.aesthetic, v.motion, v.video] {
            prop_assert!(in_unit(v), "{:?}", d.video);
        }
        for v in [d.audio.tsim, d.audio.audio_quality, d.temporal.id_consistency, d.temporal.motion] {
            prop_assert!(in_unit(v));
        }
        if let Some(m) = d.audio_match {
            prop_assert!(in_unit(m));
        }
        if let Some(w) = d.wer {
            prop_assert!(in_unit(w));
        }
        prop_assert!(serde_json::to_string(&a).is_ok());
        let q = crate::scoring::score_quality(c, &crate::scoring::ScoringConfig::default());
        prop_assert!(!q.non_finite_input && !q.out_of_range_input);
    }

    #[test]
    fn wer_is_a_rate(r in "[a-c ]{0,30}", h in "[a-c ]{0,60}") {
        if let Some(w) = wer(&r, &h) {
            prop_assert!(in_unit(w));
        }
        if let Some(w) = wer(&r, &r) {
            prop_assert_eq!(w, 0.0);
        }
    }

    #[test]
    fn audio_match_is_bounded(
        x in prop::collection::vec(-1.0f32..1.0, 0..4000),
        y in prop::collection::vec(-1.0f32..1.0, 0..4000),
    ) {
        if let Some(m) = audio_match(&x, &y) {
            prop_assert!(in_unit(m.similarity) && m.lag_seconds.abs() <= 0.5 + 1e-9);
        }
    }
}
