"""A synthetic labelled sound set for the research tools, and tests of its label files.

Every clip (2-10 s, 16 kHz) has one "primary" non-speech sound (sine 1 kHz, 300-3000 Hz chirp,
120 Hz hum, white or pink noise, all made with sox), sometimes a quieter second one, and espeak-ng
speech in about half the clips. Labels are written both AudioSet-style (multi-label, AudioSet mids;
used to train heads) and ESC-50-style (the primary sound and a fold; used by the probe).
"""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
from conftest import LONG_SPEECH_SENTENCES, SAMPLE_RATE, _run, _sox_out, _speak
from testkit import read_wav, write_wav

from whisper_at.labels import class_ids, label_index
from whisper_at.research.labelsets import read_labels

# synthetic sound -> (AudioSet display name, sox synth arguments)
SOUNDS = {
    "sine": ("Sine wave", ["sine", "1000"]),
    "chirp": ("Chirp tone", ["sine", "300-3000"]),
    "hum": ("Hum", ["sine", "120"]),
    "white": ("White noise", ["whitenoise"]),
    "pink": ("Pink noise", ["pinknoise"]),
}
PRIMARY = list(SOUNDS)
SPEECH = "Speech"
AUDIOSET_NAMES = [SPEECH] + [name for name, _ in SOUNDS.values()]
AUDIOSET_INDICES = [label_index(name) for name in AUDIOSET_NAMES]


@dataclass(frozen=True)
class SynthSet:
    audio_dir: Path
    audioset_csv: Path
    esc50_csv: Path
    labels: Dict[str, Tuple[int, ...]]  # clip id -> AudioSet class indices
    primary: Dict[str, int]  # clip id -> index into PRIMARY
    folds: Dict[str, int]


def _sources(work: Path) -> Dict[str, np.ndarray]:
    """12 s of each synthetic sound, and each speech sentence, as arrays."""
    work.mkdir(parents=True, exist_ok=True)
    sources = {}
    for name, (_, synth) in SOUNDS.items():
        path = work / f"{name}.wav"
        if not path.exists():
            _run(["sox", "-R", "-n", *_sox_out(path), "synth", "12", *synth])
        sources[name] = read_wav(path)
    for i, text in enumerate(LONG_SPEECH_SENTENCES):
        path = work / f"sentence{i:02d}.wav"
        if not path.exists():
            _speak(text, path)
        sources[f"speech{i}"] = read_wav(path)
    return sources


def _rms_normalized(x: np.ndarray, rms: float) -> np.ndarray:
    return x * (rms / max(float(np.sqrt(np.mean(x**2))), 1e-8))


def make_synth_set(root: Path, n_clips: int, seed: int, sources_dir: Path) -> SynthSet:
    """Write ``n_clips`` clips and their label CSVs under ``root``; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    sources = _sources(sources_dir)
    audio_dir = root / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    labels, primary, folds = {}, {}, {}
    for i in range(n_clips):
        n = int(rng.uniform(2.0, 10.0) * SAMPLE_RATE)
        main = i % len(PRIMARY)
        present = {main}
        clip = np.zeros(n)
        if rng.random() < 0.35:
            present.add(int(rng.integers(len(PRIMARY))))
        for k in sorted(present):
            source = sources[PRIMARY[k]]
            start = int(rng.integers(0, len(source) - n))
            level = (0.08 if k == main else 0.03) * rng.uniform(0.6, 1.4)
            clip += _rms_normalized(source[start : start + n], level)
        names = {SOUNDS[PRIMARY[k]][0] for k in present}
        if rng.random() < 0.5:
            speech = sources[f"speech{int(rng.integers(len(LONG_SPEECH_SENTENCES)))}"][:n]
            offset = int(rng.integers(0, n - len(speech) + 1))
            clip[offset : offset + len(speech)] += _rms_normalized(speech, 0.12)
            names.add(SPEECH)
        cid = f"syn{seed:02d}_{i:03d}"
        write_wav(audio_dir / f"{cid}.wav", clip)
        labels[cid] = tuple(sorted(label_index(name) for name in names))
        primary[cid] = main
        folds[cid] = 1 + (i // len(PRIMARY)) % 5
    audioset_csv = root / "segments.csv"
    mids = class_ids()
    with open(audioset_csv, "w", encoding="utf-8") as f:
        f.write("# Segments csv created by the whisper-at tests\n")
        f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        for cid, idx in labels.items():
            f.write(f'{cid}, 0.000, 10.000, "{",".join(mids[k] for k in idx)}"\n')
    esc50_csv = root / "esc50.csv"
    with open(esc50_csv, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for cid, k in primary.items():
            writer.writerow([f"{cid}.wav", folds[cid], k, PRIMARY[k], False, cid, "A"])
    return SynthSet(audio_dir, audioset_csv, esc50_csv, labels, primary, folds)


def test_synthetic_labels_round_trip_through_both_csv_styles(tmp_path: Path):
    synth = make_synth_set(tmp_path / "set", 10, seed=7, sources_dir=tmp_path / "sources")
    clips = sorted(p.stem for p in synth.audio_dir.glob("*.wav"))
    assert clips == sorted(synth.labels)

    audioset = read_labels(str(synth.audioset_csv))
    assert audioset.kind == "audioset" and audioset.num_classes == 527
    assert audioset.class_names[AUDIOSET_INDICES[1]] == "Sine wave"
    for cid, expected in synth.labels.items():
        assert audioset.lookup(f"{cid}.wav") == (expected, None)
        assert label_index(SOUNDS[PRIMARY[synth.primary[cid]]][0]) in expected
        assert set(expected) <= set(AUDIOSET_INDICES)

    esc = read_labels(str(synth.esc50_csv))
    assert esc.kind == "esc50" and esc.class_names == tuple(PRIMARY)
    for cid in synth.labels:
        assert esc.lookup(f"sub/{cid}.wav") == ((synth.primary[cid],), synth.folds[cid])
    assert esc.lookup("unknown.wav") == (None, None)


def test_audioset_csv_matches_youtube_file_names(tmp_path: Path):
    csv_path = tmp_path / "balanced_train_segments.csv"
    csv_path.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=2, num_segs=2, num_unique_labels=3, num_positive_labels=3\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
        '--ZhevVpy1s, 50.000, 60.000, "/m/012xff"\n'
    )
    table = read_labels(str(csv_path))
    speech = (0, class_ids().index("/t/dd00088"))
    for name in ("--PJHxphWEs.wav", "Y--PJHxphWEs_30.000_40.000.wav", "--PJHxphWEs_30000.flac"):
        assert table.lookup(name) == (tuple(sorted(speech)), None), name
    assert table.lookup("--ZhevVpy1s.wav")[0] == (class_ids().index("/m/012xff"),)
    assert table.lookup("AAAAAAAAAAA.wav") == (None, None)
    csv_path.write_text('abc, 0, 10, "/m/not_a_class"\n')
    with pytest.raises(ValueError, match="/m/not_a_class"):
        read_labels(str(csv_path))
