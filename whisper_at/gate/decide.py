"""The gate's decisions, for any backend: where to resume decoding a window, and what becomes of
a segment (kept, its times held to the speech, or dropped), with a log of both."""

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from torch import Tensor

from .evidence import FRAMES_PER_SECOND, LOW_SPEECH, PAST_THE_END, mean_speech, past_the_end
from .speech import GateOptions
from .track import SpeechMap

SKIP_TEMPERATURE = math.inf  # a skip's temperature: above every prompt-reset threshold


@dataclass
class GateLog:
    """Stretches skipped (mel frames, merged when they touch), windows seen, segments moved."""

    options: GateOptions
    skipped: List[List[int]] = field(default_factory=list)
    windows: int = 0  # windows the gate looked at
    windows_skipped: int = 0  # ... of which no frame was decoded
    moved: List[dict] = field(default_factory=list)

    def skip(self, start: int, end: int, whole: bool):
        if self.skipped and self.skipped[-1][1] >= start:
            self.skipped[-1][1] = max(self.skipped[-1][1], end)
        else:
            self.skipped.append([start, end])
        self.windows_skipped += whole

    def report(self, dropped: List[dict], probs: Tensor, res_frames: int) -> dict:
        """The ``at_gate`` entry of a result (times in seconds)."""
        return {
            "threshold": self.options.threshold,
            "margin": self.options.margin,
            "skipped": [[a / FRAMES_PER_SECOND, b / FRAMES_PER_SECOND] for a, b in self.skipped],
            "windows": self.windows,
            "windows_skipped": self.windows_skipped,
            "dropped_segments": [
                {"start": s["start"], "end": s["end"], "text": s["text"],
                 "at_speech_prob": _rounded(mean_speech(s, probs, res_frames)),
                 "reason": s["reason"]}
                for s in dropped
            ],
            "moved_segments": self.moved,
        }


def window_rows(tagger, start: int, stop: int, after: int = 1) -> range:
    """The tag rows that mel frames [start, stop) overlap, the row before them and ``after``
    rows after them (the gate places a boundary from both rows that meet there)."""
    first = max(0, start // tagger.res_frames - 1)
    return range(first, min(tagger.n_rows, -(-stop // tagger.res_frames) + after))


def skip_steps(tagger, seek: int, n_frames: int, options: GateOptions, silence: Optional[float],
               log: GateLog) -> int:  # fmt: skip
    """Timestamp positions (of 2 mel frames) to skip at the start of the window [seek, seek +
    n_frames) (mel frames of audio): up to ``options.margin`` before the first speech the map
    of its rows finds (:class:`~whisper_at.gate.track.SpeechMap`), or the whole window; the
    decision is logged. ``silence``: the hallucination_silence_threshold when word timestamps
    are on (both loops then jump to the window's end when what follows the last "word" is
    shorter: skip less instead)."""
    # the earliest speech depends on the rows before it, not after: a row past the window is
    # not tagged yet, and would count as speech
    rows = window_rows(tagger, seek, seek + n_frames, after=0)
    speech_map = SpeechMap.build(tagger, rows, options.threshold, options.margin)
    target = speech_map.first_speech(seek, seek + n_frames)
    whole = target is None
    target = seek + n_frames if whole else target
    steps = -(-(target - seek) // 2) if whole else (target - seek) // 2
    if not whole and silence is not None:
        steps = min(steps, math.floor((30 - silence) / 0.02) - 1)
    steps = max(0, min(steps, 1500))
    log.windows += 1
    if steps:
        log.skip(seek, min(seek + 2 * steps, seek + n_frames), whole)
    return steps


def segment_verdict(start: float, end: float, speech_map: SpeechMap,
                    duration: float) -> Tuple[Optional[str], float, float]:  # fmt: skip
    """(why the segment [start, end] s is dropped, or None; its start and end held to the
    speech): dropped when it starts at or after the end of the audio (``duration`` s) or meets
    no speech (margin included); an end lying outside the speech moves to the boundary."""
    if past_the_end(start, duration):
        return PAST_THE_END, start, end
    a, b = round(start * FRAMES_PER_SECOND), round(end * FRAMES_PER_SECOND)
    if not speech_map.has_speech(a, b):
        return LOW_SPEECH, start, end
    held_a, held_b = speech_map.hold(a, max(b, a + 1))
    new_start = start if held_a == a else held_a / FRAMES_PER_SECOND
    new_end = end if held_b == max(b, a + 1) else held_b / FRAMES_PER_SECOND
    return None, new_start, max(new_start, new_end)


def held_words(words: Sequence[Tuple[float, float]], start: float, end: float) -> List[tuple]:
    """Word (start, end) times kept inside [start, end]."""
    return [(min(max(a, start), end), min(max(b, start), end)) for a, b in words]


def moved_entry(start: float, end: float, new_start: float, new_end: float) -> dict:
    """What ``at_gate["moved_segments"]`` and a moved segment's ``at_original_times`` say."""
    return {"start": new_start, "end": new_end, "original": [start, end]}


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)
