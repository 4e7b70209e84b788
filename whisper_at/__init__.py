"""whisper-at: openai-whisper that also tags AudioSet sound events (Whisper-AT).

``import whisper_at as whisper`` works wherever ``import whisper`` did: every public name of the
installed openai-whisper is re-exported; ``load_model`` and ``transcribe`` add audio tagging.
"""

import importlib as _importlib
import importlib.abc as _importlib_abc
import importlib.util as _importlib_util
import os as _os
import pkgutil as _pkgutil
import sys as _sys
import typing as _t
import warnings as _warnings
from collections.abc import Mapping as _Mapping

import torch as _torch
import whisper as _whisper

# Re-export openai-whisper's public API, derived from the installed package: its public names,
# and its submodules, so that `from whisper_at.normalizers import ...` works too. A submodule we
# do not override is openai-whisper's own module object, imported when first asked for (as with
# openai-whisper, `normalizers` and its dependencies cost nothing until used).
_UPSTREAM_MODULES = {
    info.name
    for info in _pkgutil.iter_modules(_whisper.__path__)
    if info.name not in ("__main__", "triton_ops")  # triton_ops needs triton (optional)
    and not info.name.startswith("_")
    and not _os.path.exists(_os.path.join(_os.path.dirname(__file__), info.name + ".py"))
}
# Modules of whisper-at 1.0 that now live in subpackages: the old import paths still work.
_MOVED = {
    "ct2": "formats.ct2",
    "hf": "formats.hf",
    "checkpoint": "formats.checkpoint",
    "convert": "formats.convert",
    "weights": "formats.weights",
    "batch": "jobs.batch",
    "batch_local": "jobs.local_engine",
    "batch_ray": "jobs.ray_engine",
    "batch_shards": "jobs.shards",
    "tagjob": "jobs.tagjob",
    "plot": "outputs.plot",
}


def _target(name: str) -> _t.Optional[str]:
    """The module that ``whisper_at.<name>`` stands for, when it is not a file of ours."""
    if name in _MOVED:
        return f"{__name__}.{_MOVED[name]}"
    if name in _UPSTREAM_MODULES:
        return f"whisper.{name}"
    return None


class _AliasedSubmodule(_importlib_abc.MetaPathFinder, _importlib_abc.Loader):
    """Imports ``whisper_at.<name>`` as the module it stands for (the same object):
    openai-whisper's ``whisper.<name>``, or a 1.0 module's new place."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == __name__ and _target(name) is not None:
            return _importlib_util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = _importlib.import_module(_target(spec.name.rpartition(".")[2]))
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):  # the import system set its __spec__ to ours: restore it
        module.__spec__ = module.__spec__.loader_state

    def get_code(self, fullname):
        """``python -m whisper_at.<name>`` (e.g. ``whisper_at.convert``): the ``main()`` of the
        module it stands for, or that module run as ``__main__``."""
        target = _target(fullname.rpartition(".")[2])
        source = (f"import importlib, runpy, sys\nmodule = importlib.import_module({target!r})\n"
                  "if callable(getattr(module, 'main', None)):\n    sys.exit(module.main())\n"
                  f"runpy.run_module({target!r}, run_name='__main__', alter_sys=True)\n")
        return compile(source, f"<{fullname}>", "exec")


def _is_upstream(value) -> bool:
    """A name openai-whisper defines (not one it merely imports, such as ``torch`` or ``os``)."""
    if isinstance(value, type(_whisper)):
        origin = value.__name__
    else:
        origin = getattr(value, "__module__", "")
    return isinstance(origin, str) and origin.split(".")[0] == "whisper"


_sys.meta_path.insert(0, _AliasedSubmodule())
_UPSTREAM_NAMES = [
    name
    for name in dir(_whisper)
    if not name.startswith("_") and _is_upstream(getattr(_whisper, name))
]
globals().update({name: getattr(_whisper, name) for name in _UPSTREAM_NAMES})


def __getattr__(name: str):
    """Names openai-whisper gains later (e.g. a submodule imported after us) resolve too, and
    the 1.0 module names (``whisper_at.convert``, ...)."""
    if _target(name) is not None:
        return _importlib.import_module(f"{__name__}.{name}")
    if not name.startswith("_") and hasattr(_whisper, name):
        return getattr(_whisper, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from .formats import load_checkpoint, weights  # noqa: E402
from .head import TLTR, load_head  # noqa: E402
from .labels import label_names, parse_at_label  # noqa: E402
from .model import WhisperAT  # noqa: E402
from .tagging import tag  # noqa: E402
from .transcribe import transcribe  # noqa: E402

__version__ = "1.1.0"


def available_heads():
    """Model names with an official Whisper-AT head (``*_low``: TL-TR-512)."""
    return list(weights.HEAD_URLS)


def _load_backbone(name: str, device, download_root: str, in_memory: bool):
    if name in _whisper._MODELS:
        return _whisper.load_model(name, device, download_root, in_memory)
    if _os.path.exists(name):
        checkpoint = load_checkpoint(name)
        model = _whisper.model.Whisper(_whisper.model.ModelDimensions(**checkpoint["dims"]))
        model.load_state_dict(checkpoint["model_state_dict"])
        if checkpoint.get("alignment_heads") is not None:
            mask = _torch.as_tensor(checkpoint["alignment_heads"], dtype=_torch.bool)
            model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
        return model.to(device)
    raise RuntimeError(f"Model {name} not found; available models = {_whisper.available_models()}")


def _load_head_state(name, at_low_compute: bool, at_head, download_root: str, mirror):
    if at_head is False:  # explicitly no head
        return None
    if at_head is not None:
        if isinstance(at_head, _Mapping):
            return at_head
        return weights.load_state_dict(at_head)
    key = weights.head_key(name, at_low_compute)
    if key in weights.HEAD_URLS:
        return weights.load_head_file(name, at_low_compute, download_root, mirror)
    if at_low_compute and name in weights.HEAD_URLS:
        low = sorted(k[:-4] for k in weights.HEAD_URLS if k.endswith("_low"))
        raise ValueError(
            f"at_low_compute=True (TL-TR-512) heads exist only for {', '.join(low)}; "
            f"use at_low_compute=False for {name!r}"
        )
    _warnings.warn(
        f"no official Whisper-AT head for {name!r}: transcription works, but results have no "
        "'audio_tag'. Pass at_head=PATH to use a head of your own.",
        stacklevel=3,
    )
    return None


def _head_from_state(state, n_layer: int, n_state: int, at_low_compute: bool) -> _t.Optional[TLTR]:
    """The TL-TR head of a state dict from ``_load_head_state`` (None: no head)."""
    if state is None:
        return None
    head = load_head(state, n_layer, n_state)
    if at_low_compute and not head.low_compute:
        raise ValueError("at_low_compute=True, but at_head is a TL-TR head, not TL-TR-512")
    return head


def load_model(
    name: str,
    device: _t.Optional[_t.Union[str, _torch.device]] = None,
    download_root: _t.Optional[str] = None,
    in_memory: bool = False,
    at_low_compute: bool = False,
    at_head=None,
    at_head_mirror: _t.Optional[str] = None,
) -> WhisperAT:
    """Load a Whisper model with its Whisper-AT audio-tagging head.

    name: an official model name (``available_models()``), an OpenAI-format checkpoint file, or a
        CTranslate2 / HF transformers Whisper directory.
    at_low_compute: use the TL-TR-512 head (small, medium and large only).
    at_head: a head checkpoint path or state_dict (offline use, or heads trained later); by
        default the official head for ``name`` is downloaded beside the Whisper models;
        ``False`` loads no head (features only, e.g. for training one).
    at_head_mirror: where the official head is looked for before its official URL: a base URL
        (http, https, file) or a directory holding ``<name>_ori.pth`` / ``<name>_low.pth``;
        None: ``$WHISPER_AT_HEAD_MIRROR`` if set (docs/loading.md).
    """
    if device is None:
        device = "cuda" if _torch.cuda.is_available() else "cpu"
    if download_root is None:
        download_root = weights.default_cache_dir()
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if name not in _whisper._MODELS and not _os.path.exists(name):
        raise RuntimeError(
            f"Model {name} not found; available models = {_whisper.available_models()}"
        )
    state = _load_head_state(name, at_low_compute, at_head, download_root, at_head_mirror)
    model = _load_backbone(name, device, download_root, in_memory)
    head = _head_from_state(state, model.dims.n_audio_layer, model.dims.n_audio_state,
                            at_low_compute)  # fmt: skip
    return WhisperAT.from_whisper(model, head)


__all__ = [
    "TLTR",
    "WhisperAT",
    "available_heads",
    "label_names",
    "load_checkpoint",
    "load_model",
    "parse_at_label",
    "tag",
    "transcribe",
]
__all__ += [name for name in _UPSTREAM_NAMES if name not in __all__]
