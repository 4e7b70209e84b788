"""``transcribe``: openai-whisper's transcribe, unchanged, plus ``audio_tag``.

openai-whisper's own ``transcribe`` function runs; ``WhisperAT.decode`` sees every 30 s window
it decodes, encodes it once (with the pooled tap) and hands each new window to a
:class:`~whisper_at.tagging.ChunkTagger`. To know where a window sits in the audio we keep the
full log-mel that transcribe computes: the function is rebound with a ``log_mel_spectrogram``
that records its result (same code object, private globals; nothing global is patched). That
log-mel is made by :func:`whisper_at.mel.log_mel_spectrogram`: the same values, a chunk at a time
(no audio-length STFT transients).
"""

import importlib
import types
import warnings
from typing import Tuple, Union

import numpy as np
from torch import Tensor
from whisper.audio import N_FRAMES

from .audio_io import as_audio
from .mel import log_mel_spectrogram
from .model import WhisperAT
from .tagging import TRAINED_TIME_RES, ChunkTagger, check_at_time_res


class _WindowLocator:
    """Finds the mel frame (seek) at which a decoded window starts in the full log-mel."""

    def __init__(self):
        self.mel = None
        self.last_seek = 0
        self._cast = {}

    def capture(self, *args, **kwargs) -> Tensor:
        self.mel = log_mel_spectrogram(*args, **kwargs)
        return self.mel

    @property
    def content_frames(self) -> int:
        return self.mel.shape[-1] - N_FRAMES

    def locate(self, segment: Tensor) -> Tuple[int, int]:
        """(seek, number of audio frames) of a decoded window."""
        mel = self.mel
        if (
            segment.device == mel.device
            and segment.dtype == mel.dtype
            and segment.stride() == mel.stride()
            and segment.untyped_storage().data_ptr() == mel.untyped_storage().data_ptr()
        ):  # a full window is a view into the full log-mel
            seek = segment.storage_offset() - mel.storage_offset()
            valid = segment.shape[-1]
        else:
            seek, valid = self._search(segment)
        self.last_seek = seek
        return seek, min(valid, self.content_frames - seek)

    def _search(self, segment: Tensor) -> Tuple[int, int]:
        """Exact content match of a (zero-padded) window against the full log-mel."""
        if segment.dtype not in self._cast:
            self._cast[segment.dtype] = self.mel.to(segment.dtype)
        mel = self._cast[segment.dtype]
        segment = segment.to(mel.device)
        candidates = (mel == segment[:, :1]).all(dim=0).nonzero().flatten().tolist()
        candidates.sort(key=lambda c: (c < self.last_seek, c))
        for seek in candidates:
            n = min(segment.shape[1], mel.shape[1] - seek)
            same = (segment[:, :n] == mel[:, seek : seek + n]).all(dim=0)
            n_same = n if bool(same.all()) else int(same.int().argmin())
            if not segment[:, n_same:].any():
                return seek, n_same
        raise LookupError("decoded window not found in the log-mel spectrogram")


def _rebound_transcribe(locator: _WindowLocator):
    fn = importlib.import_module("whisper.transcribe").transcribe
    if "log_mel_spectrogram" not in fn.__globals__:  # pragma: no cover - upstream changed
        raise RuntimeError("unsupported openai-whisper version: transcribe() has no log-mel seam")
    scope = dict(fn.__globals__, log_mel_spectrogram=locator.capture)
    bound = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    bound.__kwdefaults__ = fn.__kwdefaults__
    return bound


def transcribe(
    model: WhisperAT,
    audio: Union[str, np.ndarray, Tensor],
    *,
    at_time_res: float = TRAINED_TIME_RES,
    return_audio_features: bool = False,
    **transcribe_options,
) -> dict:
    """Transcribe with openai-whisper and tag sound events in the same encoder passes.

    ``transcribe_options`` are openai-whisper's ``transcribe`` arguments; its result comes back
    unchanged, plus ``audio_tag`` (float32 CPU tensor [ceil(duration / at_time_res), 527] of
    AudioSet logits; row k covers [k * at_time_res, (k + 1) * at_time_res) s) and ``at_time_res``.
    ``return_audio_features=True`` adds ``audio_features_for_at`` [n_windows, n_layer, 75, d], the
    pooled layer features of every decoded window.
    """
    if not isinstance(model, WhisperAT):
        raise TypeError(
            f"whisper_at.transcribe needs a model from whisper_at.load_model, "
            f"got {type(model).__name__}"
        )
    at_time_res = check_at_time_res(at_time_res)
    audio = as_audio(audio)
    locator = _WindowLocator()
    head = model.at_model if model.has_at_head else None
    taggers = []

    def new_tagger() -> ChunkTagger:
        return ChunkTagger(head, locator.content_frames, at_time_res, return_audio_features)

    def on_window(segment: Tensor, pooled: Tensor):
        if not taggers:
            taggers.append(new_tagger())
        if head is None and not return_audio_features:
            return
        try:
            seek, valid = locator.locate(segment)
        except LookupError as e:
            warnings.warn(f"audio tagging skipped one window: {e}", stacklevel=2)
            return
        taggers[0].add_window(seek, pooled, valid)

    with model.at_lock:  # one transcription at a time per model (see WhisperAT.at_lock)
        model.open_session(on_window)
        try:
            result = _rebound_transcribe(locator)(model, audio, **transcribe_options)
        finally:
            model.close_session()

    tagger = taggers[0] if taggers else new_tagger()
    if model.has_at_head:
        result["audio_tag"] = tagger.finish()
        result["at_time_res"] = at_time_res
    if return_audio_features:
        result["audio_features_for_at"] = tagger.audio_features()
    return result

