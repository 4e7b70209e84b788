"""SDH captions of a live stream, as they settle: committed words grouped into speech cues,
sound events, the rules of docs/outputs.md (``whisper_at.outputs.sdh_cues``: onset captions,
``[... continues]``, sound-only cues), each written once nothing can change it any more."""

import json
import math
from typing import Callable, Dict, List, Optional, Tuple

from whisper.utils import format_timestamp

from ..outputs.sdh import MIN_EVENT_CUE, sdh_cues, speech_cues, write_sdh
from ..staging import atomic_path
from .events import Segment, Sound, Word, event_dict, words_text

MAX_CUE_CHARS = 84  # two lines of 42 (the usual subtitle limit)
OPEN_END = 600.0  # s: where a sound still going is assumed to end, for placing its cues
HISTORY = 120.0  # s of cues and sounds kept to place captions (twice --at_sdh_continues)


def cue_line(start: float, end: float, text: str) -> str:
    """A console line (or lines: one per caption line) of a cue."""
    span = f"[{format_timestamp(start)} --> {format_timestamp(end)}]"
    return "\n".join(f"{span} {line}" for line in text.splitlines())


class LiveCaptions:
    """Feed events (:meth:`add`) and how far the stream has settled (:meth:`settle`); new
    cues go to ``show`` (a line each) and, rewritten whole each time, to ``vtt`` / ``srt``
    paths. ``log``: a JSON-lines file, a line per event, flushed."""

    def __init__(self, vtt: Optional[str] = None, srt: Optional[str] = None,
                 log: Optional[str] = None, show: Callable[[str], None] = print,
                 continues: float = 60.0, repeat: bool = False):  # fmt: skip
        self.paths = {True: vtt, False: srt}
        self.show, self.continues, self.repeat = show, continues, repeat
        self.log = open(log, "w", encoding="utf-8") if log else None
        self.words: List[Word] = []  # the open speech cue
        self.speech: List[Tuple[float, float, str]] = []  # closed speech cues (recent)
        self.sounds: Dict[tuple, dict] = {}  # (index, start) -> event dict (recent)
        self.cues: List[tuple] = []  # written cues
        self.last: Optional[tuple] = None  # (start, end) of the last written cue
        for vtt_kind, path in self.paths.items():
            if path:
                self._write(path, vtt_kind)

    def add(self, events: list):
        for event in events:
            if self.log is not None:
                self.log.write(json.dumps(event_dict(event), ensure_ascii=False) + "\n")
                self.log.flush()
            if isinstance(event, Segment):
                for word in event.words:
                    self._add_word(word)
            elif isinstance(event, Sound):
                self.sounds[(event.index, event.start)] = {
                    "start": event.start, "end": event.end, "index": event.index,
                    "peak": event.peak}  # fmt: skip

    def _add_word(self, word: Word):
        if self.words and (word.start - self.words[-1].end > MIN_EVENT_CUE or
                           len(words_text(self.words + [word])) > MAX_CUE_CHARS):  # fmt: skip
            self._close_cue()
        self.words.append(word)
        if word.text.strip().endswith((".", "?", "!")):
            self._close_cue()

    def _close_cue(self):
        if self.words:
            segment = {"start": self.words[0].start, "end": self.words[-1].end,
                       "text": words_text(self.words)}  # fmt: skip
            self.speech += speech_cues({"segments": [segment]}, {})
            self.words = []

    def settle(self, speech_until: float, tags_until: float) -> List[tuple]:
        """No speech will be committed before ``speech_until`` s, and sound events are known up
        to ``tags_until`` s: write the cues nothing can change any more. Returns them.

        A cue is done when the tags a second past its end are final (a sound starting right
        after it, or a part of a gap under a second, can still join it), and so is the speech:
        up to a second past its end, or up to the start of the cue being built."""
        if self.words and speech_until - self.words[-1].end > MIN_EVENT_CUE:
            self._close_cue()  # a pause: the cue is complete
        fence = self.words[0].start if self.words else math.inf
        speech_until = min(speech_until, fence)
        far = min(speech_until, tags_until) + OPEN_END  # a sound going on: its cues not done
        events = [dict(s, end=far if s["end"] is None else s["end"]) for s in self.sounds.values()]
        new = []
        for cue in sdh_cues(self.speech, events, self.repeat, self.continues):
            if self.last is not None and cue[:2] <= self.last:
                continue
            end = cue[1] + MIN_EVENT_CUE
            speech_done = end <= speech_until or (math.isfinite(fence) and cue[1] <= fence)
            if end > tags_until or not speech_done:
                break
            new.append(cue)
            self.last = cue[:2]
        self._emit(new)
        if math.isfinite(speech_until) and math.isfinite(tags_until):
            self._forget(min(speech_until, tags_until) - HISTORY)
        return new

    def _forget(self, before: float):
        self.speech = [c for c in self.speech if c[1] >= before]
        self.sounds = {k: s for k, s in self.sounds.items()
                       if s["end"] is None or s["end"] >= before}  # fmt: skip

    def _emit(self, cues: List[tuple]):
        if not cues:
            return
        self.cues += cues
        for cue in cues:
            self.show(cue_line(*cue))
        for vtt_kind, path in self.paths.items():
            if path:
                self._write(path, vtt_kind)

    def _write(self, path: str, vtt: bool):
        with atomic_path(path) as tmp:  # whole at every moment: a reader never sees half a cue
            write_sdh(tmp, self.cues, vtt)

    def close(self) -> List[tuple]:
        """End of stream: every remaining cue is written; files closed."""
        self._close_cue()
        new = self.settle(float("inf"), float("inf"))
        if self.log is not None:
            self.log.close()
            self.log = None
        return new
