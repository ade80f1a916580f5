//! Extracting one member of an upstream archive: a `.tar.gz` (tar + flate2) or a `.zip` (its central
//! directory read here, ZIP64 included; stored or deflated entries, each checked against its CRC-32).
//! The archive is read from a descriptor the caller opened (and hashed), never re-opened by path; the
//! member is written to a caller's writer, never to a path the archive names, and never past a size
//! limit (a hostile or corrupt archive cannot fill the disk). A failure to read the archive (cut short,
//! damaged) is [`ArchiveError::Corrupt`]; only a failure to write the member is [`ArchiveError::Io`].

use super::manifest::ArchiveFormat;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

/// Why a member could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Writing the member failed.
    #[error("{0}")]
    Io(io::Error),
    /// No entry matches the member's path.
    #[error("has no member {member}")]
    NotFound {
        /// The member asked for.
        member: String,
    },
    /// Several entries end with the member's path.
    #[error("has several members ending in {member}: {}", candidates.join(", "))]
    Ambiguous {
        /// The member asked for.
        member: String,
        /// The entries that match.
        candidates: Vec<String>,
    },
    /// The archive is not of its format, or is damaged.
    #[error("is not a readable {format}: {detail}")]
    Corrupt {
        /// "zip" or "tar.gz".
        format: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The member is larger than it may be.
    #[error("member {member} is larger than {limit} bytes")]
    TooLarge {
        /// The member.
        member: String,
        /// The limit.
        limit: u64,
    },
}

/// How an archive entry's path relates to the member asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberMatch {
    /// The same path (a leading `./` aside).
    Exact,
    /// The entry's path ends with `/<member>`: the archive puts directories in front.
    Suffix,
    /// Another file.
    No,
}

/// Whether an archive entry's path is the member asked for.
pub fn member_match(entry: &str, member: &str) -> MemberMatch {
    let entry = entry.trim_start_matches("./");
    let member = member.trim_start_matches("./");
    if entry == member {
        MemberMatch::Exact
    } else if entry.len() > member.len()
        && entry.ends_with(member)
        && entry.as_bytes()[entry.len() - member.len() - 1] == b'/'
    {
        MemberMatch::Suffix
    } else {
        MemberMatch::No
    }
}

/// The entry to extract among `entries`: the exact one, else the only suffix match.
fn choose<'a>(entries: impl Iterator<Item = &'a str>, member: &str) -> Result<String, ArchiveError> {
    let mut suffixes = Vec::new();
    for entry in entries {
        match member_match(entry, member) {
            MemberMatch::Exact => return Ok(entry.to_owned()),
            MemberMatch::Suffix => suffixes.push(entry.to_owned()),
            MemberMatch::No => {}
        }
    }
    match suffixes.len() {
        0 => Err(ArchiveError::NotFound {
            member: member.to_owned(),
        }),
        1 => Ok(suffixes.remove(0)),
        _ => Err(ArchiveError::Ambiguous {
            member: member.to_owned(),
            candidates: suffixes,
        }),
    }
}

/// Writes member `member` of `archive` (read from its start) to `out`; its size, at most `limit` bytes.
pub fn extract(
    archive: &File,
    format: ArchiveFormat,
    member: &str,
    limit: u64,
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    match format {
        ArchiveFormat::TarGz => extract_tar_gz(archive, member, limit, out),
        ArchiveFormat::Zip => extract_zip(archive, member, limit, out),
    }
}

/// Copies `from` to `out`, failing past `limit` bytes; a read error is the archive's (`corrupt`), a
/// write error the member's.
fn copy_limited(
    from: &mut dyn Read,
    out: &mut dyn Write,
    member: &str,
    limit: u64,
    corrupt: fn(io::Error) -> ArchiveError,
) -> Result<u64, ArchiveError> {
    let mut from = from.take(limit.saturating_add(1));
    let mut buf = vec![0u8; 1 << 16];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(corrupt(e)),
        };
        out.write_all(&buf[..n]).map_err(ArchiveError::Io)?;
        copied += n as u64;
    }
    if copied > limit {
        return Err(ArchiveError::TooLarge {
            member: member.to_owned(),
            limit,
        });
    }
    Ok(copied)
}

fn tar_corrupt(e: io::Error) -> ArchiveError {
    ArchiveError::Corrupt {
        format: "tar.gz",
        detail: e.to_string(),
    }
}

fn extract_tar_gz(file: &File, member: &str, limit: u64, out: &mut dyn Write) -> Result<u64, ArchiveError> {
    let open = || -> Result<tar::Archive<flate2::read::GzDecoder<BufReader<&File>>>, ArchiveError> {
        let mut file = file;
        file.seek(SeekFrom::Start(0)).map_err(tar_corrupt)?;
        Ok(tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(
            file,
        ))))
    };
    // First pass: the paths of the regular files that match (a stream has no index to look the member
    // up in); only matches are kept, so a hostile archive of many entries costs no memory.
    let mut paths = Vec::new();
    let mut links = Vec::new();
    for entry in open()?.entries().map_err(tar_corrupt)? {
        let entry = entry.map_err(tar_corrupt)?;
        let entry_path = entry.path().map_err(tar_corrupt)?.to_string_lossy().into_owned();
        if member_match(&entry_path, member) == MemberMatch::No {
            continue;
        }
        if entry.header().entry_type().is_file() {
            paths.push(entry_path);
        } else {
            links.push(entry_path);
        }
        if paths.len() + links.len() > MAX_MATCHES {
            return Err(ArchiveError::Corrupt {
                format: "tar.gz",
                detail: format!("more than {MAX_MATCHES} entries match {member}"),
            });
        }
    }
    let chosen = match choose(paths.iter().map(String::as_str), member) {
        Err(ArchiveError::NotFound { .. }) if !links.is_empty() => {
            return Err(ArchiveError::Corrupt {
                format: "tar.gz",
                detail: format!("{} is not a regular file (a link?)", links.join(", ")),
            });
        }
        other => other?,
    };
    for entry in open()?.entries().map_err(tar_corrupt)? {
        let mut entry = entry.map_err(tar_corrupt)?;
        let entry_path = entry.path().map_err(tar_corrupt)?.to_string_lossy().into_owned();
        if entry_path == chosen && entry.header().entry_type().is_file() {
            return copy_limited(&mut entry, out, member, limit, tar_corrupt);
        }
    }
    Err(ArchiveError::NotFound {
        member: member.to_owned(),
    })
}

/// The most entries matching a member that a tar.gz may have (it is refused beyond).
const MAX_MATCHES: usize = 64;

/// A central directory record of a zip file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ZipEntry {
    name: String,
    flags: u16,
    method: u16,
    crc32: u32,
    compressed: u64,
    size: u64,
    local_offset: u64,
}

fn zip_corrupt(detail: impl Into<String>) -> ArchiveError {
    ArchiveError::Corrupt {
        format: "zip",
        detail: detail.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// The largest central directory read (buffalo_l's is a few hundred bytes).
const MAX_CENTRAL_DIRECTORY: u64 = 64 << 20;

/// Where the central directory is: (offset, size, entries), from the end of a zip file.
/// `tail` is the file's last bytes, `tail_at` their offset; `read_at` reads elsewhere (ZIP64).
fn central_directory(
    tail: &[u8],
    tail_at: u64,
    read_at: &mut dyn FnMut(u64, usize) -> io::Result<Vec<u8>>,
) -> Result<(u64, u64, u64), ArchiveError> {
    // The end of central directory record: the last signature whose comment ends the file.
    let eocd = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| {
            u32_at(tail, i) == Some(EOCD_SIG)
                && u16_at(tail, i + 20).is_some_and(|c| i + 22 + usize::from(c) == tail.len())
        })
        .ok_or_else(|| zip_corrupt("no end of central directory record (not a zip file, or cut short)"))?;
    let field = |at| u32_at(tail, eocd + at).map(u64::from).unwrap_or(0);
    let (mut entries, mut size, mut offset) = (
        u64::from(u16_at(tail, eocd + 10).unwrap_or(0)),
        field(12),
        field(16),
    );
    if entries == 0xffff || size == 0xffff_ffff || offset == 0xffff_ffff {
        // ZIP64: a locator right before the record points at the ZIP64 end record.
        let locator_at = (tail_at + eocd as u64)
            .checked_sub(20)
            .ok_or_else(|| zip_corrupt("ZIP64 fields without a ZIP64 locator"))?;
        let locator = read_at(locator_at, 20).map_err(zip_read_error)?;
        if u32_at(&locator, 0) != Some(ZIP64_LOCATOR_SIG) {
            return Err(zip_corrupt("ZIP64 fields without a ZIP64 locator"));
        }
        let record_at = u64_at(&locator, 8).unwrap_or(0);
        let record = read_at(record_at, 56).map_err(zip_read_error)?;
        if u32_at(&record, 0) != Some(ZIP64_EOCD_SIG) {
            return Err(zip_corrupt("the ZIP64 locator points at no ZIP64 end record"));
        }
        entries = u64_at(&record, 32).unwrap_or(0);
        size = u64_at(&record, 40).unwrap_or(0);
        offset = u64_at(&record, 48).unwrap_or(0);
    }
    Ok((offset, size, entries))
}

/// The records of a central directory.
fn parse_central_directory(cd: &[u8], entries: u64) -> Result<Vec<ZipEntry>, ArchiveError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..entries {
        let bad = || zip_corrupt("a central directory record is cut short");
        if u32_at(cd, at) != Some(CENTRAL_SIG) {
            return Err(zip_corrupt("bad central directory record signature"));
        }
        let flags = u16_at(cd, at + 8).ok_or_else(bad)?;
        let method = u16_at(cd, at + 10).ok_or_else(bad)?;
        let crc32 = u32_at(cd, at + 16).ok_or_else(bad)?;
        let mut compressed = u64::from(u32_at(cd, at + 20).ok_or_else(bad)?);
        let mut size = u64::from(u32_at(cd, at + 24).ok_or_else(bad)?);
        let name_len = usize::from(u16_at(cd, at + 28).ok_or_else(bad)?);
        let extra_len = usize::from(u16_at(cd, at + 30).ok_or_else(bad)?);
        let comment_len = usize::from(u16_at(cd, at + 32).ok_or_else(bad)?);
        let mut local_offset = u64::from(u32_at(cd, at + 42).ok_or_else(bad)?);
        let name_at = at + 46;
        let name = cd.get(name_at..name_at + name_len).ok_or_else(bad)?;
        let extra = cd
            .get(name_at + name_len..name_at + name_len + extra_len)
            .ok_or_else(bad)?;
        // The ZIP64 extra field holds, in this order, the fields whose 32-bit value is all ones.
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).unwrap_or(0);
            let len = usize::from(u16_at(extra, e + 2).unwrap_or(0));
            let data = extra.get(e + 4..e + 4 + len).ok_or_else(bad)?;
            if id == 0x0001 {
                let mut d = 0;
                for field in [&mut size, &mut compressed, &mut local_offset] {
                    if *field == 0xffff_ffff {
                        *field = u64_at(data, d).ok_or_else(bad)?;
                        d += 8;
                    }
                }
            }
            e += 4 + len;
        }
        out.push(ZipEntry {
            name: String::from_utf8_lossy(name).into_owned(),
            flags,
            method,
            crc32,
            compressed,
            size,
            local_offset,
        });
        at = name_at + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// A writer that counts and checksums what passes through it.
struct Crc<'a> {
    out: &'a mut dyn Write,
    crc: crc32fast::Hasher,
}

impl Write for Crc<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn zip_read_error(e: io::Error) -> ArchiveError {
    zip_corrupt(format!("cannot read it: {e}"))
}

fn extract_zip(file: &File, member: &str, limit: u64, out: &mut dyn Write) -> Result<u64, ArchiveError> {
    let mut file = file;
    let len = file.metadata().map_err(zip_read_error)?.len();
    let tail_len = len.min(22 + 0xffff);
    let tail_at = len - tail_len;
    let mut read_at = |at: u64, n: usize| -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut buf)?;
        Ok(buf)
    };
    let tail = read_at(tail_at, usize::try_from(tail_len).unwrap_or(0)).map_err(zip_read_error)?;
    let (cd_at, cd_size, count) = central_directory(&tail, tail_at, &mut read_at)?;
    if cd_size > MAX_CENTRAL_DIRECTORY || cd_at.saturating_add(cd_size) > len {
        return Err(zip_corrupt("the central directory lies outside the file"));
    }
    let cd = read_at(cd_at, usize::try_from(cd_size).unwrap_or(0))
        .map_err(|e| zip_corrupt(format!("cannot read the central directory: {e}")))?;
    let entries = parse_central_directory(&cd, count)?;
    let files = entries.iter().filter(|e| !e.name.ends_with('/'));
    let chosen = choose(files.map(|e| e.name.as_str()), member)?;
    let entry = entries
        .iter()
        .find(|e| e.name == chosen)
        .ok_or_else(|| zip_corrupt("entry vanished"))?;
    if entry.flags & 1 != 0 {
        return Err(zip_corrupt(format!("{} is encrypted", entry.name)));
    }
    if entry.size > limit {
        return Err(ArchiveError::TooLarge {
            member: member.to_owned(),
            limit,
        });
    }
    let local = read_at(entry.local_offset, 30)
        .map_err(|e| zip_corrupt(format!("cannot read {}'s local header: {e}", entry.name)))?;
    if u32_at(&local, 0) != Some(LOCAL_SIG) {
        return Err(zip_corrupt(format!("{}'s local header is missing", entry.name)));
    }
    let data_at = entry.local_offset
        + 30
        + u64::from(u16_at(&local, 26).unwrap_or(0))
        + u64::from(u16_at(&local, 28).unwrap_or(0));
    if data_at.saturating_add(entry.compressed) > len {
        return Err(zip_corrupt(format!(
            "{}'s data runs past the end of the file",
            entry.name
        )));
    }
    file.seek(SeekFrom::Start(data_at)).map_err(zip_read_error)?;
    let mut data = BufReader::new(file).take(entry.compressed);
    let mut crc = Crc {
        out,
        crc: crc32fast::Hasher::new(),
    };
    let written = match entry.method {
        0 => copy_limited(&mut data, &mut crc, member, entry.size, zip_read_error)?,
        8 => copy_limited(
            &mut flate2::read::DeflateDecoder::new(data),
            &mut crc,
            member,
            entry.size,
            zip_read_error,
        )?,
        other => {
            return Err(zip_corrupt(format!(
                "{} uses compression method {other} (only stored and deflated are read)",
                entry.name
            )));
        }
    };
    if written != entry.size {
        return Err(zip_corrupt(format!(
            "{} is {written} bytes, its record says {}",
            entry.name, entry.size
        )));
    }
    let crc = crc.crc.finalize();
    if crc != entry.crc32 {
        return Err(zip_corrupt(format!(
            "{}'s CRC-32 is {crc:08x}, its record says {:08x}",
            entry.name, entry.crc32
        )));
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Made by Python's zipfile: `buffalo_l/det.onnx` deflated, `buffalo_l/w600k.onnx` stored,
    /// `top.txt` deflated with a ZIP64 extra field in its local header (force_zip64), a directory
    /// entry `buffalo_l/`.
    const PY_ZIP: &[u8] = include_bytes!("testdata/python.zip");

    fn extracted(path: &Path, format: ArchiveFormat, member: &str) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::new();
        extract(&File::open(path).unwrap(), format, member, 1 << 20, &mut out)?;
        Ok(out)
    }

    fn py_zip() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.zip");
        std::fs::write(&path, PY_ZIP).unwrap();
        (dir, path)
    }

    #[test]
    fn members_match_exactly_or_by_their_last_components() {
        assert_eq!(member_match("det_10g.onnx", "det_10g.onnx"), MemberMatch::Exact);
        assert_eq!(member_match("./det_10g.onnx", "det_10g.onnx"), MemberMatch::Exact);
        assert_eq!(
            member_match("buffalo_l/det_10g.onnx", "det_10g.onnx"),
            MemberMatch::Suffix
        );
        assert_eq!(
            member_match("x/lib/libonnxruntime.so.1", "lib/libonnxruntime.so.1"),
            MemberMatch::Suffix
        );
        assert_eq!(member_match("xdet_10g.onnx", "det_10g.onnx"), MemberMatch::No);
        assert_eq!(member_match("det_10g.onnx.sig", "det_10g.onnx"), MemberMatch::No);
        let entries = ["a/m", "b/m", "m2"];
        assert!(matches!(
            choose(entries.iter().copied(), "m"),
            Err(ArchiveError::Ambiguous { .. })
        ));
        assert_eq!(choose(["a/m", "m"].iter().copied(), "m").unwrap(), "m");
        assert!(matches!(
            choose(entries.iter().copied(), "z"),
            Err(ArchiveError::NotFound { .. })
        ));
    }

    #[test]
    fn a_python_made_zip_gives_its_deflated_stored_and_zip64_members() {
        let (_dir, path) = py_zip();
        let det = extracted(&path, ArchiveFormat::Zip, "det.onnx").unwrap();
        assert_eq!(det, b"detector ".repeat(200));
        let rec = extracted(&path, ArchiveFormat::Zip, "buffalo_l/w600k.onnx").unwrap();
        assert_eq!(rec, (0..=255u8).cycle().take(3000).collect::<Vec<_>>());
        let top = extracted(&path, ArchiveFormat::Zip, "top.txt").unwrap();
        assert_eq!(top, b"zip64 extra fields\n".repeat(50));
        assert!(matches!(
            extracted(&path, ArchiveFormat::Zip, "buffalo_l"),
            Err(ArchiveError::NotFound { .. })
        ));
        // The size limit holds.
        let mut out = Vec::new();
        let file = File::open(&path).unwrap();
        let err = extract(&file, ArchiveFormat::Zip, "det.onnx", 100, &mut out).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_damaged_zip_is_refused_not_misread() {
        let (dir, path) = py_zip();
        // Cut short: the end record is gone.
        let cut = dir.path().join("cut.zip");
        std::fs::write(&cut, &PY_ZIP[..PY_ZIP.len() - 30]).unwrap();
        let err = extracted(&cut, ArchiveFormat::Zip, "det.onnx").unwrap_err();
        assert!(err.to_string().contains("end of central directory"), "{err}");
        // One byte of the stored member flipped: its CRC-32 no longer matches.
        let mut bytes = PY_ZIP.to_vec();
        let at = bytes.windows(4).position(|w| w == [0u8, 1, 2, 3]).unwrap();
        bytes[at + 10] ^= 0xff;
        let flipped = dir.path().join("flipped.zip");
        std::fs::write(&flipped, &bytes).unwrap();
        let err = extracted(&flipped, ArchiveFormat::Zip, "w600k.onnx").unwrap_err();
        assert!(err.to_string().contains("CRC-32"), "{err}");
        // Not a zip at all.
        let _ = path;
        std::fs::write(dir.path().join("text"), "hello").unwrap();
        let err = extracted(&dir.path().join("text"), ArchiveFormat::Zip, "x").unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
    }

    /// A central directory record (and end records) as a ZIP64 writer lays them out.
    #[test]
    fn zip64_end_records_and_extra_fields_are_read() {
        // Record: sizes and offset all ones, their real values in the 0x0001 extra field.
        let mut cd = Vec::new();
        cd.extend(CENTRAL_SIG.to_le_bytes());
        cd.extend([0u8; 4]); // versions
        cd.extend(0u16.to_le_bytes()); // flags
        cd.extend(8u16.to_le_bytes()); // method
        cd.extend([0u8; 4]); // time, date
        cd.extend(0xdead_beefu32.to_le_bytes());
        cd.extend(u32::MAX.to_le_bytes()); // compressed
        cd.extend(u32::MAX.to_le_bytes()); // size
        cd.extend(5u16.to_le_bytes()); // name
        cd.extend(28u16.to_le_bytes()); // extra
        cd.extend(0u16.to_le_bytes()); // comment
        cd.extend([0u8; 8]); // disk, attributes
        cd.extend(u32::MAX.to_le_bytes()); // local offset
        cd.extend(b"a.bin");
        cd.extend(1u16.to_le_bytes());
        cd.extend(24u16.to_le_bytes());
        cd.extend((5u64 << 32).to_le_bytes()); // size first
        cd.extend((4u64 << 32).to_le_bytes()); // then compressed
        cd.extend((6u64 << 32).to_le_bytes()); // then the offset
        let entries = parse_central_directory(&cd, 1).unwrap();
        assert_eq!(
            entries,
            [ZipEntry {
                name: "a.bin".into(),
                flags: 0,
                method: 8,
                crc32: 0xdead_beef,
                compressed: 4 << 32,
                size: 5 << 32,
                local_offset: 6 << 32,
            }]
        );
        assert!(parse_central_directory(&cd[..cd.len() - 3], 1).is_err());
        assert!(parse_central_directory(&cd, 2).is_err());

        // End records: ZIP64 end record at 1000, its locator, then the classic record all ones.
        let mut record = Vec::new();
        record.extend(ZIP64_EOCD_SIG.to_le_bytes());
        record.extend([0u8; 28]);
        record.extend(70_000u64.to_le_bytes()); // entries
        record.extend(9_000_000u64.to_le_bytes()); // size
        record.extend((5u64 << 32).to_le_bytes()); // offset
        let mut tail = Vec::new();
        tail.extend(ZIP64_LOCATOR_SIG.to_le_bytes());
        tail.extend(0u32.to_le_bytes());
        tail.extend(1000u64.to_le_bytes());
        tail.extend(1u32.to_le_bytes());
        tail.extend(EOCD_SIG.to_le_bytes());
        tail.extend([0u8; 4]);
        tail.extend([0xffu8; 4]);
        tail.extend([0xffu8; 8]);
        tail.extend(0u16.to_le_bytes());
        let tail_at = 5000;
        let mut reads = Vec::new();
        let mut read_at = |at: u64, n: usize| -> io::Result<Vec<u8>> {
            reads.push(at);
            Ok(if at == 1000 {
                record.clone()
            } else {
                tail[(at - tail_at) as usize..][..n].to_vec()
            })
        };
        let found = central_directory(&tail, tail_at, &mut read_at).unwrap();
        assert_eq!(found, (5 << 32, 9_000_000, 70_000));
        assert_eq!(reads, [tail_at, 1000]);
    }

    #[test]
    fn a_tar_gz_gives_its_regular_member_and_refuses_links() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ort.tgz");
        let gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let lib = b"\x7fELF library".repeat(100);
        let mut header = tar::Header::new_gnu();
        header.set_size(lib.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        tar.append_data(&mut header, "ort-1.0/lib/libort.so.1.0", &lib[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_cksum();
        tar.append_link(&mut link, "ort-1.0/lib/libort.so", "libort.so.1.0")
            .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let got = extracted(&path, ArchiveFormat::TarGz, "lib/libort.so.1.0").unwrap();
        assert_eq!(got, lib);
        assert_eq!(
            extracted(&path, ArchiveFormat::TarGz, "ort-1.0/lib/libort.so.1.0").unwrap(),
            lib
        );
        let err = extracted(&path, ArchiveFormat::TarGz, "libort.so").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let err = extracted(&path, ArchiveFormat::TarGz, "missing.so").unwrap_err();
        assert!(matches!(err, ArchiveError::NotFound { .. }), "{err}");
        let mut out = Vec::new();
        let file = File::open(&path).unwrap();
        let err = extract(&file, ArchiveFormat::TarGz, "libort.so.1.0", 10, &mut out).unwrap_err();
        assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
        // Cut short in the member's data: the archive is corrupt (refused), not an I/O failure.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(dir.path().join("cut.tgz"), &bytes[..bytes.len() / 2]).unwrap();
        let err = extracted(&dir.path().join("cut.tgz"), ArchiveFormat::TarGz, "libort.so.1.0").unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
        std::fs::write(dir.path().join("plain"), b"not gzip").unwrap();
        let err = extracted(&dir.path().join("plain"), ArchiveFormat::TarGz, "x").unwrap_err();
        assert!(matches!(err, ArchiveError::Corrupt { .. }), "{err}");
        // Entries that match the member are bounded in number (no unbounded list of paths).
        let many = dir.path().join("many.tgz");
        let gz = flate2::write::GzEncoder::new(File::create(&many).unwrap(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for i in 0..=MAX_MATCHES {
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_cksum();
            tar.append_data(&mut header, format!("d{i}/m"), &b"x"[..])
                .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        let err = extracted(&many, ArchiveFormat::TarGz, "m").unwrap_err();
        assert!(err.to_string().contains("entries match"), "{err}");
    }
}
