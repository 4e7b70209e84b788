"""The live transcriber: audio in, events out, on a fixed grid of stream time.

Every ``step`` seconds of audio (counted from the first sample, whatever the chunks fed) one
pass transcribes the rolling buffer (:func:`~whisper_at.live.backends.run_pass`); LocalAgreement-2
commits what a pass and one of the two before it agree on, and a pause heard after the tentative
words commits them; the buffer is trimmed at committed sentence ends
once longer than ``trim_after`` seconds, and forcibly before ``max_buffer``; the speech gate's
skips at the buffer's start are trimmed away (the prompt starts afresh after them); tag rows of
``at_time_res`` seconds become sound events as each row is complete in a pass. The same audio
fed in any chunk sizes gives the same events. Rules: docs/live.md.
"""

import math
import warnings
from collections import deque
from dataclasses import replace
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
from whisper.audio import SAMPLE_RATE

from ..gate import DEFAULT_MARGIN, gate_options, speech_probability
from ..gate.track import runs
from ..tagging import check_at_time_res
from .agreement import EARLY, LocalAgreement
from .backends import RESOLUTION_WARNING, PassOptions, has_head, run_pass
from .events import Lag, Segment, Skipped, Tentative, Word, words_text
from .sounds import SoundOptions, SoundTracker

SENTENCE_ENDS = (".", "?", "!", "。", "？", "！")
MAX_PASS = 28.0  # s: a pass stays inside one 30 s window
SOUND_LOOKAHEAD = 1  # rows of audio after a row before its tags are final
IDLE_KEEP = 2.0  # s kept at the end when a pass heard nothing new
LEAK = 1.6  # s after speech that the head may still call speech (docs/gate.md)
PAUSE_THRESHOLD = 0.5  # speech probability of a row below which it is a pause (without a gate)
QUIET_DB = 10.0  # a stretch this much below the level of the words before it is a pause
WORD_EDGE = 0.1  # s after a word's end timestamp that may still be its sound


def samples_of(chunk) -> np.ndarray:
    """A chunk as a new float32 array of samples in [-1, 1] (the caller may reuse its buffer):
    float arrays as they are, int16 PCM scaled."""
    array = np.asarray(chunk)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples (a 1-D array), got shape {list(array.shape)}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"expected float32 samples or int16 PCM, got {array.dtype}")
    return array.astype(np.float32)


def _level(samples: np.ndarray) -> float:
    """Root mean square of ``samples``."""
    return float(np.sqrt(np.mean(np.square(samples))))


def _segment(cls, words: List[Word]):
    words = tuple(words)
    if not words:
        return cls(0.0, 0.0, "", ())
    return cls(words[0].start, words[-1].end, words_text(words), words)


class LiveTranscriber:
    """Live captions and sound events from a whisper-at model (``whisper_at.faster.WhisperModel``
    or ``whisper_at.load_model``): :meth:`feed` chunks of 16 kHz mono samples as they arrive,
    :meth:`finish` at the end; each returns the events that happened (see ``events``)."""

    def __init__(self, model, step: float = 1.0, *, language: Optional[str] = None,
                 at_speech_gate: Optional[float] = None, at_gate_margin: float = DEFAULT_MARGIN,
                 at_time_res: float = 0.8, trim_after: float = 15.0, max_buffer: float = 25.0,
                 prompt_chars: int = 200, beam_size: int = 1, task: str = "transcribe",
                 sounds: SoundOptions = SoundOptions(),
                 commit_pause: Optional[float] = 0.6, agreement_history: int = 2):  # fmt: skip
        if not 0.1 <= step <= 10:
            raise ValueError(f"step must be 0.1 .. 10 seconds, got {step!r}")
        if not step < trim_after < max_buffer <= MAX_PASS:
            raise ValueError(f"expected step < trim_after < max_buffer <= {MAX_PASS} s, got "
                             f"{step!r}, {trim_after!r}, {max_buffer!r}")  # fmt: skip
        if commit_pause is not None and not commit_pause > 0:
            raise ValueError(f"commit_pause must be None or > 0 seconds, got {commit_pause!r}")
        self.model = model
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", RESOLUTION_WARNING, UserWarning)
            res = check_at_time_res(at_time_res) if has_head(model) else 0.4
        gate_options(getattr(model, "at_model", None), at_speech_gate, at_gate_margin)
        self.options = PassOptions(res, at_speech_gate, at_gate_margin, language, task, beam_size)
        self.step = round(step * SAMPLE_RATE)
        self.res = round(res * SAMPLE_RATE)
        self.trim_after = round(trim_after * SAMPLE_RATE)
        self.max_buffer = round(max_buffer * SAMPLE_RATE)
        self.prompt_chars = prompt_chars
        self.pause = None if commit_pause is None else round(commit_pause * SAMPLE_RATE)
        self.pause_rows = None  # rows of no speech that commit (a model with a head):
        if self.pause is not None and has_head(model):
            self.pause_rows = -(-self.pause // self.res)
        self.audio = np.zeros(0, np.float32)  # the buffer, then audio not yet passed over
        self.fed: List[np.ndarray] = []  # chunks fed since, joined to it at the next pass
        self.start = 0  # stream sample of audio[0] (a multiple of self.res)
        self.received = 0
        self.done = 0  # stream sample up to which the last pass went
        self.agreement = LocalAgreement(fold=True, history=agreement_history)
        self.in_buffer: List[Word] = []  # committed words that end inside the buffer
        self.prompt: deque = deque()  # committed words before it, since the last prompt reset
        self.sounds = SoundTracker(res, sounds) if has_head(model) else None
        self.tentative: tuple = ()
        self.skip: Optional[List[int]] = None  # the gate's open skipped stretch (samples)
        self.passes = 0
        self.finished = False

    # --- input -------------------------------------------------------------------------------

    @property
    def time(self) -> float:
        """Seconds of audio fed so far."""
        return self.received / SAMPLE_RATE

    @property
    def settled(self) -> Tuple[float, float]:
        """(s before which no more text will be committed, s up to which sound events are
        known): what captions can be written up to (:class:`~whisper_at.live.LiveCaptions`)."""
        if self.finished:
            return math.inf, math.inf
        speech = max(self.agreement.committed_end - EARLY, self.start / SAMPLE_RATE)
        tags = self.done if self.sounds is None else self.sounds.next_row * self.res
        return speech, tags / SAMPLE_RATE

    def feed(self, chunk, catch_up: bool = False) -> list:
        """Add samples; run the passes of every ``step`` they complete. ``catch_up=True`` (a
        real-time driver that finds more than one step waiting): one pass for all of them, and a
        :class:`Lag` event."""
        if self.finished:
            raise RuntimeError("feed() after finish(): make a new LiveTranscriber")
        samples = samples_of(chunk)
        self.fed.append(samples)
        self.received += len(samples)
        ready = self.received // self.step * self.step
        events: list = []
        if catch_up and ready - self.done > self.step:
            waiting = ready - self.done
            events.append(Lag(ready / SAMPLE_RATE, waiting / SAMPLE_RATE, waiting // self.step))
            return events + self._update(ready)
        while self.done + self.step <= ready:
            events += self._update(self.done + self.step)
        return events

    def finish(self) -> list:
        """End of stream: a last pass over the rest, all of whose words are committed; open
        sound events end. Nothing is fed after this."""
        if self.finished:
            return []
        events = self._update(self.received, final=True) if self.received > self.done else []
        committed = self.agreement.commit_pending()
        events += self._commit(committed)
        if self.sounds is not None:
            events += self.sounds.close(self.received / SAMPLE_RATE)
        events += self._close_skip()
        if self.tentative:
            events.append(_segment(Tentative, []))
            self.tentative = ()
        self.finished = True
        return events

    def stream(self, chunks: Iterable) -> Iterator:
        """Events of an iterator of chunks, then of :meth:`finish`."""
        for chunk in chunks:
            yield from self.feed(chunk)
        yield from self.finish()

    # --- one pass ----------------------------------------------------------------------------

    def _prompt_string(self) -> str:
        return words_text(self.prompt)[-self.prompt_chars :]

    def _update(self, end: int, final: bool = False) -> list:
        events: list = []
        if self.fed:
            self.audio = np.concatenate([self.audio, *self.fed])
            self.fed = []
        if end - self.start > self.max_buffer:  # behind, or no sentence ended for too long
            events += self._force_trim(end)
        audio = self.audio[: end - self.start]
        result = run_pass(self.model, audio, self._prompt_string(), self.options)
        self.passes += 1
        if self.options.language is None and result.language and result.words:
            self.options = replace(self.options, language=result.language)  # fixed from now
        offset = self.start / SAMPLE_RATE
        words = [Word(round(w.start + offset, 3), round(w.end + offset, 3), w.text)
                 for w in result.words]  # fmt: skip
        events += self._sound_rows(result.audio_tag, end, final)
        events += self._gate_trim(result.skipped, words)
        if final:
            committed = self.agreement.commit_pending(words)
        else:  # a pass that wrote no words at all where the gate skipped nothing (a decoding
            # that gave up on a buffer of speech) neither agrees nor disagrees
            committed = self.agreement.update(words) if result.words or result.skipped else []
            committed += self._pause_commit(result.audio_tag, end)
        events += self._commit(committed)
        if not final and self.agreement.pending != list(self.tentative):
            self.tentative = tuple(self.agreement.pending)
            events.append(_segment(Tentative, self.agreement.pending))
        self.done = end
        if not final and not self.agreement.pending:  # nothing heard beyond the committed text
            self._idle_trim(end)
        if not final and end - self.start > self.trim_after:
            self._trim(self._sentence_end())
        return events

    def _pause_commit(self, audio_tag, end: int) -> List[Word]:
        """The tentative words, if the pass heard a pause after the last of them: a sentence
        that ends into a pause is final without waiting for a second pass to agree."""
        pending = self.agreement.pending
        if self.pause is None or not pending:
            return []
        last = round(pending[-1].end * SAMPLE_RATE) - self.start  # buffer samples
        if self._quiet_gap(pending[0], last, end) or self._quiet_rows(audio_tag, last, end):
            return self.agreement.commit_pending()
        return []

    def _quiet_gap(self, first: Word, last: int, end: int) -> bool:
        """The pass wrote nothing in the ``commit_pause`` s or more it heard after its last word,
        and that audio is ``QUIET_DB`` below the level of its tentative words."""
        heard = end - self.start
        if heard - last < self.pause:
            return False
        said = self.audio[max(0, round(first.start * SAMPLE_RATE) - self.start) : last]
        gap = self.audio[last + round(WORD_EDGE * SAMPLE_RATE) : heard]
        if not len(said) or not len(gap):
            return False
        return _level(gap) < _level(said) * 10 ** (-QUIET_DB / 20)

    def _quiet_rows(self, audio_tag, last: int, end: int) -> bool:
        """The head hears no speech in ``commit_pause`` s of rows in a row after the last word,
        in rows the pass heard whole (it hears speech up to ~1.6 s after it ends, so this
        commits before noise, tones and music that a level does not tell from speech)."""
        if self.pause_rows is None or audio_tag is None:
            return False
        first = max(0, -(-last // self.res))
        whole = (end - self.start) // self.res
        if whole - first < self.pause_rows:
            return False
        gate = self.options.at_speech_gate
        threshold = PAUSE_THRESHOLD if gate is None else gate
        quiet = speech_probability(audio_tag[first:whole]).numpy() < threshold  # NaN: not quiet
        return any(b - a >= self.pause_rows for a, b in runs(quiet))

    def _commit(self, words: List[Word]) -> list:
        if not words:
            return []
        self.in_buffer += words
        return [_segment(Segment, words)]

    def _sound_rows(self, audio_tag, end: int, final: bool) -> list:
        if self.sounds is None or audio_tag is None:
            return []
        first = self.start // self.res
        if final:
            whole = -(-(end - self.start) // self.res)
        else:  # a row is final with a row of audio after it (the last row alone tagged noise)
            whole = (end - self.start) // self.res - SOUND_LOOKAHEAD
        events = []
        for k in range(min(whole, len(audio_tag))):
            if first + k == self.sounds.next_row:
                events += self.sounds.add_row(audio_tag[k])
        return events

    # --- trimming ------------------------------------------------------------------------------

    def _grid(self, seconds: float) -> int:
        """The row boundary at or before ``seconds`` (a stream sample)."""
        return int(seconds * SAMPLE_RATE) // self.res * self.res

    def _trim(self, to: int):
        """Drop the buffer's audio before stream sample ``to`` (a row boundary)."""
        if self.sounds is not None:
            to = min(to, self.sounds.next_row * self.res)  # rows not yet final stay
        if to <= self.start:
            return
        self.audio = self.audio[to - self.start :]
        self.start = to
        self.agreement.drop_pending(to / SAMPLE_RATE)
        gone = [w for w in self.in_buffer if w.end <= to / SAMPLE_RATE]
        self.in_buffer = self.in_buffer[len(gone) :]
        self.prompt.extend(gone)
        while len(self.prompt) > 1 and len(words_text(self.prompt)) > self.prompt_chars:
            self.prompt.popleft()

    def _sentence_end(self) -> int:
        """The row boundary before the end of the last committed sentence in the buffer."""
        for w in reversed(self.in_buffer):
            if w.text.strip().rstrip("\"')»”").endswith(SENTENCE_ENDS):
                return self._grid(w.end)
        return self.start

    def _idle_trim(self, end: int):
        """A pass heard nothing beyond the committed text: the buffer may start IDLE_KEEP s
        before its end (a word only beginning there stays), once that is LEAK s past the last
        committed word (the head hears speech up to 1.6 s after it ends: a buffer starting
        there would be decoded as speech). Nothing was said there: as after a skip, the prompt
        starts afresh."""
        to = (end - round(IDLE_KEEP * SAMPLE_RATE)) // self.res * self.res
        if to / SAMPLE_RATE < self.agreement.committed_end + LEAK or to <= self.start:
            return
        self._trim(to)
        self.prompt.clear()

    def _force_trim(self, end: int) -> list:
        """Keep the last ``trim_after`` seconds: words heard before them are committed as the
        last pass heard them."""
        cut = (end - self.trim_after) // self.res * self.res
        forced = [w for w in self.agreement.pending if w.start < cut / SAMPLE_RATE]
        self.agreement.pending = self.agreement.pending[len(forced) :]
        events = self._commit(self.agreement.commit(forced))
        if forced:
            cut = max(cut, self._grid(forced[-1].end))
        if self.sounds is not None and self.sounds.next_row * self.res < cut:
            self.sounds.next_row = cut // self.res  # behind: those rows are never tagged
        self._trim(cut)
        return events

    def _gate_trim(self, skipped, words: List[Word]) -> list:
        """The gate skipped a stretch with nothing uncommitted before it: no speech there, so
        the buffer starts after it, and the prompt starts afresh."""
        new = self.agreement.new_words(words)
        stretch = next((s for s in skipped if not new or s[1] <= new[0].start - self.start /
                        SAMPLE_RATE), None)  # fmt: skip
        if stretch is None:
            return self._close_skip()
        to = self._grid(self.start / SAMPLE_RATE + stretch[1])
        if new:
            to = min(to, self._grid(new[0].start))
        begin = max(self.start, round((self.start / SAMPLE_RATE + stretch[0]) * SAMPLE_RATE))
        self._trim(to)
        if self.start <= begin:
            return self._close_skip()
        self.prompt.clear()
        if self.skip is not None and self.skip[1] >= begin:
            self.skip[1] = self.start
            return []
        events = self._close_skip()
        self.skip = [begin, self.start]
        return events

    def _close_skip(self) -> list:
        if self.skip is None:
            return []
        a, b = self.skip
        self.skip = None
        return [Skipped(a / SAMPLE_RATE, b / SAMPLE_RATE)]
