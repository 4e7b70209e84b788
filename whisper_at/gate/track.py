"""Where speech is, finer than a tag row: the head on every 0.4 s pooled frame, and the map of
speech stretches the gate decides with.

The head, trained on 10 s clips, still tells speech from tones, noise, music and silence on a
single pooled frame (0.4 s). Measured on espeak-ng speech after and before 40 s of each
(docs/gate.md): the first frame it calls speech lies 0-1.1 s before the true onset, never more
than 0.1 s after it, and the last 0.03-1.6 s after the true end, never before it; 0.8 s and
longer spans were earlier and later still. So frame by frame is what the gate uses.
"""

import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..head import MEL_PER_POOLED
from .speech import speech_probability

FRAME_THRESHOLD = 0.5  # a frame is speech when more likely than not (or at a lower P)
GAP_FRAMES = 2  # a dip of up to 0.8 s between speech frames is speech (pauses between words)


class SpeechTrack:
    """Speech probability of every pooled frame (0.4 s) of the audio: frame g covers mel frames
    [40 g, 40 g + 40). Filled from the first window that holds a frame's audio (NaN until)."""

    def __init__(self, head, content_frames: int):
        self.head = head
        self.probs = torch.full((-(-content_frames // MEL_PER_POOLED),), float("nan"))

    def add_window(self, seek: int, pooled: Tensor, lo: int, hi: int):
        """Pooled features [n_layer, T, d] of the window at mel frame ``seek``; only the frames
        whose audio lies in mel frames [lo, hi) (at least half of a frame's) are the audio."""
        n = len(self.probs)
        frames, places = [], []
        for j in range(pooled.shape[1]):
            start = seek + j * MEL_PER_POOLED
            g = round(start / MEL_PER_POOLED)
            if start < lo or start + MEL_PER_POOLED // 2 > hi or g >= n:
                continue
            if math.isnan(self.probs[g]):
                frames.append(j)
                places.append(g)
        if not frames:
            return
        chunks = pooled[:, frames].transpose(0, 1).unsqueeze(2)  # [n, n_layer, 1, d]
        with torch.no_grad():
            logits = self.head.forward_chunks(chunks)
        self.probs[places] = speech_probability(logits)


def speech_mask(row_probs: Tensor, res_pooled: int, fine: Tensor, threshold: float) -> np.ndarray:
    """Which pooled frames are speech, for consecutive rows (``row_probs``: their speech
    probabilities; ``fine``: the frames' own, starting with the first row's first frame).
    *Speech frames* are found with two thresholds (hysteresis): a run of frames at or above
    ``min(threshold, FRAME_THRESHOLD)`` (dips of up to GAP_FRAMES between them included) is
    speech if one of its frames reaches ``threshold``. So ``threshold`` decides whether there is
    speech, as for rows, and the lower one where it starts and ends (a frame threshold above 0.5
    cut the ends of words; the frames next to speech rise through 0.5 up to it).
    A row at or above ``threshold`` (or untagged: NaN) is speech, except that next to a row
    below it, the frames before its first (after its last) speech frame are not: that is
    where the speech starts (ends). A row below ``threshold`` is speech exactly on
    its speech frames: a row that holds speech the frames find is never non-speech whole."""
    n = len(fine)
    coarse = ~(row_probs.numpy() < threshold)
    probs = fine.numpy()
    low = _closed(probs >= min(threshold, FRAME_THRESHOLD), GAP_FRAMES)
    hit = np.zeros(n, dtype=bool)
    for a, b in runs(low):
        hit[a:b] = bool((probs[a:b] >= threshold).any())
    mask = np.ones(n, dtype=bool)
    for k, speech in enumerate(coarse):
        a, b = k * res_pooled, min(n, (k + 1) * res_pooled)
        if a >= n:
            break
        if not speech:
            mask[a:b] = hit[a:b]
            continue
        hits = np.flatnonzero(hit[a:b])
        if len(hits) == 0:
            continue
        if k > 0 and not coarse[k - 1]:
            mask[a : a + hits[0]] = False
        if k + 1 < len(coarse) and not coarse[k + 1]:
            mask[a + hits[-1] + 1 : b] = False
    return mask


def _closed(hit: np.ndarray, gap: int) -> np.ndarray:
    """``hit`` with runs of up to ``gap`` False between two True set True."""
    hit = hit.copy()
    for a, b in runs(~hit):
        if 0 < a and b < len(hit) and b - a <= gap:
            hit[a:b] = True
    return hit


def runs(mask: np.ndarray) -> List[Tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


class SpeechMap:
    """Speech stretches in mel frames, over the known range [lo, hi) (outside it: speech).
    ``spans``: where the head places speech; ``margin`` (mel frames) widens them on both sides
    for what is decoded and kept."""

    def __init__(self, spans: List[Tuple[int, int]], margin: int, lo: int, hi: int):
        self.spans = spans
        self.lo, self.hi = lo, hi
        wide: List[List[int]] = []
        for a, b in spans:
            a, b = max(lo, a - margin), min(hi, b + margin)
            if wide and a <= wide[-1][1]:
                wide[-1][1] = max(wide[-1][1], b)
            else:
                wide.append([a, b])
        self.wide = [(a, b) for a, b in wide]

    @classmethod
    def build(cls, tagger, rows: range, threshold: float, margin_seconds: float) -> "SpeechMap":
        """The map over ``rows`` of ``tagger`` (a ChunkTagger with a speech track), from their
        logits as they stand (``tagger.peek``)."""
        res_pooled = tagger.res_frames // MEL_PER_POOLED
        probs = speech_probability(tagger.peek(rows))
        track = tagger.speech_track.probs
        first = rows.start * res_pooled
        fine = track[first : rows.stop * res_pooled]
        mask = speech_mask(probs, res_pooled, fine, threshold)
        offset = first * MEL_PER_POOLED
        spans = [(offset + a * MEL_PER_POOLED, offset + b * MEL_PER_POOLED) for a, b in runs(mask)]
        hi = min(tagger.content_frames, offset + len(fine) * MEL_PER_POOLED)
        spans = [(a, min(b, hi)) for a, b in spans if a < hi]
        return cls(spans, round(margin_seconds * 100), offset, hi)

    def first_speech(self, start: int, stop: int) -> Optional[int]:
        """The first mel frame in [start, stop) decoded as speech (margin included), or None."""
        if start < self.lo or start >= self.hi:
            return start if start < stop else None
        for a, b in self.wide:
            if b > start and a < stop:
                return max(a, start)
        return self.hi if self.hi < stop else None

    def has_speech(self, start: int, stop: int) -> bool:
        """Whether [start, stop) (mel frames; an instant: stop == start) meets speech (margin
        included)."""
        stop = max(stop, start + 1)
        if not self.lo <= start < self.hi:
            return True
        stop = min(stop, self.hi)  # a segment running past the end: judged on the audio it has
        return any(a < stop and start < b for a, b in self.wide)

    def hold(self, start: int, stop: int) -> Tuple[int, int]:
        """[start, stop) with an end that lies outside the speech moved to the speech's
        boundary inside it (unchanged when no speech lies inside)."""
        inside = [(max(a, start), min(b, stop)) for a, b in self.spans if a < stop and start < b]
        if not inside:
            return start, stop
        if not self._in_speech(start):
            start = inside[0][0]
        if not self._in_speech(stop - 1):
            stop = inside[-1][1]
        return start, stop

    def _in_speech(self, frame: int) -> bool:
        return not self.lo <= frame < self.hi or any(a <= frame < b for a, b in self.spans)
