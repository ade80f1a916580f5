//! The layout of a whisper.cpp ggml model file, checked before whisper.cpp is handed the file.
//!
//! Owns: [`inspect`], which walks the file's header, mel filters, vocabulary and tensor table (seeking
//! over the weights, never reading them) and says precisely what is wrong: not a ggml file, an
//! impossible header, a file cut short (which record, at which offset, how many bytes it needed), a
//! tensor type it cannot size, a missing tensor. whisper.cpp itself reads without checking for short
//! reads (a file cut inside its last tensor loads with garbage weights) and reports any refusal only
//! in its log, which whisper-rs turns into a bare "failed to create context".
//!
//! The format (whisper.cpp `whisper_model_load`, little-endian): magic `0x67676d6c`; eleven `i32`
//! hparams (n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer, n_text_ctx,
//! n_text_state, n_text_head, n_text_layer, n_mels, ftype); mel filters (`i32` n_mel, `i32` n_fft,
//! n_mel·n_fft `f32`); vocabulary (`i32` count, then per token a `u32` length and its bytes); then
//! tensors to the end of the file: `i32` n_dims, `i32` name length, `i32` ggml type, n_dims `i32`
//! extents, the name, the data. `tests/whisper/make_model.py` writes a tiny one.
//!
//! Must not: load weights or judge names and extents against the hparams (whisper.cpp does, by name).

use std::io::{self, Read, Seek, SeekFrom};

/// whisper.cpp's `GGML_FILE_MAGIC` ("ggml").
pub const MAGIC: u32 = 0x6767_6d6c;

/// What a readable model declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLayout {
    /// `n_vocab` of the hparams.
    pub n_vocab: i32,
    /// Encoder layers (4 tiny, 6 base, 12 small, 24 medium, 32 large).
    pub n_audio_layer: i32,
    /// Decoder layers.
    pub n_text_layer: i32,
    /// Width of the encoder and decoder.
    pub n_state: i32,
    /// Tokens in the file's vocabulary.
    pub vocab_tokens: u32,
    /// Tensors in the file.
    pub tensors: usize,
}

/// Why a file is not a usable whisper.cpp model.
#[derive(Debug, thiserror::Error)]
pub enum GgmlError {
    /// Reading failed (not a short file: that is [`GgmlError::Truncated`]).
    #[error("reading it: {0}")]
    Io(#[from] io::Error),
    /// Not a ggml file at all.
    #[error("not a ggml model: magic {found:#010x}, expected {MAGIC:#010x}")]
    BadMagic {
        /// The first four bytes, little-endian.
        found: u32,
    },
    /// The file ends inside a record.
    #[error("truncated: {what} at byte {offset} needs {needed} bytes, the file has {file_len}")]
    Truncated {
        /// The record being read.
        what: String,
        /// Where it starts.
        offset: u64,
        /// Its length.
        needed: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A header value no whisper model has.
    #[error("invalid header: {0}")]
    BadHeader(String),
    /// A tensor whose type has no known size.
    #[error("tensor '{name}': unsupported ggml type {ttype}")]
    UnsupportedType {
        /// Tensor name.
        name: String,
        /// ggml type id.
        ttype: i32,
    },
    /// Not every tensor the hparams call for is there (whisper.cpp also refuses, or with none at all
    /// loads an empty test model that cannot transcribe).
    #[error("{found} tensors, the hparams need {expected}")]
    TensorCount {
        /// `11 + 15·n_audio_layer + 24·n_text_layer`.
        expected: usize,
        /// In the file.
        found: usize,
    },
}

/// Bytes per block and elements per block of the ggml types whisper models are stored in.
fn type_size(ttype: i32) -> Option<(u64, u64)> {
    Some(match ttype {
        0 => (4, 1),      // f32
        1 => (2, 1),      // f16
        2 => (18, 32),    // q4_0
        3 => (20, 32),    // q4_1
        6 => (22, 32),    // q5_0
        7 => (24, 32),    // q5_1
        8 => (34, 32),    // q8_0
        10 => (84, 256),  // q2_K
        11 => (110, 256), // q3_K
        12 => (144, 256), // q4_K
        13 => (176, 256), // q5_K
        14 => (210, 256), // q6_K
        30 => (2, 1),     // bf16
        _ => return None,
    })
}

/// Upper bounds far above every released model, so a corrupt header is named instead of making
/// whisper.cpp allocate for it.
const MAX_DIM: i32 = 1 << 20;
const MAX_LAYERS: i32 = 256;
const MAX_NAME: i32 = 1024;

/// Walks the model in `file` (`len` bytes) and returns its layout, or what is wrong with it.
pub fn inspect<R: Read + Seek>(file: R, len: u64) -> Result<ModelLayout, GgmlError> {
    let mut r = Cursor {
        inner: file,
        pos: 0,
        len,
    };
    let magic = r.u32("the magic")?;
    if magic != MAGIC {
        return Err(GgmlError::BadMagic { found: magic });
    }
    let mut h = [0i32; 11];
    for v in &mut h {
        *v = r.i32("the hparams")?;
    }
    let [
        n_vocab,
        n_audio_ctx,
        n_audio_state,
        n_audio_head,
        n_audio_layer,
        n_text_ctx,
        n_text_state,
        n_text_head,
        n_text_layer,
        n_mels,
        ftype,
    ] = h;
    for (name, v, max) in [
        ("n_vocab", n_vocab, MAX_DIM),
        ("n_audio_ctx", n_audio_ctx, MAX_DIM),
        ("n_audio_state", n_audio_state, MAX_DIM),
        ("n_audio_head", n_audio_head, MAX_DIM),
        ("n_audio_layer", n_audio_layer, MAX_LAYERS),
        ("n_text_ctx", n_text_ctx, MAX_DIM),
        ("n_text_state", n_text_state, MAX_DIM),
        ("n_text_head", n_text_head, MAX_DIM),
        ("n_text_layer", n_text_layer, MAX_LAYERS),
        ("n_mels", n_mels, MAX_DIM),
    ] {
        if !(1..=max).contains(&v) {
            return Err(GgmlError::BadHeader(format!("{name} = {v}, expected 1..={max}")));
        }
    }
    if n_audio_state != n_text_state {
        return Err(GgmlError::BadHeader(format!(
            "n_audio_state {n_audio_state} differs from n_text_state {n_text_state}"
        )));
    }
    if n_audio_state % n_audio_head != 0 || n_text_state % n_text_head != 0 {
        return Err(GgmlError::BadHeader(
            "the state is not a multiple of the heads".into(),
        ));
    }
    // whisper.cpp maps ftype % 1000 (the quantisation version is above) to a ggml type itself.
    if ftype < 0 {
        return Err(GgmlError::BadHeader(format!("ftype = {ftype}")));
    }

    let n_mel = r.i32("the mel filter header")?;
    let n_fft = r.i32("the mel filter header")?;
    // whisper.cpp asserts n_fft == 1 + 400/2 when it computes the spectrogram.
    if n_mel != n_mels || n_fft != 201 {
        return Err(GgmlError::BadHeader(format!(
            "mel filters {n_mel}x{n_fft}, expected {n_mels}x201"
        )));
    }
    r.skip(
        "the mel filters",
        4 * u64::from(n_mel.unsigned_abs()) * u64::from(n_fft.unsigned_abs()),
    )?;

    let vocab_tokens = r.i32("the vocabulary size")?;
    if !(0..=n_vocab).contains(&vocab_tokens) {
        return Err(GgmlError::BadHeader(format!(
            "{vocab_tokens} vocabulary tokens for n_vocab {n_vocab}"
        )));
    }
    for i in 0..vocab_tokens {
        let what = format!("vocabulary token {i}");
        let len = r.u32(&what)?;
        r.skip(&what, u64::from(len))?;
    }

    let mut tensors = 0usize;
    while r.pos < r.len {
        let at = r.pos;
        let what = format!("the header of tensor {tensors}");
        let n_dims = r.i32(&what)?;
        let name_len = r.i32(&what)?;
        let ttype = r.i32(&what)?;
        if !(1..=4).contains(&n_dims) || !(1..=MAX_NAME).contains(&name_len) {
            return Err(GgmlError::BadHeader(format!(
                "tensor {tensors} at byte {at}: {n_dims} dimensions, name of {name_len} bytes"
            )));
        }
        let mut elements = 1u64;
        let mut ne0 = 0u64;
        for d in 0..n_dims {
            let ne = r.i32(&what)?;
            if !(1..=MAX_DIM * 64).contains(&ne) {
                return Err(GgmlError::BadHeader(format!(
                    "tensor {tensors} at byte {at}: extent {ne}"
                )));
            }
            if d == 0 {
                ne0 = u64::from(ne.unsigned_abs());
            }
            elements *= u64::from(ne.unsigned_abs());
        }
        let name_bytes = r.bytes(&what, u64::from(name_len.unsigned_abs()))?;
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        let (block_bytes, block_len) = type_size(ttype).ok_or_else(|| GgmlError::UnsupportedType {
            name: name.clone(),
            ttype,
        })?;
        if !ne0.is_multiple_of(block_len) {
            return Err(GgmlError::BadHeader(format!(
                "tensor '{name}': innermost extent {ne0} is not a multiple of its block of {block_len}"
            )));
        }
        r.skip(
            &format!("the data of tensor '{name}'"),
            elements / block_len * block_bytes,
        )?;
        tensors += 1;
    }
    let layers = |n: i32| usize::try_from(n).unwrap_or(0);
    let expected = 11 + 15 * layers(n_audio_layer) + 24 * layers(n_text_layer);
    if tensors != expected {
        return Err(GgmlError::TensorCount {
            expected,
            found: tensors,
        });
    }
    Ok(ModelLayout {
        n_vocab,
        n_audio_layer,
        n_text_layer,
        n_state: n_audio_state,
        vocab_tokens: vocab_tokens.unsigned_abs(),
        tensors,
    })
}

/// A reader that knows the file's length, so that a short record is reported before it is read.
struct Cursor<R> {
    inner: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Cursor<R> {
    fn need(&self, what: &str, n: u64) -> Result<(), GgmlError> {
        if self.len.saturating_sub(self.pos) < n {
            return Err(GgmlError::Truncated {
                what: what.to_owned(),
                offset: self.pos,
                needed: n,
                file_len: self.len,
            });
        }
        Ok(())
    }

    fn bytes(&mut self, what: &str, n: u64) -> Result<Vec<u8>, GgmlError> {
        self.need(what, n)?;
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
        self.inner.read_exact(&mut buf)?;
        self.pos += n;
        Ok(buf)
    }

    fn word(&mut self, what: &str) -> Result<[u8; 4], GgmlError> {
        self.need(what, 4)?;
        let mut buf = [0u8; 4];
        self.inner.read_exact(&mut buf)?;
        self.pos += 4;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgmlError> {
        self.word(what).map(u32::from_le_bytes)
    }

    fn i32(&mut self, what: &str) -> Result<i32, GgmlError> {
        self.word(what).map(i32::from_le_bytes)
    }

    fn skip(&mut self, what: &str, n: u64) -> Result<(), GgmlError> {
        self.need(what, n)?;
        self.pos += n;
        // Relative, so that a buffered reader keeps its buffer over the ~50,000 short vocabulary
        // skips instead of a system call each.
        match i64::try_from(n) {
            Ok(n) => self.inner.seek_relative(n)?,
            Err(_) => {
                self.inner.seek(SeekFrom::Start(self.pos))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed model of `layers` encoder and decoder layers with `vocab` tokens and f32
    /// tensors of 4 elements (the validator does not match extents to the hparams).
    fn model(layers: i32, vocab: &[&str]) -> Vec<u8> {
        let mut b = MAGIC.to_le_bytes().to_vec();
        let i = |b: &mut Vec<u8>, v: i32| b.extend(v.to_le_bytes());
        for v in [51864, 1500, 64, 2, layers, 448, 64, 2, layers, 80, 1] {
            i(&mut b, v);
        }
        i(&mut b, 80);
        i(&mut b, 201);
        b.extend(vec![0u8; 80 * 201 * 4]);
        i(&mut b, i32::try_from(vocab.len()).unwrap());
        for t in vocab {
            b.extend(u32::try_from(t.len()).unwrap().to_le_bytes());
            b.extend(t.as_bytes());
        }
        let usize_layers = usize::try_from(layers).unwrap();
        for n in 0..(11 + 39 * usize_layers) {
            let name = format!("t{n:02}");
            for v in [2, i32::try_from(name.len()).unwrap(), 0, 2, 2] {
                i(&mut b, v);
            }
            b.extend(name.as_bytes());
            b.extend([0u8; 16]);
        }
        b
    }

    /// Bytes of one tensor of [`model`]: header (5 × i32), 3-byte name, 4 × f32.
    const RECORD: usize = 20 + 3 + 16;

    fn check(bytes: &[u8]) -> Result<ModelLayout, GgmlError> {
        inspect(io::Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn a_well_formed_model_is_described() {
        let layout = check(&model(1, &["!", " ", " the"])).unwrap();
        assert_eq!(
            layout,
            ModelLayout {
                n_vocab: 51864,
                n_audio_layer: 1,
                n_text_layer: 1,
                n_state: 64,
                vocab_tokens: 3,
                tensors: 50,
            }
        );
    }

    #[test]
    fn a_cut_file_names_the_record_it_ends_in() {
        let full = model(1, &[" "]);
        // Inside the last tensor's data: whisper.cpp would load this with garbage weights.
        let err = check(&full[..full.len() - 3]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("truncated: the data of tensor 't49'"), "{text}");
        assert!(text.contains("needs 16 bytes"), "{text}");
        // Inside the mel filters.
        let err = check(&full[..100]).unwrap_err().to_string();
        assert!(err.starts_with("truncated: the mel filters at byte 56"), "{err}");
        // A file of three bytes has no magic.
        let err = check(&full[..3]).unwrap_err().to_string();
        assert!(err.starts_with("truncated: the magic"), "{err}");
    }

    #[test]
    fn foreign_or_corrupt_files_are_named() {
        let err = check(b"this is not a ggml model at all").unwrap_err();
        assert!(matches!(err, GgmlError::BadMagic { found: 0x7369_6874 }), "{err}");

        let mut corrupt = model(1, &[]);
        corrupt[4 + 4 * 4..4 + 5 * 4].copy_from_slice(&(-3i32).to_le_bytes()); // n_audio_layer
        let err = check(&corrupt).unwrap_err().to_string();
        assert_eq!(err, "invalid header: n_audio_layer = -3, expected 1..=256");

        // A whole tensor missing (the hparams call for 50).
        let full = model(1, &[]);
        let err = check(&full[..full.len() - RECORD]).unwrap_err().to_string();
        assert_eq!(err, "49 tensors, the hparams need 50");

        // The header of whisper.cpp's vocabulary-only test models, with no tensors.
        let empty = &full[..full.len() - 50 * RECORD];
        assert!(matches!(
            check(empty),
            Err(GgmlError::TensorCount { found: 0, .. })
        ));
    }

    #[test]
    fn unknown_tensor_types_are_refused_by_name() {
        let mut b = model(1, &[]);
        // The first tensor's type field follows n_dims and the name length.
        let first = b.len() - 50 * RECORD;
        b[first + 8..first + 12].copy_from_slice(&99i32.to_le_bytes());
        let err = check(&b).unwrap_err().to_string();
        assert_eq!(err, "tensor 't00': unsupported ggml type 99");
    }
}
