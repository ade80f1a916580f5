//! Validation of challenge media and transcripts: what a miner container will be handed must be a real
//! image, a real PCM WAV clip and a bounded single-line transcript.
//!
//! Owns format sniffing (magic bytes), the header checks (image dimensions before any pixel is decoded,
//! WAV channel count / rate / sample format before any sample is read), the full decode that proves the
//! data is not truncated or corrupt, the transcript rules, and the daemon's one PNG/JPEG → RGB decoder
//! ([`decode_rgb`]: the analysis's reference face, the tests' fixture portraits), so that a face that
//! validates is a face the analysis can read.
//!
//! Must not: allocate a whole decoded image while validating (PNGs are decoded row by row, JPEG output
//! is bounded by the dimension limit), trust a size a header announces, decode anything larger than
//! the limits, or accept the compressed audio (mp3, ogg, flac) the reference's Freesound previews
//! produced.

use std::fmt;
use std::io::Cursor;

use super::Limits;
use super::error::{MediaError, TextError};

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG_MAGIC: &[u8] = &[0xFF, 0xD8, 0xFF];
const IMAGE_EXPECTED: &str = "a PNG or JPEG image";
/// What a JPEG must be for [`decode_rgb`] (and so for [`validate_face`]).
const JPEG_EXPECTED: &str = "a PNG image or an 8-bit greyscale or colour (YCbCr/RGB) JPEG image";
const AUDIO_EXPECTED: &str = "RIFF/WAVE PCM audio";
/// Bound on what the PNG decoder may allocate for ancillary chunks (ICC profiles, compressed text).
const PNG_DECODER_BYTES: usize = 8 * 1024 * 1024;
/// Slack on the declared duration before the early refusal (the measured duration decides).
const DURATION_EPSILON_SECS: f64 = 1e-9;

/// Image container formats accepted for faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// PNG (`\x89PNG\r\n\x1a\n`).
    Png,
    /// JPEG/JFIF/EXIF (`FF D8 FF`).
    Jpeg,
}

impl ImageFormat {
    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpeg",
        }
    }

    /// The MIME type.
    pub fn mime_type(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Png => "PNG",
            ImageFormat::Jpeg => "JPEG",
        })
    }
}

/// What validating a face found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageInfo {
    /// The container format.
    pub format: ImageFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// An image decoded to 8-bit RGB by [`decode_rgb`].
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width × height` pixels, row by row, each R, G, B (3 bytes).
    pub pixels: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RgbImage")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("pixel_bytes", &self.pixels.len())
            .finish()
    }
}

/// WAV sample encodings accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleFormat {
    /// Integer PCM (8, 16, 24 or 32 bits).
    Int,
    /// IEEE float PCM (32 bits).
    Float,
}

/// What validating a clip found out. `duration_secs` is measured from the sample data actually
/// present, not from the header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioInfo {
    /// Samples per second per channel.
    pub sample_rate: u32,
    /// 1 or 2.
    pub channels: u16,
    /// Bits per sample.
    pub bits_per_sample: u16,
    /// Integer or float PCM.
    pub sample_format: SampleFormat,
    /// Sample frames (samples per channel).
    pub frames: u64,
    /// `frames / sample_rate`.
    pub duration_secs: f64,
}

/// Checks that `bytes` is a PNG or JPEG face within `limits`: size, magic bytes, dimensions from the
/// header, then a full decode (for a JPEG, [`decode_rgb`]'s: what validates is what the analysis reads).
pub fn validate_face(bytes: &[u8], limits: &Limits) -> Result<ImageInfo, MediaError> {
    check_size(bytes, limits.max_face_bytes)?;
    match sniff_image(bytes)? {
        ImageFormat::Png => validate_png(bytes, limits),
        ImageFormat::Jpeg => validate_jpeg(bytes, limits),
    }
}

/// Decodes a PNG or JPEG (the format sniffed from its magic bytes, as [`validate_face`] does) to 8-bit
/// RGB: palettes expanded, 16-bit PNG samples cut to their high byte, grey replicated into the three
/// channels, alpha dropped. The daemon's one image decoder. Its refusals are [`validate_face`]'s:
/// [`MediaError::Empty`]; [`MediaError::UnsupportedFormat`] or [`MediaError::Unrecognised`] for data
/// that is neither; [`MediaError::CorruptImage`] (with the format) for data that does not decode, a
/// JPEG without its end-of-image marker included; [`MediaError::UnsupportedFormat`] for a JPEG whose
/// samples have no RGB reading here (CMYK, 16-bit lossless grey). No dimension limit applies (what it
/// is given was validated, or is a test fixture); the decoders' allocation bounds do.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, MediaError> {
    if bytes.is_empty() {
        return Err(MediaError::Empty);
    }
    match sniff_image(bytes)? {
        ImageFormat::Png => decode_png_rgb(bytes),
        ImageFormat::Jpeg => decode_jpeg_rgb(bytes, |_, _| Ok(()), usize::MAX),
    }
}

/// The image format the magic bytes announce, or the refusal naming what they are instead.
fn sniff_image(bytes: &[u8]) -> Result<ImageFormat, MediaError> {
    if bytes.starts_with(PNG_MAGIC) {
        Ok(ImageFormat::Png)
    } else if bytes.starts_with(JPEG_MAGIC) {
        Ok(ImageFormat::Jpeg)
    } else {
        Err(match detect_other(bytes) {
            Some(detected) => MediaError::UnsupportedFormat {
                detected,
                expected: IMAGE_EXPECTED,
            },
            None => MediaError::Unrecognised {
                expected: IMAGE_EXPECTED,
            },
        })
    }
}

/// Checks that `bytes` is a RIFF/WAVE PCM clip within `limits`: size, magic bytes, format, channels and
/// rate from the header, then every sample read (truncation and non-finite floats are refused) and the
/// measured duration checked.
pub fn validate_audio(bytes: &[u8], limits: &Limits) -> Result<AudioInfo, MediaError> {
    check_size(bytes, limits.max_audio_bytes)?;
    let is_wave = bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WAVE");
    if !is_wave {
        return Err(match detect_other(bytes) {
            Some(detected) => MediaError::UnsupportedFormat {
                detected,
                expected: AUDIO_EXPECTED,
            },
            None => MediaError::Unrecognised {
                expected: AUDIO_EXPECTED,
            },
        });
    }
    let mut reader = hound::WavReader::new(Cursor::new(bytes)).map_err(wav_error)?;
    let spec = reader.spec();
    let float = spec.sample_format == hound::SampleFormat::Float;
    let supported = if float {
        spec.bits_per_sample == 32
    } else {
        matches!(spec.bits_per_sample, 8 | 16 | 24 | 32)
    };
    if !supported {
        return Err(MediaError::UnsupportedSampleFormat {
            bits: spec.bits_per_sample,
            float,
        });
    }
    if spec.channels == 0 || spec.channels > limits.max_channels {
        return Err(MediaError::BadChannels {
            channels: spec.channels,
            max: limits.max_channels,
        });
    }
    if spec.sample_rate < limits.min_sample_rate || spec.sample_rate > limits.max_sample_rate {
        return Err(MediaError::BadSampleRate {
            rate: spec.sample_rate,
            min: limits.min_sample_rate,
            max: limits.max_sample_rate,
        });
    }
    let rate = f64::from(spec.sample_rate);
    // Early refusal on the announced length; the measured one below is what counts.
    let declared_secs = f64::from(reader.duration()) / rate;
    if declared_secs > limits.max_audio_secs + DURATION_EPSILON_SECS {
        return Err(bad_duration(declared_secs, limits));
    }
    let declared = u64::from(reader.len());
    let samples = if float {
        count_samples(reader.samples::<f32>(), |s: f32| s.is_finite())?
    } else {
        count_samples(reader.samples::<i32>(), |_| true)?
    };
    if samples != declared {
        return Err(MediaError::CorruptAudio {
            detail: format!("the data chunk announces {declared} samples but holds {samples}"),
        });
    }
    let channels = u64::from(spec.channels);
    if samples % channels != 0 {
        return Err(MediaError::CorruptAudio {
            detail: format!("{samples} samples is not a whole number of {channels}-channel frames"),
        });
    }
    let frames = samples / channels;
    // u64 → f64 is exact far beyond any clip the size limit lets through.
    let duration_secs = frames as f64 / rate;
    if duration_secs < limits.min_audio_secs || duration_secs > limits.max_audio_secs + DURATION_EPSILON_SECS
    {
        return Err(bad_duration(duration_secs, limits));
    }
    Ok(AudioInfo {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        bits_per_sample: spec.bits_per_sample,
        sample_format: if float {
            SampleFormat::Float
        } else {
            SampleFormat::Int
        },
        frames,
        duration_secs,
    })
}

/// Normalises a transcript: trims surrounding whitespace, maps an empty result to `None`, and refuses
/// text longer than `max_chars` characters or containing any control character (newlines and tabs
/// included: a transcript is one line, and it is copied into `task.json`).
pub fn validate_text(raw: &str, max_chars: usize) -> Result<Option<String>, TextError> {
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(TextError::TooLong {
            chars,
            max: max_chars,
        });
    }
    if let Some(position) = text.chars().position(char::is_control) {
        return Err(TextError::ControlCharacter { position });
    }
    Ok(Some(text.to_owned()))
}

fn check_size(bytes: &[u8], limit: u64) -> Result<(), MediaError> {
    if bytes.is_empty() {
        return Err(MediaError::Empty);
    }
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if len > limit {
        return Err(MediaError::TooLarge { len, limit });
    }
    Ok(())
}

fn check_dimensions(width: u32, height: u32, limits: &Limits) -> Result<(), MediaError> {
    let ok = |side: u32| side >= limits.min_face_side && side <= limits.max_face_side;
    if ok(width) && ok(height) {
        Ok(())
    } else {
        Err(MediaError::BadDimensions {
            width,
            height,
            min: limits.min_face_side,
            max: limits.max_face_side,
        })
    }
}

fn validate_png(bytes: &[u8], limits: &Limits) -> Result<ImageInfo, MediaError> {
    // IHDR must be the first chunk: length 13, type, then width and height (big-endian).
    let header = bytes
        .get(8..24)
        .ok_or_else(|| corrupt_png("truncated before the IHDR chunk".into()))?;
    if header.get(0..8) != Some(&[0, 0, 0, 13, b'I', b'H', b'D', b'R'][..]) {
        return Err(corrupt_png("the first chunk is not a 13-byte IHDR".into()));
    }
    let be32 = |range: std::ops::Range<usize>| {
        header
            .get(range)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .unwrap_or(0)
    };
    let (width, height) = (be32(8..12), be32(12..16));
    check_dimensions(width, height, limits)?;

    let mut reader = png_reader(bytes, png::Transformations::IDENTITY)?;
    let info = reader.info();
    if (info.width, info.height) != (width, height) {
        return Err(corrupt_png(
            "the decoder disagrees with the IHDR dimensions".into(),
        ));
    }
    // Row by row: proves every row inflates and unfilters without holding the whole image.
    let mut rows: u64 = 0;
    while reader
        .next_row()
        .map_err(|e| corrupt_png(e.to_string()))?
        .is_some()
    {
        rows += 1;
    }
    if rows == 0 {
        return Err(corrupt_png("no image rows".into()));
    }
    reader.finish().map_err(|e| corrupt_png(e.to_string()))?;
    Ok(ImageInfo {
        format: ImageFormat::Png,
        width,
        height,
    })
}

fn validate_jpeg(bytes: &[u8], limits: &Limits) -> Result<ImageInfo, MediaError> {
    let side = usize::try_from(limits.max_face_side).unwrap_or(usize::MAX);
    let max_buffer = side.saturating_mul(side).saturating_mul(4);
    let image = decode_jpeg_rgb(bytes, |w, h| check_dimensions(w, h, limits), max_buffer)?;
    Ok(ImageInfo {
        format: ImageFormat::Jpeg,
        width: image.width,
        height: image.height,
    })
}

fn corrupt_png(detail: String) -> MediaError {
    MediaError::CorruptImage {
        format: ImageFormat::Png,
        detail,
    }
}

fn corrupt_jpeg(detail: String) -> MediaError {
    MediaError::CorruptImage {
        format: ImageFormat::Jpeg,
        detail,
    }
}

/// A PNG reader past the header, with the decoder's allocation bound on ancillary data and text chunks
/// skipped.
fn png_reader(
    bytes: &[u8],
    transformations: png::Transformations,
) -> Result<png::Reader<Cursor<&[u8]>>, MediaError> {
    let mut decoder = png::Decoder::new_with_limits(
        Cursor::new(bytes),
        png::Limits {
            bytes: PNG_DECODER_BYTES,
        },
    );
    decoder.set_transformations(transformations);
    decoder.set_ignore_text_chunk(true);
    decoder.read_info().map_err(|e| corrupt_png(e.to_string()))
}

/// The first (for an APNG, the default) image of a PNG as 8-bit RGB.
fn decode_png_rgb(bytes: &[u8]) -> Result<RgbImage, MediaError> {
    // EXPAND (palette → RGB, grey below 8 bits → 8 bits, tRNS → alpha) and STRIP_16.
    let mut reader = png_reader(bytes, png::Transformations::normalize_to_color8())?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| corrupt_png(e.to_string()))?;
    buf.truncate(info.buffer_size());
    let pixels = match info.color_type {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buf.chunks_exact(2).flat_map(|p| [p[0], p[0], p[0]]).collect(),
        png::ColorType::Indexed => return Err(corrupt_png("the palette was not expanded".into())),
    };
    rgb_image(info.width, info.height, pixels, ImageFormat::Png)
}

/// Decodes a JPEG to 8-bit RGB: `check` sees the frame header's dimensions before any scan is decoded,
/// and the decoder may allocate at most `max_buffer` bytes for the picture.
fn decode_jpeg_rgb(
    bytes: &[u8],
    check: impl FnOnce(u32, u32) -> Result<(), MediaError>,
    max_buffer: usize,
) -> Result<RgbImage, MediaError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.read_info().map_err(|e| corrupt_jpeg(e.to_string()))?;
    let info = decoder
        .info()
        .ok_or_else(|| corrupt_jpeg("no frame header".into()))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check(width, height)?;
    decoder.set_max_decoding_buffer_size(max_buffer);
    let pixels = decoder.decode().map_err(|e| corrupt_jpeg(e.to_string()))?;
    let expected = usize::from(info.width)
        .saturating_mul(usize::from(info.height))
        .saturating_mul(info.pixel_format.pixel_bytes());
    if pixels.len() != expected {
        return Err(corrupt_jpeg(format!(
            "decoded {} bytes, expected {expected}",
            pixels.len()
        )));
    }
    if !has_jpeg_end(bytes) {
        return Err(corrupt_jpeg("truncated: no end-of-image marker".into()));
    }
    rgb_image(
        width,
        height,
        jpeg_to_rgb(info.pixel_format, pixels)?,
        ImageFormat::Jpeg,
    )
}

/// jpeg-decoder's samples as RGB: colour as it is, 8-bit grey replicated. CMYK (whose inversion
/// conventions differ between Adobe's encoders) and 16-bit lossless grey (whose precision the decoder
/// does not report) are refused rather than guessed.
fn jpeg_to_rgb(format: jpeg_decoder::PixelFormat, pixels: Vec<u8>) -> Result<Vec<u8>, MediaError> {
    let unsupported = |detected| MediaError::UnsupportedFormat {
        detected,
        expected: JPEG_EXPECTED,
    };
    match format {
        jpeg_decoder::PixelFormat::RGB24 => Ok(pixels),
        jpeg_decoder::PixelFormat::L8 => Ok(pixels.iter().flat_map(|&g| [g, g, g]).collect()),
        jpeg_decoder::PixelFormat::L16 => Err(unsupported("a 16-bit greyscale (lossless) JPEG image")),
        jpeg_decoder::PixelFormat::CMYK32 => Err(unsupported("a CMYK JPEG image")),
    }
}

/// The image, once its pixels are checked to be exactly `width × height` RGB triples.
fn rgb_image(width: u32, height: u32, pixels: Vec<u8>, format: ImageFormat) -> Result<RgbImage, MediaError> {
    let expected = (width as usize).saturating_mul(height as usize).saturating_mul(3);
    if pixels.len() != expected || pixels.is_empty() {
        return Err(MediaError::CorruptImage {
            format,
            detail: format!("{width}x{height} px decoded to {} RGB bytes", pixels.len()),
        });
    }
    Ok(RgbImage {
        width,
        height,
        pixels,
    })
}

/// Whether an `FF D9` end-of-image marker appears in the file. jpeg-decoder fills missing scan data
/// with grey rather than failing, so a file cut short would otherwise pass.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn count_samples<S, I>(samples: I, valid: impl Fn(S) -> bool) -> Result<u64, MediaError>
where
    I: Iterator<Item = hound::Result<S>>,
{
    let mut count: u64 = 0;
    for sample in samples {
        let sample = sample.map_err(wav_error)?;
        if !valid(sample) {
            return Err(MediaError::CorruptAudio {
                detail: format!("sample {count} is not a finite number"),
            });
        }
        count += 1;
    }
    Ok(count)
}

fn wav_error(error: hound::Error) -> MediaError {
    match error {
        hound::Error::Unsupported => MediaError::UnsupportedFormat {
            detected: "a WAV file with a non-PCM (compressed or unknown) encoding",
            expected: AUDIO_EXPECTED,
        },
        hound::Error::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            MediaError::CorruptAudio {
                detail: "truncated sample data".into(),
            }
        }
        other => MediaError::CorruptAudio {
            detail: other.to_string(),
        },
    }
}

fn bad_duration(secs: f64, limits: &Limits) -> MediaError {
    MediaError::BadDuration {
        secs,
        min: limits.min_audio_secs,
        max: limits.max_audio_secs,
    }
}

/// Names the format of data that is not what was expected, for a clear refusal.
fn detect_other(bytes: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, magic: &[u8]| bytes.get(offset..offset + magic.len()) == Some(magic);
    let frame_sync = match bytes {
        [0xFF, b1, ..] => Some(*b1),
        _ => None,
    };
    Some(if at(0, b"ID3") {
        "MP3 audio (ID3 tag)"
    } else if at(0, b"OggS") {
        "Ogg audio (Vorbis/Opus)"
    } else if at(0, b"fLaC") {
        "FLAC audio"
    } else if frame_sync.is_some_and(|b1| b1 & 0xF6 == 0xF0) {
        "AAC audio (ADTS)"
    } else if frame_sync.is_some_and(|b1| b1 & 0xE0 == 0xE0 && b1 & 0x18 != 0x08 && b1 & 0x06 != 0) {
        // Frame sync, a valid MPEG version and a valid layer.
        "MP3 audio"
    } else if at(0, b"RIFF") && at(8, b"WAVE") {
        "RIFF/WAVE audio"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "a WebP image"
    } else if at(0, b"RIFF") && at(8, b"AVI ") {
        "AVI video"
    } else if at(0, b"RF64") || at(0, b"BW64") {
        "RF64/BW64 audio (64-bit WAV)"
    } else if at(0, b"FORM") && (at(8, b"AIFF") || at(8, b"AIFC")) {
        "AIFF audio"
    } else if at(0, b"#!AMR") {
        "AMR audio"
    } else if at(0, b"\x1A\x45\xDF\xA3") {
        "Matroska/WebM media"
    } else if at(4, b"ftypavif") || at(4, b"ftypavis") {
        "an AVIF image"
    } else if at(4, b"ftypheic") || at(4, b"ftypheix") || at(4, b"ftypmif1") {
        "a HEIF image"
    } else if at(4, b"ftyp") {
        "MP4/M4A media"
    } else if at(0, PNG_MAGIC) {
        "a PNG image"
    } else if at(0, JPEG_MAGIC) {
        "a JPEG image"
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        "a GIF image"
    } else if at(0, b"BM") {
        "a BMP image"
    } else if at(0, b"II*\0") || at(0, b"MM\0*") {
        "a TIFF image"
    } else if at(0, b"\0\0\x01\0") {
        "an ICO image"
    } else if at(0, b"%PDF") {
        "a PDF document"
    } else if at(0, b"<svg") || at(0, b"<?xml") {
        "SVG/XML text"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn png_faces_validate() {
        let info = validate_face(&png(512, 512), &limits()).unwrap();
        assert_eq!(
            info,
            ImageInfo {
                format: ImageFormat::Png,
                width: 512,
                height: 512
            }
        );
        let info = validate_face(&png(64, 4096), &limits()).unwrap();
        assert_eq!((info.width, info.height), (64, 4096));
    }

    #[test]
    fn jpeg_faces_validate() {
        let info = validate_face(&jpeg(), &limits()).unwrap();
        assert_eq!(
            info,
            ImageInfo {
                format: ImageFormat::Jpeg,
                width: 64,
                height: 80
            }
        );
    }

    #[test]
    fn dimensions_are_checked_from_the_header() {
        for (w, h) in [(63, 512), (512, 63), (4097, 64), (64, 4097)] {
            let err = validate_face(&png(w, h), &limits()).unwrap_err();
            assert!(
                matches!(err, MediaError::BadDimensions { width, height, .. } if (width, height) == (w, h))
            );
        }
        // A header announcing a huge image over a tiny body is refused before any decoding.
        let mut huge = png(64, 64);
        huge[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(matches!(
            validate_face(&huge, &limits()),
            Err(MediaError::BadDimensions { width: 100_000, .. })
        ));
        let small = Limits {
            min_face_side: 65,
            ..limits()
        };
        assert!(matches!(
            validate_face(&jpeg(), &small),
            Err(MediaError::BadDimensions {
                width: 64,
                height: 80,
                ..
            })
        ));
    }

    #[test]
    fn corrupt_and_truncated_images_are_refused() {
        let good = png(128, 128);
        for cut in [10, 30, good.len() / 2, good.len() - 13] {
            let err = validate_face(&good[..cut], &limits()).unwrap_err();
            assert!(
                matches!(
                    err,
                    MediaError::CorruptImage {
                        format: ImageFormat::Png,
                        ..
                    }
                ),
                "{cut}: {err}"
            );
        }
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xFF;
        assert!(matches!(
            validate_face(&flipped, &limits()),
            Err(MediaError::CorruptImage { .. })
        ));

        let good = jpeg();
        let err = validate_face(&good[..good.len() / 2], &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                MediaError::CorruptImage {
                    format: ImageFormat::Jpeg,
                    ..
                }
            ),
            "{err}"
        );
        let err = validate_face(&good[..40], &limits()).unwrap_err();
        assert!(
            matches!(
                err,
                MediaError::CorruptImage {
                    format: ImageFormat::Jpeg,
                    ..
                }
            ),
            "{err}"
        );

        let mut garbage = PNG_MAGIC.to_vec();
        garbage.extend_from_slice(&[0x42; 200]);
        assert!(matches!(
            validate_face(&garbage, &limits()),
            Err(MediaError::CorruptImage { .. })
        ));
    }

    #[test]
    fn other_image_formats_are_named() {
        let err = validate_face(b"GIF89a\x40\0\x40\0", &limits()).unwrap_err();
        assert!(err.to_string().contains("GIF"), "{err}");
        let err = validate_face(b"RIFF\0\0\0\0WEBPVP8 ", &limits()).unwrap_err();
        assert!(err.to_string().contains("WebP"), "{err}");
        assert!(matches!(
            validate_face(b"hello world", &limits()),
            Err(MediaError::Unrecognised { .. })
        ));
        assert_eq!(validate_face(b"", &limits()), Err(MediaError::Empty));
        let tight = Limits {
            max_face_bytes: 100,
            ..limits()
        };
        assert!(matches!(
            validate_face(&png(64, 64), &tight),
            Err(MediaError::TooLarge { limit: 100, .. })
        ));
    }

    /// `decode_rgb`'s pixel (x, y).
    fn rgb_at(image: &RgbImage, x: u32, y: u32) -> [u8; 3] {
        let i = ((y * image.width + x) * 3) as usize;
        [image.pixels[i], image.pixels[i + 1], image.pixels[i + 2]]
    }

    #[test]
    fn decode_rgb_reads_rgb_and_rgba_pngs() {
        // testkit's gradient: pixel (x, y) is (x mod 251, y mod 241, (x ^ y) mod 239).
        let image = decode_rgb(&png(300, 260)).unwrap();
        assert_eq!(
            (image.width, image.height, image.pixels.len()),
            (300, 260, 300 * 260 * 3)
        );
        for (x, y) in [(0, 0), (7, 3), (255, 250), (299, 259)] {
            assert_eq!(
                rgb_at(&image, x, y),
                [(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8]
            );
        }
        // Alpha is dropped, not blended.
        let rgba = [10, 20, 30, 0, 40, 50, 60, 128, 70, 80, 90, 255, 1, 2, 3, 4];
        let image = decode_rgb(&png_with(
            (2, 2),
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            &rgba,
            None,
            None,
        ))
        .unwrap();
        assert_eq!(image.pixels, [10, 20, 30, 40, 50, 60, 70, 80, 90, 1, 2, 3]);
    }

    #[test]
    fn decode_rgb_replicates_grey_pngs() {
        let grey = decode_rgb(&png_with(
            (3, 1),
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &[0, 128, 255],
            None,
            None,
        ))
        .unwrap();
        assert_eq!(grey.pixels, [0, 0, 0, 128, 128, 128, 255, 255, 255]);
        let grey_alpha = decode_rgb(&png_with(
            (2, 1),
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Eight,
            &[9, 0, 200, 255],
            None,
            None,
        ))
        .unwrap();
        assert_eq!(grey_alpha.pixels, [9, 9, 9, 200, 200, 200]);
        // Below 8 bits, grey is scaled to the full range: 1-bit 0/1 is 0/255.
        let bits = decode_rgb(&png_with(
            (8, 1),
            png::ColorType::Grayscale,
            png::BitDepth::One,
            &[0b1010_0000],
            None,
            None,
        ))
        .unwrap();
        assert_eq!(rgb_at(&bits, 0, 0), [255; 3]);
        assert_eq!(rgb_at(&bits, 1, 0), [0; 3]);
        assert_eq!(rgb_at(&bits, 2, 0), [255; 3]);
    }

    #[test]
    fn decode_rgb_keeps_the_high_byte_of_16_bit_pngs() {
        // Big-endian samples: 0x1234 → 0x12.
        let rgb16 = [
            0x12, 0x34, 0xAB, 0xCD, 0xFF, 0x00, 0x00, 0xFF, 0x80, 0x01, 0x7F, 0xFF,
        ];
        let image = decode_rgb(&png_with(
            (2, 1),
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            &rgb16,
            None,
            None,
        ))
        .unwrap();
        assert_eq!(image.pixels, [0x12, 0xAB, 0xFF, 0x00, 0x80, 0x7F]);
        let grey16 = decode_rgb(&png_with(
            (2, 1),
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
            &[0xFE, 0xFF, 0x01, 0x00],
            None,
            None,
        ))
        .unwrap();
        assert_eq!(grey16.pixels, [0xFE, 0xFE, 0xFE, 0x01, 0x01, 0x01]);
    }

    #[test]
    fn decode_rgb_expands_palette_pngs() {
        let palette = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 7, 8, 9];
        let indexed = decode_rgb(&png_with(
            (4, 1),
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            &[3, 2, 1, 0],
            Some(palette.clone()),
            None,
        ))
        .unwrap();
        assert_eq!(indexed.pixels, [7, 8, 9, 0, 0, 255, 0, 255, 0, 255, 0, 0]);
        // With transparency (expanded to RGBA by the decoder, alpha dropped here) and 2-bit indices.
        let transparent = decode_rgb(&png_with(
            (4, 1),
            png::ColorType::Indexed,
            png::BitDepth::Two,
            &[0b00_01_10_11],
            Some(palette),
            Some(vec![0, 128]),
        ))
        .unwrap();
        assert_eq!(transparent.pixels, [255, 0, 0, 0, 255, 0, 0, 0, 255, 7, 8, 9]);
    }

    #[test]
    fn decode_rgb_reads_colour_and_grey_jpegs() {
        let bytes = jpeg();
        let image = decode_rgb(&bytes).unwrap();
        assert_eq!((image.width, image.height), (64, 80));
        // Colour JPEG samples are the decoder's RGB, unchanged.
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(&bytes));
        assert_eq!(image.pixels, decoder.decode().unwrap());
        assert_eq!(
            decoder.info().unwrap().pixel_format,
            jpeg_decoder::PixelFormat::RGB24
        );

        let (grey, value) = grey_jpeg();
        let image = decode_rgb(&grey).unwrap();
        assert_eq!(
            (image.width, image.height, image.pixels.len()),
            (64, 64, 64 * 64 * 3)
        );
        for y in 0..64 {
            for x in 0..64 {
                assert_eq!(rgb_at(&image, x, y), [value(x, y); 3], "({x}, {y})");
            }
        }
    }

    #[test]
    fn jpeg_samples_without_an_rgb_reading_are_refused() {
        for format in [jpeg_decoder::PixelFormat::CMYK32, jpeg_decoder::PixelFormat::L16] {
            let err = jpeg_to_rgb(format, vec![0; 16]).unwrap_err();
            assert!(
                matches!(
                    err,
                    MediaError::UnsupportedFormat {
                        expected: JPEG_EXPECTED,
                        ..
                    }
                ),
                "{format:?}: {err}"
            );
        }
        assert_eq!(
            jpeg_to_rgb(jpeg_decoder::PixelFormat::L8, vec![1, 2]).unwrap(),
            [1, 1, 1, 2, 2, 2]
        );
    }

    #[test]
    fn decode_rgb_refuses_what_validation_refuses() {
        let png = png(128, 128);
        let jpeg = jpeg();
        let refused: [&[u8]; 7] = [
            b"",
            b"GIF89a\x40\0\x40\0",
            b"hello world",
            &png[..png.len() / 2],
            &png[..30],
            &jpeg[..jpeg.len() / 2],
            &jpeg[..40],
        ];
        for bytes in refused {
            let decoded = decode_rgb(bytes).unwrap_err();
            let validated = validate_face(bytes, &limits()).unwrap_err();
            assert_eq!(
                std::mem::discriminant(&decoded),
                std::mem::discriminant(&validated),
                "{decoded} / {validated}"
            );
            if let (MediaError::CorruptImage { format: a, .. }, MediaError::CorruptImage { format: b, .. }) =
                (&decoded, &validated)
            {
                assert_eq!(a, b);
            }
        }
        assert_eq!(decode_rgb(b""), Err(MediaError::Empty));
        // Whatever validates decodes, at the validated size.
        for bytes in [png, jpeg, grey_jpeg().0, super::super::testkit::png(64, 4096)] {
            let info = validate_face(&bytes, &limits()).unwrap();
            let image = decode_rgb(&bytes).unwrap();
            assert_eq!((image.width, image.height), (info.width, info.height));
        }
    }

    #[test]
    fn wav_clips_validate_in_every_accepted_encoding() {
        for (bits, float) in [(8, false), (16, false), (24, false), (32, false), (32, true)] {
            let bytes = wav(WavSpec {
                bits,
                float,
                ..WavSpec::default()
            });
            let info = validate_audio(&bytes, &limits()).unwrap();
            assert_eq!(info.bits_per_sample, bits);
            assert_eq!(
                info.sample_format,
                if float {
                    SampleFormat::Float
                } else {
                    SampleFormat::Int
                }
            );
            assert_eq!(info.sample_rate, 16_000);
            assert_eq!(info.channels, 1);
            assert_eq!(info.frames, 16_000);
            assert!((info.duration_secs - 1.0).abs() < 1e-12);
        }
        let stereo = validate_audio(
            &wav(WavSpec {
                channels: 2,
                rate: 48_000,
                secs: 0.5,
                ..WavSpec::default()
            }),
            &limits(),
        )
        .unwrap();
        assert_eq!((stereo.channels, stereo.frames), (2, 24_000));
    }

    #[test]
    fn wav_header_limits_are_enforced() {
        let spec = WavSpec::default();
        let check = |s: WavSpec| validate_audio(&wav(s), &limits());
        assert!(matches!(
            check(WavSpec { channels: 3, ..spec }),
            Err(MediaError::BadChannels { channels: 3, max: 2 })
        ));
        assert!(matches!(
            check(WavSpec { rate: 7_999, ..spec }),
            Err(MediaError::BadSampleRate { rate: 7_999, .. })
        ));
        assert!(matches!(
            check(WavSpec { rate: 48_001, ..spec }),
            Err(MediaError::BadSampleRate { .. })
        ));
        assert!(matches!(
            check(WavSpec { secs: 0.49, ..spec }),
            Err(MediaError::BadDuration { .. })
        ));
        assert!(matches!(
            check(WavSpec {
                rate: 8_000,
                secs: 30.5,
                ..spec
            }),
            Err(MediaError::BadDuration { .. })
        ));
        assert!(
            check(WavSpec {
                rate: 8_000,
                secs: 30.0,
                ..spec
            })
            .is_ok()
        );
        assert!(check(WavSpec { secs: 0.5, ..spec }).is_ok());
    }

    #[test]
    fn truncated_and_non_finite_wavs_are_refused() {
        let good = wav(WavSpec::default());
        let err = validate_audio(&good[..good.len() - 1001], &limits()).unwrap_err();
        assert!(matches!(err, MediaError::CorruptAudio { .. }), "{err}");
        let err = validate_audio(&good[..30], &limits()).unwrap_err();
        assert!(matches!(err, MediaError::CorruptAudio { .. }), "{err}");

        let mut nan = wav(WavSpec {
            float: true,
            bits: 32,
            ..WavSpec::default()
        });
        let at = nan.len() - 8;
        nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let err = validate_audio(&nan, &limits()).unwrap_err();
        assert!(err.to_string().contains("finite"), "{err}");
    }

    #[test]
    fn compressed_audio_is_refused_by_name() {
        for (bytes, name) in [
            (b"ID3\x04\0\0\0\0\0\x23TSSE".to_vec(), "MP3"),
            (vec![0xFF, 0xFB, 0x90, 0x64, 0, 0, 0, 0], "MP3"),
            (b"OggS\0\x02\0\0\0\0\0\0".to_vec(), "Ogg"),
            (b"fLaC\0\0\0\x22".to_vec(), "FLAC"),
            (vec![0xFF, 0xF1, 0x50, 0x80], "AAC"),
            (b"\0\0\0\x20ftypM4A ".to_vec(), "MP4"),
        ] {
            let err = validate_audio(&bytes, &limits()).unwrap_err();
            assert!(matches!(err, MediaError::UnsupportedFormat { .. }), "{err}");
            assert!(err.to_string().contains(name), "{err}");
        }
        let err = validate_audio(&png(64, 64), &limits()).unwrap_err();
        assert!(err.to_string().contains("PNG"), "{err}");
        assert!(matches!(
            validate_audio(b"plain text", &limits()),
            Err(MediaError::Unrecognised { .. })
        ));
    }

    #[test]
    fn non_pcm_wav_is_refused() {
        // A-law (format tag 6) in an otherwise well-formed header.
        let mut alaw = wav(WavSpec {
            bits: 8,
            ..WavSpec::default()
        });
        alaw[20..22].copy_from_slice(&6u16.to_le_bytes());
        let err = validate_audio(&alaw, &limits()).unwrap_err();
        assert!(matches!(err, MediaError::UnsupportedFormat { .. }), "{err}");
    }

    #[test]
    fn transcripts_are_trimmed_bounded_and_single_line() {
        assert_eq!(
            validate_text("  hello world \n", 20),
            Ok(Some("hello world".into()))
        );
        assert_eq!(validate_text(" \n\t ", 20), Ok(None));
        assert_eq!(validate_text("", 20), Ok(None));
        assert_eq!(validate_text("héllo", 5), Ok(Some("héllo".into())));
        assert_eq!(
            validate_text("héllo!", 5),
            Err(TextError::TooLong { chars: 6, max: 5 })
        );
        assert_eq!(
            validate_text("line one\nline two", 100),
            Err(TextError::ControlCharacter { position: 8 })
        );
        assert_eq!(
            validate_text("a\u{1b}[31mb", 100),
            Err(TextError::ControlCharacter { position: 1 })
        );
        assert_eq!(
            validate_text("a\u{0}", 100),
            Err(TextError::ControlCharacter { position: 1 })
        );
    }
}
