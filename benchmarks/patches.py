"""Proposed memory fixes (see PATCHES.md), applied by monkeypatching so they can be measured.

``bench_scaling.py --patched`` runs tagging with both. They give bit-identical results:
- ``log_mel_spectrogram_chunked``: the log-mel of ``whisper.audio.log_mel_spectrogram``, computed
  3000 frames at a time, so the STFT/power/mel transients no longer scale with the audio length.
- ``load_audio_inplace``: ``whisper.audio.load_audio`` with the int16 -> float32 scaling done in
  place (one float32 copy of the audio at a time instead of two).
"""

import subprocess

import numpy as np
import torch
from whisper.audio import HOP_LENGTH, N_FFT, SAMPLE_RATE, mel_filters


def log_mel_spectrogram_chunked(
    audio, n_mels: int = 80, padding: int = 0, chunk_frames: int = 3000
):
    """``whisper.audio.log_mel_spectrogram(audio, n_mels, padding)`` (same values, on the
    audio's device), chunk_frames STFT frames at a time."""
    if not torch.is_tensor(audio):
        audio = torch.from_numpy(audio)
    n_audio = audio.shape[-1]
    n = n_audio + padding  # the zero-padded signal that upstream builds with F.pad
    half = N_FFT // 2
    n_frames = n // HOP_LENGTH  # stft(center=True) gives n // hop + 1 frames; upstream drops one
    window = torch.hann_window(N_FFT, device=audio.device)
    filters = mel_filters(audio.device, n_mels)
    out = torch.empty(n_mels, n_frames, device=audio.device)
    for f0 in range(0, n_frames, chunk_frames):
        f1 = min(f0 + chunk_frames, n_frames)
        # samples of frames f0..f1-1 of the center=True STFT, with its reflect padding
        idx = torch.arange(
            f0 * HOP_LENGTH - half, (f1 - 1) * HOP_LENGTH + half, device=audio.device
        )
        idx = torch.where(idx < 0, -idx, idx)
        idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)
        inside = idx < n_audio
        segment = torch.zeros(idx.shape[0], dtype=audio.dtype, device=audio.device)
        segment[inside] = audio[idx[inside]]
        stft = torch.stft(
            segment, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True
        )
        out[:, f0:f1] = torch.clamp(filters @ stft.abs() ** 2, min=1e-10).log10()
    torch.maximum(out, out.max() - 8.0, out=out)
    return out.add_(4.0).div_(4.0)


def load_audio_inplace(file: str, sr: int = SAMPLE_RATE) -> np.ndarray:
    """``whisper.audio.load_audio`` (same samples) with the scaling done in place."""
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-threads",
        "0",
        "-i",
        file,
        "-f",
        "s16le",
        "-ac",
        "1",
        "-acodec",
        "pcm_s16le",
        "-ar",
        str(sr),
        "-",
    ]
    try:
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        raise RuntimeError(f"Failed to load audio: {e.stderr.decode()}") from e
    audio = np.frombuffer(out, np.int16).astype(np.float32)
    del out
    audio /= 32768.0
    return audio


def apply() -> None:
    """Use both in whisper_at (this process only)."""
    from whisper_at import audio_io, tagging

    tagging.log_mel_spectrogram = log_mel_spectrogram_chunked
    audio_io._ffmpeg_load_audio = load_audio_inplace
