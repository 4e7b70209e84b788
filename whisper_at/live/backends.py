"""One pass over the live buffer, for either backend: its words (timestamps on the buffer's
clock), the tag logits of the same encoder pass and what the speech gate skipped."""

import warnings
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from torch import Tensor

from ..gate import DEFAULT_MARGIN
from .events import Word

MIN_WORD = 0.02  # s: one alignment step; shorter words have no audio
RESOLUTION_WARNING = "at_time_res=.*: the AT heads were trained"  # live tags rows finer on purpose


@dataclass
class Pass:
    words: List[Word]
    audio_tag: Optional[Tensor]  # [rows, 527] logits, rows of ``at_time_res`` from the start
    skipped: List[Tuple[float, float]] = field(default_factory=list)  # s, merged
    language: Optional[str] = None


@dataclass(frozen=True)
class PassOptions:
    """How each pass decodes: greedy at temperature 0 (no sampling: the same audio gives the
    same words, whatever the chunks), word timestamps on."""

    at_time_res: float = 0.8
    at_speech_gate: Optional[float] = None
    at_gate_margin: float = DEFAULT_MARGIN
    language: Optional[str] = None
    task: str = "transcribe"
    beam_size: int = 1


def is_faster(model) -> bool:
    """Whether ``model`` is a whisper_at.faster model (else a whisper_at.load_model one)."""
    return callable(getattr(model, "generate_segments", None)) and hasattr(model, "at_encoder")


def has_head(model) -> bool:
    return bool(getattr(model, "has_at_head", False))


def _word(start, end, text) -> Word:
    return Word(round(float(start), 3), round(float(end), 3), str(text))


def _spoken(words: List[Word]) -> List[Word]:
    """A segment's words less the zero-length ones: the alignment found no audio for them
    (text written past the speech, or over non-speech, which the gate's hold also leaves
    zero-length on the speech's boundary)."""
    return [w for w in words if w.end - w.start >= MIN_WORD]


def run_pass(model, audio: np.ndarray, prompt: str, options: PassOptions) -> Pass:
    """Transcribe ``audio`` (float32, 16 kHz, at most ~30 s) with ``prompt`` as the previous
    text, tagging rows of ``options.at_time_res`` in the same encoder pass."""
    tags = {"at_time_res": options.at_time_res} if has_head(model) else {}
    if options.at_speech_gate is not None:
        tags.update(at_speech_gate=options.at_speech_gate, at_gate_margin=options.at_gate_margin)
    common = dict(language=options.language, task=options.task, temperature=0.0,
                  word_timestamps=True, initial_prompt=prompt or None,
                  condition_on_previous_text=False, **tags)  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", RESOLUTION_WARNING, UserWarning)
        if is_faster(model):
            segments, info = model.transcribe(audio, beam_size=options.beam_size,
                                              vad_filter=False, **common)  # fmt: skip
            words = _spoken([_word(w.start, w.end, w.word) for s in segments
                             for w in (s.words or [])])  # fmt: skip
            gate_log = getattr(info, "at_gate", None) or {}
            audio_tag = getattr(info, "audio_tag", None)
            language = info.language
        else:
            beam = {"beam_size": options.beam_size} if options.beam_size > 1 else {}
            fp16 = model.device.type == "cuda"
            result = model.transcribe(audio, verbose=None, fp16=fp16, **beam, **common)
            words = _spoken([_word(w["start"], w["end"], w["word"]) for s in result["segments"]
                             for w in s.get("words", [])])  # fmt: skip
            gate_log = result.get("at_gate") or {}
            audio_tag = result.get("audio_tag")
            language = result.get("language")
    skipped = [(float(a), float(b)) for a, b in gate_log.get("skipped", [])]
    return Pass(words, audio_tag, skipped, language)
