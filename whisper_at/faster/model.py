"""faster-whisper models that tag sound events in the encoder passes they already make.

:class:`TaggingMixin` holds the behaviour. :class:`WhisperModel` is ``faster_whisper.WhisperModel``
with it; :func:`enable_tagging` gives it to an FW model object built elsewhere (e.g. whisperX's
``WhisperModel`` subclass) by switching its class to ``(TaggingMixin, its class)``.

``encode(features)`` is the one place where FW's sequential ``transcribe``, ``detect_language``,
``BatchedInferencePipeline`` and whisperX encode audio. Two modes:

- ``"one_pass"`` (default): the tapped torch encoder's output feeds CTranslate2's decoder (its
  ``generate`` / ``detect_language`` / ``align`` take encoder output in place of a mel): one
  encoder pass gives the transcript and the tags. Text may differ from plain FW where FW's int8
  (or fp16) encoder rounds differently.
- ``"exact"``: FW's own encoder for the transcript (identical to plain FW) plus the torch encoder
  for the tags, on the windows FW decodes, in a worker thread while FW decodes.
"""

import inspect
import os
import types
from typing import Optional

import faster_whisper
from faster_whisper.utils import download_model

from .. import _head_from_state, _load_head_state, gate
from ..formats import weights
from ..precision import check_compute_type, encoder_dtype
from .encoder import TorchEncoder, ct2_activation, torch_device
from .session import GENERATE_SEGMENTS, active_session, run
from .timeline import FeatureLocator

ENCODER_MODES = ("one_pass", "exact")
# FW model names meaning another model than the Whisper-AT head of that name: FW's "large" is
# large-v3 (no head), while whisper_at's "large" head is large-v2's
_FW_ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo"}


def _model_dir(name_or_path: str, **download_options) -> str:
    """The CTranslate2 directory of an FW model name or path (FW's own download/cache)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a directory, got {type(name_or_path).__name__}")
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"{path} is a file; faster-whisper models are CTranslate2 directories")
    return download_model(path, **download_options)


def _head_name(name_or_path: str) -> str:
    name = os.fspath(name_or_path)
    return name if os.path.isdir(name) else _FW_ALIASES.get(name, name)


def _check_options(at_encoder: str, at_low_compute: bool, at_compute_type: str):
    """Fail before any model is loaded or downloaded."""
    if at_encoder not in ENCODER_MODES:
        raise ValueError(f"at_encoder must be one of {ENCODER_MODES}, got {at_encoder!r}")
    if not isinstance(at_low_compute, bool):
        raise TypeError(f"at_low_compute must be True or False, got {at_low_compute!r}")
    check_compute_type(at_compute_type)


class TaggingMixin:
    """Sound-event tagging for a ``faster_whisper.WhisperModel`` (class or subclass)."""

    def _setup_tagging(
        self,
        model_dir: str,
        name: str,
        *,
        at_head=None,
        at_low_compute: bool = False,
        at_encoder: str = "one_pass",
        at_compute_type: str = "auto",
        at_download_root: Optional[str] = None,
        at_head_mirror: Optional[str] = None,
    ):
        """Load the head and the tagging encoder (options already passed ``_check_options``:
        both callers check them before any model is loaded)."""
        device = torch_device(self.model)
        encoder_dtype(device, at_compute_type)  # e.g. float16 on CPU: refused, head or not
        root = at_download_root or weights.default_cache_dir()
        state = _load_head_state(_head_name(name), at_low_compute, at_head, root, at_head_mirror)
        self.at_encoder = at_encoder
        self.at_torch_encoder = self.at_model = None
        if state is None:  # no head: FW's own encoder, nothing to tag
            return
        encoder = TorchEncoder(model_dir, device, ct2_activation(self.model.compute_type),
                               at_compute_type)  # fmt: skip
        dims = encoder.dims
        if dims["n_mels"] != self.model.n_mels:
            raise ValueError(
                f"{model_dir}: its encoder takes {dims['n_mels']} mel bands but this model "
                f"{self.model.n_mels}; pass the directory this model was loaded from"
            )
        head = _head_from_state(state, dims["n_audio_layer"], dims["n_audio_state"],
                                at_low_compute)  # fmt: skip
        self.at_torch_encoder = encoder
        self.at_model = head.to(device).eval()

    @property
    def has_at_head(self) -> bool:
        return getattr(self, "at_model", None) is not None

    # --- the encoder seam -------------------------------------------------------------------

    def _at_encode(self, features, pooled: bool):
        """(output for CTranslate2, pooled layers [B, n_layer, 75, d] or None)."""
        if self.at_torch_encoder is None:
            return super().encode(features), None
        if self.at_encoder == "exact":
            output = super().encode(features)
            return output, self.at_torch_encoder(features)[1] if pooled else None
        encoded, layers = self.at_torch_encoder(features)
        return self.at_torch_encoder.storage(encoded), layers

    def _at_pool(self, features):
        return self.at_torch_encoder(features)[1]

    def encode(self, features):
        session = active_session(self)
        if session is None:
            return self._at_encode(features, pooled=False)[0]
        return session.encode(features)

    def detect_language(self, *args, **kwargs):
        session = active_session(self)
        if session is None:
            return super().detect_language(*args, **kwargs)
        session.detecting += 1  # windows encoded here are cached, not tagged
        try:
            return super().detect_language(*args, **kwargs)
        finally:
            session.detecting -= 1

    def generate_with_fallback(self, encoder_output, prompt, tokenizer, options):
        """FW's, except where the speech gate skips the start of the window being decoded
        (see :mod:`whisper_at.faster.gating`)."""
        session = active_session(self)
        if session is not None and session.gate is not None and session.current is not None \
                and session.timeline.identity:
            session.flush()  # exact mode: the window's tagging pass must have finished
            silence = options.hallucination_silence_threshold
            silence = silence if options.word_timestamps else None
            steps = session.gate.decide(session.tagger, *session.current, silence)
            if steps:
                return session.gate.skip(steps, tokenizer.timestamp_begin)
        return super().generate_with_fallback(encoder_output, prompt, tokenizer, options)

    def generate_segments(self, features, *args, **kwargs):
        session = active_session(self)  # runs at the first next(), inside the session
        generate = super().generate_segments
        if session is not None:
            session.locator = FeatureLocator(features)
            if generate.__func__ is faster_whisper.WhisperModel.generate_segments:
                generate = types.MethodType(GENERATE_SEGMENTS, self)  # notes its windows
        yield from generate(features, *args, **kwargs)

    # --- transcription ----------------------------------------------------------------------

    def transcribe(self, audio, *args, at_time_res: float = 10, at_fill_gaps: bool = False,
                   at_speech_gate: Optional[float] = None, at_segment_info: bool = False,
                   at_gate_margin: float = gate.DEFAULT_MARGIN, **kwargs):  # fmt: skip
        """FW's ``transcribe`` (same arguments, same lazy ``(segments, info)``), with ``info``
        a :class:`~whisper_at.faster.TaggedTranscriptionInfo`: ``info.audio_tag`` once the
        segments are consumed. ``at_time_res``: seconds per tag row (a multiple of 0.4).
        ``at_fill_gaps=True`` also tags the stretches FW did not decode (removed by
        ``vad_filter``, outside ``clip_timestamps``) with extra encoder passes; by default
        rows there are NaN. ``at_speech_gate=P`` / ``at_gate_margin`` /
        ``at_segment_info=True``: the speech gate and per-segment evidence of
        ``whisper_at.transcribe`` (docs/gate.md; with ``vad_filter`` the gate judges segments
        but does not skip, VAD having chosen what to decode); ``info.at_gate`` reports what the
        gate did."""
        fn = super().transcribe.__func__
        return run(self, fn, self, audio, args, kwargs, at_time_res, at_fill_gaps,
                   at_speech_gate, at_segment_info, at_gate_margin)


_SIGNATURE = inspect.signature(faster_whisper.WhisperModel.__init__)


class WhisperModel(TaggingMixin, faster_whisper.WhisperModel):
    """``faster_whisper.WhisperModel`` that also tags AudioSet sound events.

    Takes FW's arguments (model name or CTranslate2 directory, device, compute_type,
    cpu_threads, ...) plus ``at_head`` (a head checkpoint path or state dict; default: the
    official head of a model name; ``False``: none), ``at_low_compute`` (TL-TR-512 head),
    ``at_encoder`` ("one_pass" or "exact"), ``at_compute_type`` (the tagging encoder's
    precision: "auto", "float32", "bfloat16", "float16"; see docs/faster.md),
    ``at_head_mirror`` (see ``whisper_at.load_model``) and ``at_download_root`` (where official
    heads are cached; default openai-whisper's model cache).
    """

    def __init__(self, model_size_or_path: str, *args, at_head=None, at_low_compute=False,
                 at_encoder="one_pass", at_compute_type="auto", at_download_root=None,
                 at_head_mirror=None, **kwargs):  # fmt: skip
        _check_options(at_encoder, at_low_compute, at_compute_type)
        bound = _SIGNATURE.bind(self, model_size_or_path, *args, **kwargs)
        bound.apply_defaults()
        options = dict(bound.arguments)
        if options.get("files"):
            raise ValueError(
                "whisper_at.faster.WhisperModel cannot load from files=: it needs the model "
                "directory to read the encoder weights; pass its path"
            )
        model_dir = _model_dir(
            model_size_or_path,
            local_files_only=options["local_files_only"],
            cache_dir=options["download_root"],
            revision=options["revision"],
            use_auth_token=options["use_auth_token"],
        )
        options.pop("self")
        options["model_size_or_path"] = model_dir
        extra = options.pop("model_kwargs", {})
        super().__init__(**options, **extra)
        self._setup_tagging(
            model_dir, os.fspath(model_size_or_path), at_head=at_head,
            at_low_compute=at_low_compute, at_encoder=at_encoder, at_compute_type=at_compute_type,
            at_download_root=at_download_root, at_head_mirror=at_head_mirror,
        )  # fmt: skip


_TAGGING_CLASSES = {}


def enable_tagging(
    model: faster_whisper.WhisperModel,
    model_path: str,
    at_head=None,
    at_low_compute: bool = False,
    at_encoder: str = "one_pass",
    at_download_root: Optional[str] = None,
    at_head_mirror: Optional[str] = None,
    at_compute_type: str = "auto",
) -> faster_whisper.WhisperModel:
    """Add tagging to an FW model object built elsewhere, in place, and return it.

    ``model_path``: the CTranslate2 directory (or FW model name) the model was loaded from
    (an FW model does not remember it). Its class becomes ``(TaggingMixin, its class)``, so a
    subclass's own ``encode`` (whisperX's) keeps working: ``at_encoder="exact"`` calls it.
    """
    if not isinstance(model, faster_whisper.WhisperModel):
        raise TypeError(f"expected a faster_whisper.WhisperModel, got {type(model).__name__}")
    if isinstance(model, TaggingMixin):
        raise ValueError("this model already tags sound events")
    _check_options(at_encoder, at_low_compute, at_compute_type)
    model_dir = _model_dir(model_path)
    cls = type(model)
    if cls not in _TAGGING_CLASSES:
        _TAGGING_CLASSES[cls] = type(f"Tagging{cls.__name__}", (TaggingMixin, cls), {})
    model.__class__ = _TAGGING_CLASSES[cls]
    try:
        model._setup_tagging(
            model_dir, os.fspath(model_path), at_head=at_head, at_low_compute=at_low_compute,
            at_encoder=at_encoder, at_compute_type=at_compute_type,
            at_download_root=at_download_root, at_head_mirror=at_head_mirror,
        )  # fmt: skip
    except BaseException:
        model.__class__ = cls
        raise
    return model
