"""What a live transcriber reports: frozen event records on the stream's clock (seconds from
the first sample fed), in the order they happen."""

from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Tuple


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str  # as the model wrote it, leading space included


def words_text(words: Iterable[Word]) -> str:
    return "".join(w.text for w in words).strip()


@dataclass(frozen=True)
class Text:
    start: float
    end: float
    text: str
    words: Tuple[Word, ...]


@dataclass(frozen=True)
class Segment(Text):
    """Committed text: final, never changed or repeated by a later event."""

    final: bool = True


@dataclass(frozen=True)
class Tentative(Text):
    """The tail the last pass heard after the committed text; each one replaces the previous
    (empty ``words``: none). It may change or vanish."""

    final: bool = False


@dataclass(frozen=True)
class Sound:
    """A sound event: reported at its onset with ``end`` None, then again once it has ended.
    ``caption``: its SDH caption (None for classes that are never captioned)."""

    start: float
    end: Optional[float]
    index: int
    label: str
    caption: Optional[str]
    peak: float  # largest logit so far


@dataclass(frozen=True)
class Skipped:
    """A stretch the speech gate kept from the decoder (no speech); the prompt starts afresh
    after it."""

    start: float
    end: float


@dataclass(frozen=True)
class Lag:
    """The transcriber fell behind real time: ``behind`` seconds of audio were waiting, and
    ``merged`` steps were done as one update to catch up."""

    time: float
    behind: float
    merged: int


EVENT_TYPES = {Segment: "segment", Tentative: "tentative", Sound: "sound", Skipped: "skipped",
               Lag: "lag"}  # fmt: skip


def event_dict(event) -> dict:
    """A JSON-ready dict of an event, with its ``type``; times rounded to the ms."""
    data = {"type": EVENT_TYPES[type(event)], **asdict(event)}
    if "words" in data:
        data["words"] = [[_ms(w["start"]), _ms(w["end"]), w["text"]] for w in data["words"]]
    for key in ("start", "end", "time", "behind"):
        if data.get(key) is not None:
            data[key] = _ms(data[key])
    if "peak" in data:
        data["peak"] = round(data["peak"], 4)
    return data


def _ms(seconds: float) -> float:
    return round(float(seconds), 3)
