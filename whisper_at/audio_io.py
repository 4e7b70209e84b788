"""Reading audio files: openai-whisper's ffmpeg CLI when it is on PATH, else PyAV (a dependency
of whisper-at, so files decode on machines without ffmpeg).

Both give 16-bit mono samples at 16 kHz as float32. PyAV resamples with libswresample set up as
the ffmpeg CLI sets it up (a 16-bit internal format for 16-bit sources), so 16-bit WAV/FLAC give
the CLI's exact samples; compressed formats differ by a few 1/32768 steps where the bundled
decoders differ from the installed ffmpeg's (docs/loading.md has the measurements).
"""

import os
import shutil
import subprocess
import tempfile
import warnings
from typing import List, Union

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE

_READ_BYTES = 1 << 22  # ffmpeg output read per call


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


def _check_file(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected an audio file, got a directory: {path}")


def _import_av():
    try:
        import av
    except ImportError:
        raise RuntimeError(
            "ffmpeg is not on PATH and PyAV is not installed: install ffmpeg, or PyAV "
            "(`pip install 'av>=12'`, a dependency of whisper-at)"
        ) from None
    return av


def _resampler(av, frame, sr: int):
    """abuffer -> aresample -> aformat(s16, mono, sr) -> abuffersink for frames like ``frame``."""
    graph = av.filter.Graph()
    source = graph.add_abuffer(
        format=frame.format.name,
        sample_rate=frame.sample_rate,
        layout=frame.layout.name,
        time_base=frame.time_base,
    )
    # libswresample's choice in the ffmpeg CLI (<= 7): 16-bit internally when in and out are
    # 16-bit; newer libraries would pick float, a few steps off the CLI's samples
    internal = ":internal_sample_fmt=s16p" if frame.format.bytes <= 2 else ""
    resample = graph.add("aresample", f"{sr}{internal}")
    output = graph.add("aformat", f"sample_fmts=s16:channel_layouts=mono:sample_rates={sr}")
    sink = graph.add("abuffersink")
    source.link_to(resample)
    resample.link_to(output)
    output.link_to(sink)
    graph.configure()
    return graph


def _drain(av, graph, chunks: List[np.ndarray]) -> None:
    while True:
        try:
            chunks.append(graph.pull().to_ndarray().reshape(-1))
        except (av.BlockingIOError, av.EOFError):
            return


def _frames(av, container, path: str):
    """Decoded frames of the first audio stream; like the ffmpeg CLI, packets that do not
    decode are skipped (with a warning), unless none decodes."""
    skipped, decoded = 0, False
    for packet in container.demux(container.streams.audio[0]):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            skipped += 1
            continue
        decoded = decoded or bool(frames)
        yield from frames
    if skipped and not decoded:
        raise RuntimeError(f"cannot decode audio file {path}: no packet decodes")
    if skipped:
        warnings.warn(f"{path}: skipped {skipped} packets that do not decode", stacklevel=3)


def load_audio_pyav(path: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode with PyAV (bundled FFmpeg libraries) to mono float32 at ``sr`` Hz."""
    av = _import_av()
    chunks: List[np.ndarray] = []
    graph, params = None, None
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise RuntimeError(f"cannot decode audio file {path}: it has no audio stream")
            for frame in _frames(av, container, path):
                frame_params = (frame.format.name, frame.sample_rate, frame.layout.name)
                if frame_params != params:  # first frame, or the stream changed format
                    if graph is not None:
                        graph.push(None)
                        _drain(av, graph, chunks)
                    graph, params = _resampler(av, frame, sr), frame_params
                graph.push(frame)
                _drain(av, graph, chunks)
            if graph is not None:
                graph.push(None)
                _drain(av, graph, chunks)
    except av.error.FFmpegError as e:
        raise RuntimeError(f"cannot decode audio file {path}: {e.strerror or e}") from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    audio = np.concatenate(chunks).astype(np.float32)
    audio /= 32768.0
    return audio


def _ffmpeg_error(path: str, stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if last.startswith(path + ": "):
        last = last[len(path) + 2 :]
    detail = ": it has no audio stream" if "not contain any stream" in last else f": {last}"
    return f"cannot decode audio file {path}{detail}"


def load_audio_ffmpeg(path: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode with the ffmpeg CLI as ``whisper.load_audio`` does (same command, same samples).

    The 16-bit output is read in chunks and converted into one preallocated float32 array,
    each chunk freed as it is converted: at most the int16 bytes plus the result are held
    (``whisper.load_audio`` holds the bytes twice, then two float32 copies)."""
    cmd = ["ffmpeg", "-nostdin", "-threads", "0", "-i", path, "-f", "s16le", "-ac", "1",
           "-acodec", "pcm_s16le", "-ar", str(sr), "-"]  # fmt: skip
    chunks = []
    with tempfile.TemporaryFile() as stderr:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr) as proc:
            while chunk := proc.stdout.read(_READ_BYTES):  # full reads: even lengths until EOF
                chunks.append(chunk)
        if proc.returncode != 0:
            stderr.seek(0)
            raise RuntimeError(_ffmpeg_error(path, stderr.read()))
    audio = np.empty(sum(len(chunk) for chunk in chunks) // 2, dtype=np.float32)
    start = 0
    for i, chunk in enumerate(chunks):
        samples = np.frombuffer(chunk, np.int16, count=len(chunk) // 2)
        audio[start : start + samples.size] = samples
        start += samples.size
        chunks[i] = samples = None
    audio /= 32768.0
    return audio


def load_audio(path: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform at ``sr`` Hz; the same samples as ``whisper.load_audio`` when
    ffmpeg is installed."""
    path = os.fspath(path)
    _check_file(path)
    if not have_ffmpeg():
        return load_audio_pyav(path, sr)
    return load_audio_ffmpeg(path, sr)


def as_audio(audio: Union[str, os.PathLike, np.ndarray, torch.Tensor]):
    """Paths are decoded; arrays and tensors pass through unchanged."""
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return audio
    raise TypeError(f"audio must be a path, numpy array or tensor, got {type(audio).__name__}")
