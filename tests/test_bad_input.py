"""Bad input, one case per test: each raises a precise error type whose message names the
problem, or gives a defined result (empty audio, silence, audio shorter than a tag row)."""

import importlib.metadata
import math
import os
import subprocess
import sys
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement

import whisper_at
from whisper_at import audio_io

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

DECODERS = ["ffmpeg", "pyav"]


@pytest.fixture(params=DECODERS)
def decoder(request, monkeypatch, tmp_path) -> str:
    """Runs a test with the ffmpeg CLI, then with PATH lacking ffmpeg (PyAV)."""
    if request.param == "pyav":
        monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    assert audio_io.have_ffmpeg() == (request.param == "ffmpeg")
    return request.param


def _write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((samples * 32768).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def speech_1s(speech_wav, tmp_path_factory) -> Path:
    """The first second of speech_wav."""
    samples = audio_io.load_audio(str(speech_wav))[:16000]
    return _write_wav(tmp_path_factory.mktemp("short") / "speech_1s.wav", samples)


@pytest.fixture(scope="module")
def tagged(tiny_at, speech_1s) -> dict:
    """A real result with audio_tag (1 s of audio, at_time_res 10), for parse_at_label."""
    return whisper_at.transcribe(tiny_at, str(speech_1s), fp16=False, temperature=0.0)


# --- audio -------------------------------------------------------------------------------


def test_missing_audio_file(tiny_at, tmp_path, decoder):
    path = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match=f"audio file not found: {path}"):
        whisper_at.transcribe(tiny_at, str(path))


def test_directory_instead_of_audio_file(tiny_at, tmp_path, decoder):
    message = f"expected an audio file, got a directory: {tmp_path}"
    with pytest.raises(IsADirectoryError, match=message):
        whisper_at.transcribe(tiny_at, str(tmp_path))


def test_random_bytes_wav(tiny_at, tmp_path, decoder):
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(RuntimeError, match=f"cannot decode audio file {path}: Invalid data found"):
        whisper_at.transcribe(tiny_at, str(path))


def test_zero_byte_file(tiny_at, tmp_path, decoder):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(RuntimeError, match=f"cannot decode audio file {path}: Invalid data found"):
        whisper_at.transcribe(tiny_at, str(path))


def test_file_without_audio_stream(tiny_at, tmp_path, decoder):
    path = tmp_path / "text.mp3"
    path.write_text("ID3 is what an mp3 starts with, but this is text\n" * 100)
    with pytest.raises(RuntimeError, match=f"cannot decode audio file {path}"):
        whisper_at.transcribe(tiny_at, str(path))


def test_empty_array_gives_empty_result(tiny_at):
    result = whisper_at.transcribe(tiny_at, np.zeros(0, dtype=np.float32), fp16=False)
    assert result["text"] == "" and result["segments"] == []
    assert result["audio_tag"].shape == (0, 527) and result["at_time_res"] == 10


def test_header_only_wav_gives_empty_result(tiny_at, tmp_path, decoder):
    path = _write_wav(tmp_path / "header_only.wav", np.zeros(0))
    assert path.stat().st_size == 44
    result = whisper_at.transcribe(tiny_at, str(path), fp16=False)
    assert result["text"] == "" and result["audio_tag"].shape == (0, 527)


def test_silence_gives_empty_text_and_tags(tiny_at, silence_wav):
    result = whisper_at.transcribe(tiny_at, str(silence_wav), fp16=False)
    assert result["text"] == ""
    assert result["audio_tag"].shape == (1, 527) and torch.isfinite(result["audio_tag"]).all()


def test_audio_shorter_than_at_time_res(tagged):
    assert tagged["at_time_res"] == 10
    assert tagged["audio_tag"].shape == (1, 527) and torch.isfinite(tagged["audio_tag"]).all()


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, "at_time_res must be a positive number of seconds, got 0"),
        (-0.4, ValueError, "at_time_res must be a positive number of seconds, got -0.4"),
        (0.5, ValueError, r"at_time_res must be a multiple of 0.4 s .* got 0.5"),
        (math.nan, ValueError, "at_time_res must be a positive number of seconds, got nan"),
        (math.inf, ValueError, "at_time_res must be a positive number of seconds, got inf"),
        (30.4, ValueError, "at_time_res must be at most 30 s"),
        ("10", TypeError, "at_time_res must be a number of seconds, got '10'"),
        (True, TypeError, "at_time_res must be a number of seconds, got True"),
    ],
)
def test_bad_at_time_res(tiny_at, speech_1s, value, error, message):
    with pytest.raises(error, match=message):
        whisper_at.transcribe(tiny_at, str(speech_1s), at_time_res=value)


# --- models and heads --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "tiny.en", "base", "base.en"])
def test_at_low_compute_on_tiny_and_base(name, tmp_path):
    with pytest.raises(ValueError, match=r"heads exist only for .*medium.*small.*; use "
                       f"at_low_compute=False for '{name}'"):  # fmt: skip
        whisper_at.load_model(name, device="cpu", download_root=str(tmp_path), at_low_compute=True)
    assert os.listdir(tmp_path) == []  # refused before downloading anything


def test_head_of_another_model_size(tiny_en_pt, base_head_file):
    message = "width 512, but the backbone's are 384 wide: the head belongs to another model size"
    with pytest.raises(ValueError, match=message):
        whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(base_head_file))


def test_unknown_model_name():
    with pytest.raises(RuntimeError, match=r"Model tiny\.xx not found; available models = "
                       r"\['tiny\.en', 'tiny', 'base\.en', 'base', .*'large-v3'"):  # fmt: skip
        whisper_at.load_model("tiny.xx", device="cpu")


def test_model_directory_of_unknown_layout(tmp_path, tiny_head_file):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=f"Unrecognized model directory {tmp_path}: expected"):
        whisper_at.load_model(str(tmp_path), device="cpu", at_head=str(tiny_head_file))


def test_model_file_of_random_bytes(tmp_path, tiny_head_file):
    path = tmp_path / "model.pt"
    path.write_bytes(b"GARBAGE!" * 100)
    with pytest.raises(ValueError, match=f"{path} is not a torch checkpoint"):
        whisper_at.load_model(str(path), device="cpu", at_head=str(tiny_head_file))


def test_missing_head_file(tiny_en_pt, tmp_path):
    path = tmp_path / "head.pth"
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {path}"):
        whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(path))


def test_directory_as_head_file(tiny_en_pt, tmp_path):
    message = f"expected a checkpoint file, got a directory: {tmp_path}"
    with pytest.raises(IsADirectoryError, match=message):
        whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(tmp_path))


def test_truncated_head_file(tiny_en_pt, tiny_head_file, tmp_path):
    path = tmp_path / "head.pth"
    path.write_bytes(tiny_head_file.read_bytes()[:100000])
    assert not zipfile.is_zipfile(path)
    with pytest.raises(RuntimeError, match=f"refusing to load {path}: .*corrupt or truncated"):
        whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(path))


def test_head_without_tltr_weights(tiny_en_pt, tmp_path):
    path = tmp_path / "head.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a TL-TR head checkpoint: missing key"):
        whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(path))


# --- parse_at_label ----------------------------------------------------------------------


def test_parse_at_label_unknown_language(tagged):
    with pytest.warns(UserWarning, match="'klingon' language not supported. Use English"):
        labels = whisper_at.parse_at_label(tagged, language="klingon", p_threshold=-100)
    english = whisper_at.parse_at_label(tagged, language="en", p_threshold=-100)
    assert labels == english and english[0]["audio tags"]


@pytest.mark.parametrize("top_k", [0, -1, 1.5])
def test_parse_at_label_top_k_below_one(tagged, top_k):
    with pytest.raises(ValueError, match=f"top_k must be an int >= 1, got {top_k}"):
        whisper_at.parse_at_label(tagged, top_k=top_k)


@pytest.mark.parametrize("index", [527, -1])
def test_parse_at_label_class_index_out_of_range(tagged, index):
    with pytest.raises(ValueError, match=f"include_class_list index {index} out of range"):
        whisper_at.parse_at_label(tagged, include_class_list=[0, index])


def test_parse_at_label_without_audio_tag(tagged):
    result = {k: v for k, v in tagged.items() if k != "audio_tag"}
    with pytest.raises(ValueError, match="result has no 'audio_tag'"):
        whisper_at.parse_at_label(result)


# --- environment: triton is optional ---------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _triton_requirement(requirements) -> Requirement:
    found = [Requirement(r) for r in requirements if Requirement(r).name == "triton"]
    assert len(found) == 1, requirements
    return found[0]


def test_triton_marker_matches_openai_whisper():
    with open(REPO / "pyproject.toml", "rb") as f:
        ours = _triton_requirement(tomllib.load(f)["project"]["dependencies"])
    upstream = _triton_requirement(importlib.metadata.requires("openai-whisper"))
    assert ours.specifier == upstream.specifier
    environments = [
        {"platform_machine": machine, "sys_platform": platform}
        for machine in ("x86_64", "aarch64", "arm64", "AMD64")
        for platform in ("linux", "linux2", "darwin", "win32")
    ]
    for env in environments:
        assert ours.marker.evaluate(env) == upstream.marker.evaluate(env), env
    assert [ours.marker.evaluate(env) for env in environments[:4]] == [True, True, False, False]


def test_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None; "  # `import triton` raises ImportError
        f"sys.path.insert(0, {str(REPO)!r}); import whisper_at, whisper_at.timing; "
        "assert sys.modules['triton'] is None; print(whisper_at.__file__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(REPO / "whisper_at" / "__init__.py")
