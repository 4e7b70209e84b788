"""LocalAgreement-2 (Machacek, Dabre and Bojar, "Turning Whisper into Real-Time Transcription
System", 2023; whisper_streaming's ``HypothesisBuffer``): the words of a pass that the previous
pass agrees on, from the start of both (their longest common word prefix), are committed.
With ``history=2`` the pass before that counts too: a word heard alike in passes n-2 and n is
not held back because pass n-1 heard it otherwise (the flip-flops of an uncertain word)."""

import string
from typing import List, Sequence

from .events import Word

OVERLAP_WINDOW = 1.0  # s: a pass starting this close to the committed end may repeat its words
MAX_NGRAM = 5  # longest repeat of committed words looked for at a pass's start
EARLY = 0.1  # s: words starting this much before the committed end are still new
EDGES = string.punctuation + "。？！，、…«»“”‘’¿¡"  # what ``fold`` ignores at a word's ends


def _same(a: Word, b: Word) -> bool:
    return a.text.strip() == b.text.strip()


def _folded(a: Word, b: Word) -> bool:
    return a.text.strip().strip(EDGES).lower() == b.text.strip().strip(EDGES).lower()


class LocalAgreement:
    """Feed each pass's words (stream times) to :meth:`update`; it returns the words committed.
    Only the last ``MAX_NGRAM`` committed words are kept: memory does not grow with the stream.
    ``fold=True``: words agree whatever their case and punctuation at their ends ("garden" and
    "Garden."; the later pass's is committed): a sentence's last word, heard first without its
    full stop, need not wait a pass more. ``history``: how many earlier passes a pass may agree
    with (1: the previous one, as published)."""

    def __init__(self, fold: bool = False, history: int = 1):
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history!r}")
        self.same = _folded if fold else _same
        self.history = history
        self.previous: List[Word] = []  # the previous pass's words
        self.earlier: List[List[Word]] = []  # the words of the passes before it
        self.recent: List[Word] = []  # the last committed words
        self.pending: List[Word] = []  # the previous pass's words after the committed ones
        self.committed_end = 0.0

    def new_words(self, words: Sequence[Word]) -> List[Word]:
        """A pass's words after the committed ones: those starting after the committed end,
        less an n-gram at the start that repeats the last committed words."""
        new = [w for w in words if w.start > self.committed_end - EARLY]
        if new and self.recent and abs(new[0].start - self.committed_end) < OVERLAP_WINDOW:
            for n in range(min(len(self.recent), len(new), MAX_NGRAM), 0, -1):
                if all(self.same(a, b) for a, b in zip(self.recent[-n:], new[:n])):
                    return new[n:]
        return new

    def update(self, words: Sequence[Word]) -> List[Word]:
        """A pass's words: those committed."""
        new = self.new_words(words)
        agreed = max([self._prefix(new, self.pending)]
                     + [self._prefix(new, self.new_words(p)) for p in self.earlier])  # fmt: skip
        if self.history > 1:
            self.earlier = (self.earlier + [self.previous])[1 - self.history :]
        self.previous = list(words)
        self.pending = new[agreed:]
        return self.commit(new[:agreed])

    def _prefix(self, a: Sequence[Word], b: Sequence[Word]) -> int:
        """The length of the longest common prefix of two word lists."""
        n = 0
        while n < min(len(a), len(b)) and self.same(a[n], b[n]):
            n += 1
        return n

    def commit(self, words: Sequence[Word]) -> List[Word]:
        """Commit ``words`` (in order, after the committed ones) as they are."""
        words = list(words)
        if words:
            self.recent = (self.recent + words)[-MAX_NGRAM:]
            self.committed_end = max(self.committed_end, words[-1].end)
        return words

    def commit_pending(self, words: Sequence[Word] = ()) -> List[Word]:
        """End of stream: commit ``words`` (the last pass's) after the committed ones, or the
        pending words of the last pass."""
        new = self.new_words(words) if words else self.pending
        self.pending = []
        return self.commit(new)

    def drop_pending(self, before: float):
        """Forget pending words that end before ``before`` (audio no longer in the buffer)."""
        self.pending = [w for w in self.pending if w.end > before]
