"""Audio, truth and scoring of bench_gate.py's sweep: speech A, 40 s of non-speech, speech B.

Speech A ends ``e`` s into a 10 s tag row and speech B starts ``r`` s into one (``e = r`` from
OFFSETS), so the gate's row-level decisions meet every kind of boundary: a row with 0.5 s of
speech and 9.5 s of non-speech (e = 0.5 is not swept; e = 9.5 / r = 9.5 are), one with 1 s, ...
The non-speech between them is a 440 Hz tone, white noise, plucked-string "music" or digital
silence; the speech is espeak-ng (two voices, testkit.SENTENCES, which the test suite's speech
head never heard) or recorded human speech: five LibriVox utterances (Jane Austen, "Sense and
Sensibility", public domain) that pocketsphinx's source distribution ships as test data with
their transcripts and speech/silence labels (RECORDED; fetched with `pip download`, sha256
pinned). Files are cached under <cache>/bench-audio/gate-sweep/<recipe hash>/ with a JSON of
their true speech times beside each.
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import common
import testkit

RATE = testkit.RATE
ROW = 10.0  # seconds per tag row (at_time_res)
OFFSETS = [0, 1, 2, 5, 8, 9.5]  # speech A ends / speech B starts this far into a row
NON_SPEECH = 40.0  # about; exactly 40 s when e = r (B starts r s into a row, 32-42 s after A)
KINDS = ["tone", "noise", "music", "silence"]
ESPEAK_VOICES = ["en-us", "en-gb+f2"]
SOURCES = ESPEAK_VOICES + ["librivox"]
ESPEAK_GAP = 1.0  # s of silence between sentences (before the gaps are stretched)
RECORDED_GAP = 0.5  # between the recorded utterances (each has ~0.25 s of room tone around it)

# the pocketsphinx sdist holding test/data/librivox (utterance ids, .txt transcripts, .lab
# speech/silence times); pinned like testkit.WHEELS
RECORDED = {
    "requirement": "pocketsphinx==5.1.1",
    "file": "pocketsphinx-5.1.1.tar.gz",
    "sha256": "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
    "member": "pocketsphinx-5.1.1/test/data/librivox/sense_and_sensibility_01_austen_64kb-",
    "a": ["0870", "0880", "0890"],  # speech A: 15.4 s, three utterances
    "b": ["0920", "0930"],  # speech B: 9.3 s, two
}

Piece = Tuple[object, float, float, str]  # (samples, speech start s, speech end s, text)


# ---------------------------------------------------------------- speech sources


def recorded_dir(cache: Path) -> Path:
    """<cache>/librivox: the five LibriVox utterances (.wav, .txt, .lab) from the pinned
    pocketsphinx sdist, downloaded with `pip download --no-deps --no-binary :all:`."""
    dest = cache / "librivox"
    with testkit.locked(cache, "librivox"):
        if dest.is_dir():
            return dest
        from whisper_at.formats.weights import _sha256

        wheels = cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        sdist = wheels / RECORDED["file"]
        if not sdist.is_file():
            with tempfile.TemporaryDirectory(dir=wheels, prefix=".download-") as tmp:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                       ":all:", "-d", tmp, RECORDED["requirement"]]
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
                got = Path(tmp) / RECORDED["file"]
                if proc.returncode != 0 or not got.is_file():
                    raise RuntimeError(f"$ {' '.join(cmd)}\n{proc.stdout[-2000:]}\n"
                                       f"{proc.stderr[-2000:]}")
                if _sha256(str(got)) != RECORDED["sha256"]:
                    raise RuntimeError(f"{got.name}: sha256 differs from the pinned one")
                os.replace(got, sdist)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".librivox-"))
        with tarfile.open(sdist) as tar:
            for uid in RECORDED["a"] + RECORDED["b"]:
                for ext in (".wav", ".txt", ".lab"):
                    member = tar.extractfile(RECORDED["member"] + uid + ext)
                    (tmp / (uid + ext)).write_bytes(member.read())
        os.replace(tmp, dest)
    return dest


def recorded_pieces(cache: Path, ids: Sequence[str]) -> List[Piece]:
    """The LibriVox utterances ``ids`` (RECORDED) as pieces: (audio, speech start s, speech end
    s, text)."""
    folder, pieces = recorded_dir(cache), []
    for uid in ids:
        marks = [float(line.split()[0]) for line in (folder / f"{uid}.lab").read_text().split("\n")
                 if line.strip()]  # "<time> <time> speech" then "<time> <time> silence"
        text = (folder / f"{uid}.txt").read_text().strip()
        pieces.append((testkit.read_wav(folder / f"{uid}.wav"), marks[0], marks[1], text))
    return pieces


def _espeak_pieces(work: Path, voice: str, sentences: Sequence[str]) -> List[Piece]:
    """espeak-ng at 140 wpm, each sentence trimmed to its first and last audible sample."""
    import numpy as np

    pieces = []
    for i, text in enumerate(sentences):
        audio = testkit.read_wav(testkit.espeak(text, work / f"{i}.wav", voice))
        loud = np.flatnonzero(np.abs(audio) > 0.002)
        audio = audio[loud[0]: loud[-1] + 1]
        pieces.append((audio, 0.0, len(audio) / RATE, text))
    return pieces


def speech_source(name: str, cache: Path, work: Path) -> Tuple[List[Piece], List[Piece], float]:
    """(pieces of speech A, pieces of speech B, gap s) of a source name (SOURCES)."""
    if name == "librivox":
        return (recorded_pieces(cache, RECORDED["a"]), recorded_pieces(cache, RECORDED["b"]),
                RECORDED_GAP)
    work.mkdir(parents=True, exist_ok=True)
    return (_espeak_pieces(work, name, testkit.SENTENCES[0:4]),
            _espeak_pieces(work, name, testkit.SENTENCES[4:8]), ESPEAK_GAP)


def non_speech(kind: str, seconds: float, work: Path):
    """``seconds`` of a non-speech kind (KINDS) as float samples."""
    import numpy as np

    n = int(round(seconds * RATE))
    if kind == "silence":
        return np.zeros(n, np.float32)
    length = f"{seconds + 1:.3f}"
    path = work / f"{kind}.wav"
    if kind == "tone":
        testkit.synth(path, float(length), "sine", "440", "vol", "0.3")
    elif kind == "noise":
        testkit.synth(path, float(length), "whitenoise", "vol", "0.05")
    elif kind == "music":
        testkit.pluck_music(path, common.ARPEGGIO, 0.25, float(length))
    else:
        raise ValueError(f"unknown non-speech kind {kind!r}")
    return testkit.read_wav(path)[:n]


# ---------------------------------------------------------------- files


def _lay(pieces: List[Piece], gaps: List[int], cursor: int, out: list, truth: list) -> int:
    """Append pieces separated by gaps (samples) at sample ``cursor``; returns the new cursor."""
    import numpy as np

    for i, (audio, start, end, text) in enumerate(pieces):
        if i:
            out.append(np.zeros(gaps[i - 1], np.float32))
            cursor += gaps[i - 1]
        truth.append([round(cursor / RATE + start, 3), round(cursor / RATE + end, 3), text])
        out.append(audio)
        cursor += len(audio)
    return cursor


def _stretched(pieces: List[Piece], gap: float, lead: int, end_at: float) -> List[int]:
    """Gaps (samples) between pieces laid from sample ``lead`` so that the last piece's speech
    ends ``end_at`` s into a row: the base gap plus an equal share of the shift needed."""
    gaps = [int(round(gap * RATE))] * (len(pieces) - 1)
    natural = lead + sum(len(a) for a, *_ in pieces) + sum(gaps) - len(pieces[-1][0])
    natural += int(round(pieces[-1][2] * RATE))
    shift = int(round(((end_at - natural / RATE) % ROW) * RATE)) % int(ROW * RATE)
    return [g + shift // len(gaps) + (i < shift % len(gaps)) for i, g in enumerate(gaps)]


def recipe_key() -> str:
    """Hash of the code and constants that make the files (a new recipe, a new folder)."""
    return common.recipe_hash(
        (recorded_dir, recorded_pieces, _espeak_pieces, speech_source, non_speech, _lay,
         _stretched, build, build_alone, testkit.sox, testkit.espeak, testkit.synth,
         testkit.pluck_music),
        (ROW, NON_SPEECH, ESPEAK_GAP, RECORDED_GAP, RECORDED, testkit.SENTENCES[:8],
         common.ARPEGGIO))  # fmt: skip


def folder() -> Path:
    path = common.cache_dir() / "bench-audio" / "gate-sweep" / recipe_key()
    path.mkdir(parents=True, exist_ok=True)
    return path


def build(source: str, kind: str, e: float, r: float, path: Path, work: Path) -> dict:
    """Write ``path`` (A, non-speech, B, 1 s of silence) and return its truth."""
    import numpy as np

    speech_a, speech_b, gap = speech_source(source, common.cache_dir(), work / "speech")
    out, pieces = [], []
    cursor = _lay(speech_a, _stretched(speech_a, gap, 0, e), 0, out, pieces)
    a_end = pieces[-1][1]
    b_start = a_end + 32 + (r - (a_end + 32)) % ROW  # 32-42 s later, r s into a row
    b_cursor = int(round((b_start - speech_b[0][1]) * RATE))  # B's first piece's first sample
    out.append(non_speech(kind, (b_cursor - cursor) / RATE, work))
    n_a = len(pieces)
    cursor = _lay(speech_b, [int(round(gap * RATE))] * len(speech_b), b_cursor, out, pieces)
    out.append(np.zeros(RATE, np.float32))
    testkit.write_wav(path, np.concatenate(out))
    b_start = pieces[n_a][0]
    return {"source": source, "kind": kind, "e": e, "r": r, "pieces": pieces,
            "a": [pieces[0][0], a_end], "b": [b_start, pieces[-1][1]],
            "non_speech": [a_end, b_start],
            "text": " ".join(p[2] for p in pieces), "seconds": round(cursor / RATE + 1, 3)}


def build_alone(source: str, path: Path, work: Path) -> dict:
    """Speech A and B with their base gaps, no non-speech: the speech-alone baseline."""
    import numpy as np

    speech_a, speech_b, gap = speech_source(source, common.cache_dir(), work / "speech")
    out, pieces = [], []
    both = speech_a + speech_b
    cursor = _lay(both, [int(round(gap * RATE))] * len(both), 0, out, pieces)
    out.append(np.zeros(RATE, np.float32))
    testkit.write_wav(path, np.concatenate(out))
    return {"source": source, "kind": "alone", "pieces": pieces,
            "text": " ".join(p[2] for p in pieces), "seconds": round(cursor / RATE + 1, 3)}


def _cached(name: str, make) -> Tuple[Path, dict]:
    directory = folder()
    path, meta = directory / f"{name}.wav", directory / f"{name}.json"
    if not (path.is_file() and meta.is_file()):
        work = Path(tempfile.mkdtemp(dir=directory, prefix=".build-"))
        try:
            truth = make(work / "out.wav", work)
            (work / "out.json").write_text(json.dumps(truth, indent=1))
            os.replace(work / "out.wav", path)
            os.replace(work / "out.json", meta)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path, json.loads(meta.read_text())


def sweep_file(source: str, kind: str, offset: float) -> Tuple[Path, dict]:
    """(wav, truth) of one file of the sweep (e = r = offset), made once."""
    name = f"{source}_{kind}_{offset:g}"
    return _cached(name, lambda path, work: build(source, kind, offset, offset, path, work))


def alone_file(source: str) -> Tuple[Path, dict]:
    return _cached(f"{source}_alone", lambda path, work: build_alone(source, path, work))


# ---------------------------------------------------------------- scoring


_NORMALIZER: list = []


def words(text: str) -> List[str]:
    """Words of ``text`` after openai-whisper's EnglishTextNormalizer."""
    if not _NORMALIZER:
        from whisper.normalizers import EnglishTextNormalizer

        _NORMALIZER.append(EnglishTextNormalizer())
    return _NORMALIZER[0](text).split()


def matched(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Longest common subsequence of two word lists (words found in order)."""
    row = [0] * (len(hypothesis) + 1)
    for ref in reference:
        previous = 0
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], previous + 1 if ref == hyp else max(row[j], row[j - 1])
    return row[-1]


def edits(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def score(segments: Sequence[Tuple[float, float, str]], truth: dict) -> dict:
    """``wer``, ``edits``/``spoken`` words, ``lost`` (spoken words missing from an in-order
    alignment), ``in_non_speech`` (words of segments whose middle lies between A's end and B's
    start), ``a_end_err`` (end of the last segment starting before A's end, minus A's end) and
    ``b_start_err`` (start of the first segment ending after B's start, minus B's start;
    None when there is no such segment)."""
    spoken = words(truth["text"])
    heard = [w for _, _, text in segments for w in words(text)]
    out = {"spoken": len(spoken), "edits": edits(spoken, heard),
           "lost": len(spoken) - matched(spoken, heard)}
    out["wer"] = out["edits"] / max(1, len(spoken))
    if "non_speech" in truth:
        (a, b), in_non = truth["non_speech"], 0
        for start, end, text in segments:
            in_non += len(words(text)) if a <= (start + end) / 2 < b else 0
        out["in_non_speech"] = in_non
        last_a = [end for start, end, _ in segments if start < a]
        first_b = [start for start, end, _ in segments if end > b]
        out["a_end_err"] = last_a[-1] - a if last_a else None
        out["b_start_err"] = first_b[0] - b if first_b else None
    return out


def misses(cell: dict, base: dict, alone_wer: float, tolerance: float = 1.0) -> List[str]:
    """The targets a gated cell misses against its ungated ``base`` cell (same file and
    backend) and the backend's ungated speech-alone WER."""
    out = []
    if cell["wer"] > base["wer"] + 0.01 + 1e-9:
        out.append(f"WER {cell['wer']:.3f} > ungated {base['wer']:.3f} + 0.01")
    if cell["wer"] > 1.5 * alone_wer + 1e-9:
        out.append(f"WER {cell['wer']:.3f} > 1.5 x speech-alone {alone_wer:.3f}")
    lost = max(0, cell["lost"] - base["lost"])
    if lost:
        out.append(f"{lost} speech words lost to the gate")
    if cell["in_non_speech"]:
        out.append(f"{cell['in_non_speech']} words over non-speech")
    for key, what in (("a_end_err", "A's last segment ends"), ("b_start_err", "B's first "
                                                                             "segment starts")):
        value: Optional[float] = cell[key]
        if value is None:
            out.append(f"{what}: no segment")
        elif abs(value) > tolerance:
            out.append(f"{what} {value:+.2f} s off")
    return out


def layout(truth: dict) -> str:
    (a0, a1), (b0, b1) = truth["a"], truth["b"]
    return (f"A {a0:.2f}-{a1:.2f} s, {truth['kind']} {a1:.2f}-{b0:.2f} s, B {b0:.2f}-{b1:.2f} s"
            f" (of {truth['seconds']:.1f} s)")


def sweep(sources: Sequence[str], kinds: Sequence[str], offsets: Sequence[float]
          ) -> Dict[str, Tuple[Path, dict]]:
    """name -> (wav, truth) of every file of the sweep, in order."""
    return {f"{s} {k} {o:g}": sweep_file(s, k, o) for s in sources for k in kinds for o in offsets}
