"""Which classes are speech, a tag row's speech probability, and the gate's options."""

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..labels import NUM_CLASSES, label_index

SPEECH_NAMES = ("Speech", "Speech synthesizer")  # and every class between them
SINGING_NAMES = ("Singing", "Rapping")  # lyrics: SDH shows ♪ text ♪
DEFAULT_FLAG_THRESHOLD = 0.5  # hallucination flag when no gate threshold is given
DEFAULT_MARGIN = 0.5  # seconds of audio decoded before the earliest likely speech


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


def check_margin(value, name: str = "at_gate_margin") -> float:
    """Seconds decoded before the earliest likely speech: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
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


@dataclass(frozen=True)
class GateOptions:
    """``threshold``: the speech probability P below which audio is not decoded; ``margin``:
    seconds decoded before the earliest likely speech (and kept after the latest)."""

    threshold: float
    margin: float = DEFAULT_MARGIN

    @classmethod
    def checked(cls, threshold, margin=DEFAULT_MARGIN) -> "GateOptions":
        return cls(check_threshold(threshold), check_margin(margin))


def gate_options(head, threshold, margin=DEFAULT_MARGIN,
                 segment_info: bool = False) -> Optional[GateOptions]:  # fmt: skip
    """The checked options of ``at_speech_gate=threshold`` (None: no gate), ``at_gate_margin``
    and the model's ``head``, which the gate needs, as does ``at_segment_info=True``."""
    options = None
    if threshold is None:
        check_margin(margin)
    else:
        options = GateOptions.checked(threshold, margin)
        check_head(head)
    if segment_info:
        check_head(head, "at_segment_info")
    return options
