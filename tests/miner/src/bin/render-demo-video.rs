//! `render-demo-video`: renders the videos that the test miner's images carry, on the host, with
//! Debian's ffmpeg.
//!
//! ```text
//! render-demo-video --face face.png --audio audio.wav --mode talking|static --out video.mp4
//!                   [--fps 25] [--size 512] [--mouth-box auto|X0,Y0,X1,Y1] [--ffmpeg PATH]
//! ```
//!
//! The face (PNG, any colour type) is decoded and scaled to `size`×`size`; the audio (anything
//! ffmpeg reads) is decoded to 16 kHz mono. Its RMS is computed over each video frame's window (40 ms
//! at 25 fps) and normalised to the clip's loud frames. In `talking` mode each frame darkens an
//! ellipse inside the mouth box whose opening follows that loudness; in `static` mode every frame is
//! the face as it is. The mouth box is found on the face (the reddest lip-sized band in the centre of
//! a portrait, see [`locate_mouth`]); when nothing stands out it falls back to rows 62–90 % and
//! columns 30–70 % of the image (the lower-middle of a face that fills it), and `--mouth-box` sets it
//! outright. The raw RGB frames are piped to ffmpeg, which encodes H.264 (libx264, yuv420p) at `fps`
//! with the challenge audio muxed in as AAC, cut to the audio's duration (`-shortest`). The file
//! appears at `--out` only when complete.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// Sample rate the audio is analysed at.
const RATE: u32 = 16_000;

/// Command-line arguments.
struct Args {
    face: PathBuf,
    audio: PathBuf,
    out: PathBuf,
    talking: bool,
    fps: u32,
    size: usize,
    /// Fractions of the image: x0, y0, x1, y1; `None` to locate the lips.
    mouth_box: Option<[f64; 4]>,
    ffmpeg: String,
}

const USAGE: &str = "usage: render-demo-video --face FACE.png --audio AUDIO --mode talking|static --out OUT.mp4 \
                     [--fps 25] [--size 512] [--mouth-box auto|X0,Y0,X1,Y1] [--ffmpeg ffmpeg]";

fn parse_args() -> Result<Args, String> {
    let mut face = None;
    let mut audio = None;
    let mut out = None;
    let mut mode = None;
    let mut fps = 25;
    let mut size = 512;
    let mut mouth_box = None;
    let mut ffmpeg = "ffmpeg".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--face" => face = Some(PathBuf::from(value)),
            "--audio" => audio = Some(PathBuf::from(value)),
            "--out" => out = Some(PathBuf::from(value)),
            "--mode" => mode = Some(value),
            "--fps" => fps = value.parse().map_err(|e| format!("--fps {value}: {e}"))?,
            "--size" => size = value.parse().map_err(|e| format!("--size {value}: {e}"))?,
            "--ffmpeg" => ffmpeg = value,
            "--mouth-box" if value == "auto" => mouth_box = None,
            "--mouth-box" => {
                let parts: Vec<f64> = value
                    .split(',')
                    .map(|p| p.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--mouth-box {value}: {e}"))?;
                match parts.as_slice() {
                    [x0, y0, x1, y1]
                        if (0.0..=1.0).contains(x0)
                            && (0.0..=1.0).contains(y0)
                            && x0 < x1
                            && y0 < y1
                            && *x1 <= 1.0
                            && *y1 <= 1.0 =>
                    {
                        mouth_box = Some([*x0, *y0, *x1, *y1]);
                    }
                    _ => {
                        return Err(format!(
                            "--mouth-box {value}: want X0,Y0,X1,Y1 fractions with X0<X1, Y0<Y1"
                        ));
                    }
                }
            }
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let talking = match mode.as_deref() {
        Some("talking") => true,
        Some("static") => false,
        Some(other) => return Err(format!("--mode {other}: want talking or static")),
        None => return Err(format!("--mode is required\n{USAGE}")),
    };
    if fps == 0 || !(16..=4096).contains(&size) || size % 2 != 0 {
        return Err("--fps must be positive and --size an even number in 16..=4096".to_owned());
    }
    Ok(Args {
        face: face.ok_or_else(|| format!("--face is required\n{USAGE}"))?,
        audio: audio.ok_or_else(|| format!("--audio is required\n{USAGE}"))?,
        out: out.ok_or_else(|| format!("--out is required\n{USAGE}"))?,
        talking,
        fps,
        size,
        mouth_box,
        ffmpeg,
    })
}

/// An RGB8 picture, row-major.
struct Rgb {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

/// Decodes a PNG of any colour type and bit depth to RGB8 (alpha is dropped).
fn decode_png(path: &Path) -> Result<Rgb, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let (width, height) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(format!("{}: palette not expanded", path.display())),
    };
    let mut pixels = Vec::with_capacity(width * height * 3);
    for px in buf[..width * height * channels].chunks_exact(channels) {
        match channels {
            1 | 2 => pixels.extend_from_slice(&[px[0], px[0], px[0]]),
            _ => pixels.extend_from_slice(&px[..3]),
        }
    }
    Ok(Rgb {
        width,
        height,
        pixels,
    })
}

/// Nearest-neighbour scaling to `size`×`size` (a no-op for the 512×512 fixtures).
fn scale(img: &Rgb, size: usize) -> Rgb {
    if img.width == size && img.height == size {
        return Rgb {
            width: size,
            height: size,
            pixels: img.pixels.clone(),
        };
    }
    let mut pixels = Vec::with_capacity(size * size * 3);
    for y in 0..size {
        let sy = (y * img.height / size).min(img.height - 1);
        for x in 0..size {
            let sx = (x * img.width / size).min(img.width - 1);
            let i = (sy * img.width + sx) * 3;
            pixels.extend_from_slice(&img.pixels[i..i + 3]);
        }
    }
    Rgb {
        width: size,
        height: size,
        pixels,
    }
}

/// The audio as 16 kHz mono samples in [-1, 1], decoded by ffmpeg.
fn decode_audio(ffmpeg: &str, path: &Path) -> Result<Vec<f32>, String> {
    let out = Command::new(ffmpeg)
        .args(["-v", "error", "-nostdin", "-i"])
        .arg(path)
        .args([
            "-vn",
            "-f",
            "s16le",
            "-acodec",
            "pcm_s16le",
            "-ac",
            "1",
            "-ar",
            &RATE.to_string(),
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {ffmpeg}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{ffmpeg} could not decode {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out
        .stdout
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect())
}

/// Per-frame loudness in [0, 1]: the RMS of each frame's window, normalised so the loud frames (the
/// 95th percentile) reach 1 and the quietest tenth of that stays closed.
fn loudness(samples: &[f32], fps: u32) -> Vec<f64> {
    let frames = (samples.len() as u64 * u64::from(fps))
        .div_ceil(u64::from(RATE))
        .max(1) as usize;
    let rms: Vec<f64> = (0..frames)
        .map(|i| {
            let start = (i as u64 * u64::from(RATE) / u64::from(fps)) as usize;
            let end = (((i as u64 + 1) * u64::from(RATE) / u64::from(fps)) as usize).min(samples.len());
            let window = samples.get(start..end).unwrap_or(&[]);
            if window.is_empty() {
                0.0
            } else {
                (window.iter().map(|s| f64::from(*s) * f64::from(*s)).sum::<f64>() / window.len() as f64)
                    .sqrt()
            }
        })
        .collect();
    let mut sorted = rms.clone();
    sorted.sort_by(f64::total_cmp);
    let reference = sorted[(sorted.len() - 1) * 95 / 100].max(1e-4);
    let floor = 0.1 * reference;
    rms.iter()
        .map(|r| ((r - floor) / (reference - floor)).clamp(0.0, 1.0))
        .collect()
}

/// The fallback mouth box (fractions x0, y0, x1, y1): the lower-middle of a face that fills the image.
const FALLBACK_MOUTH_BOX: [f64; 4] = [0.30, 0.62, 0.70, 0.90];

/// Where the lips are, as a mouth box (fractions x0, y0, x1, y1), or `None` when no lip-coloured band
/// stands out. Lips are the reddest band (red minus green, dark pixels ignored) in the central part
/// of a portrait: the window of 12 % × 3.5 % of the image with the highest mean redness, searched over
/// columns 25–75 % and rows 35–80 %, must beat the region's mean redness by half as much again.
fn locate_mouth(face: &Rgb) -> Option<[f64; 4]> {
    let (w, h) = (face.width, face.height);
    let (sx0, sx1, sy0, sy1) = (w / 4, w * 3 / 4, h * 35 / 100, h * 80 / 100);
    let (rw, rh) = (sx1 - sx0, sy1 - sy0);
    // Integral image of the redness over the search region.
    let mut integral = vec![0_i64; (rw + 1) * (rh + 1)];
    for y in 0..rh {
        let mut row = 0_i64;
        for x in 0..rw {
            let i = ((sy0 + y) * w + sx0 + x) * 3;
            let (r, g) = (i64::from(face.pixels[i]), i64::from(face.pixels[i + 1]));
            row += if r < 80 { 0 } else { (r - g).max(0) };
            integral[(y + 1) * (rw + 1) + x + 1] = integral[y * (rw + 1) + x + 1] + row;
        }
    }
    let sum = |x0: usize, y0: usize, x1: usize, y1: usize| {
        integral[y1 * (rw + 1) + x1] - integral[y0 * (rw + 1) + x1] - integral[y1 * (rw + 1) + x0]
            + integral[y0 * (rw + 1) + x0]
    };
    let (ww, wh) = ((w * 12 / 100).max(1), (h * 35 / 1000).max(1));
    if ww >= rw || wh >= rh {
        return None;
    }
    let mut best = (i64::MIN, 0, 0);
    for y in 0..=rh - wh {
        for x in 0..=rw - ww {
            let s = sum(x, y, x + ww, y + wh);
            if s > best.0 {
                best = (s, x, y);
            }
        }
    }
    let peak = best.0 as f64 / (ww * wh) as f64;
    let mean = sum(0, 0, rw, rh) as f64 / (rw * rh) as f64;
    if peak < 1.5 * mean || peak < 20.0 {
        return None;
    }
    let cx = (sx0 + best.1) as f64 + ww as f64 / 2.0;
    let cy = (sy0 + best.2) as f64 + wh as f64 / 2.0;
    // A box a little wider than the lips, tall enough for a wide-open mouth.
    let (half_w, half_h) = (0.09 * w as f64, 0.045 * h as f64);
    Some([
        ((cx - half_w) / w as f64).max(0.0),
        ((cy - half_h) / h as f64).max(0.0),
        ((cx + half_w) / w as f64).min(1.0),
        ((cy + half_h) / h as f64).min(1.0),
    ])
}

/// Darkens an ellipse in the mouth box: as wide as 50–100 % of the box and as tall as `level` of it.
fn draw_mouth(frame: &mut [u8], size: usize, mouth_box: [f64; 4], level: f64) {
    let s = size as f64;
    let (x0, y0, x1, y1) = (
        mouth_box[0] * s,
        mouth_box[1] * s,
        mouth_box[2] * s,
        mouth_box[3] * s,
    );
    let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    let half_w = (x1 - x0) / 2.0 * (0.5 + 0.5 * level);
    let half_h = (y1 - y0) / 2.0 * level;
    if half_h < 0.5 {
        return;
    }
    const DARK: [f64; 3] = [48.0, 14.0, 20.0];
    let rows = (cy - half_h).floor().max(0.0) as usize..((cy + half_h).ceil() as usize).min(size);
    for y in rows {
        let cols = (cx - half_w).floor().max(0.0) as usize..((cx + half_w).ceil() as usize).min(size);
        for x in cols {
            let dx = (x as f64 + 0.5 - cx) / half_w;
            let dy = (y as f64 + 0.5 - cy) / half_h;
            let d = dx * dx + dy * dy;
            if d >= 1.0 {
                continue;
            }
            // Opaque inside, a soft rim outside d = 0.75.
            let alpha = 0.9 * ((1.0 - d) * 4.0).min(1.0);
            let i = (y * size + x) * 3;
            for c in 0..3 {
                let v = f64::from(frame[i + c]) * (1.0 - alpha) + DARK[c] * alpha;
                frame[i + c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

fn render(args: &Args) -> Result<(), String> {
    let face = scale(&decode_png(&args.face)?, args.size);
    let samples = decode_audio(&args.ffmpeg, &args.audio)?;
    if samples.is_empty() {
        return Err(format!("{}: no audio samples", args.audio.display()));
    }
    let levels = loudness(&samples, args.fps);
    let (mouth_box, how) = match args.mouth_box {
        Some(b) => (b, "given"),
        None => match locate_mouth(&face) {
            Some(b) => (b, "located"),
            None => (FALLBACK_MOUTH_BOX, "fallback"),
        },
    };
    let partial = args.out.with_extension("partial.mp4");
    let dims = format!("{}x{}", args.size, args.size);
    let fps = args.fps.to_string();
    let mut child = Command::new(&args.ffmpeg)
        .args(["-v", "error", "-nostdin", "-y"])
        .args([
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &dims, "-r", &fps, "-i", "-",
        ])
        .arg("-i")
        .arg(&args.audio)
        .args(["-map", "0:v:0", "-map", "1:a:0"])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-r", &fps,
        ])
        .args(["-c:a", "aac", "-b:a", "96k"])
        .args([
            "-shortest",
            "-map_metadata",
            "-1",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
        ])
        .arg(&partial)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", args.ffmpeg))?;
    // Drain stderr on a thread so a chatty ffmpeg can never block on it while we feed stdin.
    let mut stderr = child.stderr.take().ok_or("ffmpeg has no stderr")?;
    let drain = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let written = (|| -> std::io::Result<()> {
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("ffmpeg has no stdin"))?;
        let mut frame = face.pixels.clone();
        for level in &levels {
            frame.copy_from_slice(&face.pixels);
            if args.talking {
                draw_mouth(&mut frame, args.size, mouth_box, *level);
            }
            stdin.write_all(&frame)?;
        }
        stdin.flush()
    })();
    let status = child.wait().map_err(|e| format!("waiting for ffmpeg: {e}"))?;
    let log = drain.join().unwrap_or_default();
    if !status.success() || written.is_err() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "ffmpeg failed ({status}{}): {}",
            written
                .err()
                .map(|e| format!(", writing frames: {e}"))
                .unwrap_or_default(),
            log.trim()
        ));
    }
    std::fs::rename(&partial, &args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!(
        "render-demo-video: {} ({} frames, {:.3} s of audio, {}, mouth box {mouth_box:.3?} {how})",
        args.out.display(),
        levels.len(),
        samples.len() as f64 / f64::from(RATE),
        if args.talking { "talking" } else { "static" }
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse_args().and_then(|args| render(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("render-demo-video: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loudness_follows_the_envelope() {
        // 1 s of silence, then 1 s of a loud tone, at 16 kHz: 25 quiet frames, 25 loud ones.
        let mut samples = vec![0.0_f32; RATE as usize];
        samples.extend((0..RATE).map(|i| 0.5 * (i as f32 * 0.2).sin()));
        let levels = loudness(&samples, 25);
        assert_eq!(levels.len(), 50);
        assert!(levels[..25].iter().all(|l| *l == 0.0));
        assert!(levels[26..].iter().all(|l| *l > 0.9));
    }

    #[test]
    fn the_lips_are_found_on_a_portrait() {
        // Skin everywhere, a black "turtleneck" below, and red lips at rows 55-58 %, columns 42-58 %.
        let size = 200;
        let mut pixels = Vec::with_capacity(size * size * 3);
        for y in 0..size {
            for x in 0..size {
                let px = if y > 150 {
                    [10, 10, 10]
                } else if (110..116).contains(&y) && (84..116).contains(&x) {
                    [190, 80, 90]
                } else {
                    [225, 180, 160]
                };
                pixels.extend_from_slice(&px);
            }
        }
        let [x0, y0, x1, y1] = locate_mouth(&Rgb {
            width: size,
            height: size,
            pixels,
        })
        .unwrap();
        let (cx, cy) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
        assert!((cx - 0.5).abs() < 0.03, "{cx}");
        assert!((cy - 0.565).abs() < 0.03, "{cy}");
        // A flat picture has no lips.
        let flat = Rgb {
            width: size,
            height: size,
            pixels: vec![200; size * size * 3],
        };
        assert!(locate_mouth(&flat).is_none());
    }

    #[test]
    fn the_mouth_opens_with_the_level() {
        let size = 64;
        let face = vec![200_u8; size * size * 3];
        let darkened = |level| {
            let mut f = face.clone();
            draw_mouth(&mut f, size, [0.30, 0.62, 0.70, 0.90], level);
            f.iter().zip(&face).filter(|(a, b)| a != b).count()
        };
        assert_eq!(darkened(0.0), 0);
        assert!(darkened(0.3) > 0);
        assert!(darkened(1.0) > darkened(0.3));
        // Nothing outside the box moves.
        let mut f = face.clone();
        draw_mouth(&mut f, size, [0.30, 0.62, 0.70, 0.90], 1.0);
        for y in 0..size {
            for x in 0..size {
                let inside = (19..45).contains(&x) && (39..58).contains(&y);
                if !inside {
                    assert_eq!(f[(y * size + x) * 3], 200, "({x},{y})");
                }
            }
        }
    }
}
