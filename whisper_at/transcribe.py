"""``transcribe``: openai-whisper's transcribe, unchanged, plus ``audio_tag``.

openai-whisper's own ``transcribe`` function runs; ``WhisperAT.decode`` sees every 30 s window
it decodes, encodes it once (with the pooled tap) and hands each new window to a
:class:`~whisper_at.tagging.ChunkTagger`. To know where a window sits in the audio we keep the
full log-mel that transcribe computes: the function is rebound with a ``log_mel_spectrogram``
that records its result (same code object, private globals; nothing global is patched). That
log-mel is made by :func:`whisper_at.mel.log_mel_spectrogram`: the same values, a chunk at a time
(no audio-length STFT transients). Its ``pad_or_trim`` is rebound too: the window it is given
is a view into that log-mel, so where it starts and how many frames of audio it holds are known
exactly, even for windows whose content repeats (digital silence).
"""

import importlib
import types
import warnings
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from whisper.audio import N_FRAMES
from whisper.audio import pad_or_trim as _pad_or_trim
from whisper.tokenizer import get_tokenizer

from . import gate
from .audio_io import as_audio
from .mel import log_mel_spectrogram
from .tagging import TRAINED_TIME_RES, ChunkTagger, check_at_time_res


class _WindowLocator:
    """Finds the mel frame (seek) at which a decoded window starts in the full log-mel."""

    def __init__(self):
        self.mel = None
        self.last_seek = 0
        self.padded: Optional[Tuple[int, int]] = None  # (seek, frames) given to pad_or_trim
        self._cast = {}

    def capture(self, *args, **kwargs) -> Tensor:
        self.mel = log_mel_spectrogram(*args, **kwargs)
        return self.mel

    def note(self, window) -> bool:
        """Note where ``window``, about to be padded to 30 s, starts, if it is a view into the
        full log-mel (it always is in transcribe's loop)."""
        seek = self._view_offset(window)
        if seek is not None:
            self.padded = (seek, window.shape[-1])
        return seek is not None

    def pad_or_trim(self, array, *args, **kwargs):
        """openai-whisper's ``pad_or_trim``, noting where the window it pads starts."""
        self.note(array)
        return _pad_or_trim(array, *args, **kwargs)

    @property
    def content_frames(self) -> int:
        return self.mel.shape[-1] - N_FRAMES

    def _view_offset(self, segment) -> Optional[int]:
        mel = self.mel
        if (
            mel is not None
            and torch.is_tensor(segment)
            and segment.device == mel.device
            and segment.dtype == mel.dtype
            and segment.stride() == mel.stride()
            and segment.untyped_storage().data_ptr() == mel.untyped_storage().data_ptr()
        ):
            return segment.storage_offset() - mel.storage_offset()
        return None

    def locate(self, segment: Tensor) -> Tuple[int, int]:
        """(seek, number of audio frames) of a decoded window."""
        seek = self._view_offset(segment)
        if seek is not None:  # a full window is a view into the full log-mel
            valid = segment.shape[-1]
        elif self.padded is not None:  # a padded (or cast) copy of the window just noted
            seek, valid = self.padded
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


def rebind(fn, **names):
    """``fn`` with private globals in which ``names`` replace the module's (same code object;
    nothing global is patched)."""
    scope = dict(fn.__globals__, **names)
    bound = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    bound.__kwdefaults__ = fn.__kwdefaults__
    return bound


def _rebound_transcribe(locator: _WindowLocator, **names):
    fn = importlib.import_module("whisper.transcribe").transcribe
    if not {"log_mel_spectrogram", "pad_or_trim"} <= fn.__globals__.keys():  # pragma: no cover
        raise RuntimeError("unsupported openai-whisper version: transcribe() has no log-mel seam")
    return rebind(fn, log_mel_spectrogram=locator.capture, pad_or_trim=locator.pad_or_trim,
                  **names)  # fmt: skip


def transcribe(
    model: "WhisperAT",  # noqa: F821 - whisper_at.model imports this module
    audio: Union[str, np.ndarray, Tensor],
    *,
    at_time_res: float = TRAINED_TIME_RES,
    return_audio_features: bool = False,
    at_speech_gate: Optional[float] = None,
    at_gate_margin: float = gate.DEFAULT_MARGIN,
    at_segment_info: bool = False,
    **transcribe_options,
) -> dict:
    """Transcribe with openai-whisper and tag sound events in the same encoder passes.

    ``transcribe_options`` are openai-whisper's ``transcribe`` arguments; its result comes back
    unchanged, plus ``audio_tag`` (float32 CPU tensor [ceil(duration / at_time_res), 527] of
    AudioSet logits; row k covers [k * at_time_res, (k + 1) * at_time_res) s) and ``at_time_res``.
    ``return_audio_features=True`` adds ``audio_features_for_at`` [n_windows, n_layer, 75, d], the
    pooled layer features of every decoded window.

    ``at_speech_gate=P`` (0..1) skips, before decoding them, the stretches whose speech
    probability is below P, resuming ``at_gate_margin`` seconds before the first speech the
    head finds (rows and 0.4 s frames); it drops segments that meet no speech or start past the
    end, holds the others' ends to the speech, and starts the prompt afresh after each skip
    (``at_gate`` reports what it did); ``at_segment_info=True`` adds each segment's speech
    probability, sound events and a hallucination flag. Both need a head; see docs/gate.md.
    """
    if not callable(getattr(model, "open_session", None)):  # a WhisperAT
        raise TypeError(
            f"whisper_at.transcribe needs a model from whisper_at.load_model, "
            f"got {type(model).__name__}"
        )
    at_time_res = check_at_time_res(at_time_res)
    head = model.at_model if model.has_at_head else None
    gate_options = gate.gate_options(head, at_speech_gate, at_gate_margin, at_segment_info)
    audio = as_audio(audio)
    locator = _WindowLocator()
    taggers, tagged = [], set()  # the tagger, the seeks of the windows it has

    def new_tagger() -> ChunkTagger:
        return ChunkTagger(head, locator.content_frames, at_time_res, return_audio_features,
                           speech_track=gate_options is not None)

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
        if seek not in tagged:  # a window decoded again (temperature fallback) is tagged once
            tagged.add(seek)
            taggers[0].add_window(seek, pooled, valid)

    window_gate, names = None, {}
    if gate_options is not None:
        tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
        window_gate = gate.WindowGate(gate_options, tokenizer.timestamp_begin,
                                      transcribe_options)
        names["make_safe"] = window_gate.make_safe

    def gate_window(segment: Tensor, features: Tensor, options):
        try:
            seek, valid = locator.locate(segment)
        except LookupError:
            return None  # not located, so not tagged: decode it
        if not taggers:
            return None
        window_gate.decide(taggers[0], seek, valid)
        return window_gate.result(seek, options, features)

    with model.at_lock:  # one transcription at a time per model (see WhisperAT.at_lock)
        model.open_session(on_window, gate_window if window_gate else None)
        try:
            result = _rebound_transcribe(locator, **names)(model, audio, **transcribe_options)
        finally:
            model.close_session()

    tagger = taggers[0] if taggers else new_tagger()
    if model.has_at_head:
        result["audio_tag"] = tagger.finish()
        result["at_time_res"] = at_time_res
        duration = locator.content_frames / gate.FRAMES_PER_SECOND
        if window_gate is not None:
            tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages,
                                      language=result["language"])
            window_gate.finish(result, tagger, tokenizer, duration)
        if at_segment_info:
            threshold = (gate.DEFAULT_FLAG_THRESHOLD if gate_options is None
                         else gate_options.threshold)  # fmt: skip
            gate.add_segment_info(result["segments"], result["audio_tag"], tagger.res_frames,
                                  threshold, duration)  # fmt: skip
    if return_audio_features:
        result["audio_features_for_at"] = tagger.audio_features()
    return result

