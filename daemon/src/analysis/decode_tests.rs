//! Tests of the sandboxed decoder: a good clip decodes like the reference (80 RGB frames, 16 kHz mono
//! audio), and every hostile file gets its own `bad_output` reason within the time limit. Inputs are
//! generated with the host's ffmpeg (lavfi sources), so no fixture is checked in.

use super::*;
use crate::analysis::components;
use std::future::Future;
use std::process::Command as StdCommand;
use std::time::Instant as StdInstant;
use tempfile::TempDir;

/// Every test finishes well within this, hostile inputs included.
const TEST_LIMIT: Duration = Duration::from_secs(60);

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, fut)
        .await
        .expect("the decoder must answer within the test limit")
}

/// Runs the host's ffmpeg to make a test input; `args` go between the global flags and the output.
fn ffmpeg(dir: &TempDir, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.path().join(name);
    let result = StdCommand::new("ffmpeg")
        .args(["-y", "-hide_banner", "-loglevel", "error", "-nostdin"])
        .args(args)
        .arg(&out)
        .output()
        .expect("ffmpeg must be installed to run these tests (apt-get install ffmpeg)");
    assert!(
        result.status.success(),
        "generating {name} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// `seconds` of `size` testsrc at `rate` fps plus a 440 Hz sine, H.264 + AAC in MP4.
fn av_clip(dir: &TempDir, name: &str, size: &str, rate: u32, seconds: f64, extra: &[&str]) -> PathBuf {
    let video = format!("testsrc=size={size}:rate={rate}:duration={seconds}");
    let audio = format!("sine=frequency=440:duration={seconds}");
    let mut args = vec![
        "-f", "lavfi", "-i", &video, "-f", "lavfi", "-i", &audio, "-c:v", "libx264", "-pix_fmt", "yuv420p",
        "-c:a", "aac",
    ];
    args.extend_from_slice(extra);
    ffmpeg(dir, name, &args)
}

/// Output options of a quick H.264 + AAC encode.
const FAST_H264_AAC: [&str; 6] = ["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"];

/// A file made from lavfi `sources` (one `-f lavfi -i` each) with the output options `options`.
fn lavfi(dir: &TempDir, name: &str, sources: &[&str], options: &[&str]) -> PathBuf {
    let mut args = Vec::new();
    for source in sources {
        args.extend_from_slice(&["-f", "lavfi", "-i", source]);
    }
    args.extend_from_slice(options);
    ffmpeg(dir, name, &args)
}

/// A cheap 64×64 clip with audio.
fn small_clip(dir: &TempDir, name: &str, seconds: f64) -> PathBuf {
    av_clip(dir, name, "64x64", 25, seconds, &["-preset", "ultrafast"])
}

fn reason(result: Result<impl fmt::Debug, DecodeError>) -> BadOutputReason {
    match result {
        Ok(v) => panic!("expected a bad output, got {v:?}"),
        Err(DecodeError::Infra(e)) => panic!("expected a bad output, got an infrastructure error: {e}"),
        Err(DecodeError::BadOutput(b)) => {
            assert!(!b.detail.is_empty(), "{:?} has no detail", b.reason);
            assert!(b.detail.len() <= 400, "detail too long: {}", b.detail);
            b.reason
        }
    }
}

/// The `bad_output` reason of decoding `path`: the same whether the frames come as RGB or as grey
/// (the builtin backend's delivery), so a file is refused alike by every backend.
async fn decode_reason(path: &Path, info: &ProbeInfo, limits: &DecodeLimits) -> BadOutputReason {
    let rgb = reason(within(decode(path, info, limits)).await);
    assert_eq!(
        reason(decode_grey(path, info, limits).await),
        rgb,
        "{}",
        path.display()
    );
    rgb
}

/// [`decode`] with grey frames (dropped as they come), within the test limit.
async fn decode_grey(path: &Path, info: &ProbeInfo, limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    let (buffers, mut drop_frame) = (FrameBuffers::new(0), |_| {});
    within(decode_each(
        path,
        info,
        limits,
        PixelFormat::Grey,
        &buffers,
        &mut drop_frame,
    ))
    .await
}

async fn probe_reason(path: &Path, limits: &DecodeLimits) -> BadOutputReason {
    let started = StdInstant::now();
    let r = reason(within(probe(path, limits)).await);
    assert!(
        started.elapsed() < limits.probe_timeout + Duration::from_secs(2),
        "{r} took {:?}",
        started.elapsed()
    );
    r
}

fn rms(samples: &[f32]) -> f64 {
    let sum: f64 = samples.iter().map(|s| f64::from(*s) * f64::from(*s)).sum();
    (sum / samples.len().max(1) as f64).sqrt()
}

// --- the reference's behaviour ----------------------------------------------------------------

/// Every sampled frame of `path`, decoded in `format`.
async fn frames_in(path: &Path, format: PixelFormat) -> Vec<Frame> {
    let limits = DecodeLimits::default();
    let info = within(probe(path, &limits)).await.unwrap();
    let (buffers, mut frames) = (FrameBuffers::new(0), Vec::new());
    let mut keep = |frame| frames.push(frame);
    within(decode_each(path, &info, &limits, format, &buffers, &mut keep))
        .await
        .unwrap();
    frames
}

#[tokio::test]
async fn grey_frames_are_the_grey_of_the_rgb_frames_in_either_luma_range_and_from_rgb_streams() {
    let dir = TempDir::new().unwrap();
    let limited = av_clip(&dir, "limited.mp4", "128x96", 25, 1.0, &["-preset", "ultrafast"]);
    // The same pictures in full range: luma 0–255, signalled in the H.264 stream.
    let full = av_clip(
        &dir,
        "full.mp4",
        "128x96",
        25,
        1.0,
        &[
            "-preset",
            "ultrafast",
            "-vf",
            "scale=out_range=full",
            "-pix_fmt",
            "yuvj420p",
        ],
    );
    // RGB-coded H.264 (High 4:4:4, gbrp), which has no luma plane: converted before extraction.
    let rgb_coded = lavfi(
        &dir,
        "rgb.mp4",
        &["testsrc=size=128x96:rate=25:duration=1", "sine=duration=1"],
        &["-c:v", "libx264rgb", "-preset", "ultrafast", "-c:a", "aac"],
    );
    for path in [&limited, &full, &rgb_coded] {
        let rgb = frames_in(path, PixelFormat::Rgb24).await;
        let grey = frames_in(path, PixelFormat::Grey).await;
        assert_eq!(rgb.len(), 25);
        assert_eq!(grey.len(), rgb.len());
        let (mut total, mut count, mut worst) = (0u64, 0u64, Vec::new());
        for (g, c) in grey.iter().zip(&rgb) {
            assert_eq!((g.format, g.width, g.height), (PixelFormat::Grey, 128, 96));
            assert_eq!(g.pixels.len(), 128 * 96);
            let of_rgb = components::Grey::from_frame(c).unwrap();
            for (&a, &b) in g.pixels.iter().zip(&of_rgb.px) {
                let d = u64::from(a.abs_diff(b));
                total += d;
                count += 1;
                worst.push(d);
            }
        }
        // The luma is what an RGB conversion rebuilds grey from: equal up to the RGB round trip's
        // rounding (and clipping, on testsrc's saturated bars). A range taken wrongly would be off by
        // up to 16–20 levels nearly everywhere.
        worst.sort_unstable();
        let mean = total as f64 / count as f64;
        let p99 = worst[worst.len() * 99 / 100];
        assert!(
            mean < 1.5 && p99 <= 6,
            "{}: mean {mean:.2}, p99 {p99}",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_good_clip_decodes_to_the_reference_samples() {
    let dir = TempDir::new().unwrap();
    let path = av_clip(&dir, "good.mp4", "512x512", 25, 5.0, &[]);
    let limits = DecodeLimits::default();

    let info = within(probe(&path, &limits)).await.unwrap();
    assert_eq!(info.format_name, "mov,mp4,m4a,3gp,3g2,mj2");
    assert_eq!(info.video.codec, "h264");
    assert_eq!((info.video.width, info.video.height), (512, 512));
    assert!((info.video.fps - 25.0).abs() < 1e-9);
    assert_eq!(info.video.nb_frames, Some(125));
    assert_eq!(info.total_frames, 125);
    assert!(info.frame_count_declared);
    assert!((info.duration_secs - 5.0).abs() < 0.05, "{}", info.duration_secs);
    assert_eq!(info.audio.codec, "aac");
    assert!(info.audio.sample_rate > 0 && info.audio.channels == 1);
    assert!((info.audio.duration_secs - 5.0).abs() < 0.1);
    info.check_expectation(&Expectation::new(5.0, 5.0)).unwrap();

    let decoded = within(decode(&path, &info, &limits)).await.unwrap();
    assert_eq!(decoded.frames.len(), 80);
    assert_eq!(decoded.frame_indices, sample_indices(125, 80));
    assert_eq!(decoded.frame_indices[1], 1);
    assert_eq!(decoded.frame_indices[79], 123);
    assert_eq!(decoded.decoded_frames, 125);
    assert_eq!(decoded.total_frames, 125);
    assert!((decoded.fps - 25.0).abs() < 1e-9);
    for frame in &decoded.frames {
        assert_eq!((frame.width, frame.height), (512, 512));
        assert_eq!(frame.pixels.len(), 512 * 512 * 3);
    }
    // testsrc moves: the samples are distinct frames, not one frame repeated.
    assert_ne!(decoded.frames[0].pixels, decoded.frames[79].pixels);
    assert_eq!(decoded.audio_sample_rate, 16_000);
    let n = decoded.audio.len();
    assert!((79_000..=81_000).contains(&n), "{n} samples");
    let level = rms(&decoded.audio);
    // lavfi's sine has amplitude 1/8: RMS 0.088.
    assert!((0.06..0.11).contains(&level), "rms {level}");
    assert!(decoded.audio.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
    eprintln!(
        "5 s 512x512 25 fps: probe {:.3} s, decode {:.3} s",
        info.probe_secs, decoded.decode_secs
    );
}

#[test]
fn a_grey_frame_reads_as_grey_everywhere() {
    let frame = Frame::grey(2, 1, vec![10, 200]);
    assert!(frame.is_well_formed());
    assert_eq!(frame.pixel(1, 0), Some([200, 200, 200]));
    assert_eq!(frame.pixel(2, 0), None);
    // What a colour model is given: each grey value as R = G = B.
    assert_eq!(&*frame.rgb_pixels(), &[10, 10, 10, 200, 200, 200]);
    // Its grey plane is itself (RGB → grey would round R = G = B = v to v as well).
    let grey = components::Grey::from_frame(&frame).unwrap();
    assert_eq!(grey.px, vec![10, 200]);
    let as_rgb = Frame::rgb(2, 1, frame.rgb_pixels().into_owned());
    assert_eq!(components::Grey::from_frame(&as_rgb).unwrap().px, grey.px);
    // A buffer of RGB length is not a well-formed grey frame.
    assert!(!Frame::grey(2, 1, vec![0; 6]).is_well_formed());
    assert!(components::Grey::from_frame(&Frame::grey(2, 1, vec![0; 6])).is_none());
    // Debug output names the formats as they serialise.
    for format in [PixelFormat::Rgb24, PixelFormat::Grey] {
        assert_eq!(serde_json::to_value(format).unwrap(), format.name());
    }
}

#[tokio::test]
async fn frames_are_in_rgb_order() {
    let dir = TempDir::new().unwrap();
    // Left half pure red, right half pure blue: a swapped channel order cannot pass both checks.
    let path = ffmpeg(
        &dir,
        "redblue.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=red:size=32x64:rate=25:duration=1[a];color=c=blue:size=32x64:rate=25:duration=1[b];\
             [a][b]hstack",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    );
    let limits = DecodeLimits::default();
    let (info, decoded) = within(probe_and_decode(&path, &limits, &Expectation::new(1.0, 1.0)))
        .await
        .unwrap();
    assert_eq!(info.total_frames, 25);
    assert_eq!(decoded.frames.len(), 25, "every frame when there are at most 80");
    assert_eq!(decoded.frame_indices, (0..25).collect::<Vec<_>>());
    let frame = &decoded.frames[12];
    let [r, g, b] = frame.pixel(8, 32).unwrap();
    assert!(r > 230 && g < 30 && b < 30, "red decoded as {r},{g},{b}");
    let [r, g, b] = frame.pixel(56, 32).unwrap();
    assert!(r < 30 && g < 30 && b > 230, "blue decoded as {r},{g},{b}");
    assert_eq!(frame.pixel(64, 0), None);
}

#[test]
fn sample_indices_match_the_reference() {
    let python = |total: usize| -> Vec<usize> {
        // int(i * total / 80) with float division, as utils.py computes it.
        (0..80).map(|i| ((i * total) as f64 / 80.0) as usize).collect()
    };
    for total in [81, 99, 125, 126, 250, 1_000, 7_201, 123_457] {
        let indices = sample_indices(total, 80);
        assert_eq!(indices, python(total), "total {total}");
        assert!(indices.windows(2).all(|w| w[0] < w[1]));
        assert!(*indices.last().unwrap() < total);
    }
    assert_eq!(sample_indices(125, 80)[..5], [0, 1, 3, 4, 6]);
    assert_eq!(sample_indices(50, 80), (0..50).collect::<Vec<_>>());
    assert_eq!(sample_indices(80, 80), (0..80).collect::<Vec<_>>());
    // A count of zero is treated as 80, as the reference does.
    assert_eq!(sample_indices(0, 80), (0..80).collect::<Vec<_>>());
}

#[tokio::test]
async fn matroska_without_a_frame_count_is_estimated_from_duration() {
    let dir = TempDir::new().unwrap();
    let path = av_clip(&dir, "clip.mkv", "64x64", 25, 4.0, &["-preset", "ultrafast"]);
    let limits = DecodeLimits::default();
    let (info, decoded) = within(probe_and_decode(&path, &limits, &Expectation::new(4.0, 5.0)))
        .await
        .unwrap();
    assert_eq!(info.format_name, "matroska,webm");
    assert!(!info.frame_count_declared);
    // cv2's estimate: container duration (4.02 s with the audio's padding) × 25, rounded.
    assert!((100..=101).contains(&info.total_frames), "{}", info.total_frames);
    assert_eq!(decoded.frames.len(), 80);
    assert_eq!(decoded.decoded_frames, 100);
}

// --- hostile files ------------------------------------------------------------------------------

#[tokio::test]
async fn zero_length_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("empty.mp4");
    std::fs::write(&path, b"").unwrap();
    assert_eq!(
        probe_reason(&path, &DecodeLimits::default()).await,
        BadOutputReason::EmptyFile
    );
}

#[tokio::test]
async fn text_file_named_mp4() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("text.mp4");
    std::fs::write(&path, "this is not a video\n".repeat(100)).unwrap();
    // (ffprobe tries the MP4 demuxer on it because of the name, and finds no index.)
    let err = within(probe(&path, &DecodeLimits::default())).await.unwrap_err();
    assert_eq!(err.reason(), Some(BadOutputReason::NotAVideo));
    // The host path never leaks into the detail.
    let detail = &err.bad_output().unwrap().detail;
    assert!(!detail.contains(dir.path().to_str().unwrap()), "{detail}");
}

#[tokio::test]
async fn truncated_mp4_without_its_index() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "full.mp4", 3.0);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(
        probe_reason(&cut, &DecodeLimits::default()).await,
        BadOutputReason::Truncated
    );
}

#[tokio::test]
async fn truncated_mp4_with_its_index_first() {
    let dir = TempDir::new().unwrap();
    let path = av_clip(
        &dir,
        "full.mp4",
        "64x64",
        25,
        4.0,
        &["-preset", "ultrafast", "-movflags", "+faststart"],
    );
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let limits = DecodeLimits::default();
    // The header is intact and still declares 100 frames...
    let info = within(probe(&cut, &limits)).await.unwrap();
    assert_eq!(info.total_frames, 100);
    // ...which the data cannot deliver.
    assert_eq!(
        decode_reason(&cut, &info, &limits).await,
        BadOutputReason::Truncated
    );
}

#[tokio::test]
async fn audio_only() {
    let dir = TempDir::new().unwrap();
    let path = ffmpeg(
        &dir,
        "audio.mp4",
        &["-f", "lavfi", "-i", "sine=duration=2", "-c:a", "aac"],
    );
    assert_eq!(
        probe_reason(&path, &DecodeLimits::default()).await,
        BadOutputReason::NoVideoStream
    );
}

#[tokio::test]
async fn video_only() {
    let dir = TempDir::new().unwrap();
    let path = ffmpeg(
        &dir,
        "video.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=25:duration=2",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ],
    );
    assert_eq!(
        probe_reason(&path, &DecodeLimits::default()).await,
        BadOutputReason::NoAudioStream
    );
}

#[tokio::test]
async fn decompression_bomb_is_refused_from_the_header() {
    let dir = TempDir::new().unwrap();
    // One black 8192×8192 picture: a small file that would decode to 100 MB per frame.
    let path = ffmpeg(
        &dir,
        "bomb.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=black:size=8192x8192:rate=1:duration=1",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono",
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    );
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < 512 << 10, "the bomb should be small: {size} bytes");
    let started = StdInstant::now();
    assert_eq!(
        probe_reason(&path, &DecodeLimits::default()).await,
        BadOutputReason::ResolutionTooLarge
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Were the header limits relaxed, the address-space limit would still stop it, as a value.
    let relaxed = DecodeLimits {
        max_width: 8192,
        max_height: 8192,
        max_pixels: 8192 * 8192,
        address_space_bytes: 400 << 20,
        ..DecodeLimits::default()
    };
    let info = within(probe(&path, &relaxed)).await.unwrap();
    // Where the allocation fails decides which of the two reasons; both are the file's.
    let rgb = reason(within(decode(&path, &info, &relaxed)).await);
    let grey = reason(decode_grey(&path, &info, &relaxed).await);
    for (format, r) in [("rgb", rgb), ("grey", grey)] {
        assert!(
            matches!(
                r,
                BadOutputReason::DecoderFailed | BadOutputReason::DecoderResourceLimit
            ),
            "{format}: {r}"
        );
    }
}

#[tokio::test]
async fn resolution_limits_are_checked_before_decoding() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 1.0);
    let narrow = DecodeLimits {
        max_width: 32,
        ..DecodeLimits::default()
    };
    assert_eq!(
        probe_reason(&path, &narrow).await,
        BadOutputReason::ResolutionTooLarge
    );
    let few_pixels = DecodeLimits {
        max_pixels: 64 * 63,
        ..DecodeLimits::default()
    };
    assert_eq!(
        probe_reason(&path, &few_pixels).await,
        BadOutputReason::ResolutionTooLarge
    );
    // 25 frames of 64×64 RGB are 307,200 bytes: over a smaller memory budget.
    let small_budget = DecodeLimits {
        max_sampled_bytes: 300_000,
        ..DecodeLimits::default()
    };
    assert_eq!(
        probe_reason(&path, &small_budget).await,
        BadOutputReason::ResolutionTooLarge
    );
    let big_minimum = DecodeLimits {
        min_side: 128,
        ..DecodeLimits::default()
    };
    assert_eq!(
        probe_reason(&path, &big_minimum).await,
        BadOutputReason::ResolutionTooSmall
    );

    // And decode re-checks a hand-made ProbeInfo instead of trusting it.
    let mut info = within(probe(&path, &DecodeLimits::default())).await.unwrap();
    info.video.width = 100_000;
    info.video.height = 100_000;
    assert_eq!(
        decode_reason(&path, &info, &DecodeLimits::default()).await,
        BadOutputReason::ResolutionTooLarge
    );
}

#[tokio::test]
async fn tiny_resolution() {
    let dir = TempDir::new().unwrap();
    let path = av_clip(&dir, "tiny.mp4", "8x8", 25, 1.0, &["-preset", "ultrafast"]);
    assert_eq!(
        probe_reason(&path, &DecodeLimits::default()).await,
        BadOutputReason::ResolutionTooSmall
    );
}

#[tokio::test]
async fn hours_long_declared_duration() {
    let dir = TempDir::new().unwrap();
    // Three frames an hour apart: a 3-hour declared duration in a few hundred bytes.
    let path = ffmpeg(
        &dir,
        "hours.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=black:size=64x64:rate=1/3600",
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=8000:cl=mono:d=1",
            "-frames:v",
            "3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
        ],
    );
    let err = within(probe(&path, &DecodeLimits::default())).await.unwrap_err();
    assert_eq!(err.reason(), Some(BadOutputReason::TooLong), "{err}");
    assert!(err.to_string().contains("10800"), "{err}");
}

#[tokio::test]
async fn longer_than_the_limit() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 3.0);
    let limits = DecodeLimits {
        max_duration_secs: 2.0,
        ..DecodeLimits::default()
    };
    assert_eq!(probe_reason(&path, &limits).await, BadOutputReason::TooLong);
}

#[tokio::test]
async fn duration_must_match_the_challenge() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 3.0);
    let limits = DecodeLimits::default();
    let info = within(probe(&path, &limits)).await.unwrap();

    // Matches: 3 s of audio, max 5 s.
    info.check_expectation(&Expectation::new(3.0, 5.0)).unwrap();
    // Within the tolerance on both sides.
    info.check_expectation(&Expectation::new(3.4, 5.0)).unwrap();
    info.check_expectation(&Expectation::new(3.0, 2.6)).unwrap();
    // Audio longer than max_seconds: the video only has to reach max_seconds.
    info.check_expectation(&Expectation::new(9.0, 3.0)).unwrap();

    // Too short for the challenge audio.
    let err = info.check_expectation(&Expectation::new(4.0, 5.0)).unwrap_err();
    assert_eq!(err.reason, BadOutputReason::WrongDuration);
    assert!(
        err.detail.contains("3.0") && err.detail.contains("3.500"),
        "{}",
        err.detail
    );
    // Longer than max_seconds.
    let err = info.check_expectation(&Expectation::new(2.0, 2.0)).unwrap_err();
    assert_eq!(err.reason, BadOutputReason::WrongDuration);
    assert!(err.detail.contains("2.500"), "{}", err.detail);
    // A tighter tolerance.
    let strict = Expectation {
        tolerance_secs: 0.0,
        ..Expectation::new(3.2, 5.0)
    };
    assert_eq!(
        info.check_expectation(&strict).unwrap_err().reason,
        BadOutputReason::WrongDuration
    );

    // probe_and_decode refuses before decoding.
    assert_eq!(
        reason(within(probe_and_decode(&path, &limits, &Expectation::new(5.0, 5.0))).await),
        BadOutputReason::WrongDuration
    );
}

#[tokio::test]
async fn audio_and_video_lengths_must_agree() {
    let dir = TempDir::new().unwrap();
    let path = ffmpeg(
        &dir,
        "mismatch.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=25:duration=3",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
        ],
    );
    let info = within(probe(&path, &DecodeLimits::default())).await.unwrap();
    let err = info.check_expectation(&Expectation::new(3.0, 5.0)).unwrap_err();
    assert_eq!(err.reason, BadOutputReason::AvDurationMismatch, "{err}");
}

#[tokio::test]
async fn absurd_frame_rate() {
    let dir = TempDir::new().unwrap();
    let path = av_clip(&dir, "fast.mp4", "64x64", 240, 0.5, &["-preset", "ultrafast"]);
    assert_eq!(
        probe_reason(&path, &DecodeLimits::default()).await,
        BadOutputReason::BadFrameRate
    );
}

#[tokio::test]
async fn decoder_timeouts() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 2.0);
    // Matroska: probed by ffprobe (a plain MP4's header is read in-process, with nothing to time out).
    let mkv = small_clip(&dir, "clip.mkv", 2.0);
    let quick_probe = DecodeLimits {
        probe_timeout: Duration::from_millis(1),
        ..DecodeLimits::default()
    };
    assert_eq!(
        probe_reason(&mkv, &quick_probe).await,
        BadOutputReason::DecoderTimeout
    );

    let info = within(probe(&path, &DecodeLimits::default())).await.unwrap();
    let quick_decode = DecodeLimits {
        decode_timeout: Duration::from_millis(1),
        ..DecodeLimits::default()
    };
    let started = StdInstant::now();
    assert_eq!(
        decode_reason(&path, &info, &quick_decode).await,
        BadOutputReason::DecoderTimeout
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn output_beyond_the_declared_content_is_cut_off() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 3.0);
    let limits = DecodeLimits::default();
    let info = within(probe(&path, &limits)).await.unwrap();
    assert_eq!(info.total_frames, 75);

    // A header that under-declares its frames: decoding stops once the slack is used up.
    let few = ProbeInfo {
        total_frames: 10,
        ..info.clone()
    };
    let err = within(decode(&path, &few, &limits)).await.unwrap_err();
    assert_eq!(
        err.reason(),
        Some(BadOutputReason::DecoderOutputTooLarge),
        "{err}"
    );

    // More audio than max_duration_secs allows: RLIMIT_FSIZE stops the writer.
    let short = DecodeLimits {
        max_duration_secs: 1.0,
        ..DecodeLimits::default()
    };
    let err = within(decode(&path, &info, &short)).await.unwrap_err();
    assert_eq!(
        err.reason(),
        Some(BadOutputReason::DecoderOutputTooLarge),
        "{err}"
    );

    // Less audio than declared.
    let mut long_audio = info.clone();
    long_audio.audio.duration_secs = 10.0;
    let err = within(decode(&path, &long_audio, &limits)).await.unwrap_err();
    assert_eq!(err.reason(), Some(BadOutputReason::Truncated), "{err}");
    assert!(err.to_string().contains("audio"), "{err}");
}

#[tokio::test]
async fn containers_outside_the_whitelist() {
    let dir = TempDir::new().unwrap();
    let good = small_clip(&dir, "good.mp4", 1.0);
    let ts = ffmpeg(
        &dir,
        "ts.mp4",
        &["-i", good.to_str().unwrap(), "-c", "copy", "-f", "mpegts"],
    );
    assert_eq!(
        probe_reason(&ts, &DecodeLimits::default()).await,
        BadOutputReason::UnsupportedContainer
    );
    // An HLS playlist would make the demuxer open another local file: refused by name.
    let hls = dir.path().join("playlist.mp4");
    std::fs::write(
        &hls,
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{}\n#EXT-X-ENDLIST\n",
            good.display()
        ),
    )
    .unwrap();
    assert_eq!(
        probe_reason(&hls, &DecodeLimits::default()).await,
        BadOutputReason::UnsupportedContainer
    );
    // A PNG named .mp4.
    let png = ffmpeg(
        &dir,
        "image.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=red:size=64x64",
            "-frames:v",
            "1",
            "-c:v",
            "png",
            "-f",
            "image2",
        ],
    );
    let r = probe_reason(&png, &DecodeLimits::default()).await;
    assert!(
        matches!(
            r,
            BadOutputReason::UnsupportedContainer | BadOutputReason::NotAVideo
        ),
        "{r}"
    );
}

#[tokio::test]
async fn codecs_outside_the_whitelist() {
    let dir = TempDir::new().unwrap();
    let path = lavfi(
        &dir,
        "ffv1.mkv",
        &["testsrc=size=64x64:rate=25:duration=1", "sine=duration=1"],
        &["-c:v", "ffv1", "-c:a", "aac"],
    );
    assert_eq!(
        probe_reason(&path, &DecodeLimits::default()).await,
        BadOutputReason::UnsupportedCodec
    );
}

#[tokio::test]
async fn symlinks_and_directories_are_not_followed() {
    let dir = TempDir::new().unwrap();
    let good = small_clip(&dir, "good.mp4", 1.0);
    let link = dir.path().join("link.mp4");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    assert_eq!(
        probe_reason(&link, &DecodeLimits::default()).await,
        BadOutputReason::NotARegularFile
    );
    let info = within(probe(&good, &DecodeLimits::default())).await.unwrap();
    assert_eq!(
        decode_reason(&link, &info, &DecodeLimits::default()).await,
        BadOutputReason::NotARegularFile
    );
    let sub = dir.path().join("dir.mp4");
    std::fs::create_dir(&sub).unwrap();
    assert_eq!(
        probe_reason(&sub, &DecodeLimits::default()).await,
        BadOutputReason::NotARegularFile
    );
}

#[tokio::test]
async fn file_size_cap() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 1.0);
    let limits = DecodeLimits {
        max_file_bytes: 1_000,
        ..DecodeLimits::default()
    };
    assert_eq!(probe_reason(&path, &limits).await, BadOutputReason::TooLarge);
}

#[tokio::test]
async fn resource_limits_are_in_force() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 1.0);
    let mkv = small_clip(&dir, "clip.mkv", 1.0);
    // 48 MiB of address space cannot even map ffprobe's (or ffmpeg's) libraries: the limit is applied.
    let limits = DecodeLimits {
        address_space_bytes: 48 << 20,
        ..DecodeLimits::default()
    };
    let err = within(probe(&mkv, &limits)).await.unwrap_err();
    // The tool never got to read the file: a host misconfiguration, not the miner's fault.
    assert!(matches!(err, DecodeError::Infra(_)), "{err}");
    let info = within(probe(&path, &limits)).await.unwrap();
    let err = within(decode(&path, &info, &limits)).await.unwrap_err();
    assert!(matches!(err, DecodeError::Infra(_)), "{err}");
}

/// Default limits with one tool pointing nowhere.
fn missing_tool(tool: impl Fn(&mut ToolPaths) -> &mut PathBuf) -> DecodeLimits {
    let mut limits = DecodeLimits::default();
    *tool(&mut limits.tools) = PathBuf::from("/nonexistent/tool");
    limits
}

#[tokio::test]
async fn missing_tools_are_the_hosts_fault() {
    let dir = TempDir::new().unwrap();
    // Matroska needs ffprobe (a plain MP4 does not; ffmpeg's absence shows when decoding).
    let path = small_clip(&dir, "clip.mkv", 1.0);
    let no_ffprobe = missing_tool(|t| &mut t.ffprobe);
    let err = within(probe(&path, &no_ffprobe)).await.unwrap_err();
    assert!(matches!(err, DecodeError::Infra(_)), "{err}");
    assert!(!err.is_miners_fault());
    assert!(within(check_tools(&no_ffprobe)).await.is_err());

    let no_prlimit = missing_tool(|t| &mut t.prlimit);
    let err = within(probe(&path, &no_prlimit)).await.unwrap_err();
    assert!(matches!(err, DecodeError::Infra(_)), "{err}");

    let mp4 = small_clip(&dir, "clip.mp4", 1.0);
    let no_ffmpeg = missing_tool(|t| &mut t.ffmpeg);
    let info = within(probe(&mp4, &no_ffmpeg)).await.unwrap();
    let err = within(decode(&mp4, &info, &no_ffmpeg)).await.unwrap_err();
    assert!(matches!(err, DecodeError::Infra(_)), "{err}");

    let missing = dir.path().join("missing.mp4");
    let err = within(probe(&missing, &DecodeLimits::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, DecodeError::Infra(_)), "{err}");

    within(check_tools(&DecodeLimits::default())).await.unwrap();
}

#[tokio::test]
async fn scratch_directories_are_removed() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 1.0);
    let count = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("talkheadd-decode-{}-", std::process::id()))
            })
            .count()
    };
    let limits = DecodeLimits::default();
    let info = within(probe(&path, &limits)).await.unwrap();
    within(decode(&path, &info, &limits)).await.unwrap();
    // Other tests of this process may be running: only check that ours did not pile up.
    assert!(count() < 16);
}

// --- pieces -------------------------------------------------------------------------------------

#[test]
fn frame_plan_sends_the_wanted_frames_and_the_two_sentinels() {
    // 125 frames, slack 2: the 80 sampled, frame 122 (must exist, else truncated), frame 124 (the last).
    let wanted = sample_indices(125, 80);
    let plan = FramePlan::new(&wanted, 125, 2);
    assert_eq!(plan.limit, 127);
    let kept: Vec<usize> = plan.sent.iter().filter(|(_, k)| *k).map(|(n, _)| *n).collect();
    assert_eq!(kept, wanted);
    let extra: Vec<usize> = plan.sent.iter().filter(|(_, k)| !*k).map(|(n, _)| *n).collect();
    assert_eq!(extra, vec![122, 124]);
    let filter = plan.select_filter();
    assert!(
        filter.starts_with("select=eq(n\\,0)+eq(n\\,1)+eq(n\\,3)+"),
        "{filter}"
    );
    assert!(filter.ends_with("+eq(n\\,124)+gte(n\\,127)"), "{filter}");
    // A sentinel that is also wanted is kept, not sent twice.
    let all = FramePlan::new(&[0, 1, 2], 3, 2);
    assert_eq!(all.sent, vec![(0, true), (1, true), (2, true)]);
}

#[test]
fn frame_sink_keeps_only_wanted_frames_and_bounds_the_count() {
    // 4 declared frames, no slack: frames 0 and 2 wanted, 3 is the last (a sentinel), 4 is too many.
    let plan = FramePlan::new(&[0, 2], 4, 0);
    assert_eq!(plan.sent, vec![(0, true), (2, true), (3, false)]);
    let mut kept = Vec::new();
    let mut keep = |frame: Frame| kept.push(frame);
    // Recycled buffers holding an earlier video's pixels: none of it may show in a frame.
    let buffers = FrameBuffers::new(1 << 10);
    buffers.recycle((0..4).map(|_| vec![0xEE; 6]));
    let mut sink = FrameSink::new(2, 1, PixelFormat::Rgb24, 6, &plan, &buffers, &mut keep);
    let feed = |sink: &mut FrameSink<'_>, frame: u8| {
        // Two writes per frame, as pipe reads split arbitrarily.
        sink.space()[..4].copy_from_slice(&[frame; 4]);
        sink.commit(4)?;
        sink.space()[..2].copy_from_slice(&[frame; 2]);
        sink.commit(2)
    };
    // ffmpeg sends frames 0, 2 and 3 of the plan.
    for frame in [0, 2, 3] {
        feed(&mut sink, frame).unwrap();
    }
    assert_eq!(sink.decoded, 4);
    assert_eq!(sink.kept_indices, vec![0, 2]);
    // Anything beyond the plan is frame `limit` or later.
    let err = feed(&mut sink, 4).unwrap_err();
    assert_eq!(output_reason(err), BadOutputReason::DecoderOutputTooLarge);
    // A frame cut short is not handed over; its buffer goes back to the store with the sink.
    sink.space()[..4].copy_from_slice(&[5; 4]);
    sink.commit(4).unwrap();
    drop(sink);
    assert_eq!(
        buffers.held_bytes(),
        6 * 2,
        "4 recycled, 2 handed over as frames, the last back"
    );
    // Each wanted frame was handed over once, in order, in its own buffer.
    assert_eq!(kept.len(), 2);
    assert_eq!(kept[0].pixels, vec![0; 6]);
    assert_eq!(kept[1].pixels, vec![2; 6]);
    assert_eq!(kept[1].pixel(1, 0), Some([2, 2, 2]));
}

/// The miner's reason of a sink's error (panics on a host error).
fn output_reason(err: RunError) -> BadOutputReason {
    match err {
        RunError::Output(b) => b.reason,
        other => panic!("expected a bad output, got {other}"),
    }
}

/// Writes `bytes` into `sink` as pipe reads would, at most `chunk` bytes per read (fewer when the
/// sink offers less space), stopping at the first error.
fn pour(sink: &mut impl Sink, bytes: &[u8], chunk: usize) -> Result<(), RunError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let space = sink.space();
        let n = space.len().min(chunk).min(rest.len());
        space[..n].copy_from_slice(&rest[..n]);
        sink.commit(n)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// A YUV4MPEG2 stream as ffmpeg writes it for 2×1 grey frames.
fn y4m_stream(range: &str, frames: &[[u8; 2]]) -> Vec<u8> {
    let mut bytes = format!("YUV4MPEG2 W2 H1 F25:1 Ip A0:0 Cmono{range}\n").into_bytes();
    for frame in frames {
        bytes.extend_from_slice(b"FRAME\n");
        bytes.extend_from_slice(frame);
    }
    bytes
}

#[test]
fn frame_sink_reads_grey_frames_from_y4m_and_expands_limited_range() {
    // 3 declared frames, no slack: 0 and 2 wanted (2 is also the last); ffmpeg sends only those.
    let plan = FramePlan::new(&[0, 2], 3, 0);
    let frames = [[16, 235], [126, 0]];
    for (range, chunk, expected) in [
        // Unsignalled is limited, as swscale takes it: 16 → 0, 235 → 255, 126 → 128.
        ("", 1, [[0, 255], [128, 0]]),
        (" XCOLORRANGE=LIMITED", 7, [[0, 255], [128, 0]]),
        (" XCOLORRANGE=FULL", 1 << 16, [[16, 235], [126, 0]]),
    ] {
        let mut kept = Vec::new();
        let mut keep = |frame: Frame| kept.push(frame);
        let buffers = FrameBuffers::new(1 << 10);
        // A recycled buffer still holding another video's pixels.
        buffers.recycle([vec![0xEE; 2]]);
        let mut sink = FrameSink::new(2, 1, PixelFormat::Grey, 2, &plan, &buffers, &mut keep);
        pour(&mut sink, &y4m_stream(range, &frames), chunk).unwrap();
        assert_eq!((sink.decoded, sink.kept_indices.clone()), (3, vec![0, 2]));
        // One frame more than the plan allows is too many, however it is framed.
        let extra = pour(&mut sink, b"FRAME\n\x10\x10", chunk).unwrap_err();
        assert_eq!(output_reason(extra), BadOutputReason::DecoderOutputTooLarge);
        drop(sink);
        let got: Vec<_> = kept.iter().map(|f| (f.format, f.pixels.clone())).collect();
        let want: Vec<_> = expected.iter().map(|p| (PixelFormat::Grey, p.to_vec())).collect();
        assert_eq!(got, want, "range {range:?}, reads of {chunk}");
    }
}

#[test]
fn frame_sink_refuses_y4m_it_did_not_ask_for_as_a_host_error() {
    let plan = FramePlan::new(&[0], 1, 0);
    let bad_streams: [(&[u8], &str); 4] = [
        (b"YUV4MPEG2 W4 H1 F25:1 Cmono\nFRAME\n", "4x1"),
        (b"YUV4MPEG2 W2 H1 F25:1 C420jpeg\nFRAME\n", "not mono"),
        (b"YUV4MPEG2 W2 H1 Cmono\nFRAMEX", "framing"),
        (&[b'Y'; 300], "never ends"),
    ];
    for (stream, why) in bad_streams {
        let mut keep = |_: Frame| panic!("no frame may come from {why}");
        let buffers = FrameBuffers::new(0);
        let mut sink = FrameSink::new(2, 1, PixelFormat::Grey, 2, &plan, &buffers, &mut keep);
        match pour(&mut sink, stream, 5) {
            Err(RunError::Infra(e)) => assert!(e.contains(why), "{why}: {e}"),
            other => panic!("{why}: expected a host error, got {other:?}"),
        }
    }
}

#[test]
fn a_decoder_that_could_not_allocate_its_pictures_is_at_its_limit_whatever_its_exit() {
    let input = Path::new("/collected/out.mp4");
    let finished = |exit, stderr: &str| Finished {
        exit,
        stderr: stderr.to_owned(),
    };
    let frames = |decoded, kept| FramesReceived {
        decoded,
        total: 125,
        slack: 2,
        kept,
    };
    let classify = |done: &Finished, received: &FramesReceived| {
        frames_failure(done, received, input).and_then(|e| e.reason())
    };
    let no_buffer = "[h264 @ 0x1] get_buffer() failed\n[h264 @ 0x1] thread_get_buffer() failed\n\
                     Error while decoding stream #0:0: Invalid data found when processing input";
    // Under RLIMIT_AS ffmpeg may exit 0 with no picture, or fail: the same limit either way.
    for exit in [Exit::Success, Exit::Code(1), Exit::Code(69)] {
        for received in [frames(0, 0), frames(40, 30)] {
            assert_eq!(
                classify(&finished(exit, no_buffer), &received),
                Some(BadOutputReason::DecoderResourceLimit),
                "{exit}"
            );
        }
    }
    let oom = "Error while decoding stream #0:0: Cannot allocate memory";
    assert_eq!(
        classify(&finished(Exit::Code(1), oom), &frames(125, 80)),
        Some(BadOutputReason::DecoderResourceLimit)
    );
    // Without an allocation failure: short is truncated, no frame is truncated, a failed exit fails.
    let corrupt = "Error while decoding stream #0:0: Invalid data found when processing input";
    assert_eq!(
        classify(&finished(Exit::Success, corrupt), &frames(40, 30)),
        Some(BadOutputReason::Truncated)
    );
    assert_eq!(
        classify(&finished(Exit::Success, corrupt), &frames(125, 0)),
        Some(BadOutputReason::Truncated)
    );
    assert_eq!(
        classify(&finished(Exit::Code(1), corrupt), &frames(125, 80)),
        Some(BadOutputReason::DecoderFailed)
    );
    // A complete decode that once could not get a buffer (and recovered) is fine.
    assert_eq!(
        classify(&finished(Exit::Success, no_buffer), &frames(125, 80)),
        None
    );
    let detail = frames_failure(&finished(Exit::Success, no_buffer), &frames(0, 0), input)
        .and_then(|e| e.bad_output().map(|b| b.detail.clone()))
        .unwrap();
    assert!(detail.contains("0 of 125 frames"), "{detail}");
}

#[test]
fn bounded_bytes_refuse_more_than_the_cap() {
    let mut sink = BoundedBytes::new(10);
    sink.space()[..8].copy_from_slice(b"12345678");
    sink.commit(8).unwrap();
    assert!(sink.space().len() >= 3);
    let err = sink.commit(3).unwrap_err();
    assert_eq!(output_reason(err), BadOutputReason::DecoderOutputTooLarge);
    assert_eq!(sink.bytes, b"12345678");
}

#[test]
fn rates_and_numbers_parse_leniently() {
    assert_eq!(parse_rate("25/1"), Some(25.0));
    assert!((parse_rate("30000/1001").unwrap() - 29.97).abs() < 1e-3);
    assert_eq!(parse_rate("0/0"), None);
    assert_eq!(parse_rate("1/0"), None);
    assert_eq!(parse_rate("-25/1"), None);
    assert_eq!(parse_rate("abc"), None);
    assert_eq!(parse_rate("24"), Some(24.0));
    assert_eq!(number(Some(&serde_json::json!("5.000000"))), Some(5.0));
    assert_eq!(number(Some(&serde_json::json!(512))), Some(512.0));
    assert_eq!(number(Some(&serde_json::json!("N/A"))), None);
    assert_eq!(number(Some(&serde_json::json!("inf"))), None);
    assert_eq!(number(None), None);
    assert_eq!(dimension(Some(&serde_json::json!(-5))), 0);
    assert_eq!(dimension(Some(&serde_json::json!(1e30))), u64::MAX);
}

#[test]
fn details_are_sanitised() {
    let input = Path::new("/var/lib/talkheadd/jobs/run-1/collected/c1.mp4");
    let line = "file:/var/lib/talkheadd/jobs/run-1/collected/c1.mp4: Invalid data\x1b[31m \u{202e}evil";
    let clean = sanitise(line, Some(input));
    assert_eq!(clean, "file:<input>: Invalid data?[31m ?evil");
    let long = sanitise(&"x".repeat(10_000), None);
    assert_eq!(long.chars().count(), DETAIL_CHARS);
    assert!(long.ends_with('…'));
    assert_eq!(last_line("a\nb\n\n  \n"), "b");
}

#[test]
fn header_validation_handles_hostile_json() {
    let limits = DecodeLimits::default();
    let stream = |extra: serde_json::Value| {
        let mut base = serde_json::json!({
            "index": 0, "codec_type": "video", "codec_name": "h264", "width": 512, "height": 512,
            "avg_frame_rate": "25/1", "r_frame_rate": "25/1", "duration": "5.0", "nb_frames": "125",
        });
        if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        base
    };
    let audio = serde_json::json!({
        "index": 1, "codec_type": "audio", "codec_name": "aac", "sample_rate": "44100", "channels": 1,
        "duration": "5.0",
    });
    let doc = |video: serde_json::Value| serde_json::json!({"streams": [video, audio.clone()], "format": {"format_name": "mov,mp4,m4a,3gp,3g2,mj2", "duration": "5.0"}});
    let check = |video: serde_json::Value| validate_header(&doc(video), 1_000, &limits).map(|_| ());
    check(stream(serde_json::json!({}))).unwrap();
    let cases = [
        (
            serde_json::json!({"width": 100_000, "height": 100_000}),
            BadOutputReason::ResolutionTooLarge,
        ),
        (
            serde_json::json!({"width": "huge"}),
            BadOutputReason::ResolutionTooSmall,
        ),
        (
            serde_json::json!({"height": null}),
            BadOutputReason::ResolutionTooSmall,
        ),
        (
            serde_json::json!({"avg_frame_rate": "0/0", "r_frame_rate": "0/0"}),
            BadOutputReason::BadFrameRate,
        ),
        (
            serde_json::json!({"avg_frame_rate": "0/0", "r_frame_rate": "1000/1"}),
            BadOutputReason::BadFrameRate,
        ),
        (
            serde_json::json!({"nb_frames": "99999999999"}),
            BadOutputReason::BadFrameRate,
        ),
        (serde_json::json!({"duration": "1e300"}), BadOutputReason::TooLong),
        (
            serde_json::json!({"codec_name": "bink"}),
            BadOutputReason::UnsupportedCodec,
        ),
        (
            serde_json::json!({"codec_type": "data"}),
            BadOutputReason::NoVideoStream,
        ),
        (
            serde_json::json!({"disposition": {"attached_pic": 1}}),
            BadOutputReason::NoVideoStream,
        ),
    ];
    for (patch, want) in cases {
        let got = check(stream(patch.clone())).unwrap_err();
        assert_eq!(got.reason(), Some(want), "{patch}: {got}");
    }
    // A stream with no duration falls back to the container's; none at all is refused.
    let mut v = stream(serde_json::json!({}));
    v.as_object_mut().unwrap().remove("duration");
    let mut d = doc(v);
    check_ok(&d, &limits);
    d["format"].as_object_mut().unwrap().remove("duration");
    d["streams"][1].as_object_mut().unwrap().remove("duration");
    assert_eq!(
        validate_header(&d, 1_000, &limits).unwrap_err().reason(),
        Some(BadOutputReason::WrongDuration)
    );
    // Garbage documents are refused, never a panic.
    for junk in [
        serde_json::json!(null),
        serde_json::json!([]),
        serde_json::json!({"format": 5}),
    ] {
        assert_eq!(
            validate_header(&junk, 1_000, &limits).unwrap_err().reason(),
            Some(BadOutputReason::NotAVideo)
        );
    }
}

fn check_ok(doc: &serde_json::Value, limits: &DecodeLimits) {
    validate_header(doc, 1_000, limits).unwrap();
}

#[test]
fn reason_codes_are_stable_and_unique() {
    let mut seen = std::collections::HashSet::new();
    for reason in BadOutputReason::ALL {
        let code = reason.as_str();
        assert!(seen.insert(code), "{code} twice");
        assert_eq!(serde_json::to_value(reason).unwrap(), serde_json::json!(code));
        assert_eq!(reason.to_string(), code);
        assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    }
}

#[test]
fn futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let limits = DecodeLimits::default();
    let path = Path::new("/nonexistent");
    let f = probe(path, &limits);
    assert_send(&f);
    let e = Expectation::new(1.0, 1.0);
    let g = probe_and_decode(path, &limits, &e);
    assert_send(&g);
    let h = check_tools(&limits);
    assert_send(&h);
}

/// The in-process MP4 header reading and ffprobe, through the same validation, on the same files.
async fn both_probes(path: &Path, limits: &DecodeLimits) -> (Option<ProbeInfo>, ProbeInfo) {
    let file = InputFile::check(path, limits).unwrap();
    let fast = file
        .mp4_header()
        .map(|json| validate_header(&json, file.len, limits).unwrap());
    let json = within(ffprobe_json(&file, limits)).await.unwrap();
    (fast, validate_header(&json, file.len, limits).unwrap())
}

#[tokio::test]
async fn the_mp4_header_reading_agrees_with_ffprobe() {
    let dir = TempDir::new().unwrap();
    let limits = DecodeLimits::default();
    let cases = [
        av_clip(&dir, "plain.mp4", "96x64", 25, 2.0, &["-preset", "ultrafast"]),
        av_clip(
            &dir,
            "faststart.mp4",
            "64x64",
            30,
            1.5,
            &["-preset", "ultrafast", "-movflags", "+faststart"],
        ),
        // B-frames give the video an edit list; MPEG-4 part 2 goes through its descriptor.
        av_clip(
            &dir,
            "bframes.mp4",
            "64x48",
            24,
            2.0,
            &["-preset", "medium", "-bf", "3"],
        ),
        lavfi(
            &dir,
            "mpeg4.mp4",
            &[
                "testsrc=size=80x64:rate=20:duration=2",
                "sine=frequency=300:duration=2:sample_rate=22050",
            ],
            &["-c:v", "mpeg4", "-c:a", "aac"],
        ),
        lavfi(
            &dir,
            "opus.mp4",
            &[
                "testsrc=size=64x64:rate=25:duration=2",
                "sine=frequency=300:duration=2:sample_rate=48000",
            ],
            &["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "libopus"],
        ),
        lavfi(
            &dir,
            "stereo48k.mp4",
            &[
                "testsrc=size=64x64:rate=25:duration=1",
                "sine=frequency=300:duration=1:sample_rate=48000",
            ],
            &[&["-ac", "2"], &FAST_H264_AAC[..]].concat(),
        ),
    ];
    for path in &cases {
        let (fast, slow) = both_probes(path, &limits).await;
        let fast = fast.unwrap_or_else(|| panic!("{}: the plain case was not read", path.display()));
        let name = path.display();
        assert_eq!(fast.format_name, slow.format_name, "{name}");
        assert_eq!(fast.total_frames, slow.total_frames, "{name}");
        assert_eq!(fast.frame_count_declared, slow.frame_count_declared, "{name}");
        let (fv, sv) = (&fast.video, &slow.video);
        assert_eq!(
            (fv.index, &fv.codec, fv.width, fv.height, fv.nb_frames),
            (sv.index, &sv.codec, sv.width, sv.height, sv.nb_frames),
            "{name}"
        );
        assert!((fv.fps - sv.fps).abs() < 1e-6, "{name}: {} vs {}", fv.fps, sv.fps);
        let (fa, sa) = (&fast.audio, &slow.audio);
        assert_eq!(
            (fa.index, &fa.codec, fa.sample_rate, fa.channels),
            (sa.index, &sa.codec, sa.sample_rate, sa.channels),
            "{name}"
        );
        // ffprobe applies the encoder-delay edit; the container's durations differ by that at most.
        for (a, b) in [
            (fast.duration_secs, slow.duration_secs),
            (fa.duration_secs, sa.duration_secs),
        ] {
            assert!((a - b).abs() < 0.1, "{name}: {a} vs {b}");
        }
    }
}

/// A hostile variant of a plain MP4: the video track's `mdhd` declares twice the time its `stts`
/// and `stsz` hold. ffprobe believes the sample tables; the in-process reader must not answer with
/// the header's longer duration (it would pass a half-length video as full-length).
#[tokio::test]
async fn an_mdhd_that_disagrees_with_the_sample_tables_is_left_to_ffprobe() {
    let dir = TempDir::new().unwrap();
    let limits = DecodeLimits::default();
    let path = av_clip(&dir, "liar.mp4", "64x64", 25, 2.0, &["-preset", "ultrafast"]);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(4).position(|w| w == b"mdhd").unwrap() + 4;
    assert_eq!(bytes[at], 0, "version 0 mdhd");
    let field = at + 16; // version+flags, creation, modification, timescale
    let duration = u32::from_be_bytes(bytes[field..field + 4].try_into().unwrap());
    bytes[field..field + 4].copy_from_slice(&(duration * 2).to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let (fast, _) = both_probes(&path, &limits).await;
    assert!(
        fast.is_none(),
        "the inconsistent header was answered in-process: {fast:?}"
    );
}

#[tokio::test]
async fn files_outside_the_plain_mp4_case_are_left_to_ffprobe() {
    let dir = TempDir::new().unwrap();
    let limits = DecodeLimits::default();
    let text = dir.path().join("text.mp4");
    std::fs::write(&text, "ftyp but not really a video\n".repeat(20)).unwrap();
    let mkv = av_clip(&dir, "clip.mkv", "64x64", 25, 1.0, &["-preset", "ultrafast"]);
    let two_videos = lavfi(
        &dir,
        "two_videos.mp4",
        &[
            "testsrc=size=64x64:rate=25:duration=1",
            "sine=duration=1",
            "testsrc=size=64x64:rate=25:duration=1",
        ],
        &[&["-map", "0", "-map", "1", "-map", "2"], &FAST_H264_AAC[..]].concat(),
    );
    let fragmented = av_clip(
        &dir,
        "fragmented.mp4",
        "64x64",
        25,
        1.0,
        &["-preset", "ultrafast", "-movflags", "+frag_keyframe+empty_moov"],
    );
    for path in [&text, &mkv, &fragmented] {
        let file = InputFile::check(path, &limits).unwrap();
        assert!(file.mp4_header().is_none(), "{}", path.display());
    }
    // Two video tracks are still plain: the first is the one analysed, as ffprobe picks it.
    let (fast, slow) = both_probes(&two_videos, &limits).await;
    assert_eq!(fast.unwrap().video.index, slow.video.index);
}

// --- challenge audio ------------------------------------------------------------------------------

/// A 16-bit PCM WAV at `rate` with `channels`, `frames` long, whose channel `c` of frame `i` is
/// `sample(i, c)` (in [-1, 1]).
fn wav_bytes(rate: u32, channels: u16, frames: usize, sample: impl Fn(usize, u16) -> f64) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut cursor, spec).unwrap();
    for i in 0..frames {
        for c in 0..channels {
            writer
                .write_sample((sample(i, c) * 32767.0).round() as i16)
                .unwrap();
        }
    }
    writer.finalize().unwrap();
    cursor.into_inner()
}

/// `seconds` of a sine of `freq` Hz and amplitude `amp` at `rate`, mono.
fn tone_wav(rate: u32, freq: f64, amp: f64, seconds: f64) -> Vec<u8> {
    let frames = (seconds * f64::from(rate)) as usize;
    wav_bytes(rate, 1, frames, |i, _| {
        amp * (std::f64::consts::TAU * freq * i as f64 / f64::from(rate)).sin()
    })
}

/// Amplitude of the `freq` component of `x` (sampled at `rate`): one DFT bin, scaled so that a sine
/// of amplitude `a` reads `a`.
fn tone_amplitude(x: &[f32], rate: f64, freq: f64) -> f64 {
    let (mut re, mut im) = (0.0, 0.0);
    for (n, &v) in x.iter().enumerate() {
        let phase = std::f64::consts::TAU * freq * n as f64 / rate;
        re += f64::from(v) * phase.cos();
        im -= f64::from(v) * phase.sin();
    }
    2.0 * (re * re + im * im).sqrt() / x.len().max(1) as f64
}

/// The linear interpolation the challenge audio used to be resampled with (no low-pass filter).
fn linear_resample(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    let ratio = f64::from(from) / f64::from(to);
    let n = (x.len() as f64 / ratio).floor() as usize;
    (0..n)
        .map(|i| {
            let pos = i as f64 * ratio;
            let j = pos.floor() as usize;
            let frac = (pos - j as f64) as f32;
            let (a, b) = (x[j.min(x.len() - 1)], x[(j + 1).min(x.len() - 1)]);
            a + (b - a) * frac
        })
        .collect()
}

/// The middle of a resampled clip: the resampler's filter rings at the clip's two ends.
fn interior(x: &[f32]) -> &[f32] {
    &x[x.len() / 10..x.len() * 9 / 10]
}

#[tokio::test]
async fn a_tone_above_the_new_nyquist_frequency_does_not_alias() {
    let limits = DecodeLimits::default();
    // 12 kHz in 44.1 kHz audio: above 8 kHz, the Nyquist frequency of 16 kHz. Linear interpolation
    // folds it to 16 − 12 = 4 kHz, which the envelope and the audio match would read as signal.
    let wav = tone_wav(44_100, 12_000.0, 0.5, 1.0);
    let resampled = within(decode_wav(&wav, &limits)).await.unwrap();
    assert!(
        (15_990..=16_010).contains(&resampled.len()),
        "{}",
        resampled.len()
    );
    let level = rms(interior(&resampled));
    assert!(
        level < 0.005,
        "a 12 kHz tone (rms 0.354) resampled to 16 kHz left rms {level}"
    );
    let alias = tone_amplitude(interior(&resampled), 16_000.0, 4_000.0);
    assert!(alias < 0.005, "4 kHz alias of amplitude {alias}");

    // What the old linear interpolation did with the same clip: a strong alias at 4 kHz.
    let mut reader = hound::WavReader::new(std::io::Cursor::new(&wav)).unwrap();
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    let linear = linear_resample(&samples, 44_100, 16_000);
    let linear_alias = tone_amplitude(interior(&linear), 16_000.0, 4_000.0);
    assert!(
        linear_alias > 0.05,
        "linear interpolation's alias: {linear_alias}"
    );
    assert!(rms(interior(&linear)) > 0.05);
}

#[tokio::test]
async fn a_tone_below_the_new_nyquist_frequency_passes_unchanged() {
    let limits = DecodeLimits::default();
    for (rate, freq) in [
        (44_100, 1_000.0),
        (48_000, 3_000.0),
        (22_050, 440.0),
        (8_000, 1_000.0),
    ] {
        let wav = tone_wav(rate, freq, 0.5, 1.0);
        let resampled = within(decode_wav(&wav, &limits)).await.unwrap();
        let amplitude = tone_amplitude(interior(&resampled), 16_000.0, freq);
        assert!(
            (amplitude - 0.5).abs() < 0.01,
            "{freq} Hz at {rate} Hz: amplitude {amplitude}"
        );
    }
}

#[tokio::test]
async fn challenge_audio_is_downmixed_and_normalised_like_the_soundtrack() {
    let limits = DecodeLimits::default();
    // 16 kHz mono: the samples as they are, scaled to [-1, 1] (no resampling).
    let mono = wav_bytes(16_000, 1, 3, |i, _| [0.5, -0.5, 0.0][i]);
    let decoded = within(decode_wav(&mono, &limits)).await.unwrap();
    let expected: Vec<f32> = [16384, -16384, 0].iter().map(|&s| s as f32 / 32768.0).collect();
    assert_eq!(decoded, expected);
    // Stereo: ffmpeg's downmix, (left + right) / √2, as the output's soundtrack gets.
    let stereo = wav_bytes(16_000, 2, 2, |i, c| [[0.5, 0.0], [-0.5, -0.5]][i][usize::from(c)]);
    let decoded = within(decode_wav(&stereo, &limits)).await.unwrap();
    let half = 16384.0 / 32768.0 * std::f32::consts::FRAC_1_SQRT_2;
    assert_eq!(decoded.len(), 2);
    assert!((decoded[0] - half).abs() < 1e-4, "{decoded:?}");
    assert!((decoded[1] + 2.0 * half).abs() < 1e-4, "{decoded:?}");
    // 32 kHz: half the samples, the level kept.
    let hi = wav_bytes(32_000, 1, 3_200, |_, _| 0.25);
    let decoded = within(decode_wav(&hi, &limits)).await.unwrap();
    assert_eq!(decoded.len(), 1_600);
    assert!(interior(&decoded).iter().all(|s| (s - 0.25).abs() < 1e-3));
    // Not a WAV: the host's problem (the challenge was validated), never the miner's.
    assert!(matches!(
        within(decode_wav(b"not a wav", &limits)).await,
        Err(DecodeError::Infra(_))
    ));
    let broken = missing_tool(|t| &mut t.ffmpeg);
    assert!(matches!(
        within(decode_wav(&mono, &broken)).await,
        Err(DecodeError::Infra(_))
    ));
}

#[tokio::test]
async fn challenge_audio_and_output_soundtrack_go_through_the_same_resampler() {
    let dir = TempDir::new().unwrap();
    let limits = DecodeLimits::default();
    // 44.1 kHz stereo speech-band tones plus a 12 kHz one, as the challenge's WAV and, untouched
    // (PCM), as the soundtrack of an output video.
    let wav = wav_bytes(44_100, 2, 44_100, |i, c| {
        let t = i as f64 / 44_100.0;
        let tone = |f: f64| (std::f64::consts::TAU * f * t).sin();
        if c == 0 {
            0.3 * tone(440.0) + 0.2 * tone(12_000.0)
        } else {
            0.3 * tone(1_000.0)
        }
    });
    let wav_path = dir.path().join("source.wav");
    std::fs::write(&wav_path, &wav).unwrap();
    let video = ffmpeg(
        &dir,
        "out.mkv",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=64x64:rate=25:duration=1",
            "-i",
            wav_path.to_str().unwrap(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "pcm_s16le",
        ],
    );
    let info = within(probe(&video, &limits)).await.unwrap();
    let soundtrack = within(decode(&video, &info, &limits)).await.unwrap().audio;
    let source = within(decode_wav(&wav, &limits)).await.unwrap();
    let n = soundtrack.len().min(source.len());
    assert!(n >= 15_900, "{} and {} samples", soundtrack.len(), source.len());
    let worst = soundtrack[..n]
        .iter()
        .zip(&source[..n])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "the two sides differ by up to {worst}");
}

#[tokio::test]
async fn the_output_must_have_the_tasks_frame_size_and_rate() {
    let dir = TempDir::new().unwrap();
    let path = small_clip(&dir, "clip.mp4", 3.0);
    let limits = DecodeLimits::default();
    let info = within(probe(&path, &limits)).await.unwrap();
    let spec = |side, fps| FrameSpec {
        side,
        fps,
        conformance: Conformance::Strict,
    };
    let task = |side, fps| Expectation::new(3.0, 5.0).with_frame(spec(side, fps));

    // 64×64 at 25 fps: what a 64-pixel, 25 fps task asks for.
    info.check_expectation(&task(64, 25.0)).unwrap();
    // Within the frame-rate tolerance (2 %): a variable-rate encode of the same rate.
    info.check_expectation(&task(64, 25.4)).unwrap();
    // Another size: refused, naming both.
    let err = info.check_expectation(&task(512, 25.0)).unwrap_err();
    assert_eq!(err.reason, BadOutputReason::WrongResolution);
    assert_eq!(err.detail, "video is 64x64; the task asked for 512x512");
    // Another rate.
    let err = info.check_expectation(&task(64, 30.0)).unwrap_err();
    assert_eq!(err.reason, BadOutputReason::WrongFps);
    assert!(
        err.detail.contains("25.000 fps") && err.detail.contains("30 fps"),
        "{}",
        err.detail
    );
    // Without a frame spec only the length is checked (the decoder's own tests).
    info.check_expectation(&Expectation::new(3.0, 5.0)).unwrap();
    // `analysis.conformance = "penalty"`: the same mismatches pass the check and are listed for the
    // scoring instead, both at once.
    let penalised = spec(512, 30.0).with_conformance(Conformance::Penalty);
    info.check_expectation(&Expectation::new(3.0, 5.0).with_frame(penalised))
        .unwrap();
    let reasons: Vec<_> = info
        .picture_mismatches(&penalised)
        .iter()
        .map(|m| m.reason)
        .collect();
    assert_eq!(
        reasons,
        [BadOutputReason::WrongResolution, BadOutputReason::WrongFps]
    );
    assert!(info.picture_mismatches(&spec(64, 25.0)).is_empty());

    // A real 15 fps and a real 24 fps encode against a 25 fps task; probe_and_decode refuses
    // before decoding.
    for (name, fps) in [("15.mp4", 15), ("24.mp4", 24)] {
        let slow = av_clip(&dir, name, "64x64", fps, 3.0, &["-preset", "ultrafast"]);
        assert_eq!(
            reason(within(probe_and_decode(&slow, &limits, &task(64, 25.0))).await),
            BadOutputReason::WrongFps,
            "{fps} fps"
        );
    }
}
