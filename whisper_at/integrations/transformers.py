"""Sound-event tags for Hugging Face transformers' Whisper, in the encoder passes it makes anyway.

    from transformers import pipeline
    from whisper_at.integrations.transformers import enable_tagging

    asr = enable_tagging(pipeline("automatic-speech-recognition", model="openai/whisper-small"))
    result = asr("audio.wav", chunk_length_s=30)
    result["audio_tag"]            # [ceil(duration / 10), 527] AudioSet logits

:func:`enable_tagging` extends a ``WhisperForConditionalGeneration`` (or an ASR pipeline wrapping
one) in place; no transformers code is copied or patched:

- forward hooks on the encoder's layers (``model.model.encoder.layers[i]``) keep each layer's
  output mean-pooled over 20 frames (``whisper_at.model._pool``): a transformers encoder layer's
  output is openai-whisper's residual block output, before the final layer norm, which is what
  ``whisper_at.model.tap_encoder`` pools, so heads trained with ``whisper-at train`` on the same
  weights apply unchanged;
- ``model.generate`` is wrapped: every encoder pass during the call is located in the call's input
  features (:mod:`whisper_at.integrations.hf_windows`) and tagged once; ``model.at_last_tags()``
  returns the tags of the last call made in the calling thread;
- the pipeline's ``preprocess`` / ``_forward`` / ``postprocess`` are wrapped
  (:mod:`whisper_at.integrations.hf_pipeline`): its result dict gets ``audio_tag`` and
  ``at_time_res``.

transformers is imported only when :func:`enable_tagging` runs
(``pip install 'whisper-at[transformers]'``); see docs/integrations.md.
"""

import inspect
import os
import re
import threading
from collections.abc import Mapping
from contextlib import contextmanager
from typing import List, Optional, Union

import torch

from .. import _head_from_state, _load_head_state
from ..formats import weights
from ..model import _pool
from ..tagging import TRAINED_TIME_RES, check_at_time_res
from .hf_windows import GenerateCall

__all__ = ["disable_tagging", "enable_tagging"]

# transformers' openai/whisper-* repositories -> Whisper-AT head names ("openai/whisper-large"
# is large-v1, whereas whisper_at's "large" head is large-v2's)
_HF_NAMES = {"large": "large-v1"}


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "whisper_at.integrations.transformers needs transformers: "
            "pip install 'whisper-at[transformers]'"
        ) from e
    return transformers


def _resolve(target):
    """(the WhisperForConditionalGeneration, the pipeline or None) of enable_tagging's target."""
    transformers = _transformers()
    pipe = None
    if isinstance(target, transformers.Pipeline):
        if not isinstance(target, transformers.AutomaticSpeechRecognitionPipeline):
            raise TypeError(
                f"enable_tagging takes an automatic-speech-recognition pipeline, got a "
                f"{type(target).__name__}"
            )
        pipe, target = target, target.model
    if not isinstance(target, transformers.WhisperForConditionalGeneration):
        where = "the pipeline's model is" if pipe is not None else "got"
        raise TypeError(
            "enable_tagging needs a transformers WhisperForConditionalGeneration or an "
            f"automatic-speech-recognition pipeline wrapping one; {where} {type(target).__name__}"
        )
    return target, pipe


def official_head_name(model) -> Optional[str]:
    """The Whisper-AT head name of a model loaded from an ``openai/whisper-*`` repository."""
    path = str(getattr(model.config, "_name_or_path", "") or "")
    match = re.fullmatch(r"openai/whisper-([\w.-]+)", path)
    if match is None:
        return None
    return _HF_NAMES.get(match[1], match[1])


def _head(model, at_head, at_low_compute: bool, at_head_mirror, at_download_root):
    if not isinstance(at_low_compute, bool):
        raise TypeError(f"at_low_compute must be True or False, got {at_low_compute!r}")
    if at_head is None:
        name = official_head_name(model)
        if name is None or weights.head_key(name, at_low_compute) not in weights.HEAD_URLS:
            where = getattr(model.config, "_name_or_path", "") or "this model"
            kind = "TL-TR-512 (at_low_compute) head" if at_low_compute else "head"
            raise ValueError(
                f"no official Whisper-AT {kind} for {where!r}: pass at_head=PATH (a head "
                "checkpoint, e.g. one trained with `whisper-at train`) or a state dict"
            )
    elif isinstance(at_head, (Mapping, str, bytes, os.PathLike)):
        name = None
    else:
        raise TypeError(f"at_head must be a head checkpoint path or a state dict, got {at_head!r}")
    root = at_download_root or weights.default_cache_dir()
    state = _load_head_state(name, at_low_compute, at_head, root, at_head_mirror)
    config = model.config
    return _head_from_state(state, config.encoder_layers, config.d_model, at_low_compute)


class _Tagging:
    """The tagging state of one model: the hooks, the generate wrapper, the last call's tags."""

    def __init__(self, model):
        self.model = model
        self.head = None
        self.at_time_res = TRAINED_TIME_RES
        self.local = threading.local()  # .call, .layers, .last, .expected: per thread
        encoder = model.model.encoder
        self.n_layer = len(encoder.layers)
        self.handles = [layer.register_forward_hook(self._layer_done) for layer in encoder.layers]
        self.handles.append(encoder.register_forward_pre_hook(self._encoder_start))
        self.handles.append(encoder.register_forward_hook(self._encoder_done, with_kwargs=True))
        self.own_generate = model.__dict__.get("generate")  # an instance attribute, if any
        self.generate = model.generate
        try:
            self.signature = inspect.signature(self.generate)
        except (TypeError, ValueError):  # pragma: no cover - an unusual callable
            self.signature = None
        model.generate = self.tagged_generate
        model.at_last_tags = self.last_tags

    def remove(self):
        for handle in self.handles:
            handle.remove()
        model = self.model
        for name in ("generate", "at_last_tags", "_at_tagging"):
            model.__dict__.pop(name, None)
        if self.own_generate is not None:
            model.generate = self.own_generate

    # --- the hooks (active only while a generate call of this thread is recorded) -------------

    def _encoder_start(self, module, args):
        self.local.layers = [] if getattr(self.local, "call", None) is not None else None

    def _layer_done(self, module, args, output):
        layers = getattr(self.local, "layers", None)
        if layers is not None:  # transformers 4.x layers return (hidden_states, attentions)
            layers.append(_pool(output[0] if isinstance(output, tuple) else output))

    def _encoder_done(self, module, args, kwargs, output):
        layers, self.local.layers = getattr(self.local, "layers", None), None
        call = getattr(self.local, "call", None)
        if call is None or not layers or len(layers) != self.n_layer:
            return
        mel = args[0] if args else kwargs.get("input_features")
        call.add(mel, torch.stack(layers, dim=1))

    # --- generate ---------------------------------------------------------------------------

    def _arguments(self, args, kwargs) -> dict:
        if self.signature is not None:
            try:
                bound = self.signature.bind_partial(*args, **kwargs).arguments
                return {**bound.pop("kwargs", {}), **bound}
            except TypeError:
                pass
        return dict(kwargs)

    def _new_call(self, arguments: dict) -> GenerateCall:
        expected, self.local.expected = getattr(self.local, "expected", None), None
        frames, keep = expected if expected is not None else (None, False)
        features = arguments.get("input_features")
        if features is None:
            features = arguments.get("inputs")
        if not torch.is_tensor(features) or features.ndim != 3:
            return GenerateCall(self.head, self.at_time_res, None, [])
        n_batch, n_frames = features.shape[0], features.shape[-1]
        mask = arguments.get("attention_mask")
        default = [n_frames] * n_batch
        if torch.is_tensor(mask) and mask.ndim == 2 and mask.shape[0] == n_batch:
            default = [min(n_frames, int(m.sum())) for m in mask]
        if frames is None or len(frames) != n_batch:
            frames = default
        frames = [default[b] if f is None else f for b, f in enumerate(frames)]
        device = features.device
        if next(self.head.parameters()).device != device:  # the model was moved
            self.head.to(device)
        return GenerateCall(self.head, self.at_time_res, features, frames, keep)

    def tagged_generate(self, *args, **kwargs):
        """transformers' ``generate``, unchanged, recording the tags of the windows it encodes."""
        call = self._new_call(self._arguments(args, kwargs))
        outer, self.local.call = getattr(self.local, "call", None), call
        try:
            out = self.generate(*args, **kwargs)
        finally:
            self.local.call, self.local.layers = outer, None
            call.close()
        self.local.last = call
        return out

    @contextmanager
    def expecting(self, frames: List[Optional[int]], keep: bool):
        """The generate call made inside is the pipeline's: frames of audio per input (None:
        from the attention mask) and whether to keep the windows' pooled features."""
        self.local.expected, self.local.last = (frames, keep), None
        try:
            yield
        finally:
            self.local.expected = None  # not left for a later call if generate never ran

    def last_call(self) -> Optional[GenerateCall]:
        return getattr(self.local, "last", None)

    def last_tags(self) -> Union[dict, List[dict]]:
        """The tags of the last ``generate`` call made in this thread: a dict with
        ``audio_tag`` (float32 [ceil(duration / at_time_res), 527] AudioSet logits),
        ``at_time_res``, ``duration`` (seconds of audio: the attention mask's frames, else the
        input features' frames) and ``at_windows`` ((start, end) seconds of the windows tagged);
        a list of such dicts, one per audio, for a batch of several."""
        call = self.last_call()
        if call is None:
            raise RuntimeError("no generate call of this model has finished in this thread yet")
        if not call.tagged:
            raise RuntimeError(
                "the last generate call had no input_features (encoder_outputs?): nothing to tag"
            )
        results = [dict(r, audio_tag=r["audio_tag"].clone(), at_windows=list(r["at_windows"]))
                   for r in call.results()]  # fmt: skip
        return results[0] if len(results) == 1 else results


def tagging_state(model) -> Optional[_Tagging]:
    """The tagging state ``enable_tagging`` gave ``model`` (None: not enabled)."""
    state = model.__dict__.get("_at_tagging")
    return state if isinstance(state, _Tagging) else None


def enable_tagging(
    model_or_pipeline,
    at_head=None,
    at_low_compute: bool = False,
    at_time_res: float = TRAINED_TIME_RES,
    at_head_mirror: Optional[str] = None,
    at_download_root: Optional[str] = None,
):
    """Tag sound events in the encoder passes of a transformers Whisper; returns its argument.

    ``model_or_pipeline``: a ``WhisperForConditionalGeneration``, or an
    ``automatic-speech-recognition`` pipeline wrapping one (its result dicts then get
    ``audio_tag``, float32 [ceil(duration / at_time_res), 527], and ``at_time_res``).
    ``model.generate`` works as before; ``model.at_last_tags()`` returns the last call's tags.
    ``at_head``: a head checkpoint path or state dict (``whisper-at train`` heads and the official
    files load alike); None: the official head of an ``openai/whisper-*`` model, downloaded as
    ``whisper_at.load_model`` does (``at_head_mirror``, ``at_download_root``).
    ``at_low_compute``: the official TL-TR-512 head. ``at_time_res``: seconds per row, a multiple
    of 0.4 up to 30 (the heads were trained at 10). Calling it again replaces head and options;
    :func:`disable_tagging` undoes it.
    """
    model, pipe = _resolve(model_or_pipeline)
    at_time_res = check_at_time_res(at_time_res)
    head = _head(model, at_head, at_low_compute, at_head_mirror, at_download_root)
    state = tagging_state(model)
    if state is None:
        state = _Tagging(model)
        model.__dict__["_at_tagging"] = state  # a plain attribute, not a submodule
    state.head = head.to(model.device).eval()
    state.at_time_res = at_time_res
    if pipe is not None:
        from .hf_pipeline import install

        install(pipe)
    return model_or_pipeline


def disable_tagging(model_or_pipeline):
    """Undo :func:`enable_tagging`: hooks removed, ``generate`` and the pipeline's methods are
    the class's again. Returns its argument."""
    model, pipe = _resolve(model_or_pipeline)
    if pipe is not None:
        from .hf_pipeline import uninstall

        uninstall(pipe)
    state = tagging_state(model)
    if state is not None:
        state.remove()
    return model_or_pipeline
