"""One tagged transcription: the windows FW encodes -> ``audio_tag`` rows of the original audio.

A :class:`Session` is active (for its model, in the current thread) only while FW's code runs
for it: during ``transcribe()`` itself (language detection) and inside each ``next()`` of the
segments generator, which may be consumed later or in another thread. While active, the model's
``encode`` goes through :meth:`Session.encode`: one cached window (exact content) serves
language detection and the first decode of the same window, and every window that FW decodes
is handed, piece by piece of original audio, to a :class:`~whisper_at.tagging.ChunkTagger`.
"""

import threading
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Deque, Iterator, List, Optional, Tuple

import faster_whisper
import numpy as np
import torch
from faster_whisper.audio import decode_audio, pad_or_trim

from .. import gate
from ..tagging import ChunkTagger, check_at_time_res
from ..transcribe import rebind
from .gating import FasterGate
from .results import TaggedTranscriptionInfo
from .timeline import HOP_LENGTH, FeatureLocator, Timeline

N_FRAMES = 3000  # mel frames of a window

_ACTIVE = threading.local()


def active_session(model) -> Optional["Session"]:
    """The session running on ``model`` in this thread, if any."""
    return getattr(_ACTIVE, "sessions", {}).get(id(model))


@contextmanager
def activated(model, session: "Session"):
    sessions = _ACTIVE.__dict__.setdefault("sessions", {})
    previous = sessions.get(id(model))
    sessions[id(model)] = session
    try:
        yield session
    finally:
        if previous is None:
            sessions.pop(id(model), None)
        else:
            sessions[id(model)] = previous


class _Window:
    """The last encoded window (or batch): its mel, FW-ready output and pooled layers."""

    def __init__(self, mel, output, pooled):
        self.mel = np.array(mel, dtype=np.float32, copy=True)
        self.output = output
        self.pooled = pooled
        self.recorded = set()  # the places it was handed to the tagger for

    def matches(self, mel) -> bool:
        if torch.is_tensor(mel):
            mel = mel.detach().cpu().numpy()
        return mel.shape == self.mel.shape and np.array_equal(mel, self.mel)


class Session:
    """Tag rows of one transcription (``model`` has the :class:`TaggingMixin`)."""

    def __init__(self, model, audio: np.ndarray, at_time_res: float, fill_gaps: bool,
                 gate_options: Optional[gate.GateOptions] = None,
                 segment_info: bool = False):  # fmt: skip
        self.model = model
        self.n_frames = audio.shape[0] // HOP_LENGTH  # mel frames of the original audio
        self.at_time_res = at_time_res
        head = model.at_model
        self.tagger = None if head is None else ChunkTagger(
            head, self.n_frames, at_time_res, speech_track=gate_options is not None)
        self.audio = audio if fill_gaps and head is not None else None
        self.timeline = Timeline()
        self.locator: Optional[FeatureLocator] = None  # sequential decoding: its features
        self.batch = None  # batched decoding: chunk metadata of the batch being encoded
        self.detecting = 0
        self.window: Optional[_Window] = None
        self.deferred = model.at_encoder == "exact"  # tagging pass in a worker thread
        self.worker: Optional[ThreadPoolExecutor] = None
        self.pending: Deque[tuple] = deque()  # (pooled or its future, places), in order
        self.audio_tag = None
        self.finished = False
        self.gate = None
        if gate_options is not None:
            self.gate = FasterGate(gate_options, self.n_frames / gate.FRAMES_PER_SECOND)
        self.segment_info = segment_info
        self.at_gate: Optional[dict] = None
        self.windows: List[Tuple[int, int]] = []  # (filtered start sample, audio frames) tagged
        self.current: Optional[tuple] = None  # sequential decoding: (seek, frames) being decoded

    def speech_timestamps(self, fn):
        """FW's ``get_speech_timestamps``, recording the speech chunks VAD keeps."""

        def record(*args, **kwargs):
            chunks = fn(*args, **kwargs)
            self.timeline = Timeline(chunks)
            return chunks

        return record

    # --- encoding ---------------------------------------------------------------------------

    def encode(self, features):
        """The model's ``encode`` while this session is active."""
        record = (
            self.tagger is not None
            and not self.detecting
            and (self.locator is not None or self.batch is not None)
        )
        window = self.window
        if window is None or not window.matches(features):
            pooled = record and not self.deferred
            window = self.window = _Window(features, *self.model._at_encode(features, pooled))
        places = self._places(features) if record else []
        if record and self.batch is None:  # the window the gate decides on (identity timeline)
            self.current = (places[0][1] // HOP_LENGTH, places[0][2]) if places else None
        if places and tuple(places) not in window.recorded:  # the same content may sit at
            window.recorded.add(tuple(places))  # another place (digital silence)
            if window.pooled is None:  # exact mode: the tagging pass runs beside FW's decoding
                if self.worker is None:
                    self.worker = ThreadPoolExecutor(1, thread_name_prefix="whisper-at-tags")
                window.pooled = self.worker.submit(self.model._at_pool, window.mel)
            self.pending.append((window.pooled, places))
        self._apply(block=False)
        return window.output

    def _places(self, features) -> List[Tuple[int, int, int]]:
        """(batch element, filtered start sample, audio frames) of each window in features."""
        if self.batch is not None:  # BatchedInferencePipeline.forward: one chunk per element
            rate = self.model.feature_extractor.sampling_rate
            return [(i, round(meta["offset"] * rate),
                     min(N_FRAMES, round(meta["duration"] * rate) // HOP_LENGTH))
                    for i, meta in enumerate(self.batch)]  # fmt: skip
        segment = features if features.ndim == 2 else features[0]
        try:
            seek, valid = self.locator.locate(segment)
        except LookupError as e:
            warnings.warn(f"audio tagging skipped one window: {e}", stacklevel=4)
            return []
        return [(0, seek * HOP_LENGTH, valid)]

    def flush(self):
        """Wait until every window encoded so far has reached the tagger."""
        self._apply(block=True)

    def _apply(self, block: bool):
        """Hand the encoded windows to the tagger, in order (those whose pass has finished;
        all of them with ``block``)."""
        while self.pending:
            pooled, places = self.pending[0]
            if isinstance(pooled, Future):
                if not (block or pooled.done()):
                    return
                pooled = pooled.result()
            self.pending.popleft()
            pooled = pooled if pooled.ndim == 4 else pooled.unsqueeze(0)
            for index, start, valid in places:
                self._add(pooled[index], start, valid)

    def _add(self, layers: torch.Tensor, start: int, valid: int):
        """A window whose frame 0 is filtered sample ``start``, ``valid`` frames of audio."""
        if valid <= 0:
            return
        self.windows.append((start, valid))
        if self.timeline.identity:  # exactly as whisper_at.transcribe
            self.tagger.add_window(round(start / HOP_LENGTH), layers, valid)
            return
        for seek, first, end in self.timeline.window_pieces(start, valid):
            self.tagger.add_window(seek, layers, valid, region=(first, end))

    # --- the end ----------------------------------------------------------------------------

    def finish(self):
        if self.finished:
            return
        if self.tagger is not None:
            self._apply(block=True)
            if self.worker is not None:
                self.worker.shutdown()
            if self.audio is not None:
                self._fill_gaps()
            self.audio_tag = self.tagger.finish()
            if self.gate is not None:
                self.at_gate = self.gate.report(self.audio_tag, self.tagger.res_frames)
        self.audio = None
        self.window = None
        self.locator = None
        self.finished = True

    def _fill_gaps(self):
        """Tag the rows no decoded window contained whole (VAD-removed stretches, skipped clips)
        with extra encoder passes over the original audio, one window from each such row (of
        ``chunk_length`` seconds, padded to 30 s, as FW's decoding windows are)."""
        tagger, extractor = self.tagger, self.model.feature_extractor
        n_window = extractor.nb_max_frames
        for k in (~tagger.done).nonzero().flatten().tolist():
            if tagger.done[k]:
                continue
            seek = k * tagger.res_frames
            chunk = self.audio[seek * HOP_LENGTH : (seek + n_window) * HOP_LENGTH]
            mel = pad_or_trim(extractor(chunk)[:, :-1], N_FRAMES)
            pooled = self.model._at_pool(mel[None])
            tagger.add_window(seek, pooled[0], min(n_window, self.n_frames - seek))


def _rebound(fn, session: Session):
    """``fn`` (FW's transcribe) with a private ``get_speech_timestamps`` that records the speech
    chunks."""
    if "get_speech_timestamps" not in fn.__globals__:
        return fn
    return rebind(fn, get_speech_timestamps=session.speech_timestamps(
        fn.__globals__["get_speech_timestamps"]))  # fmt: skip


def noting_pad_or_trim(array, *args, **kwargs):
    """FW's ``pad_or_trim``, noting where the window it pads starts for the session running in
    this thread (``generate_segments`` is rebound with it: :data:`GENERATE_SEGMENTS`)."""
    for session in getattr(_ACTIVE, "sessions", {}).values():
        if session.locator is not None and session.locator.note(array):
            break
    return pad_or_trim(array, *args, **kwargs)


# FW's sequential decoding loop, with the noting pad_or_trim
GENERATE_SEGMENTS = rebind(faster_whisper.WhisperModel.generate_segments,
                           pad_or_trim=noting_pad_or_trim)  # fmt: skip


def _segments(model, session: Session, segments) -> Iterator:
    """FW's lazy segments, with the session active while each one is made; with the speech
    gate, as it judges them (dropped or held to the speech: :meth:`FasterGate.judge`)."""
    segments = iter(segments)
    while True:
        with activated(model, session):
            try:
                segment = next(segments)
            except StopIteration:
                break
            if session.gate is not None and session.pending:
                session.flush()  # exact mode: the rows the segment lies in must be there
            if session.gate is not None:
                segment = session.gate.judge(segment, session.tagger)
                if segment is None:
                    continue
        yield segment
    session.finish()


def checked_options(model, at_time_res, fill_gaps, speech_gate, segment_info, gate_margin):
    """(at_time_res, gate options or None) of a tagged transcription, its arguments checked."""
    at_time_res = check_at_time_res(at_time_res)
    gate_options = gate.gate_options(model.at_model, speech_gate, gate_margin, segment_info)
    if not isinstance(fill_gaps, bool):
        raise TypeError(f"at_fill_gaps must be True or False, got {fill_gaps!r}")
    return at_time_res, gate_options


def run(model, transcribe, owner, audio, args, kwargs, at_time_res, fill_gaps,
        speech_gate=None, segment_info=False, gate_margin=gate.DEFAULT_MARGIN):  # fmt: skip
    """``transcribe(owner, audio, *args, **kwargs)`` (FW's function) with tagging: returns
    (lazy segments, :class:`TaggedTranscriptionInfo`)."""
    at_time_res, gate_options = checked_options(model, at_time_res, fill_gaps, speech_gate,
                                                segment_info, gate_margin)  # fmt: skip
    if not isinstance(audio, np.ndarray):
        audio = decode_audio(audio, sampling_rate=model.feature_extractor.sampling_rate)
    if audio.ndim != 1:
        raise ValueError(f"audio must be a 1-D waveform, got shape {audio.shape}")
    session = Session(model, audio, at_time_res, fill_gaps, gate_options, segment_info)
    if "get_speech_timestamps" not in transcribe.__globals__ and kwargs.get("vad_filter"):
        warnings.warn(
            f"{transcribe.__qualname__} is not faster-whisper's: VAD chunks cannot be mapped "
            "back, so tag rows assume no audio was removed",
            stacklevel=3,
        )
    with activated(model, session):
        segments, info = _rebound(transcribe, session)(owner, audio, *args, **kwargs)
    return _segments(model, session, segments), TaggedTranscriptionInfo.wrap(info, session)
