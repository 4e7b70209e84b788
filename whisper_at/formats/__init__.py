"""Model formats: CTranslate2 (faster-whisper) and HF transformers Whisper models, OpenAI-format
checkpoints, conversion between them (``whisper-at convert``), and the Whisper-AT head files
(official downloads, safe loading)."""

from .convert import detect_format, load_checkpoint

__all__ = ["detect_format", "load_checkpoint"]
