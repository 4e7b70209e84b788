"""Where a window that faster-whisper encodes sits in the original audio.

FW decodes either the audio itself or, with ``vad_filter``, the speech chunks VAD kept,
concatenated ("filtered" audio). A :class:`Timeline` maps filtered samples back to the original
ones, piece by piece; a window is handed to the :class:`~whisper_at.tagging.ChunkTagger` once
per piece of original audio it holds. :class:`FeatureLocator` finds the mel frame at which a
window of FW's sequential ``generate_segments`` starts in the features it was cut from.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..transcribe import _WindowLocator

HOP_LENGTH = 160  # samples per mel frame


class Timeline:
    """Filtered audio -> original audio, from the speech chunks ({"start", "end"} samples, in
    order) that were concatenated; ``None``: the filtered audio is the original audio."""

    def __init__(self, chunks: Optional[Sequence[dict]] = None):
        self.pieces: Optional[List[Tuple[int, int, int]]] = None  # (filtered, original, length)
        if chunks is not None:
            self.pieces, position = [], 0
            for chunk in chunks:
                length = int(chunk["end"]) - int(chunk["start"])
                if length > 0:
                    self.pieces.append((position, int(chunk["start"]), length))
                    position += length

    @property
    def identity(self) -> bool:
        return self.pieces is None

    def window_pieces(self, start: int, valid: int) -> List[Tuple[int, int, int]]:
        """The parts of a window whose frame 0 is filtered sample ``start`` and whose first
        ``valid`` frames are audio: (seek, first, end) such that window frames first..end-1
        are the original audio at mel frames seek + first.. (rounded to whole 10 ms frames)."""
        if self.pieces is None:
            return [(round(start / HOP_LENGTH), 0, valid)]
        stop = start + valid * HOP_LENGTH
        parts = []
        for filtered, original, length in self.pieces:
            lo, hi = max(start, filtered), min(stop, filtered + length)
            if lo >= hi:
                continue
            first = round((lo - start) / HOP_LENGTH)
            end = round((hi - start) / HOP_LENGTH)
            seek = round((original - filtered + start) / HOP_LENGTH)
            if end > first:
                parts.append((seek, first, end))
        return parts


class FeatureLocator(_WindowLocator):
    """The mel frame (seek) at which a window of ``generate_segments`` starts in its features.

    A full window is a numpy view into the features (found by pointer arithmetic); a shorter
    one is a zero-padded copy of the view that FW's ``pad_or_trim`` was given and noted (see
    :func:`noting_pad_or_trim`); failing both, it is found by exact content."""

    def __init__(self, features: np.ndarray):
        super().__init__()
        self.array = features
        self.mel = torch.from_numpy(features)

    @property
    def content_frames(self) -> int:
        return self.array.shape[-1] - 1  # FW's features end with one frame of its padding

    def _view_offset(self, segment) -> Optional[int]:
        if torch.is_tensor(segment):
            segment = segment.cpu().numpy()
        full = self.array
        if not isinstance(segment, np.ndarray) or segment.dtype != full.dtype \
                or segment.strides != full.strides:  # fmt: skip
            return None
        delta = segment.__array_interface__["data"][0] - full.__array_interface__["data"][0]
        seek, rest = divmod(delta, full.strides[-1])
        if rest or not 0 <= seek <= full.shape[-1] - segment.shape[-1]:
            return None
        return seek

    def _search(self, segment) -> Tuple[int, int]:
        if torch.is_tensor(segment):
            segment = segment.cpu().numpy()
        return super()._search(torch.from_numpy(np.ascontiguousarray(segment, self.array.dtype)))
