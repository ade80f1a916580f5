//! The lipsync component: mouth-region motion against the loudness envelope of the output's audio.
//!
//! Owns (docs/reference.md#component-lipsync): the mouth ROI of each frame's face box, the per-frame mouth
//! signal, the RMS envelope of the video's audio resampled to the frames, the lagged correlation,
//! `sync_c`, `sync_d` and `lipsync`, and the windowed local correlation series that `desync_spikes`
//! reads. Deviations (each in `docs/scoring.md`):
//! - the mouth signal of frame `t` compares frame `t`'s mouth rectangle in frames `t` and `t − 1`
//!   (the reference compared each frame's own ROI, which measures box jitter, and gave 0 when the two
//!   ROIs differed in size);
//! - when the correlation is not measurable — no face at all, a mouth that does not move beyond
//!   codec noise ([`MIN_MOUTH_ACTIVITY`]), or silent audio — `sync_c` is 0 and `sync_d` 1 with an
//!   explicit [`LipsyncStatus`], instead of the reference's correlation 0 → `sync_c` 0.5, which
//!   passed its gate (docs/reference.md#weakness-14);
//! - under the hardened profile, a mouth whose change is not the motion of a mouth
//!   ([`mouth_motion`](super::mouth_motion): redrawn every frame, flipping sign, random patterns) is not
//!   measured either ([`LipsyncStatus::IncoherentMouthMotion`]): noise painted on a still face and
//!   scaled by the loudness correlates with it at any amplitude.
//!
//! Must not: look at anything but the planes, boxes and audio it is given, or decide the gate (the
//! scoring core does).

use serde::Serialize;

use super::FaceBox;
use super::image::{Grey, clip_box, region_variance01, resample_region};
use super::mouth_motion::MouthCoherence;
use super::stats::{clamp01, lagged_pearson, mean, norm_up, pearson, resample_linear};

/// Mouth ROI rows, as fractions of the face box height from its top.
pub const MOUTH_ROWS: (f64, f64) = (0.62, 0.96);
/// Mouth ROI columns, as fractions of the face box width from its left.
pub const MOUTH_COLS: (f64, f64) = (0.20, 0.80);
/// Common size every mouth ROI is box-resampled to before differencing (width, height).
pub const MOUTH_GRID: (usize, usize) = (32, 16);
/// Mean mouth signal (grey levels, 0–255) below which the mouth is considered still: a correlation
/// of codec noise with the audio is not lip-sync. Same order as the reference's freeze threshold (0.8).
pub const MIN_MOUTH_ACTIVITY: f64 = 0.5;
/// Envelope (RMS, full scale 1.0) below which the whole track counts as silent (−60 dBFS).
pub const SILENT_ENVELOPE: f64 = 1e-3;
/// Standard errors of a correlation of independent signals that the best correlation must exceed
/// (hardened profile): the reference's gate (`sync_c` ≥ 0.45, correlation ≥ −0.1) and this
/// project's correlation floor (0.05) both pass the best of 17 lags of unrelated signals, which for
/// 80 frames is about 0.15–0.2.
pub const CHANCE_Z: f64 = 2.0;
/// Sample rate of both audio tracks.
pub const SAMPLE_RATE: usize = 16_000;

/// Whether `sync_c` / `sync_d` were measured, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LipsyncStatus {
    /// Correlation measured.
    Measured,
    /// Fewer than 4 frames (the reference's own floor).
    TooFewFrames,
    /// No face box in any frame: there is no mouth to measure.
    NoFace,
    /// The mouth region never moves more than [`MIN_MOUTH_ACTIVITY`] on average (a still face).
    NoMouthMotion,
    /// The mouth region changes, but not as a mouth moves: patterns redrawn every frame or flipping
    /// sign, or random ones (hardened profile, [`mouth_motion`](super::mouth_motion)).
    IncoherentMouthMotion,
    /// The best correlation is within what chance gives a signal of this length searched over these
    /// lags ([`chance_correlation`]; hardened profile): no evidence that the mouth follows the audio.
    ChanceCorrelation,
    /// The output's audio is silent or flat, so there is nothing to follow.
    SilentAudio,
}

/// The lipsync component and how it was obtained.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LipsyncDetail {
    /// Measured or why not.
    pub status: LipsyncStatus,
    /// `0.65·norm_up(sync_c, 0.2, 0.85) + 0.35·(1 − sync_d)`; 0 when not measured.
    pub lipsync: f64,
    /// `clamp01((corr + 1) / 2)` at the best lag; 0 when not measured.
    pub sync_c: f64,
    /// `|best_lag| / L`; 1 when not measured.
    pub sync_d: f64,
    /// Best lag in sampled frames (positive: the mouth lags the audio).
    pub best_lag: i32,
    /// `L = min(8, max(1, n / 8))`.
    pub max_lag: usize,
    /// Correlation at the best lag.
    pub correlation: Option<f64>,
    /// Correlation per lag from `−L` to `L` (`None` where undefined; the search uses 0 there).
    pub curve: Vec<Option<f64>>,
    /// Mean mouth signal over frames that have one (grey levels).
    pub mouth_activity: f64,
    /// Frames with a mouth signal (a box in this frame and the previous one).
    pub frames_with_mouth_signal: usize,
    /// Whether the mouth's change is motion (hardened profile only; absent under the reference's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coherence: Option<MouthCoherence>,
}

/// Per-frame mouth measurements.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct MouthTrack {
    /// Mean |Δgrey| of this frame's mouth ROI against the same rectangle in the previous frame
    /// (None: first frame, no box here, or an undecodable frame).
    pub signal: Vec<Option<f64>>,
    /// Pixel variance (0–1 scale) of the raw ROI (None: no box or empty ROI).
    pub variance: Vec<Option<f64>>,
}

/// The mouth ROI of a face box, clipped to a `w × h` frame (Python `int()` truncation).
pub(crate) fn mouth_rect(b: &FaceBox, w: usize, h: usize) -> Option<[usize; 4]> {
    let (x1, y1) = (f64::from(b.x1), f64::from(b.y1));
    let (bw, bh) = (f64::from(b.width()), f64::from(b.height()));
    clip_box(
        x1 + MOUTH_COLS.0 * bw,
        y1 + MOUTH_ROWS.0 * bh,
        x1 + MOUTH_COLS.1 * bw,
        y1 + MOUTH_ROWS.1 * bh,
        w,
        h,
    )
}

/// Builds a [`MouthTrack`] one frame at a time (so that the caller needs only the current and the
/// previous plane).
///
/// The signal of frame `t` compares the *same* mouth rectangle — frame `t`'s — in frames `t` and
/// `t − 1`: a detector's box jitters by a few pixels between frames, and comparing each frame's own
/// ROI would measure that jitter (a still face would "move its mouth"). Both crops are box-resampled
/// to [`MOUTH_GRID`], so frames of different sizes still compare.
#[derive(Debug, Default)]
pub(crate) struct MouthTracker {
    track: MouthTrack,
}

impl MouthTracker {
    /// Adds frame `t` (`None`: undecodable) with its face box, given frame `t − 1`'s plane.
    pub(crate) fn push(&mut self, prev: Option<&Grey>, plane: Option<&Grey>, face: Option<&FaceBox>) {
        let rect = match (plane, face) {
            (Some(g), Some(b)) => mouth_rect(b, g.w, g.h).map(|r| (g, r)),
            _ => None,
        };
        self.track
            .variance
            .push(rect.and_then(|(g, r)| region_variance01(g, r)));
        let sig = rect.zip(prev).and_then(|((g, r), p)| {
            // The same rectangle in the previous plane (scaled if that frame had another size).
            let scale = |v: usize, from: usize, to: usize| v * to / from.max(1);
            let pr = [
                scale(r[0], g.w, p.w),
                scale(r[1], g.h, p.h),
                scale(r[2], g.w, p.w),
                scale(r[3], g.h, p.h),
            ];
            let a = resample_region(g, r, MOUTH_GRID.0, MOUTH_GRID.1)?;
            let b = resample_region(p, pr, MOUTH_GRID.0, MOUTH_GRID.1)?;
            let s: f64 = a.iter().zip(&b).map(|(x, y)| f64::from((x - y).abs())).sum();
            Some(s / a.len() as f64)
        });
        self.track.signal.push(sig);
    }

    /// The finished track.
    pub(crate) fn finish(self) -> MouthTrack {
        self.track
    }
}

/// RMS envelope of `audio` over windows of `max(64, 0.04·sr)` samples (full windows; one short window
/// when the track is shorter), linearly resampled to `n_frames` points.
pub fn audio_envelope(audio: &[f32], n_frames: usize) -> Vec<f64> {
    let win = 64usize.max(SAMPLE_RATE * 4 / 100);
    let rms = |c: &[f32]| -> f64 {
        let s: f64 = c.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        (s / c.len().max(1) as f64).sqrt()
    };
    let env: Vec<f64> = if audio.len() >= win {
        audio.chunks_exact(win).map(rms).collect()
    } else if audio.is_empty() {
        Vec::new()
    } else {
        vec![rms(audio)]
    };
    if env.is_empty() {
        vec![0.0; n_frames]
    } else {
        resample_linear(&env, n_frames)
    }
}

/// The correlation chance reaches between unrelated signals of `n` frames: [`CHANCE_Z`]`/√n`
/// (0.22 for 80 frames, 0.18 for 125).
pub fn chance_correlation(n: usize) -> f64 {
    CHANCE_Z / (n.max(1) as f64).sqrt()
}

/// `L = min(8, max(1, n / 8))`.
pub fn max_lag(n: usize) -> usize {
    (n / 8).clamp(1, 8)
}

/// The mouth signal with the reference's 0 where it is undefined (first frame, no box).
pub(crate) fn signal_or_zero(track: &MouthTrack) -> Vec<f64> {
    track.signal.iter().map(|s| s.unwrap_or(0.0)).collect()
}

/// Computes the component. `env` is [`audio_envelope`] of the video's audio at the frame count.
/// `coherence` is given under the hardened profile: it refuses a mouth whose change is not motion,
/// and the best correlation must then also beat [`chance_correlation`].
pub(crate) fn lipsync(track: &MouthTrack, env: &[f64], coherence: Option<MouthCoherence>) -> LipsyncDetail {
    let n = track.signal.len();
    let l = max_lag(n);
    let defined: Vec<f64> = track.signal.iter().flatten().copied().collect();
    let activity = mean(&defined).unwrap_or(0.0);
    let unmeasured = |status| LipsyncDetail {
        status,
        lipsync: 0.0,
        sync_c: 0.0,
        sync_d: 1.0,
        best_lag: 0,
        max_lag: l,
        correlation: None,
        curve: Vec::new(),
        mouth_activity: activity,
        frames_with_mouth_signal: defined.len(),
        coherence: coherence.clone(),
    };
    if n < 4 {
        return unmeasured(LipsyncStatus::TooFewFrames);
    }
    if track.variance.iter().all(Option::is_none) {
        return unmeasured(LipsyncStatus::NoFace);
    }
    let env_max = env.iter().copied().fold(0.0f64, f64::max);
    let env_flat = pearson(env, env).is_none();
    // `is_nan` spelled out: a NaN maximum is silent too.
    if env_max.is_nan() || env_max < SILENT_ENVELOPE || env_flat {
        return unmeasured(LipsyncStatus::SilentAudio);
    }
    let mouth = signal_or_zero(track);
    if activity.is_nan() || activity < MIN_MOUTH_ACTIVITY || pearson(&mouth, &mouth).is_none() {
        return unmeasured(LipsyncStatus::NoMouthMotion);
    }
    if coherence.as_ref().is_some_and(|c| !c.is_motion) {
        return unmeasured(LipsyncStatus::IncoherentMouthMotion);
    }
    let li = l as isize;
    let curve: Vec<Option<f64>> = (-li..=li).map(|lag| lagged_pearson(&mouth, env, lag)).collect();
    // numpy argmax: the first maximum wins; undefined lags count as correlation 0, as in the reference.
    let mut best = 0usize;
    for (i, c) in curve.iter().enumerate() {
        if c.unwrap_or(0.0) > curve[best].unwrap_or(0.0) {
            best = i;
        }
    }
    let corr = curve[best].unwrap_or(0.0);
    let best_lag = best as isize - li;
    let sync_c = clamp01((corr + 1.0) / 2.0);
    let sync_d = clamp01(best_lag.unsigned_abs() as f64 / l as f64);
    // Chance is no evidence of lip-sync: unmeasured, with the curve kept to show why.
    let chance = coherence.is_some() && corr < chance_correlation(n);
    let (status, lipsync, sync_c, sync_d) = if chance {
        (LipsyncStatus::ChanceCorrelation, 0.0, 0.0, 1.0)
    } else {
        (
            LipsyncStatus::Measured,
            clamp01(0.65 * norm_up(sync_c, 0.2, 0.85) + 0.35 * (1.0 - sync_d)),
            sync_c,
            sync_d,
        )
    };
    LipsyncDetail {
        status,
        lipsync,
        sync_c,
        sync_d,
        best_lag: best_lag as i32,
        max_lag: l,
        correlation: curve[best],
        curve,
        mouth_activity: activity,
        frames_with_mouth_signal: defined.len(),
        coherence,
    }
}

/// Window (in sampled frames) of the local correlation series: about a second of the reference's
/// 80-sample spacing, never fewer than 8 frames.
pub fn local_window(n: usize) -> usize {
    (n / 5).max(8)
}

/// Local (windowed) correlation of mouth signal and envelope along time, at `lag`: one value per
/// window start, `None` where a window is flat. This is the per-time series `desync_spikes` reads
/// (the reference used the ≤ 17 per-lag values instead, docs/reference.md#weakness-16).
pub(crate) fn local_correlation(mouth: &[f64], env: &[f64], lag: i32) -> Vec<Option<f64>> {
    let n = mouth.len().min(env.len());
    let k = lag.unsigned_abs() as usize;
    if k >= n {
        return Vec::new();
    }
    let (a, b) = if lag >= 0 {
        (&mouth[k..n], &env[..n - k])
    } else {
        (&mouth[..n - k], &env[k..n])
    };
    let w = local_window(n);
    if a.len() < w {
        return Vec::new();
    }
    (0..=a.len() - w)
        .map(|t| pearson(&a[t..t + w], &b[t..t + w]))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn roi_and_lags() {
        let b = FaceBox {
            x1: 100.0,
            y1: 50.0,
            x2: 300.0,
            y2: 250.0,
            score: 1.0,
            landmarks: None,
        };
        // rows 50 + 0.62·200 = 174 … 50 + 0.96·200 = 242; cols 100 + 40 = 140 … 100 + 160 = 260.
        assert_eq!(mouth_rect(&b, 512, 512), Some([140, 174, 260, 242]));
        assert_eq!(mouth_rect(&b, 200, 200), Some([140, 174, 200, 200]));
        assert_eq!(max_lag(80), 8);
        assert_eq!(max_lag(24), 3);
        assert_eq!(max_lag(4), 1);
        assert_eq!(local_window(80), 16);
        assert_eq!(local_window(10), 8);
    }

    /// A coherence verdict for [`lipsync`]'s hardened path.
    fn coherence(is_motion: bool) -> Option<MouthCoherence> {
        Some(MouthCoherence {
            persistence: Some(0.0),
            concentration: Some(if is_motion { 0.95 } else { 0.3 }),
            fields: 80,
            is_motion,
        })
    }

    /// A track whose every frame has a box and the mouth signal `signal`.
    fn track(signal: &[f64]) -> MouthTrack {
        MouthTrack {
            signal: signal.iter().map(|&s| Some(s)).collect(),
            variance: vec![Some(0.01); signal.len()],
        }
    }

    #[test]
    fn the_hardened_path_refuses_incoherent_motion_and_chance_correlations() {
        let n = 80;
        // A loudness of syllables, and a mouth signal that follows it.
        let env: Vec<f64> = (0..n).map(|i| 0.05 + 0.3 * ((i / 4) % 2) as f64).collect();
        let following: Vec<f64> = env.iter().map(|e| 2.0 + 20.0 * e).collect();
        // A mouth signal that moves but follows something else: its best correlation is chance.
        let mut rng = super::super::tests::Lcg(7);
        let unrelated: Vec<f64> = (0..n).map(|_| 2.0 + 6.0 * rng.next()).collect();
        let reference = lipsync(&track(&unrelated), &env, None);
        let best = reference.correlation.unwrap();
        assert_eq!(reference.status, LipsyncStatus::Measured);
        assert!(
            best.abs() < chance_correlation(n) && reference.sync_c > 0.45,
            "the reference's gate passes chance: {reference:?}"
        );
        let hardened = lipsync(&track(&unrelated), &env, coherence(true));
        assert_eq!(hardened.status, LipsyncStatus::ChanceCorrelation);
        assert_eq!(
            (hardened.lipsync, hardened.sync_c, hardened.sync_d),
            (0.0, 0.0, 1.0)
        );
        assert_eq!(
            hardened.correlation,
            Some(best),
            "the measured curve is kept to show why"
        );

        let synced = lipsync(&track(&following), &env, coherence(true));
        assert_eq!(synced.status, LipsyncStatus::Measured);
        assert!(synced.sync_c > 0.9, "{synced:?}");
        let painted = lipsync(&track(&following), &env, coherence(false));
        assert_eq!(painted.status, LipsyncStatus::IncoherentMouthMotion);
        assert_eq!((painted.sync_c, painted.sync_d), (0.0, 1.0));
        assert!(painted.coherence.is_some_and(|c| !c.is_motion));
        // A still mouth is still "no mouth motion", whatever the coherence says.
        let still = lipsync(&track(&vec![0.1; n]), &env, coherence(false));
        assert_eq!(still.status, LipsyncStatus::NoMouthMotion);
    }

    #[test]
    fn envelope_windows() {
        // 640-sample windows: a loud window then a silent one, resampled to 3 points.
        let mut a = vec![0.5f32; 640];
        a.extend(vec![0.0f32; 640]);
        let e = audio_envelope(&a, 3);
        assert!((e[0] - 0.5).abs() < 1e-6 && (e[1] - 0.25).abs() < 1e-6 && e[2] == 0.0);
        assert_eq!(audio_envelope(&[], 4), vec![0.0; 4]);
        assert_eq!(audio_envelope(&[0.1; 10], 2).len(), 2);
    }
}
