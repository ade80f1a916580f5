//! The `whisper` speech backend: whisper.cpp through `whisper-rs`, with a ggml model file from
//! `[analysis.asr] model` (the reference runs openai-whisper "base": `ggml-base.en.bin` or
//! `ggml-base.bin` is the equivalent). Built only with the cargo feature `whisper`.
//!
//! Owns: loading the model once, and one transcription per call with the reference's settings
//! (English, greedy decoding, no timestamps). whisper.cpp's own logging is routed into `tracing`.

use super::SpeechRecognizer;
use std::path::Path;
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

/// A loaded whisper.cpp model.
pub struct Whisper {
    context: WhisperContext,
    threads: i32,
}

impl Whisper {
    /// Loads the ggml model at `model`.
    pub fn load(model: &Path) -> Result<Whisper, String> {
        whisper_rs::install_logging_hooks();
        if !model.is_file() {
            return Err("not a readable file".to_owned());
        }
        let context = WhisperContext::new_with_params(model, WhisperContextParameters::default())
            .map_err(|e| format!("whisper.cpp could not load it: {e}"))?;
        // Analysis runs after the miners are timed: use the host's cores, but not more than whisper
        // profits from.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        Ok(Whisper {
            context,
            threads: i32::try_from(threads).unwrap_or(1),
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
        state
            .full(params, samples)
            .map_err(|e| format!("whisper transcription: {e}"))?;
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
        let err = Whisper::load(&dir.path().join("absent.bin")).err().unwrap();
        assert!(err.contains("not a readable file"), "{err}");
        let junk = dir.path().join("junk.bin");
        std::fs::write(&junk, b"this is not a ggml model").unwrap();
        let err = Whisper::load(&junk).err().unwrap();
        assert!(err.contains("could not load"), "{err}");
    }
}
