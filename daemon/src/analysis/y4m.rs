//! The YUV4MPEG2 framing ffmpeg writes when the decoder delivers grey frames, and the luma range
//! expansion that turns those frames into the 0–255 grey the components read.
//!
//! Owns: parsing the stream header line (`YUV4MPEG2 W… H… … Cmono [XCOLORRANGE=…]`) into the frame
//! size and colour range, the per-frame marker (`FRAME\n`), and [`LumaRange::to_full`], the table
//! that maps a limited-range (16–235) luma to 0–255 as swscale does before an RGB conversion.
//!
//! Why YUV4MPEG2 rather than raw bytes: the colour range is a property of the decoded frames (the
//! codec's own signalling, e.g. H.264's `video_full_range_flag`), which only ffmpeg knows; the
//! YUV4MPEG2 header carries it, so every codec and container is handled the way ffmpeg's own RGB
//! conversion would handle it, without parsing bitstreams here.
//!
//! Must not: trust the header beyond what it is checked against (the caller's expected size), or
//! allocate from its contents. What ffmpeg writes here is decided by ffmpeg, not by the miner's file,
//! so a header that does not parse is a host problem, not the miner's.

/// Longest stream header accepted (ffmpeg's is under 80 bytes).
pub const MAX_HEADER_BYTES: usize = 256;

/// What precedes every frame's bytes (ffmpeg writes no per-frame parameters).
pub const FRAME_MARKER: &[u8; 6] = b"FRAME\n";

/// Which luma values the stream's frames use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LumaRange {
    /// 16–235 ("tv", MPEG); also what an unsignalled stream is taken to be, as swscale does.
    Limited,
    /// 0–255 ("pc", JPEG).
    Full,
}

impl LumaRange {
    /// The table from a luma value to 0–255 grey: `round((y − 16) · 255 / 219)` clamped for limited
    /// range (the luma scaling of ffmpeg's own YUV → RGB conversion), the identity for full range.
    pub fn to_full(self) -> [u8; 256] {
        let mut table = [0u8; 256];
        for (y, out) in table.iter_mut().enumerate() {
            *out = match self {
                LumaRange::Full => y as u8,
                LumaRange::Limited => {
                    // Integer rounding of (y − 16) · 255 / 219, clamped to 0–255.
                    let scaled = ((y as i32 - 16) * 255 * 2 + 219) / (219 * 2);
                    scaled.clamp(0, 255) as u8
                }
            };
        }
        table
    }
}

/// The facts of a stream header that the decoder checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHeader {
    /// Frame width, pixels.
    pub width: u32,
    /// Frame height, pixels.
    pub height: u32,
    /// The frames' luma range.
    pub range: LumaRange,
}

/// Parses one stream header line (with or without its `\n`). Only `Cmono` (one byte per pixel) is
/// accepted: that is what the decoder asks for, and a different layout would misread every frame.
pub fn parse_stream_header(line: &[u8]) -> Result<StreamHeader, String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| "the YUV4MPEG2 header is not text".to_owned())?;
    let mut fields = line.split(' ');
    if fields.next() != Some("YUV4MPEG2") {
        return Err("not a YUV4MPEG2 stream".to_owned());
    }
    let (mut width, mut height, mut colour, mut range) = (None, None, None, LumaRange::Limited);
    for field in fields {
        let dimension = |v: &str| v.parse::<u32>().ok().filter(|&n| n > 0);
        match field.split_at_checked(1) {
            Some(("W", v)) => width = dimension(v),
            Some(("H", v)) => height = dimension(v),
            Some(("C", v)) => colour = Some(v),
            _ if field == "XCOLORRANGE=FULL" => range = LumaRange::Full,
            _ if field == "XCOLORRANGE=LIMITED" => range = LumaRange::Limited,
            // Frame rate, interlacing, aspect ratio and other extensions do not change the bytes.
            _ => {}
        }
    }
    let (Some(width), Some(height)) = (width, height) else {
        return Err(format!("the YUV4MPEG2 header has no frame size: {line:?}"));
    };
    if colour != Some("mono") {
        return Err(format!("the YUV4MPEG2 stream is not mono: {line:?}"));
    }
    Ok(StreamHeader { width, height, range })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ffmpegs_headers_parse() {
        let limited = parse_stream_header(b"YUV4MPEG2 W512 H384 F25:1 Ip A0:0 Cmono\n").unwrap();
        assert_eq!(
            limited,
            StreamHeader {
                width: 512,
                height: 384,
                range: LumaRange::Limited
            }
        );
        let full = parse_stream_header(b"YUV4MPEG2 W2 H1 F25:1 Ip A1:1 Cmono XCOLORRANGE=FULL").unwrap();
        assert_eq!(full.range, LumaRange::Full);
        let tagged = parse_stream_header(b"YUV4MPEG2 W2 H1 Cmono XCOLORRANGE=LIMITED\n").unwrap();
        assert_eq!(tagged.range, LumaRange::Limited);
    }

    #[test]
    fn other_layouts_and_broken_headers_are_refused() {
        for bad in [
            &b"YUV4MPEG2 W512 H512 F25:1 Ip A0:0 C420jpeg\n"[..],
            b"YUV4MPEG2 W512 H512\n",
            b"YUV4MPEG2 W0 H512 Cmono\n",
            b"YUV4MPEG2 H512 Cmono\n",
            b"YUV4MPEG W512 H512 Cmono\n",
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse_stream_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limited_range_expands_like_swscale() {
        let table = LumaRange::Limited.to_full();
        // Black and white points, the middle, and the clamped feet and heads.
        assert_eq!(table[16], 0);
        assert_eq!(table[235], 255);
        assert_eq!(table[126], 128); // (126 − 16) · 255 / 219 = 128.08
        assert_eq!(table[125], 127); // 126.92
        assert_eq!(table[0], 0);
        assert_eq!(table[255], 255);
        assert!(table.windows(2).all(|w| w[0] <= w[1]), "monotone");
        let full = LumaRange::Full.to_full();
        assert!(full.iter().enumerate().all(|(i, &v)| usize::from(v) == i));
    }
}
