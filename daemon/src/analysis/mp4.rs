//! A fast, safe reading of an MP4 header: what [`super::decode`] would otherwise start `ffprobe` for
//! (a process start costs ~100 ms of CPU here, as much as decoding the whole 5 s clip).
//!
//! Owns: finding the `moov` box of an ISO BMFF file by reading only box headers (never the media
//! data), and turning it into the subset of ffprobe's JSON that the decoder's header validation reads
//! (`format.format_name/duration`, per stream `index`, `codec_type`, `codec_name`, `width`, `height`,
//! `avg_frame_rate`, `r_frame_rate`, `nb_frames`, `duration`, `sample_rate`, `channels`), so that both
//! paths go through the one validation and give the same `bad_output` reasons.
//!
//! Only the plain case is answered: a file that starts with `ftyp`, has one `moov` of at most
//! [`MAX_MOOV_BYTES`], is not fragmented, has only video and audio tracks with a codec on the
//! decoder's whitelist, at most one plain edit per track and no cover art. Anything else, and anything
//! malformed, gives `None`, and the caller asks ffprobe, which knows every corner of the format (and
//! classifies what is wrong). The parse is bounded (box count, nesting depth, sizes checked against
//! their parent) and never panics.
//!
//! Must not: decide that a file is bad (that stays with ffprobe and the validation), read the media
//! data, or follow anything outside the one file.

use serde_json::{Value, json};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Largest `moov` read; a larger one goes to ffprobe (a 5 s clip has a few KiB).
pub const MAX_MOOV_BYTES: u64 = 16 << 20;
/// Most top-level boxes looked at before giving up.
const MAX_TOP_LEVEL_BOXES: usize = 64;
/// Most child boxes looked at in one parent.
const MAX_CHILDREN: usize = 4096;
/// The demuxer name ffprobe reports for MP4/MOV.
pub const MOV_FORMAT_NAME: &str = "mov,mp4,m4a,3gp,3g2,mj2";

/// ffprobe's description of `file` (of `len` bytes), for the plain MP4 case only; `None` means "ask
/// ffprobe".
pub fn describe(file: &File, len: u64) -> Option<Value> {
    let moov = read_moov(file, len)?;
    describe_moov(&moov)
}

/// The `moov` body, when the top level is plain: `ftyp` first, one `moov`, no `moof`.
fn read_moov(file: &File, len: u64) -> Option<Vec<u8>> {
    let mut offset = 0u64;
    let mut moov: Option<(u64, u64)> = None;
    let mut whole = false;
    for i in 0..MAX_TOP_LEVEL_BOXES {
        if offset == len {
            whole = true;
            break;
        }
        let mut head = [0u8; 16];
        let available = (len - offset).min(16);
        let head = &mut head[..usize::try_from(available).ok()?];
        file.read_exact_at(head, offset).ok()?;
        let (kind, header, size) = box_header(head, len - offset)?;
        if i == 0 && &kind != b"ftyp" {
            return None;
        }
        match &kind {
            b"moov" if moov.is_none() => moov = Some((offset + header, size - header)),
            b"moov" | b"moof" | b"mfra" => return None,
            _ => {}
        }
        offset = offset.checked_add(size)?;
        if offset > len {
            // A box that runs past the end (a truncated `mdat`): the index may still be whole; the
            // decoder finds out what is missing.
            whole = true;
            break;
        }
    }
    // More top-level boxes than the limit: a `moof` could follow unseen, so this is not "plain".
    if !whole {
        return None;
    }
    let (start, body) = moov?;
    if body > MAX_MOOV_BYTES || start.checked_add(body)? > len {
        return None;
    }
    let mut bytes = vec![0u8; usize::try_from(body).ok()?];
    file.read_exact_at(&mut bytes, start).ok()?;
    Some(bytes)
}

/// `(type, header length, total size)` of the box starting `head`, with at most `room` bytes left in
/// its parent. `None` for sizes that are impossible.
fn box_header(head: &[u8], room: u64) -> Option<([u8; 4], u64, u64)> {
    let size32 = u32::from_be_bytes(head.get(0..4)?.try_into().ok()?);
    let kind: [u8; 4] = head.get(4..8)?.try_into().ok()?;
    let (header, size) = match size32 {
        0 => (8, room),
        1 => (16, u64::from_be_bytes(head.get(8..16)?.try_into().ok()?)),
        n => (8, u64::from(n)),
    };
    (size >= header).then_some((kind, header, size))
}

/// The children of a box body, as `(type, body)`; `None` as soon as one is malformed.
fn children(body: &[u8]) -> Option<Vec<([u8; 4], &[u8])>> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if out.len() >= MAX_CHILDREN {
            return None;
        }
        let room = u64::try_from(rest.len()).ok()?;
        let (kind, header, size) = box_header(rest, room)?;
        if size > room {
            return None;
        }
        let size = usize::try_from(size).ok()?;
        let header = usize::try_from(header).ok()?;
        out.push((kind, rest.get(header..size)?));
        rest = rest.get(size..)?;
    }
    Some(out)
}

fn child<'a>(body: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(body)?
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, b)| b)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// `(timescale, duration)` of an `mvhd` or `mdhd` body (both versions).
fn timescale_and_duration(full_box: &[u8]) -> Option<(u32, u64)> {
    match full_box.first()? {
        0 => Some((u32_at(full_box, 12)?, u64::from(u32_at(full_box, 16)?))),
        1 => Some((u32_at(full_box, 20)?, u64_at(full_box, 24)?)),
        _ => None,
    }
}

fn seconds(duration: u64, timescale: u32) -> Option<f64> {
    (timescale > 0).then(|| duration as f64 / f64::from(timescale))
}

fn describe_moov(moov: &[u8]) -> Option<Value> {
    // Cover art becomes an extra "attached picture" stream in ffprobe: leave that case to it.
    if moov.windows(4).any(|w| w == b"covr") {
        return None;
    }
    let boxes = children(moov)?;
    if boxes.iter().any(|(k, _)| k == b"mvex") {
        return None;
    }
    let (timescale, duration) = timescale_and_duration(child(moov, b"mvhd")?)?;
    let mut streams = Vec::new();
    for (index, (_, trak)) in boxes.iter().filter(|(k, _)| k == b"trak").enumerate() {
        streams.push(describe_trak(trak, index)?);
    }
    let mut format = json!({ "format_name": MOV_FORMAT_NAME });
    if let Some(d) = seconds(duration, timescale).filter(|d| *d > 0.0) {
        format["duration"] = json!(d);
    }
    Some(json!({ "format": format, "streams": streams }))
}

fn describe_trak(trak: &[u8], index: usize) -> Option<Value> {
    if let Some(edts) = child(trak, b"edts") {
        plain_edit(edts)?;
    }
    let mdia = child(trak, b"mdia")?;
    let (timescale, duration) = timescale_and_duration(child(mdia, b"mdhd")?)?;
    let handler: [u8; 4] = child(mdia, b"hdlr")?.get(8..12)?.try_into().ok()?;
    let stbl = child(child(mdia, b"minf")?, b"stbl")?;
    let stsd = child(stbl, b"stsd")?;
    if u32_at(stsd, 4)? != 1 {
        return None;
    }
    let (format, entry) = *children(stsd.get(8..)?)?.first()?;
    let sample_count = u32_at(child(stbl, b"stsz")?, 8)?;
    if sample_count == 0 {
        return None;
    }
    // ffmpeg counts frames and times from `stts` (duration = min(mdhd, Σ stts)); a file whose
    // `stts`, `stsz` and `mdhd` disagree could read as 5 s here and 2.5 s there, so only the
    // consistent case is answered here; anything else goes to ffprobe.
    let (stts_samples, stts_total) = stts_totals(child(stbl, b"stts")?)?;
    if stts_samples != u64::from(sample_count) || stts_total != duration {
        return None;
    }
    let duration_secs = seconds(duration, timescale)?;
    match &handler {
        b"vide" => {
            let codec = video_codec(&format, entry)?;
            let (width, height) = (u16_at(entry, 24)?, u16_at(entry, 26)?);
            // ffmpeg's mov demuxer: avg_frame_rate = sample_count · timescale / Σ stts deltas.
            let rate = format!(
                "{}/{}",
                u64::from(sample_count) * u64::from(timescale),
                stts_total
            );
            Some(json!({
                "index": index,
                "codec_type": "video",
                "codec_name": codec,
                "width": width,
                "height": height,
                "avg_frame_rate": rate,
                "r_frame_rate": rate,
                "nb_frames": sample_count.to_string(),
                "duration": duration_secs.to_string(),
            }))
        }
        b"soun" => {
            // QuickTime sound description versions 1 and 2 move the fields that follow.
            if u16_at(entry, 8)? != 0 {
                return None;
            }
            let (codec, channels, rate) = audio_stream(&format, entry.get(28..)?)?;
            Some(json!({
                "index": index,
                "codec_type": "audio",
                "codec_name": codec,
                "sample_rate": rate.to_string(),
                "channels": channels,
                "nb_frames": sample_count.to_string(),
                "duration": duration_secs.to_string(),
            }))
        }
        _ => None,
    }
}

/// At most one edit that plays the media from a non-negative time (encoder delay); `None` for empty
/// edits, several edits or an unknown version.
fn plain_edit(edts: &[u8]) -> Option<()> {
    let elst = child(edts, b"elst")?;
    let version = *elst.first()?;
    let count = u32_at(elst, 4)?;
    let media_time = match (version, count) {
        (_, 0) => return Some(()),
        (0, 1) => i64::from(u32_at(elst, 12)? as i32),
        (1, 1) => u64_at(elst, 16)? as i64,
        _ => return None,
    };
    (media_time >= 0).then_some(())
}

/// (Σ sample counts, Σ sample count × delta) of an `stts` box; `None` when malformed or empty.
fn stts_totals(stts: &[u8]) -> Option<(u64, u64)> {
    let count = usize::try_from(u32_at(stts, 4)?).ok()?;
    let (mut samples, mut total) = (0u64, 0u64);
    for i in 0..count {
        let at = 8 + i.checked_mul(8)?;
        let n = u64::from(u32_at(stts, at)?);
        let delta = u64::from(u32_at(stts, at + 4)?);
        samples = samples.checked_add(n)?;
        total = total.checked_add(n.checked_mul(delta)?)?;
    }
    (total > 0).then_some((samples, total))
}

/// ffprobe's codec name of a visual sample entry, for the whitelisted codecs.
fn video_codec(format: &[u8; 4], entry: &[u8]) -> Option<&'static str> {
    Some(match format {
        b"avc1" | b"avc3" => "h264",
        b"hvc1" | b"hev1" => "hevc",
        b"vp08" => "vp8",
        b"vp09" => "vp9",
        b"av01" => "av1",
        // MPEG-4 part 2 only when the descriptor says so (mp4v also carries MPEG-1/2 video).
        b"mp4v" if object_type(entry.get(78..)?)? == 0x20 => "mpeg4",
        _ => return None,
    })
}

/// `(codec, channels, sample rate)` of an audio sample entry whose child boxes are `boxes`, as
/// ffprobe reports them. Only AAC and Opus: their channel count is in their own configuration (the MP4
/// muxer writes 2 in every sample entry), for any other codec it is in the media data.
fn audio_stream(format: &[u8; 4], boxes: &[u8]) -> Option<(&'static str, u32, u32)> {
    match format {
        b"mp4a" => {
            let (oti, specific) = es_config(boxes)?;
            if !matches!(oti, 0x40 | 0x66..=0x68) {
                return None;
            }
            let (rate, channels) = aac_config(specific?)?;
            Some(("aac", channels, rate))
        }
        b"Opus" => {
            let channels = u32::from(*child(boxes, b"dOps")?.get(1)?);
            // Opus always decodes at 48 kHz.
            (channels > 0).then_some(("opus", channels, 48_000))
        }
        _ => None,
    }
}

/// `(sample rate, channels)` of an AAC AudioSpecificConfig (ISO 14496-3 1.6.2.1); `None` for an
/// explicit channel layout (configuration 0), which ffprobe reads from the stream.
fn aac_config(asc: &[u8]) -> Option<(u32, u32)> {
    const RATES: [u32; 13] = [
        96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000, 7_350,
    ];
    let bits = asc.iter().take(8).fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let available = 8 * asc.len().min(8);
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<u64> {
        at += n;
        (at <= available).then(|| (bits >> (available - at)) & ((1 << n) - 1))
    };
    if take(5)? == 31 {
        take(6)?;
    }
    let rate = match take(4)? {
        15 => u32::try_from(take(24)?).ok()?,
        i => *RATES.get(usize::try_from(i).ok()?)?,
    };
    let channels = match take(4)? {
        0 | 8.. => return None,
        7 => 8,
        c => u32::try_from(c).ok()?,
    };
    (rate > 0).then_some((rate, channels))
}

/// `objectTypeIndication` of the `esds` box among `boxes` (ISO 14496-1 descriptors).
fn object_type(boxes: &[u8]) -> Option<u8> {
    es_config(boxes).map(|(oti, _)| oti)
}

/// `objectTypeIndication` and DecoderSpecificInfo of the `esds` box among `boxes`.
fn es_config(boxes: &[u8]) -> Option<(u8, Option<&[u8]>)> {
    let esds = child(boxes, b"esds")?;
    let (tag, es) = descriptor(esds.get(4..)?)?;
    if tag != 0x03 {
        return None;
    }
    let flags = *es.get(2)?;
    let mut at = 3;
    if flags & 0x80 != 0 {
        at += 2;
    }
    if flags & 0x40 != 0 {
        at += 1 + usize::from(*es.get(at)?);
    }
    if flags & 0x20 != 0 {
        at += 2;
    }
    let (tag, config) = descriptor(es.get(at..)?)?;
    if tag != 0x04 {
        return None;
    }
    let oti = *config.first()?;
    // objectTypeIndication, streamType, bufferSizeDB (3), maxBitrate (4), avgBitrate (4).
    let specific = config
        .get(13..)
        .and_then(descriptor)
        .filter(|(tag, _)| *tag == 0x05)
        .map(|(_, body)| body);
    Some((oti, specific))
}

/// `(tag, body)` of the descriptor at the start of `b` (size: up to four 7-bit bytes).
fn descriptor(b: &[u8]) -> Option<(u8, &[u8])> {
    let tag = *b.first()?;
    let mut size = 0usize;
    for i in 1..=4 {
        let byte = *b.get(i)?;
        size = (size << 7) | usize::from(byte & 0x7F);
        if byte & 0x80 == 0 {
            return Some((tag, b.get(i + 1..i + 1 + size)?));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len() + 8).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn box_headers_refuse_impossible_sizes() {
        assert_eq!(box_header(&boxed(b"free", &[0; 4]), 12), Some((*b"free", 8, 12)));
        // Size 0 runs to the end of the parent; size 1 has a 64-bit size.
        let mut zero = boxed(b"mdat", &[]);
        zero[..4].copy_from_slice(&[0; 4]);
        assert_eq!(box_header(&zero, 100), Some((*b"mdat", 8, 100)));
        let mut large = vec![0, 0, 0, 1];
        large.extend_from_slice(b"mdat");
        large.extend_from_slice(&20u64.to_be_bytes());
        assert_eq!(box_header(&large, 100), Some((*b"mdat", 16, 20)));
        large[8..16].copy_from_slice(&4u64.to_be_bytes());
        assert_eq!(box_header(&large, 100), None, "smaller than its own header");
        assert_eq!(box_header(&[0, 0, 0, 7, b'f', b'r', b'e', b'e'], 100), None);
        assert_eq!(box_header(&[0, 0, 0], 100), None);
    }

    #[test]
    fn children_refuse_a_child_larger_than_its_parent() {
        let a = boxed(b"free", &[1, 2, 3]);
        let mut body = a.clone();
        body.extend_from_slice(&boxed(b"skip", &[]));
        let kids = children(&body).unwrap();
        assert_eq!(kids.len(), 2);
        assert_eq!(kids[0], (*b"free", &[1u8, 2, 3][..]));
        let mut lying = a;
        lying[3] = 200;
        assert_eq!(children(&lying), None);
    }

    #[test]
    fn descriptors_and_object_types() {
        // esds: version/flags, ES_Descriptor(ES_ID, flags 0, DecoderConfigDescriptor(OTI 0x40)).
        let config = [0x04, 0x80, 0x80, 0x80, 0x02, 0x40, 0x15];
        let mut es = vec![0x03, u8::try_from(3 + config.len()).unwrap(), 0x00, 0x01, 0x00];
        es.extend_from_slice(&config);
        let mut esds = vec![0; 4];
        esds.extend_from_slice(&es);
        assert_eq!(object_type(&boxed(b"esds", &esds)), Some(0x40));
        // A size running past the data is refused, not read beyond.
        es[1] = 100;
        let mut esds = vec![0; 4];
        esds.extend_from_slice(&es);
        assert_eq!(object_type(&boxed(b"esds", &esds)), None);
        assert_eq!(descriptor(&[0x03, 0xFF, 0xFF, 0xFF, 0xFF, 0x00]), None);
    }

    #[test]
    fn aac_configurations() {
        // AAC-LC (2), 44.1 kHz (index 4), mono: 00010 0100 0001 000 = 0x12 0x08.
        assert_eq!(aac_config(&[0x12, 0x08]), Some((44_100, 1)));
        // 48 kHz (3), stereo: 00010 0011 0010 = 0x11 0x90.
        assert_eq!(aac_config(&[0x11, 0x90]), Some((48_000, 2)));
        // Configuration 7 is 7.1: 8 channels; 0 (explicit layout) goes to ffprobe.
        assert_eq!(aac_config(&[0x11, 0xB8]), Some((48_000, 8)));
        assert_eq!(aac_config(&[0x11, 0x80]), None);
        // Reserved rate index 13, and too few bits.
        assert_eq!(aac_config(&[0x16, 0x88]), None);
        assert_eq!(aac_config(&[0x12]), None);
    }

    #[test]
    fn edit_lists_other_than_one_plain_edit_go_to_ffprobe() {
        let elst = |version: u8, entries: &[(u32, i32)]| {
            let mut b = vec![version, 0, 0, 0];
            b.extend_from_slice(&u32::try_from(entries.len()).unwrap().to_be_bytes());
            for (duration, media_time) in entries {
                b.extend_from_slice(&duration.to_be_bytes());
                b.extend_from_slice(&media_time.to_be_bytes());
                b.extend_from_slice(&[0, 1, 0, 0]);
            }
            boxed(b"elst", &b)
        };
        assert_eq!(plain_edit(&elst(0, &[(5000, 1024)])), Some(()));
        assert_eq!(plain_edit(&elst(0, &[])), Some(()));
        assert_eq!(plain_edit(&elst(0, &[(5000, -1)])), None, "empty edit");
        assert_eq!(plain_edit(&elst(0, &[(100, -1), (5000, 0)])), None, "two edits");
        assert_eq!(plain_edit(&elst(2, &[(5000, 0)])), None, "unknown version");
    }

    #[test]
    fn stts_totals_are_checked() {
        let mut stts = vec![0, 0, 0, 0, 0, 0, 0, 2];
        for (n, d) in [(100u32, 512u32), (25, 512)] {
            stts.extend_from_slice(&n.to_be_bytes());
            stts.extend_from_slice(&d.to_be_bytes());
        }
        assert_eq!(stts_totals(&stts), Some((125, 125 * 512)));
        stts[7] = 3; // declares an entry that is not there
        assert_eq!(stts_totals(&stts), None);
        assert_eq!(stts_totals(&[0, 0, 0, 0, 0, 0, 0, 0]), None, "no samples");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz of the moov parser: prefixes and bit flips of a real-looking tree.
        let mvhd = boxed(b"mvhd", &[0; 100]);
        let mut moov = mvhd.clone();
        moov.extend_from_slice(&boxed(b"trak", &boxed(b"mdia", &[0; 40])));
        for cut in 0..moov.len() {
            let _ = describe_moov(&moov[..cut]);
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut m = moov.clone();
            let i = (state % m.len() as u64) as usize;
            m[i] ^= (state >> 32) as u8;
            let _ = describe_moov(&m);
        }
    }
}
