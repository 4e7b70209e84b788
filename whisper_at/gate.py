"""The speech gate and per-segment evidence: sound events that steer ASR.

A tag row's *speech probability* is the sigmoid of the largest logit among the speech classes:
AudioSet "Speech" .. "Speech synthesizer" and "Singing" .. "Rapping" (lyrics count as speech).
``transcribe(..., at_speech_gate=P)``: before a window is decoded, the rows at its start whose
speech probability is below P are skipped: decoding starts at the first row of the window that
reaches P, or at the next window if none does. Segments that lie wholly inside rows below P are
dropped. ``at_segment_info=True`` adds each segment's speech probability, top sound events and a
hallucination flag. The rules are in docs/gate.md.

The functions here see only tag rows, mel frames and segment times, so every backend (the
openai-whisper loop below, ``whisper_at.faster``) can call them from its own per-window seam.
"""

import math
import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from whisper.audio import HOP_LENGTH, SAMPLE_RATE
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.utils import format_timestamp, make_safe

from .labels import NUM_CLASSES, label_index, label_names

SPEECH_NAMES = ("Speech", "Speech synthesizer")  # and every class between them
SINGING_NAMES = ("Singing", "Rapping")  # lyrics: SDH shows ♪ text ♪
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # mel frames: 100 per second
DEFAULT_FLAG_THRESHOLD = 0.5  # hallucination flag when no gate threshold is given
SEGMENT_TOP_K = 3  # sound events per segment
EVENT_FLOOR = 0.1  # ... with at least this (overlap-weighted) probability


@lru_cache(maxsize=None)
def speech_classes() -> Tuple[int, ...]:
    """Indices of the classes that count as speech (speech and singing)."""
    spans = [range(label_index(a), label_index(b) + 1) for a, b in (SPEECH_NAMES, SINGING_NAMES)]
    return tuple(i for span in spans for i in span)


def speech_probability(audio_tag: Tensor) -> Tensor:
    """Speech probability of each tag row: [rows, 527] logits -> [rows] (NaN rows stay NaN)."""
    if audio_tag.ndim != 2 or audio_tag.shape[1] != NUM_CLASSES:
        raise ValueError(f"expected tag logits [rows, {NUM_CLASSES}], got {list(audio_tag.shape)}")
    logits = audio_tag.detach().float().cpu()[:, list(speech_classes())]
    return torch.sigmoid(logits.max(dim=1).values)


def check_threshold(value, name: str = "at_speech_gate") -> float:
    """A speech-probability threshold: a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's floats too
        raise TypeError(f"{name} must be a speech probability in [0, 1], got {value!r}")
    if not 0 <= float(value) <= 1:
        raise ValueError(f"{name} must be a speech probability in [0, 1], got {value!r}")
    return float(value)


def check_head(head, name: str = "at_speech_gate"):
    """The gate and segment evidence need a head with the 527 AudioSet classes."""
    if head is None:
        raise ValueError(
            f"{name} needs an audio-tagging head (it reads the speech classes of the tags): "
            "load the model with load_model(..., at_head=PATH) or use a model with an official "
            "head"
        )
    n_classes = head.mlp_layer[-1].out_features
    if n_classes != NUM_CLASSES:
        raise ValueError(
            f"{name} needs a head with the {NUM_CLASSES} AudioSet classes; this head has "
            f"{n_classes}"
        )


# ---------------------------------------------------------------- the gate's decision


def seek_target(
    probs: Sequence[float], first_row: int, seek: int, n_frames: int, res_frames: int,
    threshold: float,
) -> int:
    """Mel frame where decoding the window [seek, seek + n_frames) should start, given the speech
    probabilities of the rows it overlaps (row ``first_row`` first; a row spans ``res_frames``):
    ``seek`` when its first row reaches ``threshold``, else the start of the first row that does,
    else ``seek + n_frames`` (the next window). A NaN (untagged) row counts as speech."""
    for i, p in enumerate(probs):
        if not p < threshold:
            return min(max(seek, (first_row + i) * res_frames), seek + n_frames)
    return seek + n_frames


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


def in_non_speech(
    start: float, end: float, probs: Tensor, res_frames: int, threshold: float
) -> bool:
    """Whether every row the segment overlaps is below ``threshold`` (NaN rows: speech)."""
    rows = segment_rows(start, end, res_frames, len(probs))
    return len(rows) > 0 and bool((probs[rows.start : rows.stop] < threshold).all())


def split_segments(
    segments: List[dict], probs: Tensor, res_frames: int, threshold: float
) -> Tuple[List[dict], List[dict]]:
    """(kept, dropped): a segment lying wholly inside rows below ``threshold`` is dropped."""
    kept, dropped = [], []
    for segment in segments:
        non_speech = in_non_speech(segment["start"], segment["end"], probs, res_frames, threshold)
        (dropped if non_speech else kept).append(segment)
    return kept, dropped


# ---------------------------------------------------------------- per-segment evidence


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


def segment_evidence(
    segment: dict, audio_tag: Tensor, probs: Tensor, res_frames: int, threshold: float,
    top_k: int = SEGMENT_TOP_K,
) -> dict:
    """``at_speech_prob`` (:func:`mean_speech`; ``probs`` = ``speech_probability(audio_tag)``),
    ``at_events``: up to ``top_k`` non-speech classes whose overlap-weighted mean probability is
    at least EVENT_FLOOR, strongest first, and ``at_hallucination``: the segment has text and
    ``at_speech_prob < threshold``."""
    speech = mean_speech(segment, probs, res_frames)
    if speech is None:
        return {"at_speech_prob": None, "at_events": [], "at_hallucination": False}
    rows = segment_rows(segment["start"], segment["end"], res_frames, len(probs))
    weights = _overlaps(segment["start"], segment["end"], rows, res_frames)
    tags = torch.sigmoid(audio_tag[rows.start : rows.stop].detach().float().cpu())
    tagged = ~tags.isnan().any(dim=1)
    mean = (weights[tagged] / weights[tagged].sum()) @ tags[tagged]
    mean[list(speech_classes())] = -1
    names = label_names("en")
    top = torch.argsort(mean, descending=True, stable=True)[:top_k].tolist()
    return {
        "at_speech_prob": round(speech, 4),
        "at_events": [{"index": c, "label": names[c], "prob": round(float(mean[c]), 4)}
                      for c in top if mean[c] >= EVENT_FLOOR],
        "at_hallucination": bool(segment["text"].strip()) and speech < threshold,
    }


def add_segment_info(
    segments: List[dict], audio_tag: Tensor, res_frames: int, threshold: float
) -> List[dict]:
    """Add the :func:`segment_evidence` keys to each segment (in place); returns them."""
    probs = speech_probability(audio_tag)
    for segment in segments:
        segment.update(segment_evidence(segment, audio_tag, probs, res_frames, threshold))
    return segments


# ---------------------------------------------------------------- what the gate did


@dataclass
class GateLog:
    """Stretches skipped (mel frames, merged when they touch) and windows seen."""

    threshold: float
    skipped: List[List[int]] = field(default_factory=list)
    windows: int = 0  # windows the gate looked at
    windows_skipped: int = 0  # ... of which no frame was decoded

    def skip(self, start: int, end: int, whole: bool):
        if self.skipped and self.skipped[-1][1] >= start:
            self.skipped[-1][1] = max(self.skipped[-1][1], end)
        else:
            self.skipped.append([start, end])
        self.windows_skipped += whole

    def report(self, dropped: List[dict], probs: Tensor, res_frames: int) -> dict:
        """The ``at_gate`` entry of a result (times in seconds)."""
        return {
            "threshold": self.threshold,
            "skipped": [[a / FRAMES_PER_SECOND, b / FRAMES_PER_SECOND] for a, b in self.skipped],
            "windows": self.windows,
            "windows_skipped": self.windows_skipped,
            "dropped_segments": [
                {"start": s["start"], "end": s["end"], "text": s["text"],
                 "at_speech_prob": _rounded(mean_speech(s, probs, res_frames))}
                for s in dropped
            ],
        }


def skip_steps(
    tagger, seek: int, n_frames: int, threshold: float, silence: Optional[float], log: GateLog
) -> int:
    """Timestamp positions (of 2 mel frames) to skip at the start of the window [seek, seek +
    n_frames) (mel frames of audio), from the speech probabilities of the tag rows it overlaps
    as ``tagger`` (a ChunkTagger) has them now; the decision is logged. ``silence``: the
    hallucination_silence_threshold when word timestamps are on (both loops then jump to the
    window's end when what follows the last "word" is shorter: skip less instead)."""
    rows = range(max(0, seek // tagger.res_frames),
                 min(tagger.n_rows, -(-(seek + n_frames) // tagger.res_frames)))  # fmt: skip
    probs = speech_probability(tagger.peek(rows)).tolist()
    target = seek_target(probs, rows.start, seek, n_frames, tagger.res_frames, threshold)
    whole = target >= seek + n_frames
    steps = -(-(target - seek) // 2) if whole else (target - seek) // 2
    if not whole and silence is not None:
        steps = min(steps, math.floor((30 - silence) / 0.02) - 1)
    steps = max(0, min(steps, 1500))
    log.windows += 1
    if steps:
        log.skip(seek, min(seek + 2 * steps, seek + n_frames), whole)
    return steps


def _rounded(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


# ---------------------------------------------------------------- openai-whisper's loop


class WindowGate:
    """The gate inside openai-whisper's ``transcribe``: for a window whose start is to be
    skipped, ``WhisperAT.decode`` returns, instead of decoding, a result whose tokens are two
    equal timestamps ``<|t|><|t|>``. transcribe's own seeking then moves ``2 t`` mel frames on
    (to the first row that reaches the threshold, or to the next window) and records an empty,
    instantaneous segment, which ``finish`` removes. See docs/gate.md for why this seam."""

    def __init__(self, threshold: float, timestamp_begin: int, transcribe_options: dict):
        self.threshold = threshold
        self.log = GateLog(threshold)
        self.timestamp_begin = timestamp_begin
        silence = transcribe_options.get("hallucination_silence_threshold")
        self.silence = silence if transcribe_options.get("word_timestamps") else None
        self.decisions = {}  # window seek -> timestamp tokens to skip (0: decode)
        self.skip_lines = {}  # the line openai-whisper prints for a skip -> what we print

    def decide(self, tagger, seek: int, n_frames: int) -> int:
        """Timestamp positions (of 2 mel frames) to skip in the window at ``seek``."""
        if seek in self.decisions:
            return self.decisions[seek]
        steps = skip_steps(tagger, seek, n_frames, self.threshold, self.silence, self.log)
        self.decisions[seek] = steps
        if steps:
            resume = float(seek * HOP_LENGTH / SAMPLE_RATE) + steps * 0.02  # as transcribe does
            at = format_timestamp(resume)
            shown = f"[{format_timestamp(seek / FRAMES_PER_SECOND)} --> {at}]"
            self.skip_lines[f"[{at} --> {at}] "] = f"{shown} (speech gate: no speech, skipped)"
        return steps

    def result(self, seek: int, options: DecodingOptions, features: Tensor):
        """The DecodingResult that makes transcribe skip, or None to decode the window."""
        steps = self.decisions.get(seek, 0)
        if not steps:
            return None
        token = self.timestamp_begin + steps
        return DecodingResult(audio_features=features, language=options.language or "en",
                              tokens=[token, token], text="", avg_logprob=0.0,
                              no_speech_prob=0.0, temperature=options.temperature,
                              compression_ratio=0.0)

    def make_safe(self, line: str) -> str:
        """openai-whisper's ``make_safe`` for its verbose lines; a skip's empty line says so."""
        return make_safe(self.skip_lines.pop(line, line))

    def finish(self, result: dict, audio_tag: Tensor, res_frames: int, tokenizer) -> dict:
        """Remove the skips' empty segments and drop segments inside non-speech rows; renumber
        the segments, rebuild the text if a dropped segment had any; add ``at_gate``."""
        skipped = {seek for seek, steps in self.decisions.items() if steps}
        segments = [s for s in result["segments"]
                    if not (s["seek"] in skipped and not s["tokens"] and s["start"] == s["end"])]
        probs = speech_probability(audio_tag)
        kept, dropped = split_segments(segments, probs, res_frames, self.threshold)
        if any(s["tokens"] for s in dropped):  # as transcribe makes it, from what is left
            result["text"] = tokenizer.decode([t for s in kept for t in s["tokens"]])
        result["segments"] = [{**s, "id": i} for i, s in enumerate(kept)]
        result["at_gate"] = self.log.report(dropped, probs, res_frames)
        return result
