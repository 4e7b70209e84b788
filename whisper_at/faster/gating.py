"""The speech gate on the faster-whisper backend (rules: whisper_at/gate, docs/gate.md).

FW's sequential ``generate_segments`` calls ``generate_with_fallback`` right after encoding a
window; the window's tag rows and 0.4 s frames are known by then. For a window whose start is to
be skipped, :meth:`FasterGate.skip` stands in for decoding with a result whose tokens are two
equal timestamps ``<|t|><|t|>`` and whose temperature is infinite: FW's own seeking then moves
``2 t`` mel frames on (to a margin before the first speech, or to the next window), yields no
segment for it and, the temperature being above ``prompt_reset_on_temperature``, starts the
next prompt afresh, as openai-whisper's loop does with the same result. Skipping applies where
FW decodes the original audio window by window (no ``vad_filter``; ``clip_timestamps``
allowed). Judging segments (dropped past the end or in no speech, ends held to the speech)
applies everywhere: sequential, ``vad_filter``, batched.
"""

import dataclasses
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

from .. import gate


class FasterGate:
    """What the gate decided for one faster-whisper transcription."""

    def __init__(self, options: gate.GateOptions, duration: float):
        self.options = options
        self.duration = duration
        self.log = gate.GateLog(options)
        self.decisions = {}  # window seek (mel frames) -> timestamp steps skipped (0: decode)
        self.dropped: List[dict] = []
        self.original: Dict[Tuple[float, float], List[float]] = {}  # held times -> FW's

    def decide(self, tagger, seek: int, n_frames: int, silence: Optional[float]) -> int:
        """Timestamp positions (of 2 mel frames) to skip in the window at ``seek`` whose first
        ``n_frames`` frames are audio. ``silence``: FW's hallucination_silence_threshold when
        word timestamps are on (it would jump to the window's end after a short skip)."""
        if seek not in self.decisions:
            self.decisions[seek] = gate.skip_steps(tagger, seek, n_frames, self.options,
                                                   silence, self.log)  # fmt: skip
        return self.decisions[seek]

    @staticmethod
    def skip(steps: int, timestamp_begin: int) -> Tuple:
        """What ``generate_with_fallback`` returns to skip ``steps`` timestamp positions:
        (result, avg_logprob, temperature, compression_ratio)."""
        token = timestamp_begin + steps
        result = SimpleNamespace(sequences_ids=[[token, token]], scores=[0.0], no_speech_prob=0.0)
        return result, 0.0, gate.SKIP_TEMPERATURE, 0.0

    def hold(self, start: float, end: float, text: str, tagger) -> Optional[Tuple[float, float]]:
        """The times a segment [start, end] keeps (held to the speech), or None when it is
        dropped (past the end of the audio, or in no speech as the rows and frames stand)."""
        rows = gate.window_rows(tagger, round(start * 100), round(end * 100))
        speech_map = gate.SpeechMap.build(tagger, rows, self.options.threshold,
                                          self.options.margin)  # fmt: skip
        reason, held_start, held_end = gate.segment_verdict(start, end, speech_map, self.duration)
        if reason is not None:
            self.dropped.append({"start": start, "end": end, "text": text, "reason": reason})
            return None
        if (held_start, held_end) != (start, end):
            entry = gate.moved_entry(start, end, held_start, held_end)
            self.log.moved.append(entry)
            self.original[(held_start, held_end)] = entry["original"]
        return held_start, held_end

    def judge(self, segment, tagger):
        """The segment FW made as the gate keeps it (:meth:`hold`; words inside the new
        times), or None when it is dropped."""
        held = self.hold(segment.start, segment.end, segment.text, tagger)
        if held is None or held == (segment.start, segment.end):
            return None if held is None else segment
        start, end = held
        words = segment.words
        if words:
            times = gate.held_words([(w.start, w.end) for w in words], start, end)
            words = [dataclasses.replace(w, start=a, end=b) for w, (a, b) in zip(words, times)]
        return dataclasses.replace(segment, start=start, end=end, words=words)

    def report(self, audio_tag, res_frames: int) -> dict:
        """The ``at_gate`` entry (as ``whisper_at.transcribe``'s), with the final tags."""
        probs = gate.speech_probability(audio_tag)
        return self.log.report(self.dropped, probs, res_frames)
