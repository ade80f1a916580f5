//! Test-only builders for challenge media: PNGs and WAVs made in memory, one small real JPEG, and the
//! base64 helpers the payload tests share.
//!
//! Must not: be compiled outside tests, or touch anything but memory and the temp dirs tests pass in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Cursor;

use base64::Engine as _;

/// A 64x80 baseline JPEG made by ffmpeg's `testsrc`.
const JPEG_64X80_B64: &str = "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgQEBMQExYWFhYWFhoYGhsbGxoaGhobGxsdHR0iIiIdHR0bGx0dICAiIiUmJSMjIiMmJigoKDAwLi44ODpFRVP/xACyAAEAAgMBAAAAAAAAAAAAAAAHAAgFBAYDAQADAQEBAQAAAAAAAAAAAAAABgcIBQQDEAACAQIDAwYJCQkBAAAAAAACAQADERIhBBMFMbFBcSIW0cGSZFPjk4Kj0+GRofCBMhQGUdLiVBXCUiNEokMRAAEDAgEEDAsGBwEBAAAAAAEAAhEEAxIFIiExQ9FxoYPBQeMWFAYTo8LDgtJTkuJEUWLTpDRh4WSBUrGiFXIykyP/wAARCABQAEADARIAAhIAAxIA/9oADAMBAAIRAxEAPwCv89AAqhCIiyImhERTbJvJJJZtt8FBCEJInf6TdwU0iqrEX9rsxV+V/RyxUTpTULWAOuDE7+XQWjbO8r+syZa7V3qlz7NE42bII/8Aq3E29cw8oMgsYTECMZA0kSWr1KoAcWvD805iTqnoKqq02rL3CCQ45rTBjQ50NJnkBlaQSdS5LrawTZsXHNIJDjDWGDBh7y1pM8gM61rhdf2p0Xm9T4tP4sBJC+hWUfXUnt3fsVp9RnrLPk7e21xUldltb5zTeNU+FHuR/prk71NX7Fr7ZZgXQ6s/5t39pdpBxUjHivtWf1+2dLNa0+VKOpgMutDjhzH5jpdqaMWhx5M0lZ2TdSZZoKyBbvtDjhzLmY7E7U0YoDnToOAu0rKKzsN9Lr6lCwl1wyyfEVw6r8HDol/SHT1r7MB2cz5HWB9O1q3FylrPLHZmlykHXbQFioh0OaALdxxOKboAkkmc8Z2mTigBWUmnp9RS1VIK1E1UpmriS4Pwpp5NPNPJ5zooSYhE/wCVNyjpqI62sCdaqsVLNFs6RCrNK1kZpu7u2hssrkoyQQhCM5I1oWf0I1kjShbrQjOSNaFn9CuLJMAITUhGckbELP6EayRpQt1IWv8Al7fRbq1CGob/AAtR/wCUbMsLtZVBV7pp2xWvceZtKHca0KAIV/5IIQhGcka0LP6EayRpQt1oRnJGtCz+hXFkmAEJqQjOSNiFn9CNZI0oW6kIzkjWhQBCv/C7dm+KmwpU6obQwFC6mNpnbJE0SJ4mvvPFm7vKCXLmUO72OfO91Cbr2Su62WfMjxl6ze2PVxX+j5ZTlL+kmmOreF5tZRVFvZA7n4ieDjyhRPM8ehwP79/Z+WXlShnafH8LHDc0tTKQ3u1fdH8JPDR5JCsRVuC/+x7v0k0Ep3Yy/wB98PHCT5MJdSccrRsP9/uqwE4/Ub22H/li9u39LmRFZLfZLvPi44HnVW0jWctd7sMcJPiLBzjP5v1sOx/7/ciOrJ0S0T1vwPOqcJxs5J77Zo8yfGCxE9wDGuNoiKhPyDg+Ing/fWuVybNV3o/5j+M8SLJ2C3YIksVRkN1iQpC2udImySduDwu36TkL6329z+e9tqLJ8GRJ2fwfvrvtDq9MFsVeiPTUFcrgjJ5UWbp1W3ncadpPy6tVUWXTF22dx7TxqXK4Q6mgYIRq0iL9EYt/MneBMizae858C1cJPIGOPEn5dDKFq5aY649jmMGtzmlrRJgSToEnQrelKrVpt5GD9pTFlQAua3R9bTjWqCsBE01QOCf6K7tPlutsaMYuiDoujFrMziBDyd1xELI1Vk+tcdFLUHcs3D4q9FL2iyjTCO8F5oBAF4YtZmcYLbhPIJcRHItsNZpvP0fWB3zFdkvK/c+ljdR0dS2JsXhu23jiXw6dfsPvHMJGdT3/AFVz2HbStfVvq3v1W7rtPXO+GlULoAnyKaXa3yT33oo3U+UaEa6qmG7et+klHoL+/wDu/PqY0tLUNibN0brHDiVO6z9O/wDojz8NX2jeyq+IXdO6LUGXDq9Hf3Suf5Ghw/i6b/2t+kkOnyDR2YLw687NOec2RrhrYEH5OxLk0lRYbE3bY3XtHGn6k7M0FPBuB1Q4YTNww3E3XDGwMJOtr8ejQsRp6ZmNxAiXDJN5xRSSSSVksklzRwfftXGksuMd/q5p/oUsgACBoA5F3GVVPSEMqL1qw4iQ269ttxGqYcQYkHT+Sx+97rjnOc4uc4lznOJJcTpJJOkknWUdnodX/DV/VH+zLJRerCHTGnc0rzLcjaqn9da9tu2ouv/Z";

/// A 64x64 baseline greyscale JPEG (one component): flat 8x8 blocks, block (bx, by) of value
/// `16 + 24 bx + 4 by`, written DC-only with quantiser 1 so that it decodes to exactly those values.
/// Written by hand (SOF0, the ITU T.81 K.3 DC table, an AC table holding only EOB); ffmpeg decodes it
/// to the same values.
const GREY_JPEG_64X64_B64: &str = "/9j/2wBDAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQH/wAALCABAAEABAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAFBABAAAAAAAAAAAAAAAAAAAAAP/aAAgBAQAAPwD+H99gPsB9gPsB9gPsB9gP8t99gPsB9gPsB9gPsB9gP8t99gPsB9gPsB9gPsB9gP8ALffYD7AfYD7AfYD7AfYD/LffYD7AfYD7AfYD7AfYD/LffYD7AfYD7AfYD7AfYD/LffYD7AfYD7AfYD7AfYD/AC332A+wH2A+wH2A+wH2A//Z";

/// The greyscale JPEG fixture and the grey value of its pixel (x, y).
pub(crate) fn grey_jpeg() -> (Vec<u8>, impl Fn(u32, u32) -> u8) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(GREY_JPEG_64X64_B64)
        .unwrap();
    (bytes, |x: u32, y: u32| (16 + 24 * (x / 8) + 4 * (y / 8)) as u8)
}

/// The real JPEG fixture.
pub(crate) fn jpeg() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(JPEG_64X80_B64)
        .unwrap()
}

/// An 8-bit RGB PNG with a gradient.
pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        let mut data = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&[(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8]);
            }
        }
        writer.write_image_data(&data).unwrap();
    }
    out
}

/// A PNG of any colour type and depth: `data` is the raw scanlines (no filter bytes), `palette` the
/// PLTE entries (RGB triples) and `trns` the tRNS chunk, when given.
pub(crate) fn png_with(
    (width, height): (u32, u32),
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<Vec<u8>>,
    trns: Option<Vec<u8>>,
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if let Some(palette) = palette {
            encoder.set_palette(palette);
        }
        if let Some(trns) = trns {
            encoder.set_trns(trns);
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }
    out
}

/// Parameters of a generated WAV.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WavSpec {
    pub channels: u16,
    pub rate: u32,
    pub bits: u16,
    pub float: bool,
    pub secs: f64,
}

impl Default for WavSpec {
    fn default() -> Self {
        WavSpec {
            channels: 1,
            rate: 16_000,
            bits: 16,
            float: false,
            secs: 1.0,
        }
    }
}

/// A 220 Hz sine in the requested encoding.
pub(crate) fn wav(spec: WavSpec) -> Vec<u8> {
    let mut out = Vec::new();
    let hspec = hound::WavSpec {
        channels: spec.channels,
        sample_rate: spec.rate,
        bits_per_sample: spec.bits,
        sample_format: if spec.float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    {
        let mut writer = hound::WavWriter::new(Cursor::new(&mut out), hspec).unwrap();
        let frames = (spec.secs * f64::from(spec.rate)).round() as u64;
        for i in 0..frames {
            let v = (i as f64 * 220.0 * std::f64::consts::TAU / f64::from(spec.rate)).sin() * 0.5;
            for _ in 0..spec.channels {
                match (spec.float, spec.bits) {
                    (true, _) => writer.write_sample(v as f32).unwrap(),
                    (false, 8) => writer.write_sample((v * 127.0) as i8).unwrap(),
                    (false, 16) => writer.write_sample((v * 32767.0) as i16).unwrap(),
                    (false, 24) => writer.write_sample((v * 8_388_607.0) as i32).unwrap(),
                    (false, _) => writer.write_sample((v * 2_147_483_647.0) as i32).unwrap(),
                }
            }
        }
        writer.finalize().unwrap();
    }
    out
}

/// A default valid 1 s mono WAV.
pub(crate) fn wav_default() -> Vec<u8> {
    wav(WavSpec::default())
}

/// Standard base64 with padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// URL-safe base64 without padding.
pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
