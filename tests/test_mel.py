"""whisper_at.mel: chunked log-mel, bit-identical to openai-whisper's, and streamed windows."""

import numpy as np
import pytest
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim

from whisper_at import mel


def _lengths(audio: np.ndarray):
    """Cuts and repeats of real audio: shorter than one STFT window, around window and chunk
    boundaries, and several windows long."""
    for n in (150, 16000 * 7 + 3, N_SAMPLES - 1, N_SAMPLES, N_SAMPLES + 161, 2 * N_SAMPLES + 17):
        yield np.tile(audio, 1 + n // len(audio))[:n].copy()


@pytest.mark.parametrize("n_mels", [80, 128])
def test_chunked_log_mel_is_bit_identical(speech_wav, n_mels):
    audio = whisper.load_audio(str(speech_wav))
    for clip in _lengths(audio):
        for padding in (0, N_SAMPLES, 300):
            if len(clip) + padding <= 200:  # upstream's reflect padding needs 201 samples
                continue
            expected = log_mel_spectrogram(clip, n_mels, padding=padding)
            got = mel.log_mel_spectrogram(clip, n_mels, padding=padding)
            assert got.shape == expected.shape
            assert torch.equal(got, expected), (len(clip), padding)
    tensor = torch.from_numpy(audio)
    assert torch.equal(mel.log_mel_spectrogram(tensor), log_mel_spectrogram(tensor))
    assert torch.equal(mel.log_mel_spectrogram(str(speech_wav)), log_mel_spectrogram(audio))


def test_windows_equal_upstream_windows(long_speech_wav, silence_wav, speech_wav):
    for path in (long_speech_wav, silence_wav, speech_wav):
        audio = whisper.load_audio(str(path))
        full = log_mel_spectrogram(audio, 80, padding=N_SAMPLES)
        content = full.shape[-1] - N_FRAMES
        for frames, keep_bytes in [(N_FRAMES, 0), (1000, 0), (N_FRAMES, mel.KEEP_BYTES)]:
            # keep_bytes=0: two passes, nothing kept (as for audio longer than ~8 min)
            windows = mel.MelWindows(audio, 80, frames, keep_bytes)
            assert windows.content_frames == content
            got = list(windows)
            assert len(got) == len(windows) == -(-content // frames)
            for seek, window in got:
                size = min(frames, content - seek)
                expected = pad_or_trim(full[:, seek : seek + size], frames)
                assert torch.equal(window, expected), (path.name, frames, keep_bytes, seek)


def test_silence_and_empty_audio(silence_wav):
    silent = np.zeros(16000 * 3, dtype=np.float32)
    assert torch.equal(
        mel.log_mel_spectrogram(silent, padding=N_SAMPLES),
        log_mel_spectrogram(silent, padding=N_SAMPLES),
    )
    for keep_bytes in (0, mel.KEEP_BYTES):
        empty = mel.MelWindows(np.zeros(0, dtype=np.float32), keep_bytes=keep_bytes)
        assert len(empty) == 0 and list(empty) == []
        windows = mel.MelWindows(silent, keep_bytes=keep_bytes)
        expected = log_mel_spectrogram(silent, padding=N_SAMPLES)[:, :300]
        assert torch.equal(next(iter(windows))[1], pad_or_trim(expected, N_FRAMES))
    with pytest.raises(ValueError, match="1-D"):
        mel.MelWindows(np.zeros((2, 100), dtype=np.float32))
