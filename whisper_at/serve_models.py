"""The models of ``whisper-at serve``, for its file and Live tabs: loaded once per name, with
either backend (openai-whisper's ``whisper_at.load_model`` or faster-whisper's
``whisper_at.faster.WhisperModel``), each with a lock that a request holds while it uses the
model (one request at a time per model)."""

import os
import threading
from typing import Dict, Optional, Tuple

from .live.backends import is_faster
from .options import BACKENDS


class ModelCache:
    """Models loaded on first use, once per name. Each has a lock, held while it loads and
    while a request uses it: one request at a time per model; other models stay available.
    ``backend``: "openai-whisper" (names, .pt checkpoints, CTranslate2 / HF directories) or
    "faster-whisper" (faster-whisper names and CTranslate2 directories; ``compute_type``)."""

    def __init__(self, at_heads: Dict[str, str], device: Optional[str], download_root,
                 at_head_mirror: Optional[str] = None, backend: str = "openai-whisper",
                 compute_type: str = "default"):  # fmt: skip
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.at_heads = at_heads
        self.at_head_mirror = at_head_mirror
        self.device = device
        self.download_root = download_root
        self.backend = backend
        self.compute_type = compute_type
        self.models: Dict[str, list] = {}  # name -> [model or None, lock]
        self.lock = threading.Lock()

    def get(self, name: str) -> Tuple[object, threading.Lock]:
        """(model, its lock) for a model name or path; loads it the first time."""
        with self.lock:
            entry = self.models.setdefault(name, [None, threading.Lock()])
        with entry[1]:
            if entry[0] is None:
                entry[0] = self._load(name)
        return entry[0], entry[1]

    def _load(self, name: str):
        if self.backend == "faster-whisper":
            from .faster import cli as faster_cli

            backend = {"compute_type": self.compute_type, "at_head": self.at_heads.get(name),
                       "at_head_mirror": self.at_head_mirror}  # fmt: skip
            return faster_cli.load_model(name, self.device, self.download_root, backend)
        import whisper_at

        return whisper_at.load_model(name, self.device, self.download_root,
                                     at_head=self.at_heads.get(name),
                                     at_head_mirror=self.at_head_mirror)  # fmt: skip


def model_label(name: str) -> str:
    return os.path.basename(name) if os.path.exists(name) else name


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_multilingual(model) -> bool:
    return bool(model.model.is_multilingual if is_faster(model) else model.is_multilingual)


def transcribe_audio(model, samples, at_time_res: float, task: str, language: Optional[str],
                     gate: dict) -> dict:  # fmt: skip
    """openai-whisper's result dict (with tags) of 16 kHz samples, with either backend (its
    own decoding defaults; faster-whisper without its VAD); progress through tqdm."""
    if is_faster(model):
        from .faster import cli as faster_cli

        options = {"task": task, "language": language, "vad_filter": False,
                   "log_progress": True, **gate}  # fmt: skip
        return faster_cli.transcribe(model, samples, options, at_time_res)
    from .transcribe import transcribe

    return transcribe(model, samples, at_time_res=at_time_res, task=task, language=language,
                      verbose=False, fp16=model.device.type == "cuda", **gate)  # fmt: skip
