"""The speech gate and per-segment evidence: sound events that steer ASR.

A tag row's *speech probability* is the sigmoid of the largest logit among the speech classes:
AudioSet "Speech" .. "Speech synthesizer" and "Singing" .. "Rapping" (lyrics count as speech).
The same head run on every 0.4 s pooled frame places speech finer than a row
(:mod:`~whisper_at.gate.track`). ``transcribe(..., at_speech_gate=P)``: before a window is
decoded, its start is skipped up to ``at_gate_margin`` seconds before the first speech that
the rows and frames find (the whole window if none); the prompt starts afresh after a skip.
Afterwards segments that start past the end of the audio or meet no speech are dropped, and
the others' ends are held to the speech. ``at_segment_info=True`` adds each segment's speech
probability, top sound events and a hallucination flag. The rules are in docs/gate.md.

The functions here see only tag rows, pooled frames, mel frames and segment times, so every
backend (openai-whisper's loop: :class:`WindowGate`; ``whisper_at.faster``) calls them from its
own per-window seam.
"""

from .decide import (
    SKIP_TEMPERATURE,
    GateLog,
    held_words,
    moved_entry,
    segment_verdict,
    skip_steps,
    window_rows,
)
from .evidence import (
    EVENT_FLOOR,
    FRAMES_PER_SECOND,
    LOW_SPEECH,
    PAST_THE_END,
    SEGMENT_TOP_K,
    add_segment_info,
    mean_speech,
    past_the_end,
    segment_evidence,
    segment_rows,
)
from .speech import (
    DEFAULT_FLAG_THRESHOLD,
    DEFAULT_MARGIN,
    SINGING_NAMES,
    SPEECH_NAMES,
    GateOptions,
    check_head,
    check_margin,
    check_threshold,
    gate_options,
    speech_classes,
    speech_probability,
)
from .track import SpeechMap, SpeechTrack, speech_mask
from .window import WindowGate

__all__ = [
    "DEFAULT_FLAG_THRESHOLD", "DEFAULT_MARGIN", "EVENT_FLOOR", "FRAMES_PER_SECOND",
    "LOW_SPEECH", "PAST_THE_END", "SEGMENT_TOP_K", "SINGING_NAMES", "SKIP_TEMPERATURE",
    "SPEECH_NAMES", "GateLog", "GateOptions", "SpeechMap", "SpeechTrack", "WindowGate",
    "add_segment_info", "check_head", "check_margin", "check_threshold", "gate_options",
    "held_words", "mean_speech", "moved_entry", "past_the_end", "segment_evidence", "segment_rows",
    "segment_verdict", "skip_steps", "speech_classes", "speech_mask", "speech_probability",
    "window_rows",
]
