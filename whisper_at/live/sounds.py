"""Sound events from the tag rows of the live passes, row by row as each is final, with
hysteresis: a class starts when it is active in a row (among the ``top_k`` non-speech classes,
logit above ``threshold``: the rule of ``events.tsv``), and goes on while its logit stays above
``threshold - hysteresis``, gaps of up to ``hold`` rows included, so that it does not flicker."""

from dataclasses import dataclass
from typing import Dict, List

import torch

from ..labels import label_names
from ..outputs.events import active_classes, event_classes
from ..outputs.sdh import captions
from .events import Sound


@dataclass(frozen=True)
class SoundOptions:
    threshold: float = 1.0  # logit (p = 0.73) above which a class starts
    hysteresis: float = 1.0  # it goes on while above threshold - hysteresis
    top_k: int = 3
    hold: int = 1  # rows below that (a dip) that do not end it
    speech_events: bool = False  # speech classes as events too


class SoundTracker:
    """Feed final rows in order (:meth:`add_row`); returns the events that start or end."""

    def __init__(self, at_time_res: float, options: SoundOptions = SoundOptions()):
        self.res, self.options = at_time_res, options
        self.classes = event_classes(options.speech_events)
        self.open: Dict[int, dict] = {}  # class -> {"start", "last" (row), "peak"}
        self.next_row = 0
        self._names, self._captions = label_names("en"), captions()

    def _event(self, index: int, state: dict, end=None) -> Sound:
        end = None if end is None else round(end, 3)
        return Sound(
            round(state["start"], 3),
            end,
            index,
            self._names[index],
            self._captions[index],
            round(state["peak"], 4),
        )

    def add_row(self, logits: torch.Tensor) -> List[Sound]:
        """Row ``self.next_row`` ([527] logits) is final."""
        row, opts = self.next_row, self.options
        self.next_row += 1
        if torch.isnan(logits).all():
            return []
        started = dict(active_classes(logits[None], self.classes, opts.top_k, opts.threshold)[0])
        events = []
        for index, state in list(self.open.items()):
            value = float(logits[index])
            if index in started or value > opts.threshold - opts.hysteresis:
                state["last"], state["peak"] = row, max(state["peak"], value)
            elif row - state["last"] > opts.hold:
                del self.open[index]
                events.append(self._event(index, state, (state["last"] + 1) * self.res))
        for index, value in started.items():
            if index not in self.open:
                self.open[index] = {"start": row * self.res, "last": row, "peak": value}
                events.append(self._event(index, self.open[index]))
        return events

    def close(self, end: float) -> List[Sound]:
        """End of stream: every open event ends at its last row's end (at most ``end``)."""
        events = [self._event(i, s, min(end, (s["last"] + 1) * self.res))
                  for i, s in sorted(self.open.items())]  # fmt: skip
        self.open.clear()
        return events

    def ongoing(self) -> List[Sound]:
        return [self._event(i, s) for i, s in sorted(self.open.items())]
