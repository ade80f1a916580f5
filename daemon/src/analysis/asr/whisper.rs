//! The `whisper` speech backend: whisper.cpp through `whisper-rs`, with a ggml model file from
//! `[analysis.asr] model` (the reference runs openai-whisper "base", multilingual, with language "en":
//! `ggml-base.bin` is its ggml conversion). Built with the cargo feature `whisper` (on by default).
//!
//! Owns: loading the model once (after [`super::ggml::inspect`] has checked the file's layout, so a
//! cut or foreign file is refused with its reason rather than whisper.cpp's bare failure), and one
//! transcription per call with the reference's settings (English, greedy decoding), bounded in
//! time: whisper.cpp's abort callback stops it once `[analysis.asr] timeout_secs` have passed, so a
//! model too slow for the host fails that challenge's analysis as the host's problem instead of
//! holding an analysis thread without end. whisper.cpp polls the callback after each encoder and
//! decoder step, so the bound is the timeout plus one step. whisper.cpp's own logging is routed
//! into `tracing`.

use super::SpeechRecognizer;
use super::ggml;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

/// A loaded whisper.cpp model.
pub struct Whisper {
    context: WhisperContext,
    threads: i32,
    timeout: Duration,
}

impl Whisper {
    /// Loads the ggml model at `model`; each transcription may take at most `timeout`.
    pub fn load(model: &Path, timeout: Duration) -> Result<Whisper, String> {
        whisper_rs::install_logging_hooks();
        let file = std::fs::File::open(model).map_err(|e| format!("not a readable file: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("not a readable file: {e}"))?;
        if !meta.is_file() {
            return Err("not a readable file: not a regular file".to_owned());
        }
        ggml::inspect(std::io::BufReader::new(file), meta.len()).map_err(|e| e.to_string())?;
        let context = WhisperContext::new_with_params(model, WhisperContextParameters::default())
            .map_err(|e| format!("whisper.cpp could not load it (see its log lines): {e}"))?;
        // Analysis runs after the miners are timed: use the host's cores, but not more than whisper
        // profits from.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        Ok(Whisper {
            context,
            threads: i32::try_from(threads).unwrap_or(1),
            timeout,
        })
    }
}

impl SpeechRecognizer for Whisper {
    fn name(&self) -> &'static str {
        "whisper"
    }

    fn transcribe(&self, samples: &[f32]) -> Result<String, String> {
        let mut state = self
            .context
            .create_state()
            .map_err(|e| format!("whisper state: {e}"))?;
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_language(Some("en"));
        params.set_n_threads(self.threads);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_special(false);
        params.set_print_timestamps(false);
        let deadline = Instant::now() + self.timeout;
        let stopped = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopped);
        let abort: Box<dyn FnMut() -> bool> = Box::new(move || {
            let late = Instant::now() >= deadline;
            if late {
                flag.store(true, Ordering::Relaxed);
            }
            late
        });
        // Passed boxed on purpose: whisper-rs 0.16 stores the closure as `Box<dyn FnMut>` but
        // instantiates its C trampoline with the caller's type, so a plain closure is read from the
        // wrong memory (unsound; it never aborted here). With the caller's type being that same
        // `Box<dyn FnMut>`, both agree. whisper-rs never frees it: a few bytes per transcription.
        params.set_abort_callback_safe(abort);
        state.full(params, samples).map_err(|e| {
            if stopped.load(Ordering::Relaxed) {
                format!(
                    "whisper transcription stopped after exceeding {} s (analysis.asr.timeout_secs)",
                    self.timeout.as_secs_f64()
                )
            } else {
                format!("whisper transcription: {e}")
            }
        })?;
        let mut text = String::new();
        for segment in state.as_iter() {
            let words = segment
                .to_str_lossy()
                .map_err(|e| format!("whisper segment: {e}"))?;
            text.push_str(words.trim());
            text.push(' ');
        }
        Ok(text.trim_end().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_models_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = Duration::from_secs(60);
        let err = Whisper::load(&dir.path().join("absent.bin"), timeout)
            .err()
            .unwrap();
        assert!(err.contains("not a readable file"), "{err}");
        let err = Whisper::load(dir.path(), timeout).err().unwrap();
        assert!(err.contains("not a readable file"), "{err}");
        let junk = dir.path().join("junk.bin");
        std::fs::write(&junk, b"this is not a ggml model").unwrap();
        let err = Whisper::load(&junk, timeout).err().unwrap();
        assert!(err.starts_with("not a ggml model: magic"), "{err}");
    }
}
