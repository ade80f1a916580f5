#!/usr/bin/env python3
"""Writes a tiny whisper.cpp ggml model with the real file layout and random weights, so that
tests/whisper_asr.rs can run the `whisper` speech backend end to end (no real ggml model can be
downloaded here). Its transcripts are gibberish: it proves the path (load, mel, encoder, decoder,
detokenisation), not recognition quality.

Usage: make_model.py OUT_FILE    (Python 3 standard library only; deterministic: same bytes each run)

The layout is what whisper.cpp's `whisper_model_load` (src/whisper.cpp in whisper-rs-sys 0.15, the
version Cargo.lock pins) reads, every integer little-endian int32 unless said otherwise:

  1. magic 0x67676d6c ("ggml" as a little-endian uint32);
  2. hparams, in this order: n_vocab, n_audio_ctx, n_audio_state, n_audio_head, n_audio_layer,
     n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels, ftype (0 = f32, 1 = f16 for the
     large matrices); n_audio_state must equal n_text_state;
  3. mel filters: n_mel, n_fft (must be 1 + 400/2 = 201, asserted when the mel is computed), then
     n_mel * n_fft float32, row-major per mel band;
  4. vocabulary: a count, then per token a uint32 byte length and the bytes. Fewer tokens than
     n_vocab is allowed: whisper.cpp names the special ones itself (<|endoftext|> = 50256, SOT,
     timestamps...). The decoder's logit filter looks up the token " " with std::map::at, so the
     vocabulary must contain it (else an uncaught C++ exception aborts the process);
  5. tensors until end of file, each: n_dims, name length, type (0 f32, 1 f16), n_dims extents
     (ggml order: innermost first, the reverse of PyTorch's shape), the name, then the data. Every
     tensor whisper.cpp creates must be present with its exact extents and type (11, plus 15 per
     encoder layer and 24 per decoder layer: see tensors()); an unknown name or a wrong extent is
     refused, and a file with no tensors at all loads as an empty test model that cannot run.

Model chosen (as small as whisper.cpp accepts while keeping the fixed token ids and 30 s window):
n_vocab 51864 (English-only: the special token ids are hard-coded from 50256 on), n_audio_ctx 1500 (a
30 s window of 3000 mel frames after the stride-2 convolution), n_text_ctx 448 (as the real models;
smaller works but saves little), state 64, 2 heads, 1 encoder and 1 decoder layer, 80 mels, f16
matrices: 8.0 MB, nearly all of it the token embedding (51864 x 64 f16).

Contents: Slaney mel filters computed as librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (what
openai-whisper ships in mel_filters.npz); the vocabulary's first 256 tokens are GPT-2's byte tokens
in GPT-2's order (so " " is token 220, as in the real one), then " w256" ... " w50255"; layer norms
are identity (weight 1, bias 0), every other tensor uniform random in +-1/sqrt(fan-in) from a fixed
seed.
"""

import math
import os
import random
import struct
import sys

GGML_FILE_MAGIC = 0x67676D6C
F32, F16 = 0, 1

N_VOCAB = 51864
N_AUDIO_CTX = 1500
N_TEXT_CTX = 448
N_STATE = 64
N_HEAD = 2
N_LAYER = 1
N_MELS = 80
FTYPE = F16
TEXT_TOKENS = 50256  # ids 0..50255; <|endoftext|> and the rest are named by whisper.cpp
SAMPLE_RATE, N_FFT = 16000, 400
SEED = 20240531


def hz_to_mel(f):
    """Slaney's mel scale (librosa's default, htk=False)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return min_log_mel + math.log(f / min_log_hz) / logstep if f >= min_log_hz else f / f_sp


def mel_to_hz(m):
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return min_log_hz * math.exp(logstep * (m - min_log_mel)) if m >= min_log_mel else f_sp * m


def mel_filters():
    """n_mels x (1 + n_fft/2) triangular filters with Slaney area normalisation."""
    n_bins = 1 + N_FFT // 2
    fft_freqs = [k * SAMPLE_RATE / N_FFT for k in range(n_bins)]
    lo, hi = hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2)
    mel_f = [mel_to_hz(lo + (hi - lo) * i / (N_MELS + 1)) for i in range(N_MELS + 2)]
    rows = []
    for i in range(N_MELS):
        left, centre, right = mel_f[i], mel_f[i + 1], mel_f[i + 2]
        enorm = 2.0 / (right - left)
        row = []
        for f in fft_freqs:
            lower = (f - left) / (centre - left)
            upper = (right - f) / (right - centre)
            row.append(max(0.0, min(lower, upper)) * enorm)
        rows.append(row)
    return rows


def byte_tokens():
    """GPT-2's 256 byte tokens in GPT-2's id order (its bytes_to_unicode): printable bytes first,
    then the others in ascending order, which puts the space at id 220."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    rest = [b for b in range(256) if b not in printable]
    return [bytes([b]) for b in printable + rest]


def tensors():
    """(name, ggml extents innermost first, type) in the order the convert script writes them."""
    s, v = N_STATE, FTYPE
    out = [
        ("decoder.positional_embedding", [s, N_TEXT_CTX], F32),
        ("decoder.token_embedding.weight", [s, N_VOCAB], v),
    ]

    def block(prefix, cross):
        parts = [("attn", "attn_ln")] + ([("cross_attn", "cross_attn_ln")] if cross else [])
        t = []
        for attn, ln in parts:
            t += [
                (f"{prefix}.{attn}.query.weight", [s, s], v),
                (f"{prefix}.{attn}.query.bias", [s], F32),
                (f"{prefix}.{attn}.key.weight", [s, s], v),
                (f"{prefix}.{attn}.value.weight", [s, s], v),
                (f"{prefix}.{attn}.value.bias", [s], F32),
                (f"{prefix}.{attn}.out.weight", [s, s], v),
                (f"{prefix}.{attn}.out.bias", [s], F32),
                (f"{prefix}.{ln}.weight", [s], F32),
                (f"{prefix}.{ln}.bias", [s], F32),
            ]
        t += [
            (f"{prefix}.mlp.0.weight", [s, 4 * s], v),
            (f"{prefix}.mlp.0.bias", [4 * s], F32),
            (f"{prefix}.mlp.2.weight", [4 * s, s], v),
            (f"{prefix}.mlp.2.bias", [s], F32),
            (f"{prefix}.mlp_ln.weight", [s], F32),
            (f"{prefix}.mlp_ln.bias", [s], F32),
        ]
        return t

    for i in range(N_LAYER):
        out += block(f"decoder.blocks.{i}", cross=True)
    out += [("decoder.ln.weight", [s], F32), ("decoder.ln.bias", [s], F32)]
    out += [
        ("encoder.positional_embedding", [s, N_AUDIO_CTX], F32),
        # Convolutions are f16 whenever ftype is (whisper.cpp's vtype); their biases [1, s] f32.
        ("encoder.conv1.weight", [3, N_MELS, s], v),
        ("encoder.conv1.bias", [1, s], F32),
        ("encoder.conv2.weight", [3, s, s], v),
        ("encoder.conv2.bias", [1, s], F32),
    ]
    for i in range(N_LAYER):
        out += block(f"encoder.blocks.{i}", cross=False)
    out += [("encoder.ln_post.weight", [s], F32), ("encoder.ln_post.bias", [s], F32)]
    return out


def values(name, ne, rng):
    n = math.prod(ne)
    # Layer norms (attn_ln, cross_attn_ln, mlp_ln, decoder.ln, encoder.ln_post) are the identity.
    if name.endswith(("ln.weight", "ln_post.weight")):
        return [1.0] * n
    if name.endswith(("ln.bias", "ln_post.bias")):
        return [0.0] * n
    # ne[0] is the input dimension of a matrix (and kernel x channels of a convolution).
    fan_in = ne[0] * (ne[1] if name.endswith("conv1.weight") or name.endswith("conv2.weight") else 1)
    a = 1.0 / math.sqrt(fan_in)
    return [rng.uniform(-a, a) for _ in range(n)]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    out_file = sys.argv[1]
    rng = random.Random(SEED)
    chunks = [
        struct.pack("<I", GGML_FILE_MAGIC),
        struct.pack(
            "<11i",
            N_VOCAB, N_AUDIO_CTX, N_STATE, N_HEAD, N_LAYER,
            N_TEXT_CTX, N_STATE, N_HEAD, N_LAYER, N_MELS, FTYPE,
        ),
    ]
    filters = mel_filters()
    chunks.append(struct.pack("<2i", N_MELS, len(filters[0])))
    for row in filters:
        chunks.append(struct.pack(f"<{len(row)}f", *row))
    vocab = byte_tokens() + [f" w{i}".encode() for i in range(256, TEXT_TOKENS)]
    chunks.append(struct.pack("<i", len(vocab)))
    for token in vocab:
        chunks.append(struct.pack("<I", len(token)) + token)
    for name, ne, ttype in tensors():
        raw = name.encode()
        chunks.append(struct.pack(f"<3i{len(ne)}i", len(ne), len(raw), ttype, *ne) + raw)
        data = values(name, ne, rng)
        chunks.append(struct.pack(f"<{len(data)}{'e' if ttype == F16 else 'f'}", *data))
    os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
    tmp = out_file + ".tmp"
    with open(tmp, "wb") as f:
        for c in chunks:
            f.write(c)
    os.replace(tmp, out_file)


if __name__ == "__main__":
    main()
