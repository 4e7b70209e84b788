"""AudioSet label names and post-processing of Whisper-AT audio-tagging logits.

The class list (``assets/class_labels_indices.csv``) comes from the AudioSet ontology
(CC BY-SA 4.0, Google); the translated label names (``assets/label_name_dict.json``)
come from Whisper-AT (BSD-2-Clause, Copyright (c) 2023 Yuan Gong).
"""

import csv
import difflib
import json
import math
import numbers
import operator
import os
import warnings
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

NUM_CLASSES = 527

_ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
_LABEL_NAME_FILE = os.path.join(_ASSETS_DIR, "label_name_dict.json")
_CLASS_CSV_FILE = os.path.join(_ASSETS_DIR, "class_labels_indices.csv")


@lru_cache(maxsize=None)
def _label_name_dict() -> Dict[str, Tuple[str, ...]]:
    with open(_LABEL_NAME_FILE, encoding="utf-8") as f:
        data = json.load(f)
    for lang, names in data.items():
        if len(names) != NUM_CLASSES:
            raise RuntimeError(
                f"{_LABEL_NAME_FILE}: language {lang!r} has {len(names)} names, "
                f"expected {NUM_CLASSES}"
            )
    return {lang: tuple(names) for lang, names in data.items()}


@lru_cache(maxsize=None)
def _class_table() -> Tuple[Tuple[str, str], ...]:
    """(mid, display_name) per class, in index order, read from the AudioSet CSV."""
    with open(_CLASS_CSV_FILE, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != NUM_CLASSES or any(int(r["index"]) != i for i, r in enumerate(rows)):
        raise RuntimeError(f"{_CLASS_CSV_FILE}: expected indices 0..{NUM_CLASSES - 1} in order")
    return tuple((r["mid"], r["display_name"]) for r in rows)


def _resolve_language(language: Any) -> str:
    """Map a language code or name to a key of the label dict; warn and use English if unknown."""
    names = _label_name_dict()
    if isinstance(language, str):
        code = language.strip().lower()
        code = TO_LANGUAGE_CODE.get(code, code)
        if code in names:
            return code
    warnings.warn(
        f"{language!r} language not supported. Use English label names instead. If you wish "
        "to use label names of a specific language, please specify the language argument "
        "(see supported_languages()).",
        UserWarning,
        stacklevel=3,
    )
    return "en"


def supported_languages() -> List[str]:
    """Language codes with translated label names ('en' first)."""
    return list(_label_name_dict().keys())


def label_names(language: str = "en") -> List[str]:
    """The 527 AudioSet class names in `language`; unknown languages warn and give English."""
    return list(_label_name_dict()[_resolve_language(language)])


def class_ids() -> List[str]:
    """AudioSet machine ids (e.g. '/m/09x0r') of the 527 classes, in index order."""
    return [mid for mid, _ in _class_table()]


def label_index(name: str) -> int:
    """Index of the class with English display name `name` (exact, then case-insensitive)."""
    names = [display for _, display in _class_table()]
    if name in names:
        return names.index(name)
    near: List[str] = []
    if isinstance(name, str) and name.strip():
        key = name.strip().casefold()
        folded = [n.casefold() for n in names]
        if key in folded:
            return folded.index(key)
        near = [names[i] for i, n in enumerate(folded) if key in n]
        for match in difflib.get_close_matches(key, folded, n=5, cutoff=0.6):
            if names[folded.index(match)] not in near:
                near.append(names[folded.index(match)])
    hint = f" Did you mean: {', '.join(repr(n) for n in near[:8])}?" if near else ""
    raise ValueError(f"name: unknown AudioSet class {name!r}.{hint}")


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    return int(top_k)


def _check_threshold(p_threshold: Any) -> float:
    if isinstance(p_threshold, (str, bytes, bool)):
        raise ValueError(f"p_threshold must be a real number, got {p_threshold!r}")
    try:
        value = float(p_threshold)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"p_threshold must be a real number, got {p_threshold!r}") from None
    if math.isnan(value):
        raise ValueError("p_threshold must not be NaN")
    return value


def _check_include(include_class_list: Optional[Iterable[int]]) -> torch.Tensor:
    if include_class_list is None:
        return torch.arange(NUM_CLASSES)
    if isinstance(include_class_list, (torch.Tensor, np.ndarray)):
        include_class_list = include_class_list.tolist()
    if isinstance(include_class_list, (str, bytes)):
        raise ValueError("include_class_list must be an iterable of class indices, got a string")
    try:
        items = list(include_class_list)
    except TypeError:
        raise ValueError(
            f"include_class_list must be an iterable of class indices, got {include_class_list!r}"
        ) from None
    indices = set()
    for item in items:
        try:
            if isinstance(item, bool):
                raise TypeError
            index = operator.index(item)
        except TypeError:
            raise ValueError(
                f"include_class_list must contain integer class indices, got {item!r}"
            ) from None
        if not 0 <= index < NUM_CLASSES:
            raise ValueError(f"include_class_list index {index} out of range [0, {NUM_CLASSES})")
        indices.add(index)
    if not indices:
        raise ValueError("include_class_list is empty; no class could ever be reported")
    return torch.tensor(sorted(indices), dtype=torch.long)


def _as_result(result: Any) -> Any:
    """A faster-whisper ``TaggedTranscriptionInfo`` (anything with ``audio_tag`` and
    ``at_time_res`` attributes) as a result dict; other values unchanged."""
    if isinstance(result, Mapping) or not hasattr(type(result), "audio_tag"):
        return result
    return {"audio_tag": result.audio_tag, "at_time_res": getattr(result, "at_time_res", None),
            "language": getattr(result, "language", None)}  # fmt: skip


def _check_result(result: Any) -> Tuple[torch.Tensor, Union[int, float]]:
    if not isinstance(result, Mapping):
        raise ValueError(
            f"result must be the dict returned by whisper_at transcribe(), got {type(result)}"
        )
    if result.get("audio_tag") is None:
        raise ValueError(
            "result has no 'audio_tag': it did not come from whisper_at transcribe(), or the "
            "model had no audio-tagging (AT) head; load a whisper_at model with AT weights"
        )
    if "at_time_res" not in result:
        raise ValueError(
            "result has no 'at_time_res': it did not come from whisper_at transcribe()"
        )

    res = result["at_time_res"]
    if (
        isinstance(res, bool)
        or not isinstance(res, numbers.Real)
        or not math.isfinite(res)
        or res <= 0
    ):
        raise ValueError(f"result['at_time_res'] must be a positive number, got {res!r}")

    tag = result["audio_tag"]
    if not isinstance(tag, torch.Tensor):
        try:
            tag = torch.as_tensor(np.asarray(tag))
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"result['audio_tag'] is not a numeric array: {e}") from None
    tag = tag.detach().cpu()
    if tag.dim() != 2 or tag.shape[1] != NUM_CLASSES:
        raise ValueError(
            f"result['audio_tag'] must have shape [rows, {NUM_CLASSES}], got {tuple(tag.shape)}"
        )
    if tag.dtype == torch.bool or tag.is_complex():
        raise ValueError(f"result['audio_tag'] must hold real logits, got dtype {tag.dtype}")
    return tag.to(torch.float64), res


def _timestamp(i: int, res: Union[int, float]) -> Union[int, float]:
    if isinstance(res, numbers.Integral):
        return int(i * res)
    return round(i * float(res), 6)


def parse_at_label(
    result: Mapping[str, Any],
    language: str = "follow_asr",
    top_k: int = 5,
    p_threshold: float = -1,
    include_class_list: Optional[Iterable[int]] = range(NUM_CLASSES),
) -> List[Dict[str, Any]]:
    """
    Turn the audio-tagging logits of a whisper_at transcribe() result into labelled tags.

    Parameters
    ----------
    result: dict
        Returned by whisper_at transcribe(); uses "audio_tag" (tensor or numpy array of logits,
        shape [rows, 527]; an all-NaN row means "not analysed"), "at_time_res" (seconds per row)
        and, for language="follow_asr", "language". The ``info`` of a whisper_at.faster
        transcription (segments consumed) works too.
    language: str
        Language of the label names, e.g. "en", "zh" (see supported_languages()); "follow_asr"
        (default) uses the language detected by ASR. Unknown languages warn and use English.
    top_k: int
        Report up to k classes per row.
    p_threshold: float
        Only classes with logit > p_threshold are reported.
    include_class_list: iterable of int
        Class indices of interest (default: all 527; None also means all).

    Returns
    -------
    A list with one entry per row: {"time": {"start": s, "end": e}, "audio tags": [(label, logit),
    ...]} with tags sorted by decreasing logit (ties by class index).

    Differences from the 2023 release: top_k is counted after filtering by include_class_list
    and p_threshold (2023 took the top k of all classes first, so include lists silently gave
    fewer tags); invalid arguments raise ValueError naming the argument; times are rounded to
    6 decimals (3 * 0.4 gives 1.2); NaN logits are never reported.
    """
    result = _as_result(result)
    tag, res = _check_result(result)
    top_k = _check_top_k(top_k)
    p_threshold = _check_threshold(p_threshold)
    include = _check_include(include_class_list)

    if language == "follow_asr":
        language = result.get("language")
    names = _label_name_dict()[_resolve_language(language)]

    values = tag[:, include]
    keep = values > p_threshold  # False for NaN
    masked = torch.where(keep, values, torch.full_like(values, -math.inf))
    sorted_values, order = torch.sort(masked, dim=1, descending=True, stable=True)
    k = min(top_k, include.numel())
    top_values = sorted_values[:, :k].tolist()
    top_classes = include[order[:, :k]].tolist()
    top_keep = torch.gather(keep, 1, order[:, :k]).tolist()

    all_res = []
    for i in range(tag.shape[0]):
        tags = [(names[c], v) for c, v, ok in zip(top_classes[i], top_values[i], top_keep[i]) if ok]
        time = {"start": _timestamp(i, res), "end": _timestamp(i + 1, res)}
        all_res.append({"time": time, "audio tags": tags})
    return all_res


def print_label_name(language: str = "en") -> None:
    """Print the index and name of every class in `language`."""
    for i, name in enumerate(label_names(language)):
        print(f"index: {i:d} : {name}")


def print_support_language() -> None:
    """Print the language codes (and names) for which translated label names exist."""
    for code in supported_languages():
        print(f"language code: {code} : {LANGUAGES.get(code, code)}")
