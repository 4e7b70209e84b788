"""Sound-event tags for whisperX, in the encoder passes its batched pipeline makes anyway.

    import whisperx
    from whisper_at.integrations.whisperx import enable_tagging

    pipeline = whisperx.load_model("tiny.en", "cpu", compute_type="int8")
    enable_tagging(pipeline, "tiny.en")          # the model name or CTranslate2 directory
    result = pipeline.transcribe(audio, batch_size=8)
    result["audio_tag"]                          # [ceil(duration / 10), 527] AudioSet logits

whisperX's pipeline cuts the audio into VAD chunks of at most 30 s (``merge_chunks``), turns each
into a 30 s log-mel window and hands batches of them to its faster-whisper model's ``encode``.
:func:`enable_tagging` gives that model the faster-whisper backend's tagging
(:func:`whisper_at.faster.enable_tagging`) and the pipeline a ``transcribe`` that runs whisperX's
own under a tagging session (:class:`whisper_at.faster.session.Session`): the chunks recorded from
``merge_chunks`` place each batch element's window on the audio's clock, as FW's batched pipeline
does with its chunk metadata. No whisperX code is copied or patched: the pipeline's class becomes a
subclass of its own with that ``transcribe``, as the model's does.

Rows no chunk covers (removed by VAD) are NaN, or tagged with extra encoder passes on request
(``at_fill_gaps=True``). whisperX imports only where its objects are passed in; see
docs/integrations.md.
"""

import warnings
from collections import deque
from typing import Deque, List, Optional

import numpy as np

from .. import gate
from ..faster.model import TaggingMixin
from ..faster.model import enable_tagging as enable_model_tagging
from ..faster.results import session_evidence
from ..faster.session import Session, activated, active_session, checked_options

__all__ = ["enable_tagging"]

SAMPLE_RATE = 16000


class PipelineSession(Session):
    """A tagging session over one whisperX ``transcribe``: its VAD chunks, in the order the
    pipeline's batches take them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks: Deque[dict] = deque()  # {"offset", "duration"} seconds, not yet encoded
        self.vad_segments: List[dict] = []

    def recording(self, merge_chunks):
        """whisperX's ``merge_chunks``, noting the chunks its ``data()`` will cut: samples
        ``int(start * 16000)`` to ``int(end * 16000)`` of the audio."""
        n_samples = self.n_frames * 160

        def record(*args, **kwargs):
            segments = merge_chunks(*args, **kwargs)
            self.vad_segments = list(segments)
            for segment in self.vad_segments:
                first = int(segment["start"] * SAMPLE_RATE)
                stop = min(int(segment["end"] * SAMPLE_RATE), n_samples)
                self.chunks.append({"offset": first / SAMPLE_RATE,
                                    "duration": max(stop - first, 0) / SAMPLE_RATE})  # fmt: skip
            return segments

        return record


def tagged_transcribe(pipeline, transcribe, audio, args, kwargs, at_time_res: float = 10,
                      at_fill_gaps: bool = False, at_segment_info: bool = False,
                      at_speech_gate: Optional[float] = None,
                      at_gate_margin: float = gate.DEFAULT_MARGIN) -> dict:  # fmt: skip
    """``transcribe(audio, *args, **kwargs)`` (whisperX's, bound to ``pipeline``) under a
    tagging session; its result with the tags (see :func:`enable_tagging`)."""
    model = pipeline.model
    at_time_res, gate_options = checked_options(model, at_time_res, at_fill_gaps, at_speech_gate,
                                                at_segment_info, at_gate_margin)  # fmt: skip
    if model.at_model is None:  # no head: whisperX alone
        return transcribe(audio, *args, **kwargs)
    if isinstance(audio, str):
        from whisperx.audio import load_audio

        audio = load_audio(audio)
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D waveform, got shape {audio.shape}")
    session = PipelineSession(model, audio, at_time_res, at_fill_gaps, gate_options,
                              at_segment_info)  # fmt: skip
    vad = pipeline.vad_model
    own = vad.__dict__.get("merge_chunks")  # whisperX calls self.vad_model.merge_chunks
    vad.merge_chunks = session.recording(vad.merge_chunks)
    try:
        with activated(model, session):
            result = transcribe(audio, *args, **kwargs)
            session.finish()
    finally:
        if own is None:
            del vad.merge_chunks
        else:
            vad.merge_chunks = own
    return _tagged(result, session)


def placed_forward(pipeline, forward, model_inputs):
    """``forward(model_inputs)`` (whisperX's ``_forward``) with the batch's chunks named to the
    tagging session, which places each window on the audio's clock."""
    session = active_session(pipeline.model)
    if not isinstance(session, PipelineSession):
        return forward(model_inputs)
    n = len(model_inputs["inputs"])
    batch = [session.chunks.popleft() for _ in range(min(n, len(session.chunks)))]
    if len(batch) != n:  # chunks merge_chunks did not report: place nothing
        batch = [{"offset": 0.0, "duration": 0.0}] * n
    session.batch = batch
    try:
        return forward(model_inputs)
    finally:
        session.batch = None


def _tagging_class(kind):
    """``kind`` (whisperX's ``FasterWhisperPipeline`` or a subclass) with tags. A plain
    subclass: the instance's class is switched in place, and a mixin base would change the
    layout of transformers' ``Pipeline`` objects."""

    class TaggingPipeline(kind):
        at_tagging = True

        def transcribe(self, audio, *args, at_time_res: float = 10, at_fill_gaps: bool = False,
                       at_segment_info: bool = False, at_speech_gate: Optional[float] = None,
                       at_gate_margin: float = gate.DEFAULT_MARGIN, **kwargs) -> dict:  # fmt: skip
            """whisperX's ``transcribe`` (same arguments, same result) plus ``audio_tag``
            and ``at_time_res``; see :func:`whisper_at.integrations.whisperx.enable_tagging`."""
            return tagged_transcribe(self, super().transcribe, audio, args, kwargs, at_time_res,
                                     at_fill_gaps, at_segment_info, at_speech_gate,
                                     at_gate_margin)  # fmt: skip

        def _forward(self, model_inputs):
            return placed_forward(self, super()._forward, model_inputs)

    TaggingPipeline.__name__ = TaggingPipeline.__qualname__ = f"Tagging{kind.__name__}"
    return TaggingPipeline


def _tagged(result: dict, session: PipelineSession) -> dict:
    """whisperX's result with the session's tags, evidence and gate decisions."""
    if result["segments"] and not session.vad_segments:
        warnings.warn(
            "whisperX's VAD chunks were not seen (a vad_model that is not a whisperx.vads.Vad?): "
            "its windows could not be placed, so the tag rows are NaN",
            stacklevel=3,
        )
    kept = []
    for segment in result["segments"]:
        start, end, text = float(segment["start"]), float(segment["end"]), segment["text"]
        if session.gate is not None:
            held = session.gate.hold(start, end, text, session.tagger)
            if held is None:
                continue
            if held != (start, end):
                segment = dict(segment, start=held[0], end=held[1])
                start, end = held
        if session.segment_info:
            segment = dict(segment, **session_evidence(session, start, end, text))
        elif session.gate is not None and (start, end) in session.gate.original:
            segment = dict(segment, at_original_times=session.gate.original[(start, end)])
        kept.append(segment)
    if session.gate is not None:
        session.at_gate = session.gate.report(session.audio_tag, session.tagger.res_frames)
    out = dict(result, segments=kept, audio_tag=session.audio_tag,
               at_time_res=session.at_time_res)  # fmt: skip
    if session.at_gate is not None:
        out["at_gate"] = session.at_gate
    return out


def _pipeline_class():
    try:
        from whisperx.asr import FasterWhisperPipeline
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("whisper_at.integrations.whisperx needs whisperX: pip install whisperx") \
            from e  # fmt: skip
    return FasterWhisperPipeline


_TAGGING_CLASSES = {}


def enable_tagging(pipeline, model_path: str, *, at_encoder: str = "exact", **options):
    """Tag sound events in a whisperX pipeline (``whisperx.load_model(...)``), in place;
    returns it. ``model_path``: the CTranslate2 directory or faster-whisper model name it was
    loaded from (the tagging encoder reads that model's encoder weights). ``at_encoder``:
    ``"exact"`` (default: whisperX's own encoder for the transcript, unchanged; the tagging
    encoder runs beside it) or ``"one_pass"`` (the tagging encoder's output feeds whisperX's
    decoder: one encoder pass per window; text may differ where CTranslate2's int8/fp16 encoder
    rounds differently). ``options``: those of :func:`whisper_at.faster.enable_tagging`
    (``at_head``, ``at_low_compute``, ``at_compute_type``, ``at_download_root``,
    ``at_head_mirror``)."""
    cls = _pipeline_class()
    if not isinstance(pipeline, cls):
        raise TypeError(
            "enable_tagging takes the pipeline whisperx.load_model returns (a "
            f"FasterWhisperPipeline), got {type(pipeline).__name__}"
        )
    if getattr(pipeline, "at_tagging", False):
        raise ValueError("this pipeline already tags sound events")
    model = pipeline.model
    if isinstance(model, TaggingMixin):
        raise ValueError("this pipeline's model already tags sound events (enable_tagging was "
                         "called on pipeline.model): pass a fresh pipeline")  # fmt: skip
    enable_model_tagging(model, model_path, at_encoder=at_encoder, **options)
    kind = type(pipeline)
    if kind not in _TAGGING_CLASSES:
        _TAGGING_CLASSES[kind] = _tagging_class(kind)
    pipeline.__class__ = _TAGGING_CLASSES[kind]
    return pipeline
