"""Reading audio files: openai-whisper's ffmpeg CLI when it is on PATH, else PyAV."""

import os
import shutil
from subprocess import CalledProcessError
from typing import Union

import numpy as np
import torch
from whisper.audio import SAMPLE_RATE
from whisper.audio import load_audio as _ffmpeg_load_audio


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


def _check_file(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected an audio file, got a directory: {path}")


def load_audio_pyav(path: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode with PyAV (bundled FFmpeg libraries) to mono float32 at ``sr`` Hz."""
    try:
        import av
    except ImportError:
        raise RuntimeError(
            "ffmpeg is not on PATH and PyAV is not installed: install ffmpeg, or "
            "`pip install whisper-at[av]`"
        ) from None
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sr)
    chunks = []
    try:
        with av.open(path, metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise RuntimeError(f"no audio stream in {path}")
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise RuntimeError(f"cannot decode audio file {path}: {e}") from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def load_audio(path: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform at ``sr`` Hz; the same samples as ``whisper.load_audio`` when
    ffmpeg is installed."""
    path = os.fspath(path)
    _check_file(path)
    if not have_ffmpeg():
        return load_audio_pyav(path, sr)
    try:
        return _ffmpeg_load_audio(path, sr)
    except RuntimeError as e:
        cause = e.__cause__
        detail = ""
        if isinstance(cause, CalledProcessError) and cause.stderr:
            lines = cause.stderr.decode(errors="replace").strip().splitlines()
            detail = f": {lines[-1]}" if lines else ""
        raise RuntimeError(f"cannot decode audio file {path}{detail}") from e


def as_audio(audio: Union[str, os.PathLike, np.ndarray, torch.Tensor]):
    """Paths are decoded; arrays and tensors pass through unchanged."""
    if isinstance(audio, (str, os.PathLike)):
        return load_audio(audio)
    if isinstance(audio, (np.ndarray, torch.Tensor)):
        return audio
    raise TypeError(f"audio must be a path, numpy array or tensor, got {type(audio).__name__}")
