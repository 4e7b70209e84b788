"""From encoded 30 s windows to ``audio_tag`` rows, and the tagging-only path.

Row k of ``audio_tag`` covers [k * at_time_res, (k + 1) * at_time_res) seconds of the audio. Its
features come from the first encoded window that contains the whole interval, starting at the
pooled frame nearest the interval's start. A row that no window contains whole (it straddles the
end of the last window, or windows were skipped by ``clip_timestamps``) uses the window that
overlaps it most, shifted to stay inside that window; a row no window touches stays NaN.
"""

import itertools
import math
import warnings
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .audio_io import as_audio
from .gate.track import SpeechTrack
from .head import MEL_PER_POOLED, NUM_CLASSES, frames_per_chunk
from .mel import MelWindows
from .precision import encoder_dtype

TRAINED_TIME_RES = 10


def check_at_time_res(at_time_res) -> float:
    """Validate ``at_time_res``: a positive multiple of 0.4 s, at most 30 s (float-safe)."""
    if isinstance(at_time_res, bool) or not isinstance(at_time_res, (int, float, np.number)):
        raise TypeError(f"at_time_res must be a number of seconds, got {at_time_res!r}")
    value = float(at_time_res)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"at_time_res must be a positive number of seconds, got {at_time_res!r}")
    steps = value / 0.4
    if abs(steps - round(steps)) > 1e-6:
        raise ValueError(
            f"at_time_res must be a multiple of 0.4 s (0.4, 0.8, ..., 10, ...), got {at_time_res!r}"
        )
    if round(steps) * 0.4 > 30 + 1e-6:
        raise ValueError(f"at_time_res must be at most 30 s (one window), got {at_time_res!r}")
    if round(steps) != 25:
        warnings.warn(
            f"at_time_res={value:g}: the AT heads were trained on 10 s chunks; other resolutions "
            "may tag less accurately (ASR is not affected)",
            stacklevel=3,
        )
    return at_time_res if isinstance(at_time_res, int) else value


class ChunkTagger:
    """Collects windows' pooled features and turns them into ``audio_tag`` rows, streaming:
    rows are tagged as soon as a window contains them, so memory does not grow with the audio.
    ``speech_track=True`` (the speech gate) also keeps the speech probability of every 0.4 s
    pooled frame (:class:`~whisper_at.gate.track.SpeechTrack`)."""

    def __init__(self, head, content_frames: int, at_time_res: float, keep_features=False,
                 speech_track: bool = False):  # fmt: skip
        self.head = head
        self.content_frames = content_frames
        self.speech_track = SpeechTrack(head, content_frames) if speech_track else None
        self.res_frames = round(at_time_res / 0.4) * MEL_PER_POOLED  # mel frames per row
        self.width = frames_per_chunk(at_time_res)  # pooled frames per row
        self.n_rows = -(-content_frames // self.res_frames)
        n_classes = head.mlp_layer[-1].out_features if head is not None else NUM_CLASSES
        self.logits = torch.full((self.n_rows, n_classes), float("nan"))
        self.done = torch.zeros(self.n_rows, dtype=torch.bool)
        self.pending: Dict[int, Tuple[int, Tensor]] = {}  # row -> (overlap, chunk)
        self.features: Optional[List[Tensor]] = [] if keep_features else None

    def add_window(
        self,
        seek: int,
        pooled: Tensor,
        valid_frames: Optional[int] = None,
        region: Optional[Tuple[int, int]] = None,
    ):
        """Take the pooled features [n_layer, 75, d] of the window starting at mel frame seek,
        whose first ``valid_frames`` mel frames are audio (the rest zero padding).

        ``region=(first, end)``: only window frames first..end-1 are the audio at mel frames
        seek + first.. (a window stitched from pieces, e.g. by VAD, is added once per piece);
        a row is then tagged from this window only if it lies within the region.
        """
        if self.features is not None and (region is None or region[0] == 0):
            self.features.append(pooled.float().cpu())
        n_pooled = pooled.shape[1]
        span = n_pooled * MEL_PER_POOLED
        valid = span if valid_frames is None else min(valid_frames, span)
        lo, hi = seek, seek + valid
        low, high = 0, max(n_pooled - self.width, 0)
        if region is not None:
            lo, hi = seek + region[0], seek + min(region[1], valid)
            low = min(-(-region[0] // MEL_PER_POOLED), high)
            high = max(low, min(high, min(region[1], valid) // MEL_PER_POOLED - self.width))
        if self.speech_track is not None:
            self.speech_track.add_window(seek, pooled, lo, hi)
        first = max(0, lo // self.res_frames)
        last = min(self.n_rows, -(-hi // self.res_frames))
        rows, chunks = [], []
        for k in range(first, last):
            start = k * self.res_frames
            overlap = min(start + self.res_frames, hi) - max(start, lo)
            if self.done[k] or overlap <= 0:
                continue
            offset = math.floor((start - seek) / MEL_PER_POOLED + 0.5)
            inside = region is None or lo <= start and start + self.res_frames <= hi
            if inside and 0 <= offset <= n_pooled - self.width:
                rows.append(k)
                chunks.append(pooled[:, offset : offset + self.width])
            elif overlap > self.pending.get(k, (0, None))[0]:
                offset = min(max(offset, low), high)
                self.pending[k] = (overlap, pooled[:, offset : offset + self.width])
        self._run(rows, chunks)

    def _run(self, rows: List[int], chunks: List[Tensor]):
        if not rows or self.head is None:  # no head: only features are collected
            return
        with torch.no_grad():
            logits = self.head.forward_chunks(torch.stack(chunks))
        self.logits[rows] = logits.float().cpu()
        self.done[rows] = True
        for k in rows:
            self.pending.pop(k, None)

    def peek(self, rows: range) -> Tensor:
        """Logits of ``rows`` as they stand: tagged rows' own; a row no window added so far
        contains whole is tagged from the one that overlaps it most (what ``finish`` does unless
        a later window holds it better), without marking it done; untouched rows are NaN."""
        logits = self.logits[rows.start : rows.stop].clone()
        partial = [k for k in rows if not self.done[k] and k in self.pending]
        if partial and self.head is not None:
            with torch.no_grad():
                chunks = torch.stack([self.pending[k][1] for k in partial])
                logits[[k - rows.start for k in partial]] = self.head.forward_chunks(
                    chunks
                ).float().cpu()
        return logits

    def finish(self) -> Tensor:
        """Tag the rows no window contained whole; returns ``audio_tag`` [n_rows, 527]."""
        rows = sorted(self.pending)
        self._run(rows, [self.pending[k][1] for k in rows])
        return self.logits

    def audio_features(self) -> Tensor:
        """The pooled features of every window added, [n_windows, n_layer, 75, d]."""
        if not self.features:
            return torch.empty(0)
        return torch.stack(self.features)


def default_batch_size(model) -> int:
    """Windows per encoder call when none is given: 1 on CPU (larger batches are no faster
    there and hold batch-sized attention matrices; see benchmarks/README.md), 8 elsewhere."""
    return 1 if model.device.type == "cpu" else 8


def encode_windows(model, mels: Tensor, compute_dtype: torch.dtype) -> Tensor:
    """Pooled layer features [B, n_layer, T // 40, d] of mel windows [B, n_mels, T], encoded
    in ``compute_dtype`` (float32: bit for bit as ``transcribe`` encodes; lower precisions under
    ``torch.autocast``, weights untouched). Always float32, for the float32 head."""
    weights = next(model.parameters()).dtype
    _, pooled = model.embed_audio_with_layers(mels.to(model.device, weights), compute_dtype)
    return pooled.float()


def tag(
    model,
    audio: Union[str, np.ndarray, Tensor],
    at_time_res: float = TRAINED_TIME_RES,
    batch_size: Optional[int] = None,
    window_seconds: int = 30,
    return_audio_features: bool = False,
    at_compute_type: str = "auto",
) -> dict:
    """Tag audio without transcribing: encoder + TL-TR head on consecutive windows.

    ``window_seconds`` is 30 (Whisper's window; on audio of up to 30 s the rows equal those of
    ``transcribe``) or 10 (the encoder runs on 10 s with its positional embedding sliced, as the
    heads were trained; cheaper). ``batch_size`` windows go through the encoder at a time (None:
    1 on CPU, 8 on GPU); the log-mel is made window by window, so memory beyond the waveform does
    not grow with its length. ``at_compute_type``: the encoder's precision, "auto" (bfloat16 on
    a CPU that computes it natively, float16 on CUDA, else float32), "float32" (as
    ``transcribe``), "bfloat16" or "float16" (CUDA only); the head runs in float32. Returns
    ``{"audio_tag": [rows, 527] float32, "at_time_res": ..., "duration": seconds}``.
    """
    if not model.has_at_head:
        raise RuntimeError("this model has no AT head; load one with load_model(..., at_head=...)")
    if window_seconds not in (10, 30):
        raise ValueError(f"window_seconds must be 10 or 30, got {window_seconds!r}")
    if batch_size is None:
        batch_size = default_batch_size(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    at_time_res = check_at_time_res(at_time_res)
    compute_dtype = encoder_dtype(model.device, at_compute_type)  # float16 on CPU: refused
    audio = as_audio(audio)
    mel = MelWindows(audio, model.dims.n_mels, window_seconds * 100)
    content_frames = mel.content_frames
    tagger = ChunkTagger(model.at_model, content_frames, at_time_res, return_audio_features)
    windows = iter(mel)
    while batch := list(itertools.islice(windows, batch_size)):
        pooled = encode_windows(model, torch.stack([window for _, window in batch]),
                                compute_dtype)  # fmt: skip
        for (seek, _), layers in zip(batch, pooled):
            tagger.add_window(seek, layers)
    result = {
        "audio_tag": tagger.finish(),
        "at_time_res": at_time_res,
        "duration": content_frames / 100.0,
    }
    if return_audio_features:
        result["audio_features_for_at"] = tagger.audio_features()
    return result
