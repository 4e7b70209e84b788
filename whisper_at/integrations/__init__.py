"""Sound-event tags for Whisper run by other libraries.

- :mod:`whisper_at.integrations.transformers`: Hugging Face transformers'
  ``WhisperForConditionalGeneration.generate`` and its ``automatic-speech-recognition`` pipeline
  (``pip install 'whisper-at[transformers]'``; docs/integrations.md).
- :mod:`whisper_at.integrations.whisperx`: whisperX's batched ``FasterWhisperPipeline``
  (``whisperx.load_model``), tags placed from its VAD chunks.

The faster-whisper backend lives in :mod:`whisper_at.faster`. Importing this package imports no
third-party library.
"""
