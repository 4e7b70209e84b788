"""Typed access to the tags of a faster-whisper transcription, and openai-whisper-style results.

``transcribe`` returns FW's ``(segments, info)``; ``info`` is a :class:`TaggedTranscriptionInfo`
(a ``TranscriptionInfo`` with ``audio_tag`` and ``at_time_res``). The tags exist once the lazy
segments have been consumed. :func:`to_whisper_result` turns both into the dict that
openai-whisper's ``transcribe`` returns, so its writers and ours take it unchanged.
"""

from dataclasses import dataclass, fields
from typing import Iterable, List, Optional, Tuple

from faster_whisper.transcribe import Segment, TranscriptionInfo
from torch import Tensor

from .. import gate


@dataclass
class TaggedTranscriptionInfo(TranscriptionInfo):
    """FW's ``TranscriptionInfo`` plus the sound-event tags of the same audio.

    ``audio_tag``: float32 tensor [ceil(duration / at_time_res), 527] of AudioSet logits, row k
    covering [k * at_time_res, (k + 1) * at_time_res) s of the original audio (NaN rows: not
    analysed); None when the model has no AT head. Readable once the segments are consumed.
    """

    at_time_res: float = 10

    @classmethod
    def wrap(cls, info: TranscriptionInfo, session) -> "TaggedTranscriptionInfo":
        values = {f.name: getattr(info, f.name) for f in fields(TranscriptionInfo)}
        tagged = cls(**values, at_time_res=session.at_time_res)
        tagged._session = session
        return tagged

    @property
    def tags_ready(self) -> bool:
        """Whether the segments have been consumed, so that ``audio_tag`` can be read."""
        session = self.__dict__.get("_session")
        return session is not None and session.finished

    @property
    def audio_tag(self) -> Optional[Tensor]:
        if not self.tags_ready:
            raise RuntimeError(
                "audio_tag is known once the transcription has run: consume the segments first "
                "(e.g. segments = list(segments)); FW makes them lazily"
            )
        return self._session.audio_tag

    @property
    def at_windows(self) -> List[Tuple[float, float]]:
        """(start, end) seconds of each window whose encoder features were tagged, in the audio
        FW decoded (after ``vad_filter``, the concatenated speech), in the order encoded."""
        self.audio_tag  # noqa: B018 - raises until the segments are consumed
        rate = 16000
        return [(start / rate, (start + 160 * frames) / rate)
                for start, frames in self._session.windows]  # fmt: skip

    @property
    def at_gate(self) -> Optional[dict]:
        """What the speech gate skipped and dropped (``at_speech_gate``), as
        ``whisper_at.transcribe``'s ``result["at_gate"]``; None without the gate."""
        self.audio_tag  # noqa: B018 - raises until the segments are consumed
        return self._session.at_gate

    def segment_info(self, segment) -> dict:
        """A segment's evidence (``at_speech_prob``, ``at_events``, ``at_hallucination``,
        ``at_reason``; rules in docs/gate.md), from the final tags; with the speech gate, also
        ``at_original_times`` when the gate moved its ends."""
        audio_tag = self.audio_tag
        if audio_tag is None:
            raise RuntimeError("segment evidence needs an audio-tagging head")
        start, end, text = (segment[k] if isinstance(segment, dict) else getattr(segment, k)
                            for k in ("start", "end", "text"))  # fmt: skip
        return session_evidence(self._session, float(start), float(end), text)

    def _moved(self, segment: dict) -> dict:
        return moved_times(self._session, segment["start"], segment["end"])


def moved_times(session, start: float, end: float) -> dict:
    """``{"at_original_times": [start, end]}`` if the session's gate moved a segment's ends to
    ``start``, ``end``; else {}."""
    held = session.gate
    original = held.original.get((start, end)) if held else None
    return {} if original is None else {"at_original_times": original}


def session_evidence(session, start: float, end: float, text: str) -> dict:
    """The evidence of a segment of a finished session (:func:`whisper_at.gate.segment_evidence`
    with the session's tags, threshold and duration, plus :func:`moved_times`)."""
    threshold = (gate.DEFAULT_FLAG_THRESHOLD if session.gate is None
                 else session.gate.options.threshold)  # fmt: skip
    audio_tag = session.audio_tag
    segment = {"start": start, "end": end, "text": text}
    info = gate.segment_evidence(segment, audio_tag, gate.speech_probability(audio_tag),
                                 session.tagger.res_frames, threshold,
                                 duration=session.n_frames / gate.FRAMES_PER_SECOND)
    info.update(moved_times(session, start, end))
    return info


def _word(word) -> dict:
    return {"word": word.word, "start": word.start, "end": word.end,
            "probability": word.probability}  # fmt: skip


def _segment(index: int, segment: Segment) -> dict:
    out = {
        "id": index,
        "seek": segment.seek,
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }
    if segment.words is not None:
        out["words"] = [_word(word) for word in segment.words]
    return out


def to_whisper_result(segments: Iterable[Segment], info: TranscriptionInfo) -> dict:
    """openai-whisper's result dict from FW's ``(segments, info)`` (consumes the segments):
    ``text``, ``segments`` (id from 0, seek, start, end, text, tokens, temperature,
    avg_logprob, compression_ratio, no_speech_prob, and ``words`` with word timestamps),
    ``language``, plus ``audio_tag`` and ``at_time_res`` when ``info`` carries tags."""
    segments = list(segments)
    result = {
        "text": "".join(segment.text for segment in segments),
        "segments": [_segment(i, segment) for i, segment in enumerate(segments)],
        "language": info.language,
    }
    if isinstance(info, TaggedTranscriptionInfo) and info.audio_tag is not None:
        result["audio_tag"] = info.audio_tag
        result["at_time_res"] = info.at_time_res
        if info.at_gate is not None:
            result["at_gate"] = info.at_gate
        for segment in result["segments"]:
            if info._session.segment_info:
                segment.update(info.segment_info(segment))
            else:
                segment.update(info._moved(segment))
    return result
