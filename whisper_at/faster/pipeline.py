"""FW's ``BatchedInferencePipeline`` with tagging: each batch element's chunk metadata (its
offset and duration in the audio FW decodes) places its window in the original audio."""

import faster_whisper

from ..gate import DEFAULT_MARGIN
from .model import TaggingMixin
from .session import active_session, run


class BatchedInferencePipeline(faster_whisper.BatchedInferencePipeline):
    """``faster_whisper.BatchedInferencePipeline`` over a tagging model (a
    :class:`~whisper_at.faster.WhisperModel`, or one given :func:`enable_tagging`)."""

    def __init__(self, model):
        if not isinstance(model, TaggingMixin):
            raise TypeError(
                "BatchedInferencePipeline needs a whisper_at.faster.WhisperModel (or a model "
                f"given whisper_at.faster.enable_tagging), got {type(model).__name__}"
            )
        super().__init__(model)

    def forward(self, features, tokenizer, chunks_metadata, options):
        session = active_session(self.model)
        if session is None:
            return super().forward(features, tokenizer, chunks_metadata, options)
        session.batch = chunks_metadata
        try:
            return super().forward(features, tokenizer, chunks_metadata, options)
        finally:
            session.batch = None

    def transcribe(self, audio, *args, at_time_res: float = 10, at_fill_gaps: bool = False,
                   at_speech_gate=None, at_segment_info: bool = False,
                   at_gate_margin: float = DEFAULT_MARGIN, **kwargs):  # fmt: skip
        """FW's batched ``transcribe`` (same arguments and lazy results) with tags in
        ``info.audio_tag``; see :meth:`whisper_at.faster.WhisperModel.transcribe`."""
        fn = super().transcribe.__func__
        return run(self.model, fn, self, audio, args, kwargs, at_time_res, at_fill_gaps,
                   at_speech_gate, at_segment_info, at_gate_margin)
