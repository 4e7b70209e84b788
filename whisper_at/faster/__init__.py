"""faster-whisper backend: FW's transcript plus Whisper-AT sound events, in FW's encoder passes.

    from whisper_at.faster import WhisperModel, to_whisper_result
    model = WhisperModel("tiny.en", compute_type="int8")
    segments, info = model.transcribe("audio.wav")
    segments = list(segments)          # FW's lazy segments, as usual
    info.audio_tag                     # [ceil(duration / 10), 527] AudioSet logits

Needs faster-whisper: ``pip install 'whisper-at[faster]'``. See docs/faster.md.
"""

try:
    import faster_whisper  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "whisper_at.faster needs faster-whisper: pip install 'whisper-at[faster]'"
    ) from e

from .model import ENCODER_MODES, TaggingMixin, WhisperModel, enable_tagging  # noqa: E402
from .pipeline import BatchedInferencePipeline  # noqa: E402
from .results import TaggedTranscriptionInfo, to_whisper_result  # noqa: E402

__all__ = [
    "ENCODER_MODES",
    "BatchedInferencePipeline",
    "TaggedTranscriptionInfo",
    "TaggingMixin",
    "WhisperModel",
    "enable_tagging",
    "to_whisper_result",
]
