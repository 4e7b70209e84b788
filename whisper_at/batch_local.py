"""The per-file work of ``whisper-at batch`` and its local engine (one process).

``process`` turns decoded files into result records; both engines run it (the Ray engine inside
its model actors). Tagging puts the windows of consecutive files into shared encoder batches;
transcription runs ``whisper_at.transcribe`` per file with the torch RNG seeded, so temperature
fallback samples the same way whatever the order, engine or resume. The local engine decodes
the next files in a background thread (at most ``prefetch`` ahead) while the model runs.
"""

import dataclasses
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from whisper.audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, log_mel_spectrogram

from .cli import describe_failure
from .outputs import TagOptions
from .tagging import ChunkTagger, mel_windows

TASKS = ("tag", "transcribe", "translate")


@dataclass(frozen=True)
class BatchOptions:
    """What every file gets: the model, the task and how its record is made."""

    model: str = "small"
    model_dir: Optional[str] = None
    device: Optional[str] = None
    at_head: Optional[str] = None
    at_low_compute: bool = False
    task: str = "transcribe"  # "tag" (encoder + head only), "transcribe" or "translate"
    at_time_res: float = 10
    window_seconds: int = 30  # tag: encoder window, 30 (as transcribe) or 10
    batch_size: int = 8  # tag: windows per encoder call, across files
    tags: TagOptions = TagOptions(language="en")
    seed: int = 0  # transcribe: torch RNG seed, set before each file
    decode_options: dict = field(default_factory=dict)  # transcribe: openai-whisper's options
    threads: int = 0  # torch CPU threads (0: torch's default)
    retries: int = 1  # extra attempts at decoding a file or running the model on it


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
    model = whisper_at.load_model(
        options.model,
        device=options.device,
        download_root=options.model_dir,
        at_low_compute=options.at_low_compute,
        at_head=options.at_head,
    )
    if options.task == "tag" and not model.has_at_head:
        raise RuntimeError(f"model {options.model} has no audio-tagging head: pass --at_head PATH")
    return model


def for_model(options: BatchOptions, model) -> BatchOptions:
    """The options as they apply on the model's device: no fp16 decoding on CPU (as
    openai-whisper decides, without its warning for every file)."""
    if options.task != "tag" and model.device.type == "cpu":
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
    from .audio_io import load_audio

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
    """One file's windows on their way through the encoder."""

    def __init__(self, item: Decoded, model, window_frames: int, at_time_res: float):
        mel = log_mel_spectrogram(item.audio, model.dims.n_mels, padding=N_SAMPLES)
        self.item = item
        self.at_time_res = at_time_res
        self.windows = list(mel_windows(mel, window_frames))
        self.remaining = len(self.windows)
        self.tagger = ChunkTagger(model.at_model, mel.shape[-1] - N_FRAMES, at_time_res)
        self.failed = False

    def finish(self) -> Outcome:
        audio_tag, error = retrying(1, self.item.path, self.tagger.finish)
        if error:
            return self.item, None, error
        return self.item, {"audio_tag": audio_tag, "at_time_res": self.at_time_res}, None


def _encode_batch(model, pending: deque, batch_size: int) -> List[Outcome]:
    """Encode the next batch_size windows of pending; the outcomes of the files completed."""
    batch = []
    while pending and len(batch) < batch_size:
        window = pending.popleft()
        if not window[0].failed:
            batch.append(window)
    if not batch:
        return []
    dtype = next(model.parameters()).dtype
    mels = torch.stack([mel for _, _, mel in batch]).to(model.device, dtype)
    try:
        _, pooled = model.embed_audio_with_layers(mels)
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
    model, items: Iterable[Decoded], batch_size: int, window_seconds: int, at_time_res: float
) -> Iterator[Outcome]:
    """Tag decoded files; the windows of consecutive files share encoder batches, and each
    file's outcome comes as soon as its last window is tagged."""
    pending = deque()  # (job, seek, mel window)
    for item in items:
        if item.error is not None:
            yield item, None, item.error
            continue
        job, error = retrying(1, item.path, _Tagging, item, model, window_seconds * 100,
                              at_time_res)
        if error:
            yield item, None, error
            continue
        pending.extend((job, seek, window) for seek, window in job.windows)
        job.windows = None
        while len(pending) >= batch_size:
            yield from _encode_batch(model, pending, batch_size)
    while pending:
        yield from _encode_batch(model, pending, batch_size)


def _transcribe(model, item: Decoded, options: BatchOptions) -> dict:
    from .transcribe import transcribe

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


def file_record(item: Decoded, result: dict, options: BatchOptions) -> dict:
    """A file's JSONL record: ``whisper-at tag``'s line, plus language, text and segments when
    transcribing."""
    from .tagjob import record

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
    return line


def process(model, items: Iterable[Decoded], options: BatchOptions):
    """(record, audio_tag or None) per file, in the order files complete."""
    if options.task == "tag":
        outcomes = tag_stream(
            model, items, options.batch_size, options.window_seconds, options.at_time_res
        )
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
