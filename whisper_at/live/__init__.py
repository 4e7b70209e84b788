"""Live captions with sound events: :class:`LiveTranscriber` turns audio chunks into committed
text (LocalAgreement-2 over a rolling buffer), its tentative tail, sound events and what the
speech gate skipped, from the encoder passes of a whisper-at model. See docs/live.md.

    from whisper_at.faster import WhisperModel
    from whisper_at.live import LiveTranscriber
    live = LiveTranscriber(WhisperModel("tiny.en", compute_type="int8"), at_speech_gate=0.5)
    for event in live.stream(chunks):      # chunks: float32 or int16 arrays, 16 kHz mono
        print(event)
"""

from .agreement import LocalAgreement
from .backends import PassOptions
from .captions import LiveCaptions
from .events import Lag, Segment, Skipped, Sound, Tentative, Word, event_dict
from .sounds import SoundOptions, SoundTracker
from .stream import LiveTranscriber

__all__ = ["Lag", "LiveCaptions", "LiveTranscriber", "LocalAgreement", "PassOptions", "Segment",
           "Skipped", "Sound", "SoundOptions", "SoundTracker", "Tentative", "Word",
           "event_dict"]  # fmt: skip
