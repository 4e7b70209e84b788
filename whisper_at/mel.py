"""Log-mel spectrograms a chunk of frames at a time, with openai-whisper's exact values.

``whisper.audio.log_mel_spectrogram`` pads the whole waveform, then takes one STFT of it: for an
hour of audio that is ~1.2 GB of transient tensors. Here each chunk of STFT frames is computed
from its own samples (the same reflect/zero padding, the same frames), which gives bit-identical
values with transients the size of one chunk; ``log_mel_spectrogram`` is a drop-in, and
``MelWindows`` yields the 30 s (or 10 s) windows one at a time; for long audio without ever
holding the whole spectrogram (a first pass finds the global maximum that the normalisation
needs, a second makes each window). A path is decoded by :mod:`whisper_at.audio_io` (the ffmpeg
CLI when it is on PATH, else PyAV).
"""

import math
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from whisper.audio import HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, mel_filters, pad_or_trim

from .audio_io import load_audio

CHUNK_FRAMES = 3000  # STFT frames per chunk: 30 s of audio
# The mel matmul of a few frames takes another BLAS path (a different summation order: the last
# bits differ; measured below 12 frames); narrower requests are computed this wide and cut.
MIN_FRAMES = 1000
# MelWindows keeps a file's whole spectrogram up to this size (~8.7 min of audio at 80 mels):
# one STFT pass; longer audio is scanned twice (maximum, then window by window) in constant memory
KEEP_BYTES = 16 << 20
_HALF = N_FFT // 2


class _Spectrogram:
    """Un-normalised log10 mel power of STFT frames of ``audio`` zero-padded by ``padding``."""

    def __init__(self, audio, n_mels: int, padding: int, device=None):
        if not torch.is_tensor(audio):
            if isinstance(audio, str):
                audio = load_audio(audio)
            audio = torch.from_numpy(audio)
        if device is not None:
            audio = audio.to(device)
        if audio.dim() != 1:
            raise ValueError(f"audio must be a 1-D waveform, got shape {tuple(audio.shape)}")
        self.audio = audio
        self.n_audio = audio.shape[-1]
        self.n_padded = self.n_audio + max(padding, 0)
        self.n_frames = self.n_padded // HOP_LENGTH  # upstream drops the STFT's last frame
        self.window = torch.hann_window(N_FFT).to(audio.device)
        self.filters = mel_filters(audio.device, n_mels)
        self.n_mels = n_mels

    def log10(self, f0: int, f1: int) -> Tensor:
        """[n_mels, f1 - f0] log10 mel power of frames f0..f1-1 (before normalisation)."""
        width = min(max(f1 - f0, MIN_FRAMES), self.n_frames)  # at most upstream's own width
        start = max(0, min(f0, self.n_frames - width))
        if (start, width) != (f0, f1 - f0):
            return self.log10(start, start + width)[:, f0 - start : f1 - start]
        lo, hi = f0 * HOP_LENGTH - _HALF, (f1 - 1) * HOP_LENGTH + _HALF
        if lo >= 0 and hi <= self.n_audio:  # inside the audio: no padding to emulate
            segment = self.audio[lo:hi]
        else:  # the samples of a centred STFT: reflect-padded by N_FFT // 2 at both ends of
            # the zero-padded signal
            n = self.n_padded
            index = torch.arange(lo, hi, device=self.audio.device)
            index = torch.where(index < 0, -index, index)
            index = torch.where(index >= n, 2 * (n - 1) - index, index)
            inside = index < self.n_audio
            segment = torch.zeros(index.shape[0], dtype=self.audio.dtype, device=self.audio.device)
            segment[inside] = self.audio[index[inside]]
        stft = torch.stft(
            segment, N_FFT, HOP_LENGTH, window=self.window, center=False, return_complex=True
        )
        return torch.clamp(self.filters @ stft.abs() ** 2, min=1e-10).log10()

    def chunks(self, f0: int, f1: int) -> Iterator[Tuple[int, Tensor]]:
        for start in range(f0, f1, CHUNK_FRAMES):
            yield start, self.log10(start, min(start + CHUNK_FRAMES, f1))

    @property
    def audio_frames(self) -> int:
        """Frames before which every frame is computed; the ones after see only padding."""
        if self.n_padded - self.n_audio < N_FFT:  # the end's reflection reaches the audio
            return self.n_frames
        return min(self.n_frames, math.ceil((self.n_audio + _HALF) / HOP_LENGTH))

    def scan(self, keep: bool) -> Tuple[Optional[Tensor], Tensor]:
        """(the log10 frames before ``audio_frames`` if ``keep``, else None; the maximum over
        all frames, as ``log_spec.max()`` upstream). Frames that see only padding have one
        value (that of silence): it is computed once, not for each of them."""
        audio_frames = self.audio_frames
        kept = torch.empty(self.n_mels, audio_frames, device=self.audio.device) if keep else None
        peaks = []
        for f0, chunk in self.chunks(0, audio_frames):
            peaks.append(chunk.max())
            if kept is not None:
                kept[:, f0 : f0 + chunk.shape[-1]] = chunk
        if audio_frames < self.n_frames:
            peaks.append(self.log10(audio_frames, audio_frames + 1).max())
        if not peaks:  # no frames at all: upstream's max() raises as well
            raise RuntimeError("cannot compute a log-mel spectrogram of empty audio")
        return kept, torch.stack(peaks).max()


def _normalise(log_spec: Tensor, peak: Tensor) -> Tensor:
    torch.maximum(log_spec, peak - 8.0, out=log_spec)
    return log_spec.add_(4.0).div_(4.0)


def log_mel_spectrogram(
    audio: Union[str, np.ndarray, Tensor],
    n_mels: int = 80,
    padding: int = 0,
    device: Optional[Union[str, torch.device]] = None,
) -> Tensor:
    """``whisper.audio.log_mel_spectrogram`` (same arguments, bit-identical result), computed
    ``CHUNK_FRAMES`` frames at a time."""
    spec = _Spectrogram(audio, n_mels, padding, device)
    out = torch.empty(n_mels, spec.n_frames, device=spec.audio.device)
    for f0, chunk in spec.chunks(0, spec.n_frames):
        out[:, f0 : f0 + chunk.shape[-1]] = chunk
    peak = out.max() if spec.n_frames else spec.scan(keep=False)[1]
    return _normalise(out, peak)


class MelWindows:
    """The consecutive windows ``(seek, [n_mels, window_frames])`` of a log-mel computed with
    ``padding=N_SAMPLES``, made one at a time: ``pad_or_trim(mel[:, seek : seek + size],
    window_frames)`` of ``whisper.audio.log_mel_spectrogram``'s result, as transcribe cuts them
    (the last one zero-padded in log-mel space). A spectrogram of up to ``keep_bytes`` (default
    ``KEEP_BYTES``) is kept whole; a longer one is scanned twice and never held."""

    def __init__(
        self,
        audio,
        n_mels: int = 80,
        window_frames: int = N_FRAMES,
        keep_bytes: Optional[int] = None,
    ):
        self._spec = _Spectrogram(audio, n_mels, N_SAMPLES)
        self.window_frames = window_frames
        self.content_frames = self._spec.n_frames - N_FRAMES
        limit = KEEP_BYTES if keep_bytes is None else keep_bytes
        keep = self._spec.audio_frames * n_mels * 4 <= limit
        self._mel, self._peak = self._spec.scan(keep)
        if self._mel is not None:
            _normalise(self._mel, self._peak)

    def __len__(self) -> int:
        return -(-max(self.content_frames, 0) // self.window_frames)

    def __iter__(self) -> Iterator[Tuple[int, Tensor]]:
        for seek in range(0, self.content_frames, self.window_frames):
            size = min(self.window_frames, self.content_frames - seek)
            if self._mel is not None:
                window = self._mel[:, seek : seek + size]
            else:
                window = _normalise(self._spec.log10(seek, seek + size), self._peak)
            yield seek, pad_or_trim(window, self.window_frames)
