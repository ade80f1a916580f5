//! The audio component: transcript accuracy (WER), envelope similarity (`tsim`) and loudness/clipping
//! quality, from decoded samples and texts. No speech recognition here: the caller passes the ASR
//! hypothesis, or `None` when no ASR backend is configured.
//!
//! Owns (docs/reference.md#component-audio):
//! - `wer` = word-level Levenshtein distance / reference words, capped at 1, over the tokens of the
//!   reference's `text.lower().split()` (punctuation stays part of a word, as validators count it;
//!   `tests/wer_parity.rs` checks it against a Python statement of the reference's formula);
//! - `tsim = (corr + 1) / 2` of mean-abs envelopes over chunks of `max(400, n / 50)` samples of the
//!   overlapping part (at least 1600 samples), 0 when either envelope is flat;
//! - `audio_quality = 0.8·clamp01((rms − 0.01) / 0.14) + 0.2·(1 − clamp01(frac(|x| > 0.99) / 0.05))`;
//! - `audio = 0.40·(1 − wer) + 0.35·tsim + 0.25·audio_quality`, or, when WER is unavailable,
//!   `(0.35·tsim + 0.25·audio_quality) / 0.60` (the unavailable term is dropped and the rest
//!   renormalised; the transcript gate is then the audio-match check of
//!   [`audio_match`](mod@super::audio_match)).
//!
//! Must not: invent a WER (the reference's silent `wer = 0.5` with no reference text passed its gate,
//! docs/reference.md#weakness-15), or read files.

use serde::Serialize;

use super::stats::{clamp01, pearson};

/// Why WER is not available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WerUnavailable {
    /// No ASR hypothesis (no speech backend configured, or it failed).
    NoHypothesis,
    /// No reference transcript, or one with no words.
    NoReference,
}

/// The audio component and its terms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioDetail {
    /// The audio component.
    pub audio: f64,
    /// Word error rate, when both texts were available.
    pub wer: Option<f64>,
    /// Why `wer` is `None`.
    pub wer_unavailable: Option<WerUnavailable>,
    /// Envelope similarity of source and output audio.
    pub tsim: f64,
    /// Loudness/clipping quality of the output audio.
    pub audio_quality: f64,
    /// RMS of the output audio.
    pub rms: f64,
    /// Fraction of output samples with `|x| > 0.99`.
    pub clip_fraction: f64,
    /// Mean of x² of the output audio (the reference's `video_audio_energy`).
    pub video_audio_energy: f64,
    /// Mean of x² of the challenge audio (`source_audio_energy`).
    pub source_audio_energy: f64,
}

/// The words of `text` as the reference's `text.lower().split()` has them: lowercased, split on
/// Python's whitespace (Unicode `White_Space` plus the ASCII separators U+001C..U+001F that
/// `str.split` also splits on), punctuation kept (`"Dog."` ≠ `"dog"`, as validators count it).
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Word error rate of `hypothesis` against `reference`, capped at 1; `None` when the reference has
/// no words (there is nothing to measure against).
pub fn wer(reference: &str, hypothesis: &str) -> Option<f64> {
    let r = words(reference);
    let h = words(hypothesis);
    if r.is_empty() {
        return None;
    }
    // The distance is at least |h| − |r|, so a hypothesis twice as long is WER ≥ 1 without the O(n·m)
    // table (bounds the work on a hostile transcript).
    if h.len() >= 2 * r.len() {
        return Some(1.0);
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    let mut cur = vec![0usize; h.len() + 1];
    for (i, rw) in r.iter().enumerate() {
        cur[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    Some((prev[h.len()] as f64 / r.len() as f64).min(1.0))
}

/// Mean of x² (0 for an empty track).
pub fn energy(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64
}

/// The reference's `tsim`, 0 when the overlap is under 1600 samples or an envelope is flat.
pub fn tsim(source: &[f32], output: &[f32]) -> f64 {
    let n = source.len().min(output.len());
    if n < 1600 {
        return 0.0;
    }
    let chunk = 400usize.max(n / 50);
    let env = |x: &[f32]| -> Vec<f64> {
        x[..n]
            .chunks_exact(chunk)
            .map(|c| c.iter().map(|v| f64::from(v.abs())).sum::<f64>() / chunk as f64)
            .collect()
    };
    pearson(&env(source), &env(output)).map_or(0.0, |c| clamp01((c + 1.0) / 2.0))
}

/// `(audio_quality, rms, clip_fraction)` of the output audio.
pub fn audio_quality(x: &[f32]) -> (f64, f64, f64) {
    let rms = energy(x).sqrt();
    let clip = if x.is_empty() {
        0.0
    } else {
        x.iter().filter(|v| v.abs() > 0.99).count() as f64 / x.len() as f64
    };
    let q = 0.8 * clamp01((rms - 0.01) / 0.14) + 0.2 * (1.0 - clamp01(clip / 0.05));
    (clamp01(q), rms, clip)
}

/// Computes the component. `reference` is the challenge transcript, `hypothesis` the ASR output of
/// the video's audio (`None` when there is no ASR).
pub(crate) fn audio(
    source: &[f32],
    output: &[f32],
    reference: Option<&str>,
    hypothesis: Option<&str>,
) -> AudioDetail {
    let (w, why) = match (reference, hypothesis) {
        (_, None) => (None, Some(WerUnavailable::NoHypothesis)),
        (None, Some(_)) => (None, Some(WerUnavailable::NoReference)),
        (Some(r), Some(h)) => match wer(r, h) {
            Some(v) => (Some(v), None),
            None => (None, Some(WerUnavailable::NoReference)),
        },
    };
    let t = tsim(source, output);
    let (q, rms, clip) = audio_quality(output);
    let score = match w {
        Some(w) => 0.40 * (1.0 - w) + 0.35 * t + 0.25 * q,
        None => (0.35 * t + 0.25 * q) / 0.60,
    };
    AudioDetail {
        audio: clamp01(score),
        wer: w,
        wer_unavailable: why,
        tsim: t,
        audio_quality: q,
        rms,
        clip_fraction: clip,
        video_audio_energy: energy(output),
        source_audio_energy: energy(source),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn wer_examples() {
        let r = "The quick brown fox jumps over the lazy dog";
        assert_eq!(wer(r, "the quick brown fox jumps over the lazy dog"), Some(0.0));
        // One substitution in nine words.
        assert!((wer(r, "the quick brown fox jumps over the lazy cat").unwrap() - 1.0 / 9.0).abs() < 1e-12);
        // Two deletions.
        assert!((wer(r, "quick brown fox jumps over lazy dog").unwrap() - 2.0 / 9.0).abs() < 1e-12);
        // One insertion.
        assert!(
            (wer(r, "the very quick brown fox jumps over the lazy dog").unwrap() - 1.0 / 9.0).abs() < 1e-12
        );
        // Nothing heard: all deletions → 1.
        assert_eq!(wer(r, ""), Some(1.0));
        // Capped at 1.
        assert_eq!(wer("a b", "c d e f g h"), Some(1.0));
        assert_eq!(wer("a b", "c d e"), Some(1.0));
        // No reference words: unavailable, never a made-up 0.5.
        assert_eq!(wer("", "anything"), None);
        assert_eq!(wer(" \u{1f}\t ", "anything"), None);
        // Punctuation is part of a word, as in the reference's `lower().split()`.
        assert_eq!(
            words("Don't STOP,\u{1c}believing!"),
            vec!["don't", "stop,", "believing!"]
        );
        assert!((wer("the lazy dog.", "the lazy dog").unwrap() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn quality_terms() {
        // Full-scale square wave: rms 1, all samples clipped → 0.8·1 + 0.2·0.
        let clipped = [1.0f32, -1.0].repeat(800);
        let (q, rms, clip) = audio_quality(&clipped);
        assert!((rms - 1.0).abs() < 1e-9 && clip == 1.0 && (q - 0.8).abs() < 1e-9);
        // A clean sine at 0.5 amplitude: rms 0.354 → loudness 1, no clipping → 1.
        let sine: Vec<f32> = (0..16_000).map(|i| 0.5 * (i as f32 * 0.05).sin()).collect();
        assert!((audio_quality(&sine).0 - 1.0).abs() < 1e-9);
        // Silence: loudness 0, no clipping → 0.2.
        assert!((audio_quality(&[0.0; 100]).0 - 0.2).abs() < 1e-12);
        assert_eq!(audio_quality(&[]).0, 0.2);
    }

    #[test]
    fn tsim_cases() {
        let a: Vec<f32> = (0..32_000)
            .map(|i| ((i / 800) % 3) as f32 * 0.1 * (i as f32).sin())
            .collect();
        assert!((tsim(&a, &a) - 1.0).abs() < 1e-9);
        let inv: Vec<f32> = a.iter().enumerate().map(|(i, _)| 0.3 - a[i].abs()).collect();
        assert!(tsim(&a, &inv) < 0.05);
        assert_eq!(tsim(&a, &[0.0; 32_000]), 0.0); // flat output: not measurable, not 0.5
        assert_eq!(tsim(&a[..1000], &a[..1000]), 0.0);
    }

    #[test]
    fn component_with_and_without_wer() {
        let a: Vec<f32> = (0..32_000)
            .map(|i| ((i / 800) % 3) as f32 * 0.2 * (i as f32).sin())
            .collect();
        let with = audio(&a, &a, Some("hello world"), Some("hello world"));
        assert_eq!(with.wer, Some(0.0));
        let expect = 0.40 + 0.35 * with.tsim + 0.25 * with.audio_quality;
        assert!((with.audio - expect.min(1.0)).abs() < 1e-12);
        let without = audio(&a, &a, Some("hello world"), None);
        assert_eq!(
            (without.wer, without.wer_unavailable),
            (None, Some(WerUnavailable::NoHypothesis))
        );
        let expect = (0.35 * without.tsim + 0.25 * without.audio_quality) / 0.6;
        assert!((without.audio - expect.min(1.0)).abs() < 1e-12);
        assert_eq!(
            audio(&a, &a, None, Some("x")).wer_unavailable,
            Some(WerUnavailable::NoReference)
        );
        assert_eq!(
            audio(&a, &a, Some(" \t "), Some("x")).wer_unavailable,
            Some(WerUnavailable::NoReference)
        );
    }
}
