"""`whisper-at noise-study`: exact-SNR mixing, references, and WER against SNR (tiny.en)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import LONG_SPEECH_SENTENCES, _run, _sox_out, _speak
from test_research_synth import read_wav

from whisper_at.research import main as research_main
from whisper_at.research.noise import (
    fit_length,
    mix_at_snr,
    noise_classes,
    read_references,
    snr_db,
    word_error_rate,
)


@pytest.mark.parametrize("snr", [-20, -10, -3.5, 0, 7.25, 20])
@pytest.mark.parametrize("noise_name", ["noise_wav", "tone_wav"])
def test_mixing_yields_the_requested_snr(request, speech_wav, noise_name, snr):
    speech = read_wav(speech_wav)
    noise = read_wav(request.getfixturevalue(noise_name))
    for noise_clip in (noise[:16000], noise, np.concatenate([noise, noise])):  # loop and trim
        mixture = mix_at_snr(speech, noise_clip, snr)
        assert mixture.dtype == np.float32 and len(mixture) == len(speech)
        added = mixture.astype(np.float64) - speech
        assert abs(snr_db(speech, added) - snr) < 0.01
        fitted = fit_length(noise_clip.astype(np.float64), len(speech))
        scale = np.dot(added, fitted) / np.dot(fitted, fitted)
        np.testing.assert_allclose(added, scale * fitted, rtol=1e-5, atol=1e-6)  # looped noise


def test_mixing_refuses_silence_and_fits_noise_length(speech_wav):
    speech = read_wav(speech_wav)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(speech, np.zeros(1000, np.float32), 0)
    with pytest.raises(ValueError, match="empty"):
        mix_at_snr(speech, np.zeros(0, np.float32), 0)
    np.testing.assert_array_equal(fit_length(np.arange(3.0), 7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(fit_length(np.arange(9.0), 4), [0, 1, 2, 3])


def test_references_and_noise_classes_are_found(tmp_path, speech_wav, noise_wav):
    speech = tmp_path / "speech"
    (speech / "19" / "198").mkdir(parents=True)
    for name in ("19-198-0000", "19-198-0001", "beside"):
        (speech / "19" / "198" / f"{name}.wav").write_bytes(speech_wav.read_bytes())
    (speech / "19" / "198" / "19-198-0000.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK\n"
    )
    (speech / "19" / "198" / "beside.txt").write_text("Text beside the audio.\n")
    listing = tmp_path / "refs.txt"
    listing.write_text("19-198-0001 overridden by the LibriSpeech list\nextra An extra line\n")
    refs = read_references(str(speech), str(listing))
    assert refs == {
        "19-198-0000": "NORTHANGER ABBEY",
        "19-198-0001": "THIS LITTLE WORK",
        "beside": "Text beside the audio.",
        "extra": "An extra line",
    }
    noise = tmp_path / "noise"
    for rel in ("rain/a.wav", "rain/b.wav", "dog/c.wav"):
        (noise / rel).parent.mkdir(parents=True, exist_ok=True)
        (noise / rel).write_bytes(noise_wav.read_bytes())
    assert {k: [Path(p).name for p in v] for k, v in noise_classes(str(noise)).items()} == {
        "dog": ["c.wav"],
        "rain": ["a.wav", "b.wav"],
    }
    assert word_error_rate(["Hello, world!"], ["hello world"]) == 0.0
    assert word_error_rate(["red green blue yellow"], ["red green"]) == 0.5
    assert word_error_rate(["one two three four"], ["one two"]) == 1.0  # "1234" vs "12"


@pytest.fixture(scope="module")
def study_dirs(tmp_path_factory):
    """Three espeak-ng utterances with .txt references; white and pink noise classes."""
    root = tmp_path_factory.mktemp("study")
    speech, noise = root / "speech", root / "noise"
    speech.mkdir()
    for i, text in enumerate(LONG_SPEECH_SENTENCES[:3]):
        _speak(text, speech / f"utt{i}.wav", 0.2, 0.2)
        (speech / f"utt{i}.txt").write_text(text)
    for kind in ("white", "pink"):
        (noise / kind).mkdir(parents=True)
        path = noise / kind / f"{kind}.wav"
        _run(["sox", "-R", "-n", *_sox_out(path), "synth", "3", f"{kind}noise"])
    return speech, noise


def test_noise_study_wer_rises_as_snr_falls(study_dirs, tiny_en_pt, tmp_path):
    speech, noise = study_dirs
    out, plot = tmp_path / "report.json", tmp_path / "wer.png"
    args = ["noise-study", str(speech), str(noise), "--model", str(tiny_en_pt)]
    args += ["--snrs", "-10,20", "--fallback_step", "0", "--out", str(out), "--plot", str(plot)]
    assert research_main(args) == 0
    report = json.loads(out.read_text())
    assert report["utterances"] == 3 and report["classes"] == ["pink", "white"]
    assert report["clean"] < 0.2, report["transcripts"][:3]
    assert report["wer"]["-10"] > report["wer"]["20"] + 0.3, report["wer"]
    assert report["wer"]["20"] < 0.3
    for by_snr in report["per_class"].values():
        assert by_snr["-10"] > by_snr["20"]
    assert len(report["transcripts"]) == 3 * (1 + 2 * 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
