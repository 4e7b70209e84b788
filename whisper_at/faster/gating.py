"""The speech gate on the faster-whisper backend (rules: whisper_at/gate.py, docs/gate.md).

FW's sequential ``generate_segments`` calls ``generate_with_fallback`` right after encoding a
window; the window's tag rows are known by then. For a window whose start is to be skipped,
:meth:`FasterGate.skip` stands in for decoding with a result whose tokens are two equal
timestamps ``<|t|><|t|>``: FW's own seeking then moves ``2 t`` mel frames on (to the first row
that reaches the threshold, or to the next window) and yields no segment for it, as
openai-whisper's loop does with the same tokens. Skipping applies where FW decodes the original
audio window by window (no ``vad_filter``; ``clip_timestamps`` allowed). Dropping segments that
lie wholly inside non-speech rows applies everywhere: sequential, ``vad_filter``, batched.
"""

from types import SimpleNamespace
from typing import List, Optional, Tuple

from .. import gate


class FasterGate:
    """What the gate decided for one faster-whisper transcription."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.log = gate.GateLog(threshold)
        self.decisions = {}  # window seek (mel frames) -> timestamp steps skipped (0: decode)
        self.dropped: List[dict] = []

    def decide(self, tagger, seek: int, n_frames: int, silence: Optional[float]) -> int:
        """Timestamp positions (of 2 mel frames) to skip in the window at ``seek`` whose first
        ``n_frames`` frames are audio. ``silence``: FW's hallucination_silence_threshold when
        word timestamps are on (it would jump to the window's end after a short skip)."""
        if seek not in self.decisions:
            self.decisions[seek] = gate.skip_steps(tagger, seek, n_frames, self.threshold,
                                                   silence, self.log)  # fmt: skip
        return self.decisions[seek]

    @staticmethod
    def skip(steps: int, timestamp_begin: int, temperature: float) -> Tuple:
        """What ``generate_with_fallback`` returns to skip ``steps`` timestamp positions:
        (result, avg_logprob, temperature, compression_ratio)."""
        token = timestamp_begin + steps
        result = SimpleNamespace(sequences_ids=[[token, token]], scores=[0.0], no_speech_prob=0.0)
        return result, 0.0, temperature, 0.0

    def keep(self, segment, tagger) -> bool:
        """Whether a segment FW made is kept: dropped when every tag row it overlaps (as tagged
        so far) is below the threshold."""
        rows = gate.segment_rows(segment.start, segment.end, tagger.res_frames, tagger.n_rows)
        if len(rows) == 0:
            return True
        probs = gate.speech_probability(tagger.peek(rows))
        if not bool((probs < self.threshold).all()):
            return True
        self.dropped.append({"start": segment.start, "end": segment.end, "text": segment.text})
        return False

    def report(self, audio_tag, res_frames: int) -> dict:
        """The ``at_gate`` entry (as ``whisper_at.transcribe``'s), with the final tags."""
        probs = gate.speech_probability(audio_tag)
        return self.log.report(self.dropped, probs, res_frames)
