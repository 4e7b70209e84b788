"""Audio decoding: the ffmpeg CLI path is openai-whisper's; the PyAV fallback (used when ffmpeg
is not on PATH) matches it: exactly for PCM and FLAC; for lossy codecs, decoders of different
FFmpeg versions may differ (measured with ffmpeg 5.1 vs PyAV 18.1: MP3 exact, Vorbis and AAC
1/32768 at most), so those allow 2/32768. Lengths are always equal."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
import whisper

import whisper_at
from whisper_at import audio_io, cli
from whisper_at.mel import log_mel_spectrogram

REPO = Path(__file__).resolve().parents[1]

# name -> (how to make it from speech_wav, allowed max |ffmpeg - PyAV| in 1/32768 steps)
FORMATS = {
    "44k-stereo.wav": (["sox", "{src}", "-r", "44100", "-c", "2", "{dst}"], 0),
    "8k-u8.wav": (["sox", "{src}", "-r", "8000", "-b", "8", "-e", "unsigned", "{dst}"], 0),
    "96k-float.wav": (["sox", "{src}", "-r", "96000", "-b", "32", "-e", "float", "{dst}"], 0),
    "48k-6ch.wav": (["sox", "{src}", "-r", "48000", "-c", "6", "{dst}"], 0),
    "22k-24bit.flac": (["sox", "{src}", "-r", "22050", "-b", "24", "{dst}"], 0),
    "44k.flac": (["sox", "{src}", "-r", "44100", "-c", "2", "{dst}"], 0),
    "44k.mp3": (["ffmpeg", "-i", "{src}", "-ar", "44100", "-ac", "2", "{dst}"], 2),
    "44k.ogg": (["sox", "{src}", "-r", "44100", "-c", "2", "{dst}"], 2),
    "48k.m4a": (["ffmpeg", "-i", "{src}", "-ar", "48000", "{dst}"], 2),
}


def _make(cmd, src: Path, dst: Path) -> Path:
    cmd = [part.format(src=src, dst=dst) for part in cmd]
    if cmd[0] == "ffmpeg":
        cmd[1:1] = ["-nostdin", "-loglevel", "error", "-y"]
    subprocess.run(cmd, check=True, capture_output=True)
    return dst


@pytest.fixture(scope="module")
def encoded(speech_wav: Path, tmp_path_factory) -> Dict[str, Path]:
    directory = tmp_path_factory.mktemp("encoded")
    return {name: _make(cmd, speech_wav, directory / name) for name, (cmd, _) in FORMATS.items()}


@pytest.fixture(scope="module")
def ffmpeg_samples(encoded) -> Dict[str, np.ndarray]:
    assert audio_io.have_ffmpeg()
    return {name: whisper.load_audio(str(path)) for name, path in encoded.items()}


@pytest.fixture
def no_ffmpeg(monkeypatch, tmp_path):
    """PATH without ffmpeg, as on a machine that never installed it."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not audio_io.have_ffmpeg()


def test_ffmpeg_path_gives_openai_whisper_samples(encoded, ffmpeg_samples):
    for name, path in encoded.items():
        samples = whisper_at.audio_io.load_audio(path)  # a Path is accepted too
        assert samples.dtype == np.float32 and samples.ndim == 1
        np.testing.assert_array_equal(samples, ffmpeg_samples[name], err_msg=name)


@pytest.mark.parametrize("name", list(FORMATS))
def test_pyav_fallback_matches_ffmpeg(name, encoded, ffmpeg_samples, speech_wav, no_ffmpeg):
    with pytest.raises(FileNotFoundError):  # openai-whisper's own loader needs the CLI
        whisper.load_audio(str(encoded[name]))
    samples = audio_io.load_audio(str(encoded[name]))
    reference = ffmpeg_samples[name]
    assert samples.dtype == np.float32 and len(samples) == len(reference)
    assert abs(len(samples) / 16000 - audio_io.load_audio(str(speech_wav)).size / 16000) < 0.05
    steps = np.abs(samples - reference).max() * 32768
    assert steps <= FORMATS[name][1], f"{name}: max difference {steps:g} / 32768"
    assert np.corrcoef(samples, reference)[0, 1] > 0.99999


def test_pyav_follows_a_format_change_mid_stream(tmp_path):
    """Two MP3 streams (44.1 kHz stereo, then 22.05 kHz mono) back to back in one file."""
    parts = []
    for name, rate, channels, freq in (("a", 44100, 2, 440), ("b", 22050, 1, 660)):
        wav = tmp_path / f"{name}.wav"
        synth = ["synth", "1.5", "sine", str(freq), "vol", "0.5"]
        subprocess.run(["sox", "-n", "-r", str(rate), "-c", str(channels), str(wav), *synth],
                       check=True)  # fmt: skip
        parts.append(_make(["ffmpeg", "-i", "{src}", "{dst}"], wav, tmp_path / f"{name}.mp3"))
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    reference = whisper.load_audio(str(joined))
    with pytest.warns(UserWarning, match="joined.mp3: skipped 1 packets that do not decode"):
        samples = audio_io.load_audio_pyav(str(joined))  # the CLI skips that packet too
    # exact away from the junction; the CLI drops a few ms there (non-monotonic timestamps)
    assert abs(len(samples) - len(reference)) <= 80
    np.testing.assert_array_equal(samples[:20000], reference[:20000])
    np.testing.assert_array_equal(samples[-20000:], reference[-20000:])


def test_no_ffmpeg_and_no_pyav_is_a_clear_error(speech_wav, no_ffmpeg, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(RuntimeError, match=r"ffmpeg is not on PATH and PyAV is not installed"):
        audio_io.load_audio(str(speech_wav))


def test_arrays_and_tensors_pass_through_transcribe(tiny_at, speech_wav, tmp_path):
    clip = tmp_path / "clip.wav"  # the first 2 s ("My favorite ..."), to keep decoding short
    subprocess.run(["sox", str(speech_wav), str(clip), "trim", "0", "2"], check=True)
    array = whisper.load_audio(str(clip))
    original = array.copy()
    tensor = torch.from_numpy(original.copy())
    assert audio_io.as_audio(array) is array and audio_io.as_audio(tensor) is tensor
    options = dict(fp16=False, temperature=0.0)
    from_path = whisper_at.transcribe(tiny_at, str(clip), **options)
    assert "favorite" in from_path["text"].lower()
    for audio in (array, tensor):
        result = whisper_at.transcribe(tiny_at, audio, **options)
        assert result["text"] == from_path["text"]
        assert torch.equal(result["audio_tag"], from_path["audio_tag"])
    np.testing.assert_array_equal(array, original)  # not modified in place
    assert torch.equal(tensor, torch.from_numpy(original))
    with pytest.raises(TypeError, match="audio must be a path, numpy array or tensor, got list"):
        whisper_at.transcribe(tiny_at, original.tolist())


def test_log_mel_of_a_path_needs_no_ffmpeg(speech_wav, no_ffmpeg):
    with pytest.raises(FileNotFoundError):  # openai-whisper's decodes with the CLI
        whisper.log_mel_spectrogram(str(speech_wav))
    expected = whisper.log_mel_spectrogram(audio_io.load_audio(str(speech_wav)), padding=480)
    assert torch.equal(log_mel_spectrogram(str(speech_wav), padding=480), expected)


def test_cli_transcribes_without_ffmpeg(tiny_en_pt, tiny_head_file, tmp_path):
    """The README's first command on a machine without ffmpeg (PyAV decodes), offline: the
    same result files as with ffmpeg."""
    argv = [str(REPO / "examples" / "speech.wav"), "--model", str(tiny_en_pt), "--at_head",
            str(tiny_head_file), "-f", "json", "--fp16", "False", "--verbose", "False"]
    assert cli.main(argv + ["--output_dir", str(tmp_path / "ffmpeg")]) == 0
    (tmp_path / "bin").mkdir()
    env = dict(os.environ, PATH=str(tmp_path / "bin"),
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    assert shutil.which("ffmpeg", path=env["PATH"]) is None
    run = subprocess.run([sys.executable, "-m", "whisper_at", *argv, "--output_dir",
                          str(tmp_path / "pyav")], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    expected = json.loads((tmp_path / "ffmpeg" / "speech.json").read_text())
    actual = json.loads((tmp_path / "pyav" / "speech.json").read_text())
    assert actual == expected
    assert "music, laughter" in actual["text"].lower()
