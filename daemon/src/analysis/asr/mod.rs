//! Speech recognition behind the WER (docs/reference.md#component-audio): the [`SpeechRecognizer`] seam, the
//! backend the configuration asks for (`[analysis.asr] backend`), and which texts the WER compares.
//!
//! Owns: [`from_settings`] (`none` → no recogniser; `whisper` → `whisper::Whisper`, compiled only
//! with the cargo feature `whisper`, whose model file [`ggml`] checks first) and [`transcripts`]: the reference is the challenge's `text.txt`
//! when it has one, else (as the reference executor) the recogniser's transcript of the challenge
//! audio; the hypothesis is the recogniser's transcript of the output's audio. Without a recogniser
//! there is no hypothesis: the WER is reported unavailable and the audio-match check is the
//! transcript gate (see `components`).
//!
//! Must not: normalise text (the WER does, in `components::audio`), or turn a recogniser failure into
//! a score: it is the host's problem and the caller reports it as such.

use super::settings::AsrBackend;
use std::sync::Arc;

pub mod ggml;
#[cfg(feature = "whisper")]
pub mod whisper;

/// Turns mono 16 kHz speech into text.
pub trait SpeechRecognizer: Send + Sync {
    /// Short stable name for `debug.asr_backend` (`"whisper"`).
    fn name(&self) -> &'static str;
    /// The transcript of `samples` (mono, 16 kHz, `[-1, 1]`); an error is the host's failure.
    fn transcribe(&self, samples: &[f32]) -> Result<String, String>;
}

/// The recogniser `backend` asks for: `None` for `none`. Loading a model can fail (missing or
/// unreadable file): the error names it.
pub fn from_settings(backend: &AsrBackend) -> Result<Option<Arc<dyn SpeechRecognizer>>, String> {
    match backend {
        AsrBackend::None => Ok(None),
        #[cfg(feature = "whisper")]
        AsrBackend::Whisper { model, timeout } => {
            let whisper = whisper::Whisper::load(model, *timeout)
                .map_err(|e| format!("analysis.asr.model {}: {e}", model.display()))?;
            Ok(Some(Arc::new(whisper)))
        }
        // Settings refuse this without the feature; kept as an error rather than a panic.
        #[cfg(not(feature = "whisper"))]
        AsrBackend::Whisper { .. } => Err(NEEDS_FEATURE.to_owned()),
    }
}

/// Why `whisper` cannot be used by this build.
pub const NEEDS_FEATURE: &str =
    "'whisper' needs talkheadd built with the cargo feature `whisper` (cargo build --features whisper)";

/// `(reference, hypothesis)` for the WER: the challenge's transcript when it has one, else the
/// recogniser's transcript of the challenge audio; the recogniser's transcript of the output audio.
/// Both `None` without a recogniser.
pub fn transcripts(
    asr: Option<&dyn SpeechRecognizer>,
    text: Option<&str>,
    source_audio: &[f32],
    output_audio: &[f32],
) -> Result<(Option<String>, Option<String>), String> {
    let Some(asr) = asr else {
        return Ok((text.map(str::to_owned), None));
    };
    let reference = match text {
        Some(t) => t.to_owned(),
        None => asr.transcribe(source_audio)?,
    };
    let hypothesis = asr.transcribe(output_audio)?;
    Ok((Some(reference), Some(hypothesis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_recogniser_there_is_no_hypothesis() {
        assert!(from_settings(&AsrBackend::None).unwrap().is_none());
        let (reference, hypothesis) =
            transcripts(None, Some("the quick fox"), &[0.0; 160], &[0.0; 160]).unwrap();
        assert_eq!(reference.as_deref(), Some("the quick fox"));
        assert_eq!(hypothesis, None);
        assert_eq!(transcripts(None, None, &[], &[]).unwrap(), (None, None));
    }

    #[cfg(not(feature = "whisper"))]
    #[test]
    fn whisper_without_the_feature_names_it() {
        let backend = AsrBackend::Whisper {
            model: "/m.bin".into(),
            timeout: std::time::Duration::from_secs(1),
        };
        let err = from_settings(&backend).err().unwrap();
        assert!(err.contains("cargo feature `whisper`"), "{err}");
    }
}
