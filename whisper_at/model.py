"""``WhisperAT``: openai-whisper's ``Whisper`` with a pooled encoder tap and a TL-TR head.

The encoder is upstream's, unchanged: forward hooks on its residual blocks average each block's
output over 20 frames while the same forward pass feeds the decoder. Within a transcription,
every distinct 30 s window is encoded once and the result is reused by language detection,
temperature fallback and word timestamps, which openai-whisper would each re-encode.
"""

import threading
import weakref
from contextlib import contextmanager, nullcontext
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.decoding import decode as decode_function
from whisper.decoding import detect_language as detect_language_function
from whisper.model import ModelDimensions, MultiHeadAttention, Whisper

from .head import POOL_STRIDE, TLTR
from .precision import autocast_dtype


def _pool(x: Tensor) -> Tensor:
    """Mean over non-overlapping groups of 20 frames: [B, T, d] -> [B, T // 20, d]."""
    n_batch, n_frames, n_state = x.shape
    n_pooled = n_frames // POOL_STRIDE
    x = x[:, : n_pooled * POOL_STRIDE]
    return x.reshape(n_batch, n_pooled, POOL_STRIDE, n_state).mean(dim=2)


_TLS = threading.local()
_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> its RLock
_LOCKS_GUARD = threading.Lock()


def _tap_hook(module, inputs, output):
    """Forward hook of every encoder block: keeps its pooled output while a tap is open."""
    layers = getattr(_TLS, "layers", None)
    if layers is not None:
        layers.append(_pool(output))


def tap_encoder(encoder: nn.Module) -> nn.Module:
    """Register the pooling hook on every block of an openai-whisper ``AudioEncoder`` (once)."""
    if not getattr(encoder, "_at_tapped", False):
        for block in encoder.blocks:
            block.register_forward_hook(_tap_hook)
        encoder._at_tapped = True
    return encoder


def embed_with_layers(
    encoder: nn.Module, mel: Tensor, autocast: Optional[torch.dtype] = None
) -> Tuple[Tensor, Tensor]:
    """Encode mel [B, n_mels, T] (or [n_mels, T]) with a tapped encoder in one pass.

    Returns the encoder output and every block's output mean-pooled over 20 frames,
    [B, n_layer, T // 40, n_state] (before ``ln_post``). ``autocast``: a lower precision
    (bfloat16, float16) to compute in under ``torch.autocast``, weights untouched; both
    results are then float32 (see ``whisper_at.precision``).
    """
    single = mel.ndim == 2
    if single:
        mel = mel.unsqueeze(0)
    context = nullcontext() if autocast is None else torch.autocast(mel.device.type, autocast)
    _TLS.layers = []
    try:
        with torch.no_grad(), _short_windows(encoder, mel.shape[-1]), context:
            features = encoder(mel)
        pooled = torch.stack(_TLS.layers, dim=1)
    finally:
        _TLS.layers = None
    if autocast is not None:
        features, pooled = features.float(), pooled.float()
    if single:
        return features[0], pooled[0]
    return features, pooled


@contextmanager
def _short_windows(encoder: nn.Module, n_frames: int):
    """Let the encoder take windows shorter than 30 s by slicing its positional embedding
    (tagging-only; the heads were trained on 10 s clips encoded this way)."""
    full = encoder.positional_embedding
    n_ctx = n_frames // 2
    if n_frames % 2 or n_ctx >= full.shape[0]:
        yield
        return
    encoder.positional_embedding = full[:n_ctx]
    try:
        yield
    finally:
        encoder.positional_embedding = full


def _sdpa() -> bool:
    """Whether attention uses SDPA now (word timestamps turn it off, which changes numerics)."""
    return bool(MultiHeadAttention.use_sdpa)


class _CachedWindow:
    def __init__(self, mel: Tensor, features: Tensor, pooled: Tensor):
        self.mel = mel
        self.sdpa = _sdpa()
        self.features = features
        self.pooled = pooled


class _WindowCache:
    """The most recently encoded window(s), matched by exact content. openai-whisper's
    transcribe only moves forward, so one window (the one being decoded, detected and retried
    at higher temperatures) is all it asks for again."""

    def __init__(self, size: int = 1):
        self.size = size
        self.items: List[_CachedWindow] = []

    def get(self, mel: Tensor) -> Optional[_CachedWindow]:
        sdpa = _sdpa()
        for item in self.items:
            key = item.mel
            if key.shape != mel.shape or key.dtype != mel.dtype or item.sdpa != sdpa:
                continue
            if torch.equal(key, mel):
                return item
        return None

    def put(self, item: _CachedWindow):
        self.items = [item] + self.items[: self.size - 1]


class _Session:
    def __init__(self, on_window: Callable[[Tensor, Tensor], None], gate=None):
        self.thread = threading.get_ident()
        self.cache = _WindowCache()
        self.on_window = on_window
        self.gate = gate


class WhisperAT(Whisper):
    """Whisper with Whisper-AT audio tagging; ``at_model`` is the TL-TR head (or None).

    ``WhisperAT(dims)`` is a new model, randomly initialised like ``Whisper(dims)``, head
    included; ``whisper_at.load_model`` initialises no head at random (see ``load_head``)."""

    def __init__(self, dims: ModelDimensions, at_low_compute: bool = False, with_head=True):
        super().__init__(dims)
        self._setup_at(
            TLTR(dims.n_audio_layer, dims.n_audio_state, at_low_compute) if with_head else None
        )

    @classmethod
    def from_whisper(cls, model: Whisper, head: Optional[TLTR] = None) -> "WhisperAT":
        """Turn a loaded ``Whisper`` into a ``WhisperAT`` in place (no weights are copied)."""
        if not isinstance(model, Whisper):
            raise TypeError(f"expected a whisper.model.Whisper, got {type(model).__name__}")
        model.__class__ = cls
        model._setup_at(head)
        return model

    def _setup_at(self, head: Optional[TLTR]):
        if head is not None:
            head = head.to(self.positional_device())
        self.at_model = head
        self._at_session = None
        tap_encoder(self.encoder)

    def positional_device(self) -> torch.device:
        return self.encoder.positional_embedding.device

    @property
    def at_lock(self) -> threading.RLock:
        """Held by ``transcribe`` while it runs (and by ``embed_audio_with_layers``): one
        transcription at a time per model, as openai-whisper's decoder keeps its kv-cache hooks
        on the model. Kept outside the module, so models still pickle and deep-copy."""
        with _LOCKS_GUARD:
            lock = _LOCKS.get(self)
            if lock is None:
                lock = _LOCKS[self] = threading.RLock()
            return lock

    @property
    def has_at_head(self) -> bool:
        return getattr(self, "at_model", None) is not None

    # --- encoding ---------------------------------------------------------------------------

    def embed_audio_with_layers(
        self, mel: Tensor, dtype: Optional[torch.dtype] = None
    ) -> Tuple[Tensor, Tensor]:
        """Encode mel [B, n_mels, T] (or [n_mels, T]) in one pass.

        Returns the encoder output (as ``embed_audio``) and every block's output mean-pooled
        over 20 frames, [B, n_audio_layer, T // 40, n_audio_state] (before ``ln_post``).
        ``dtype``: compute in this precision if it is lower than the weights' (under
        ``torch.autocast``; results float32); None: the weights' (as ``transcribe``).
        """
        autocast = None
        if dtype is not None:
            autocast = autocast_dtype(dtype, self.encoder.conv1.weight.dtype)
        # the lock: no other thread encodes while the positional embedding may be sliced
        with self.at_lock:
            return embed_with_layers(self.encoder, mel, autocast)

    def _session(self) -> Optional[_Session]:
        session = self._at_session
        if session is not None and session.thread == threading.get_ident():
            return session
        return None

    def _encode(self, mel: Tensor, record: bool) -> Tensor:
        """Encoder output for mel, computed once per distinct window while a session is open."""
        session = self._session()
        if session is None:
            return self.encoder(mel)
        single = mel.ndim == 2
        batch = mel.unsqueeze(0) if single else mel
        window = session.cache.get(batch)
        if window is None:
            window = _CachedWindow(batch, *self.embed_audio_with_layers(batch))
            session.cache.put(window)
        if record:  # also a cached window: the same content may sit at another place
            for segment, pooled in zip(batch, window.pooled):
                session.on_window(segment, pooled)
        return window.features[0] if single else window.features

    def _is_mel(self, mel: Tensor) -> bool:
        return mel.shape[-2] == self.dims.n_mels and mel.shape[-1] != self.dims.n_audio_state

    def embed_audio(self, mel: Tensor):
        if self._session() is not None and self._is_mel(mel):
            return self._encode(mel, record=False)
        return super().embed_audio(mel)

    def forward(self, mel: Tensor, tokens: Tensor):
        # used by word-level timestamps (timing.find_alignment) on the window just decoded
        return self.decoder(tokens, self.embed_audio(mel))

    def decode(
        self, mel: Tensor, options: DecodingOptions = DecodingOptions(), **kwargs
    ) -> Union[DecodingResult, List[DecodingResult]]:
        session = self._session()
        if session is not None and self._is_mel(mel):
            if options.fp16:
                mel = mel.half()
            features = self._encode(mel, record=True)
            if session.gate is not None and mel.ndim == 2:  # the speech gate (whisper_at.gate)
                skipped = session.gate(mel, features, options)
                if skipped is not None:
                    return skipped
            mel = features
        return decode_function(self, mel, options, **kwargs)

    def detect_language(self, mel: Tensor, tokenizer=None):
        if self._session() is not None and self._is_mel(mel):
            mel = self._encode(mel, record=False)
        return detect_language_function(self, mel, tokenizer)

    # --- tagging ------------------------------------------------------------------------------

    def open_session(self, on_window: Callable[[Tensor, Tensor], None], gate=None):
        """Start caching encoder windows in this thread; ``on_window(mel, pooled)`` sees each
        window that ``decode`` encodes or takes from the cache, each time ([n_mels, 3000] and
        [n_layer, 75, d]; a window retried at a higher temperature comes again).
        ``gate(mel, features, options)``, if given, runs before each window is decoded; a
        DecodingResult it returns is returned instead of decoding."""
        if self._session() is not None:
            raise RuntimeError("a transcription is already running on this model in this thread")
        self._at_session = _Session(on_window, gate)
        return self._at_session

    def close_session(self):
        self._at_session = None

    def tag(self, audio: Union[str, np.ndarray, Tensor], at_time_res: float = 10, **kwargs):
        """Tagging only (no decoding): see :func:`whisper_at.tagging.tag`."""
        from .tagging import tag

        return tag(self, audio, at_time_res=at_time_res, **kwargs)

    def transcribe(self, audio, **kwargs):
        from .transcribe import transcribe

        return transcribe(self, audio, **kwargs)
