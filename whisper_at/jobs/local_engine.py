"""The per-file work of ``whisper-at batch`` and its local engine (one process).

``process`` turns decoded files into result records; both engines run it (the Ray engine inside
its model actors). Tagging puts the windows of consecutive files into shared encoder batches;
transcription runs ``whisper_at.transcribe`` per file with the torch RNG seeded, so temperature
fallback samples the same way whatever the order, engine or resume. The local engine decodes
the next files in a background thread (at most ``prefetch`` ahead) while the model runs.
"""

import dataclasses
import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE

from ..labels import NUM_CLASSES, label_names
from ..mel import MelWindows
from ..options import describe_failure
from ..outputs import TagOptions, active_classes, row_times, sound_events
from ..precision import encoder_dtype
from ..tagging import ChunkTagger, default_batch_size, encode_windows

TASKS = ("tag", "transcribe", "translate")


@dataclass(frozen=True)
class BatchOptions:
    """What every file gets: the model, the task and how its record is made."""

    model: str = "small"
    model_dir: Optional[str] = None
    device: Optional[str] = None
    at_head: Optional[str] = None
    at_head_mirror: Optional[str] = None  # None: $WHISPER_AT_HEAD_MIRROR
    at_low_compute: bool = False
    task: str = "transcribe"  # "tag" (encoder + head only), "transcribe" or "translate"
    at_time_res: float = 10
    window_seconds: int = 30  # tag: encoder window, 30 (as transcribe) or 10
    batch_size: Optional[int] = None  # tag: windows per encoder call, across files (None: auto)
    at_compute_type: str = "auto"  # tag and faster-whisper: the tagging encoder's precision
    tags: TagOptions = TagOptions(language="en")
    seed: int = 0  # transcribe: torch RNG seed, set before each file
    decode_options: dict = field(default_factory=dict)  # transcribe: openai-whisper's options
    threads: int = 0  # torch CPU threads (0: torch's default)
    retries: int = 1  # extra attempts at decoding a file or running the model on it
    backend: str = "openai-whisper"  # or "faster-whisper" (transcribe/translate)
    backend_options: dict = field(default_factory=dict)  # faster-whisper: compute_type, ...


@dataclass
class Decoded:
    """A file's waveform (16 kHz mono float32), or why it could not be decoded."""

    path: str
    audio: Optional[np.ndarray] = None
    error: Optional[str] = None

    @property
    def duration(self) -> float:
        return 0.0 if self.audio is None else self.audio.shape[-1] / SAMPLE_RATE


def load_batch_model(options: BatchOptions):
    """``whisper_at.load_model`` as the options say."""
    import whisper_at

    if options.threads > 0:
        torch.set_num_threads(options.threads)
    if options.backend == "faster-whisper":
        from ..faster import cli as faster_cli

        head = {"at_head": options.at_head, "at_low_compute": options.at_low_compute,
                "at_head_mirror": options.at_head_mirror}
        backend = dict(options.backend_options, threads=options.threads,
                       at_compute_type=options.at_compute_type, **head)
        return faster_cli.load_model(options.model, options.device, options.model_dir, backend)
    model = whisper_at.load_model(
        options.model,
        device=options.device,
        download_root=options.model_dir,
        at_low_compute=options.at_low_compute,
        at_head=options.at_head,
        at_head_mirror=options.at_head_mirror,
    )
    if options.task == "tag":
        if not model.has_at_head:
            raise RuntimeError(
                f"model {options.model} has no audio-tagging head: pass --at_head PATH")
        encoder_dtype(model.device, options.at_compute_type)  # float16 on CPU: refused
    return model


def for_model(options: BatchOptions, model) -> BatchOptions:
    """The options as they apply on the model's device: no fp16 decoding on CPU (as
    openai-whisper decides, without its warning for every file)."""
    if options.backend == "openai-whisper" and options.task != "tag" and model.device.type == "cpu":
        return dataclasses.replace(
            options, decode_options={**options.decode_options, "fp16": False}
        )
    return options


def retrying(attempts: int, path: str, fn: Callable, *args):
    """fn(*args), tried up to attempts times; (value, None) or (None, error message)."""
    for _ in range(attempts):
        try:
            return fn(*args), None
        except Exception as e:  # the message of the last attempt is kept
            message = describe_failure(path, e)
    return None, message


def _read(path: str) -> np.ndarray:
    from ..audio_io import load_audio

    audio = load_audio(path)
    if audio.size == 0:
        raise ValueError(f"{path}: audio is empty (0 samples decoded)")
    return audio


def decode_file(path: str, retries: int = 0) -> Decoded:
    audio, error = retrying(1 + retries, path, _read, path)
    return Decoded(path, audio, error)


def decode_ahead(paths: Iterable[str], prefetch: int = 2, retries: int = 0) -> Iterator[Decoded]:
    """The files decoded in order by a background thread, at most ``prefetch`` files ahead."""
    paths = iter(paths)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisper-at-decode")
    queue = deque()
    try:
        while True:
            while len(queue) < max(1, prefetch) and (path := next(paths, None)) is not None:
                queue.append(pool.submit(decode_file, path, retries))
            if not queue:
                return
            yield queue.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- the model's work

Outcome = Tuple[Decoded, Optional[dict], Optional[str]]  # (file, result, error)


class _Tagging:
    """One file's windows on their way through the encoder (made one at a time)."""

    def __init__(self, item: Decoded, model, window_frames: int, at_time_res: float):
        windows = MelWindows(item.audio, model.dims.n_mels, window_frames)
        self.item = item
        self.at_time_res = at_time_res
        self.windows = iter(windows)
        self.unqueued = self.remaining = len(windows)
        self.tagger = ChunkTagger(model.at_model, windows.content_frames, at_time_res)
        self.failed = False

    def finish(self) -> Outcome:
        audio_tag, error = retrying(1, self.item.path, self.tagger.finish)
        if error:
            return self.item, None, error
        return self.item, {"audio_tag": audio_tag, "at_time_res": self.at_time_res}, None


class _Windows:
    """The queued files' windows, taken in order into encoder batches."""

    def __init__(self):
        self.jobs: Deque[_Tagging] = deque()
        self.available = 0

    def add(self, job: _Tagging):
        self.jobs.append(job)
        self.available += job.unqueued

    def take(self, n: int) -> List[Tuple[_Tagging, int, torch.Tensor]]:
        batch = []
        while self.jobs and len(batch) < n:
            job = self.jobs[0]
            if job.failed:  # a batch with one of its windows failed: skip the rest
                job.unqueued, self.available = 0, self.available - job.unqueued
            for seek, window in itertools.islice(job.windows, min(n - len(batch), job.unqueued)):
                batch.append((job, seek, window))
                job.unqueued -= 1
                self.available -= 1
            if job.unqueued == 0:
                self.jobs.popleft()
        return batch


def _encode_batch(model, batch: List[Tuple[_Tagging, int, torch.Tensor]],
                  compute_dtype: torch.dtype) -> List[Outcome]:  # fmt: skip
    """Encode a batch of windows; the outcomes of the files completed (or failed)."""
    batch = [window for window in batch if not window[0].failed]
    if not batch:
        return []
    try:
        pooled = encode_windows(model, torch.stack([mel for _, _, mel in batch]), compute_dtype)
    except Exception as e:  # every file with a window in this batch fails
        jobs = list({id(job): job for job, _, _ in batch}.values())
        for job in jobs:
            job.failed = True
        return [(job.item, None, describe_failure(job.item.path, e)) for job in jobs]
    done = []
    for (job, seek, _), layers in zip(batch, pooled):
        job.tagger.add_window(seek, layers)
        job.remaining -= 1
        if job.remaining == 0:
            done.append(job.finish())
    return done


def tag_stream(
    model,
    items: Iterable[Decoded],
    batch_size: Optional[int],
    window_seconds: int,
    at_time_res: float,
    at_compute_type: str = "auto",
) -> Iterator[Outcome]:
    """Tag decoded files; the windows of consecutive files share encoder batches, and each
    file's outcome comes as soon as its last window is tagged. Windows are made as the
    encoder takes them, so a long file never has its whole log-mel in memory.
    ``at_compute_type``: the encoder's precision, as for ``whisper_at.tagging.tag``."""
    batch_size = batch_size or default_batch_size(model)
    compute_dtype = encoder_dtype(model.device, at_compute_type)
    queued = _Windows()
    for item in items:
        if item.error is not None:
            yield item, None, item.error
            continue
        job, error = retrying(1, item.path, _Tagging, item, model, window_seconds * 100,
                              at_time_res)
        if error:
            yield item, None, error
            continue
        if job.remaining == 0:  # under one mel frame of audio: no window, all rows NaN
            yield job.finish()
            continue
        queued.add(job)
        while queued.available >= batch_size:
            yield from _encode_batch(model, queued.take(batch_size), compute_dtype)
    while queued.available:
        yield from _encode_batch(model, queued.take(batch_size), compute_dtype)


def _transcribe(model, item: Decoded, options: BatchOptions) -> dict:
    from ..transcribe import transcribe

    if options.backend == "faster-whisper":
        from ..faster import cli as faster_cli

        backend = dict(options.backend_options, batch_size=options.batch_size)
        decode = faster_cli.fw_options(dict(options.decode_options, task=options.task), backend)
        return faster_cli.transcribe(model, item.audio, decode, options.at_time_res,
                                     seed=options.seed)  # fmt: skip
    torch.manual_seed(options.seed)
    return transcribe(
        model, item.audio, at_time_res=options.at_time_res, task=options.task, verbose=None,
        **options.decode_options,
    )


def transcribe_stream(model, items: Iterable[Decoded], options: BatchOptions):
    for item in items:
        if item.error is not None:
            yield item, None, item.error
            continue
        result, error = retrying(1 + options.retries, item.path, _transcribe, model, item,
                                 options)
        yield item, result, error


def record(path: str, duration: float, audio_tag: torch.Tensor, at_time_res: float,
           options: TagOptions) -> dict:
    """The JSONL line of a tagged file."""
    names = label_names(options.language)
    rows = active_classes(audio_tag, range(NUM_CLASSES), options.top_k, options.threshold)
    tags = [
        {"start": start, "end": end, "tags": [[names[c], round(v, 6)] for c, v in top]}
        for (start, end), top in zip(row_times(len(rows), at_time_res, duration), rows)
    ]
    events = sound_events(audio_tag, at_time_res, duration, options)
    for event in events:
        event["label"] = names[event["index"]]
    return {"path": path, "duration": round(duration, 3), "at_time_res": at_time_res,
            "tags": tags, "events": events}


def file_record(item: Decoded, result: dict, options: BatchOptions) -> dict:
    """A file's JSONL record: ``whisper-at tag``'s line, plus language, text and segments when
    transcribing."""
    tags = options.tags
    if tags.language == "follow_asr":
        tags = tags._replace(language=result.get("language") or "en")
    line = {"path": item.path, "duration": round(item.duration, 3)}
    if result.get("audio_tag") is not None:
        line = record(item.path, item.duration, result["audio_tag"], result["at_time_res"], tags)
    if options.task != "tag":
        line.update(
            language=result["language"], text=result["text"], segments=result["segments"]
        )
        if "at_gate" in result:
            line["at_gate"] = result["at_gate"]
    return line


def process(model, items: Iterable[Decoded], options: BatchOptions):
    """(record, audio_tag or None) per file, in the order files complete."""
    if options.task == "tag":
        outcomes = tag_stream(model, items, options.batch_size, options.window_seconds,
                              options.at_time_res, options.at_compute_type)  # fmt: skip
    else:
        outcomes = transcribe_stream(model, items, options)
    for item, result, error in outcomes:
        if error is None:
            line, error = retrying(1, item.path, file_record, item, result, options)
        if error is not None:
            yield {"path": item.path, "error": error}, None
        else:
            yield line, result.get("audio_tag")


def run_local(
    options: BatchOptions, paths: List[str], sink: Callable, prefetch: int = 2
) -> None:
    """Run every file in this process; ``sink(record, audio_tag)`` takes each result."""
    model = load_batch_model(options)
    options = for_model(options, model)
    for line, audio_tag in process(model, decode_ahead(paths, prefetch, options.retries), options):
        sink(line, audio_tag)
