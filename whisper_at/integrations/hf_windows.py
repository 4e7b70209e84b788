"""Where the windows that transformers' Whisper encodes sit in the audio, and their tags.

``WhisperForConditionalGeneration.generate`` encodes 30 s windows (3000 mel frames) cut from the
input features it was given: short-form input is encoded whole; long-form input (more than 3000
frames) is sliced at seeks that its sequential algorithm chooses from the decoded timestamps, the
last slice zero-padded to 3000 frames, as openai-whisper does. Language detection, no-speech
detection and temperature fallback encode some windows again. A window is found here by exact
content: its frames equal the input features from some seek on, and the rest of it is zero
padding (the search tries seeks from the previous window's on first, as
:class:`whisper_at.transcribe._WindowLocator` does for openai-whisper). Each distinct window of
each audio of the batch feeds a :class:`~whisper_at.tagging.ChunkTagger` once, so rows follow
the rules of ``whisper_at.transcribe``.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..head import MEL_PER_POOLED
from ..tagging import ChunkTagger

N_FRAMES = 3000  # mel frames of one window (whisper.audio.N_FRAMES)
_PROBE = 97  # columns between the probes that reject most candidate seeks cheaply


def locate(full: Tensor, segment: Tensor, hint: int = 0) -> Optional[Tuple[int, int]]:
    """Where the window ``segment`` [n_mels, W] starts in the features ``full`` [n_mels, T]:
    ``(seek, frames)`` with ``segment[:, :frames] == full[:, seek : seek + frames]`` and the rest
    of ``segment`` zero; None if nowhere. Seeks from ``hint`` on are tried first, in order."""
    n_frames, width = full.shape[-1], segment.shape[-1]
    first = segment[:, :1]
    for lo, hi in ((hint, n_frames), (0, min(hint, n_frames))):
        hits = (full[:, lo:hi] == first).all(dim=0).nonzero().flatten()
        for seek in (hits + lo).tolist():
            n = min(width, n_frames - seek)
            probe = torch.arange(0, n, _PROBE, device=segment.device)
            window = segment[:, probe]
            # a probe column may be zero padding in the segment but not in the features
            if not bool(((window == full[:, seek + probe]) | (window == 0)).all()):
                continue
            same = (segment[:, :n] == full[:, seek : seek + n]).all(dim=0)
            count = n if bool(same.all()) else int(same.int().argmin())
            if not segment[:, count:].any():
                return seek, count
    return None


class GenerateCall:
    """The windows that one ``generate`` call encoded, for each audio of its batch.

    ``features`` [B, n_mels, T]: the call's input features (None: it was given encoder output,
    nothing is tagged); ``frames``: frames of audio in each (the rest is padding). With ``keep``
    the pooled features of each window are kept (the pipeline places them itself); otherwise
    each window is tagged as it comes (memory does not grow with the audio)."""

    def __init__(self, head, at_time_res: float, features: Optional[Tensor],
                 frames: Sequence[int], keep: bool = False):  # fmt: skip
        self.head = head
        self.at_time_res = at_time_res
        self.features = features
        self.tagged = features is not None
        self.frames = list(frames)
        self.keep = keep
        self.windows: List[List[Tuple[int, int]]] = [[] for _ in self.frames]  # (seek, frames)
        self.pooled: List[List[Tensor]] = [[] for _ in self.frames]
        self.taggers = None if keep else [ChunkTagger(head, f, at_time_res) for f in self.frames]
        self._hints = [0] * len(self.frames)
        self._cast: Dict[Tuple[torch.dtype, torch.device], Tensor] = {}
        self._results: Optional[List[dict]] = None

    def _full(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = self.features.to(like.device, like.dtype)
        return self._cast[key]

    def add(self, mel: Tensor, pooled: Tensor):
        """One encoder pass: its input [R, n_mels, 3000] and pooled layers [R, n_layer, 75, d].

        transformers stacks the windows of the audios still being decoded in batch order
        (``batch_idx_map``; fallback and language detection keep that order), so the audio of
        row r is looked for after that of row r - 1 first: a window whose content also occurs
        in an earlier audio (the same recording, silence) goes to its own. A row equal to the
        previous one (``num_return_sequences``) is the same window again."""
        if self.features is None or mel is None or mel.ndim != 3:
            return
        full = self._full(mel)
        n_audio, last, previous = len(self.frames), -1, None
        for row, layers in zip(mel, pooled):
            if previous is not None and torch.equal(row, previous):
                continue
            previous = row
            for b in [*range(last + 1, n_audio), *range(last + 1)]:
                found = locate(full[b], row, self._hints[b])
                if found is None:
                    continue
                last = b
                seek, same = found
                valid = min(same, self.frames[b] - seek)
                if valid > 0 and seek not in {s for s, _ in self.windows[b]}:
                    self._record(b, seek, valid, layers)
                break  # (a window already tagged: encoded again by fallback or detection)

    def _record(self, b: int, seek: int, valid: int, layers: Tensor):
        self._hints[b] = seek
        self.windows[b].append((seek, valid))
        if self.keep:
            self.pooled[b].append(layers)
        else:
            self.taggers[b].add_window(seek, layers, valid)

    def close(self):
        """Drop the references to the input features (the call is over)."""
        self.features = None
        self._cast = {}

    def results(self) -> List[dict]:
        """Per audio: ``audio_tag`` [ceil(frames / res), 527], ``at_time_res``, ``duration``
        (seconds of audio in its features) and ``at_windows`` ((start, end) seconds of each
        window tagged, in the order encoded)."""
        if self._results is None:
            results = []
            for b, frames in enumerate(self.frames):
                tagger = self.taggers[b] if self.taggers else None
                if tagger is None:  # kept windows: tag them now
                    tagger = ChunkTagger(self.head, frames, self.at_time_res)
                    for (seek, valid), layers in zip(self.windows[b], self.pooled[b]):
                        tagger.add_window(seek, layers, valid)
                results.append({
                    "audio_tag": run_inference(tagger.finish),
                    "at_time_res": self.at_time_res,
                    "duration": frames / 100,
                    "at_windows": [(s / 100, (s + v) / 100) for s, v in self.windows[b]],
                })  # fmt: skip
            self._results = results
        return self._results


def run_inference(fn) -> Tensor:
    """``fn()``'s tensor, computed under inference mode (the pipeline runs the model in it, so
    what was collected there may be inference tensors, which only inference mode may update);
    callers clone it outside inference mode to hand out an ordinary tensor."""
    with torch.inference_mode():
        return fn()


class GrowingTagger(ChunkTagger):
    """A :class:`ChunkTagger` for audio whose length is known only at the end (the pipeline's
    chunks arrive one batch at a time): rows are added as windows reach them. Rows depend only
    on the windows, so they equal those of a tagger made with the final length."""

    def __init__(self, head, at_time_res: float):
        super().__init__(head, 0, at_time_res)

    def _grow(self, frames: int):
        n_rows = -(-frames // self.res_frames)
        extra = n_rows - self.n_rows
        if extra > 0:
            nan = torch.full((extra, self.logits.shape[1]), math.nan)
            self.logits = torch.cat([self.logits, nan])
            self.done = torch.cat([self.done, torch.zeros(extra, dtype=torch.bool)])
            self.n_rows = n_rows

    def add_window(self, seek, pooled, valid_frames=None, region=None):
        span = pooled.shape[1] * MEL_PER_POOLED
        self._grow(seek + (span if valid_frames is None else min(valid_frames, span)))
        super().add_window(seek, pooled, valid_frames, region)

    def finish_at(self, content_frames: int) -> Tensor:
        """``audio_tag`` of audio ``content_frames`` mel frames long."""
        self._grow(content_frames)
        return self.finish()[: -(-content_frames // self.res_frames)]
