"""Per-segment evidence: a segment's speech probability, its sound events and whether it is
likely invented (rules: docs/gate.md)."""

from typing import List, Optional

import torch
from torch import Tensor
from whisper.audio import HOP_LENGTH, SAMPLE_RATE

from ..labels import label_names
from .speech import speech_classes, speech_probability

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # mel frames: 100 per second
SEGMENT_TOP_K = 3  # sound events per segment
EVENT_FLOOR = 0.1  # ... with at least this (overlap-weighted) probability
PAST_THE_END = "starts at or after the end of the audio"
LOW_SPEECH = "speech probability below the threshold"


def segment_rows(start: float, end: float, res_frames: int, n_rows: int) -> range:
    """Tag rows a segment [start, end] (seconds) overlaps; an instant, the row holding it."""
    first_frame, end_frame = round(start * FRAMES_PER_SECOND), round(end * FRAMES_PER_SECOND)
    first = min(first_frame // res_frames, n_rows - 1)
    last = max(first, min((end_frame - 1) // res_frames, n_rows - 1))
    return range(max(first, 0), last + 1)


def _overlaps(start: float, end: float, rows: range, res_frames: int) -> Tensor:
    """Seconds of [start, end] inside each row (all ones for an instant)."""
    if end <= start:
        return torch.ones(len(rows))
    res = res_frames / FRAMES_PER_SECOND
    return torch.tensor(
        [max(0.0, min(end, (k + 1) * res) - max(start, k * res)) for k in rows], dtype=torch.float32
    )


def mean_speech(segment: dict, probs: Tensor, res_frames: int) -> Optional[float]:
    """The segment's speech probability: the mean of the speech probabilities ``probs`` of the
    rows it overlaps, weighted by the overlap in seconds (an instant: its row); None if none of
    those rows is tagged."""
    rows = segment_rows(segment["start"], segment["end"], res_frames, len(probs))
    weights = _overlaps(segment["start"], segment["end"], rows, res_frames)
    values = probs[rows.start : rows.stop]
    tagged = ~values.isnan()
    if not bool(tagged.any()) or float(weights[tagged].sum()) <= 0:
        return None
    return float((weights[tagged] * values[tagged]).sum() / weights[tagged].sum())


def past_the_end(start: float, duration: Optional[float]) -> bool:
    """Whether a segment starting at ``start`` s starts at or after the end of the audio
    (``duration`` s; no audio lies there)."""
    return duration is not None and start >= duration


def segment_evidence(
    segment: dict, audio_tag: Tensor, probs: Tensor, res_frames: int, threshold: float,
    top_k: int = SEGMENT_TOP_K, duration: Optional[float] = None,
) -> dict:
    """``at_speech_prob`` (:func:`mean_speech`; ``probs`` = ``speech_probability(audio_tag)``),
    ``at_events``: up to ``top_k`` non-speech classes whose overlap-weighted mean probability is
    at least EVENT_FLOOR, strongest first, ``at_hallucination``: the segment has text and
    starts at or after the end of the audio (``duration`` s) or has ``at_speech_prob <
    threshold``, and ``at_reason``: which of the two (None when not flagged)."""
    text = bool(segment["text"].strip())
    speech = mean_speech(segment, probs, res_frames)
    out = {"at_speech_prob": None, "at_events": [], "at_hallucination": False, "at_reason": None}
    if speech is not None:
        rows = segment_rows(segment["start"], segment["end"], res_frames, len(probs))
        weights = _overlaps(segment["start"], segment["end"], rows, res_frames)
        tags = torch.sigmoid(audio_tag[rows.start : rows.stop].detach().float().cpu())
        tagged = ~tags.isnan().any(dim=1)
        mean = (weights[tagged] / weights[tagged].sum()) @ tags[tagged]
        mean[list(speech_classes())] = -1
        names = label_names("en")
        top = torch.argsort(mean, descending=True, stable=True)[:top_k].tolist()
        out["at_speech_prob"] = round(speech, 4)
        out["at_events"] = [{"index": c, "label": names[c], "prob": round(float(mean[c]), 4)}
                            for c in top if mean[c] >= EVENT_FLOOR]  # fmt: skip
    if text and past_the_end(segment["start"], duration):
        out.update(at_hallucination=True, at_reason=PAST_THE_END)
    elif text and speech is not None and speech < threshold:
        out.update(at_hallucination=True, at_reason=LOW_SPEECH)
    return out


def add_segment_info(
    segments: List[dict], audio_tag: Tensor, res_frames: int, threshold: float,
    duration: Optional[float] = None,
) -> List[dict]:
    """Add the :func:`segment_evidence` keys to each segment (in place); returns them."""
    probs = speech_probability(audio_tag)
    for segment in segments:
        segment.update(segment_evidence(segment, audio_tag, probs, res_frames, threshold,
                                        duration=duration))  # fmt: skip
    return segments
