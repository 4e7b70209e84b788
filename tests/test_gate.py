"""The speech gate and per-segment evidence, with real tiny.en weights and the speech head the
test run trains itself (conftest.speech_head_file) on held-out audio: espeak-ng speech, 20 s of
tone, 29 s of white noise, speech again (conftest.gate_wav)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from testkit import read_wav
from whisper.normalizers import EnglishTextNormalizer

import whisper_at
from whisper_at import gate
from whisper_at.gate import speech_probability

REPO = Path(__file__).resolve().parents[1]
P = 0.5
normalize = EnglishTextNormalizer()


def _words(text: str):
    return normalize(text).split()


def word_error_rate(reference, hypothesis) -> float:
    """Word-level edit distance / reference length."""
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1] / max(len(reference), 1)


def _run(model, audio, **options):
    """(result, decoder forward calls) of a seeded transcription."""
    calls = []
    handle = model.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        torch.manual_seed(0)
        result = whisper_at.transcribe(model, str(audio), fp16=False, **options)
    finally:
        handle.remove()
    return result, len(calls)


def _inside(segment, parts, kinds):
    """Whether the segment lies inside parts of these kinds (1 s tolerance at the edges)."""
    return any(kind in kinds and start - 1 <= segment["start"] and segment["end"] <= end + 1
               for start, end, kind, _ in parts)


@pytest.fixture(scope="module")
def runs(tiny_speech, gate_wav):
    """Gate off and gate on (P = 0.5) on the gate audio, both with segment info."""
    path, _ = gate_wav
    off = _run(tiny_speech, path, at_segment_info=True)
    on = _run(tiny_speech, path, at_speech_gate=P, at_segment_info=True)
    return {"off": off, "on": on}


def test_speech_head_separates_held_out_speech_from_tone_and_noise(
    tiny_speech, gate_wav, long_speech_wav, tone_wav, noise_wav
):
    path, parts = gate_wav
    probs = speech_probability(tiny_speech.tag(str(path))["audio_tag"])
    speech, other = [], []
    for k, p in enumerate(probs.tolist()):  # rows wholly inside one part
        inside = [kind for start, end, kind, _ in parts if start <= 10 * k and 10 * k + 10 <= end]
        (speech if inside == ["speech"] else other if inside else []).append(p)
    assert len(speech) >= 2 and len(other) >= 3
    # speech over a noise and hum bed, a louder tone and quieter noise than in training
    speech += speech_probability(tiny_speech.tag(str(long_speech_wav))["audio_tag"]).tolist()
    for wav in (tone_wav, noise_wav):
        other += speech_probability(tiny_speech.tag(str(wav))["audio_tag"]).tolist()
    assert min(speech) > 0.6 and max(other) < 0.3, (speech, other)


def test_gate_skips_non_speech_windows_and_keeps_the_speech(runs, gate_wav):
    (off, off_calls), (on, on_calls) = runs["off"], runs["on"]
    _, parts = gate_wav
    non_speech = ("tone", "noise")
    # without the gate, tiny.en writes words over the tone and noise
    invented = [s for s in off["segments"] if s["text"].strip() and _inside(s, parts, non_speech)]
    assert invented, off["segments"]
    # with it, the window inside the non-speech part is skipped, not decoded
    report = on["at_gate"]
    assert report["threshold"] == P and report["windows_skipped"] >= 1
    # ... and so is the noise at the start of the next window: decoding resumes at 70 s
    assert any(a <= 30 and b >= 70 for a, b in report["skipped"]), report
    assert all(parts[0][1] - 1 <= a and b <= parts[3][0] + 1 for a, b in report["skipped"])
    assert on_calls < 0.8 * off_calls, (on_calls, off_calls)
    # no text from the non-speech part is left, every segment lies in speech
    assert all(not _inside(s, parts, non_speech) for s in on["segments"] if s["text"].strip())
    assert [s["id"] for s in on["segments"]] == list(range(len(on["segments"])))
    for word in {w for s in invented for w in _words(s["text"])}:
        assert word not in _words(on["text"]) or word in _words(parts[0][3] + parts[3][3])
    # the speech is still transcribed: the first window's segments are identical; the second
    # speech part is transcribed at least as well as without the gate (here: better, as its
    # window no longer starts with 10 s of noise)
    first = [s for s in off["segments"] if s["seek"] == 0 and s["end"] <= parts[0][1] + 1]
    assert on["segments"][: len(first)] == first and len(first) >= 3

    def after(result):
        words = [w for s in result["segments"] if s["end"] > parts[3][0] for w in _words(s["text"])]
        return word_error_rate(_words(parts[3][3]), words)

    assert after(on) <= after(off) and after(on) < 0.15, (after(on), after(off))
    assert on["text"] == "".join(s["text"] for s in on["segments"])
    # the tag rows are all filled, also those of the skipped window
    assert on["audio_tag"].shape == off["audio_tag"].shape
    assert torch.isfinite(on["audio_tag"]).all()
    # rows 3-5 come from the window at 30 s in both runs (skipped with the gate)
    torch.testing.assert_close(on["audio_tag"][3:6], off["audio_tag"][3:6], atol=1e-5, rtol=0)


def test_segment_evidence_follows_the_documented_rules(runs, gate_wav):
    off, _ = runs["off"]
    _, parts = gate_wav
    probs = speech_probability(off["audio_tag"]).tolist()
    names = whisper_at.label_names("en")
    for segment in off["segments"]:
        # overlap-weighted mean of the rows' speech probabilities, computed independently
        total = weight = 0.0
        for k, p in enumerate(probs):
            overlap = min(segment["end"], 10 * k + 10) - max(segment["start"], 10 * k)
            if overlap > 0:
                total, weight = total + overlap * p, weight + overlap
        if weight == 0:  # an instant: its row
            total, weight = probs[min(int(segment["start"] // 10), len(probs) - 1)], 1.0
        assert segment["at_speech_prob"] == pytest.approx(total / weight, abs=1e-4)
        flagged = bool(segment["text"].strip()) and segment["at_speech_prob"] < 0.5
        assert segment["at_hallucination"] is flagged
        events = segment["at_events"]
        assert len(events) <= gate.SEGMENT_TOP_K
        assert all(e["prob"] >= gate.EVENT_FLOOR and names[e["index"]] == e["label"]
                   and e["index"] not in gate.speech_classes() for e in events)
        assert [e["prob"] for e in events] == sorted((e["prob"] for e in events), reverse=True)
        rows = range(int(segment["start"] // 10), int(math.ceil(segment["end"] / 10)))
        if all(_inside({"start": 10 * k, "end": 10 * k + 10}, parts, ("speech",)) for k in rows):
            assert not segment["at_hallucination"] and segment["at_speech_prob"] > 0.6
        if segment["text"].strip() and _inside(segment, parts, ("tone",)):
            assert segment["at_hallucination"]
            assert events and events[0]["label"] in ("Sine wave", "Chirp tone", "Hum")
    assert any(s["at_hallucination"] for s in off["segments"])
    # the gate reports the segments it dropped; without at_segment_info no key is added
    assert all(set(s) >= {"at_speech_prob", "at_events"} for s in runs["on"][0]["segments"])


@pytest.mark.parametrize(
    "options",
    [
        {"word_timestamps": True, "hallucination_silence_threshold": 2.0},
        {"clip_timestamps": "0,55,58", "no_speech_threshold": None,
         "condition_on_previous_text": False},
        {"temperature": 0.0, "initial_prompt": "Sentences read aloud.",
         "carry_initial_prompt": True},
    ],
    ids=["word_timestamps", "clips_no_threshold", "prompt"],
)
def test_gate_works_with_transcribe_options(tiny_speech, gate_wav, options):
    path, parts = gate_wav
    result, _ = _run(tiny_speech, path, at_speech_gate=P, **options)
    speech = [s for s in result["segments"] if s["text"].strip()]
    assert all(not _inside(s, parts, ("tone", "noise")) for s in speech), speech
    assert result["at_gate"]["windows_skipped"] >= 1
    for word in ("stella", "tomatoes", "library", "kitchen"):
        assert word in _words(result["text"]), result["text"]
    if options.get("word_timestamps"):
        assert all(w["start"] < parts[1][0] + 1 or w["start"] >= parts[3][0] - 1
                   for s in speech for w in s["words"])


def test_gate_at_zero_and_default_leave_asr_unchanged(tiny_speech, tone_wav, speech_wav):
    for audio in (tone_wav, speech_wav):
        plain, _ = _run(tiny_speech, audio)
        zero, _ = _run(tiny_speech, audio, at_speech_gate=0.0)
        report = zero.pop("at_gate")
        assert report["skipped"] == [] and report["dropped_segments"] == []
        assert torch.equal(zero.pop("audio_tag"), plain.pop("audio_tag"))
        assert zero == plain and "at_gate" not in plain
        assert all(not key.startswith("at_") for s in plain["segments"] for key in s)
    assert "garden" in plain["text"]


def test_bad_gate_arguments_are_named(tiny_speech, tiny_en_pt, speech_wav):
    for value in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"at_speech_gate must be a speech probability in "
                                             r"\[0, 1\], got"):
            whisper_at.transcribe(tiny_speech, str(speech_wav), at_speech_gate=value)
    for value in ("0.5", True, np.bool_(True)):
        with pytest.raises(TypeError, match="at_speech_gate must be a speech probability"):
            whisper_at.transcribe(tiny_speech, str(speech_wav), at_speech_gate=value)
    for value, error in ((-1, ValueError), (math.inf, ValueError), ("1", TypeError)):
        with pytest.raises(error, match="at_gate_margin must be a number of seconds >= 0"):
            whisper_at.transcribe(tiny_speech, str(speech_wav), at_speech_gate=0.5,
                                  at_gate_margin=value)
    # numpy's numbers are numbers (a threshold computed with numpy, e.g. a quantile)
    numpy_run, float_run = (whisper_at.transcribe(tiny_speech, str(speech_wav), fp16=False,
                                                  at_speech_gate=p)
                            for p in (np.float32(0.25), 0.25))
    assert numpy_run["text"] == float_run["text"] and "garden" in numpy_run["text"]
    assert numpy_run["at_gate"] == float_run["at_gate"]
    bare = whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=False)
    for options in ({"at_speech_gate": 0.5}, {"at_segment_info": True}):
        name = next(iter(options))
        with pytest.raises(ValueError, match=f"{name} needs an audio-tagging head"):
            whisper_at.transcribe(bare, str(speech_wav), **options)
    head = {f"at_model.{k}": v for k, v in whisper_at.TLTR(4, 384, n_classes=50)
            .state_dict().items()}
    fifty = whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=head)
    with pytest.raises(ValueError, match="527 AudioSet classes; this head has 50"):
        whisper_at.transcribe(fifty, str(speech_wav), at_speech_gate=0.5)


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "whisper_at", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_cli_gate_and_segment_info(tiny_en_pt, speech_head_file, gate_wav, tmp_path):
    path, parts = gate_wav
    common = ["--model", str(tiny_en_pt), "--at_head", str(speech_head_file), "--fp16", "False",
              "-o", str(tmp_path)]
    proc = _cli(str(path), *common, "--at_speech_gate", "0.5", "--at_gate_margin", "1",
                "--at_segment_info", "-f", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\[00:30\.000 --> 01:00\.000\] \(speech gate: no speech, skipped\)",
                     proc.stdout), proc.stdout
    document = json.loads((tmp_path / "gate.json").read_text())
    assert document["at_gate"]["threshold"] == 0.5 and document["at_gate"]["skipped"]
    assert document["at_gate"]["margin"] == 1.0
    assert all({"at_speech_prob", "at_events", "at_hallucination"} <= set(s)
               for s in document["segments"])
    assert "library" in document["text"].lower()
    # bad values and a model without a head
    proc = _cli(str(path), *common, "--at_speech_gate", "1.5", cwd=tmp_path)
    assert proc.returncode == 2
    assert "argument --at_speech_gate: must be a speech probability in [0, 1], got 1.5" in (
        proc.stderr)
    proc = _cli(str(path), *common, "--at_speech_gate", "0.5", "--at_gate_margin", "-1",
                cwd=tmp_path)
    assert proc.returncode == 2
    assert "argument --at_gate_margin: must be a number of seconds >= 0, got -1" in proc.stderr
    proc = _cli(str(path), "--model", str(tiny_en_pt), "--at_segment_info", "-o",
                str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "--at_segment_info needs an audio-tagging head: pass --at_head PATH" in proc.stderr
    proc = _cli(str(path), "--model", str(tiny_en_pt), "--at_speech_gate", "0", "-o",
                str(tmp_path), cwd=tmp_path)  # 0 is a threshold, not "off"
    assert proc.returncode == 2
    assert "--at_speech_gate needs an audio-tagging head: pass --at_head PATH" in proc.stderr


# --- the same gate on the faster-whisper backend (whisper_at.faster) --------------------------


@pytest.fixture(scope="module")
def fw_speech(ct2_tiny_en_dir, speech_head_file):
    """faster-whisper tiny.en (int8, one pass) with the trained speech head."""
    from whisper_at.faster import WhisperModel

    return WhisperModel(str(ct2_tiny_en_dir), compute_type="int8", cpu_threads=2,
                        at_head=str(speech_head_file))


def _run_fw(model, path, monkeypatch, **options):
    """(openai-whisper-style result, windows FW really decoded) of a transcription."""
    import faster_whisper

    from whisper_at.faster import to_whisper_result

    decoded = []
    original = faster_whisper.WhisperModel.generate_with_fallback

    def counting(self, *args, **kwargs):
        decoded.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(faster_whisper.WhisperModel, "generate_with_fallback", counting)
    segments, info = model.transcribe(str(path), language="en", beam_size=1,
                                      temperature=0.0, **options)
    return to_whisper_result(segments, info), len(decoded)


def test_faster_whisper_gate_skips_non_speech(fw_speech, gate_wav, monkeypatch):
    path, parts = gate_wav
    off, off_decoded = _run_fw(fw_speech, path, monkeypatch, at_segment_info=True)
    on, on_decoded = _run_fw(fw_speech, path, monkeypatch, at_speech_gate=P,
                             at_segment_info=True)
    non_speech = ("tone", "noise")
    report = on["at_gate"]
    assert report["windows_skipped"] >= 1 and any(a <= 30 and b >= 70 for a, b in
                                                  report["skipped"]), report
    assert on_decoded < off_decoded, (on_decoded, off_decoded)
    assert all(not _inside(s, parts, non_speech) for s in on["segments"] if s["text"].strip())
    # the first window is decoded as without the gate; the tags are those of the same windows
    first = [s["text"] for s in off["segments"] if s["end"] <= parts[0][1] + 1]
    assert [s["text"] for s in on["segments"][: len(first)]] == first and len(first) >= 3
    torch.testing.assert_close(on["audio_tag"][:3], off["audio_tag"][:3], atol=1e-5, rtol=0)
    for word in ("stella", "tomatoes", "library", "kitchen"):
        assert word in _words(on["text"]), on["text"]
    # segment evidence, as whisper_at.transcribe's rules give it (whether tiny.en writes text
    # over the white noise, which differs from run to run, varies; the tone window is skipped)
    # (tiny.en sometimes writes segments past the end of the audio: flagged for that reason)
    probs = speech_probability(off["audio_tag"])
    duration = len(read_wav(path)) / 16000
    for segment in off["segments"]:
        expected = gate.mean_speech(segment, probs, 1000)
        assert segment["at_speech_prob"] == pytest.approx(expected, abs=1e-4)
        text = bool(segment["text"].strip())
        past = text and segment["start"] >= duration
        low = text and not past and expected is not None and expected < P
        assert segment["at_hallucination"] is (past or low), segment  # untagged alone: not
        assert segment["at_reason"] == (gate.PAST_THE_END if past else
                                        gate.LOW_SPEECH if low else None), segment
    # with the gate, none is left there
    assert all(s["start"] < duration for s in on["segments"]), on["segments"]


def test_faster_whisper_gate_with_vad_and_word_timestamps(fw_speech, gate_wav, monkeypatch):
    path, parts = gate_wav
    words, _ = _run_fw(fw_speech, path, monkeypatch, at_speech_gate=P, word_timestamps=True)
    assert words["at_gate"]["windows_skipped"] >= 1
    assert all(w["start"] < parts[1][0] + 1 or w["start"] >= parts[3][0] - 1
               for s in words["segments"] for w in s["words"])
    # with vad_filter, VAD chose what to decode: the gate skips nothing, it only drops
    vad, _ = _run_fw(fw_speech, path, monkeypatch, at_speech_gate=P, vad_filter=True)
    assert vad["at_gate"]["skipped"] == [] and vad["at_gate"]["windows"] == 0
    assert "library" in _words(vad["text"])
    # P = 1 is never reached: the segments that lie in tagged rows are all dropped (one that
    # spans a stretch VAD removed, untagged rows, stays), in exact mode too: its tagging pass
    # runs beside decoding, and the rows must be there before a segment is judged
    one_pass, _ = _run_fw(fw_speech, path, monkeypatch, at_speech_gate=1.0, vad_filter=True)
    fw_speech.at_encoder = "exact"
    try:
        exact, _ = _run_fw(fw_speech, path, monkeypatch, at_speech_gate=1.0, vad_filter=True)
    finally:
        fw_speech.at_encoder = "one_pass"
    # (the two modes' encoders differ in precision, so their texts may differ in a comma)
    for result in (one_pass, exact):
        assert len(result["at_gate"]["dropped_segments"]) >= 3 and len(result["segments"]) <= 1
    assert len(exact["segments"]) == len(one_pass["segments"])
    with pytest.raises(ValueError, match="at_speech_gate must be a speech probability"):
        fw_speech.transcribe(str(path), at_speech_gate=2)


def test_cli_gate_on_the_faster_whisper_backend(ct2_tiny_en_dir, speech_head_file, gate_wav,
                                                tmp_path):
    path, parts = gate_wav
    proc = _cli(str(path), "--backend", "faster-whisper", "--model", str(ct2_tiny_en_dir),
                "--compute_type", "int8", "--at_head", str(speech_head_file),
                "--at_speech_gate", "0.5", "--at_segment_info", "-f", "json", "-o",
                str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads((tmp_path / "gate.json").read_text())
    assert document["at_gate"]["windows_skipped"] >= 1
    assert all("at_hallucination" in s for s in document["segments"])
    # the speech after the skip is all there (int8 kernels differ between CPUs: a word may differ)
    after = [w for s in document["segments"] if s["end"] > parts[3][0] for w in _words(s["text"])]
    assert word_error_rate(_words(parts[3][3]), after) <= 0.2, document["text"]


def test_batch_job_passes_the_gate_on(tiny_en_pt, speech_head_file, gate_wav, tmp_path, capsys):
    from whisper_at.jobs import batch
    from whisper_at.jobs.shards import read_results

    path, _ = gate_wav
    common = ["--model", str(tiny_en_pt), "--at_head", str(speech_head_file), "--fp16", "False",
              "--verbose", "False"]
    assert batch.main([str(path), str(tmp_path / "out"), "--task", "transcribe",
                       "--at_speech_gate", "0.5", "--at_segment_info", *common]) == 0
    (record,) = read_results(str(tmp_path / "out")).values()
    assert record["at_gate"]["windows_skipped"] >= 1
    assert all("at_speech_prob" in s for s in record["segments"])
    with pytest.raises(SystemExit):
        batch.main([str(path), str(tmp_path / "tags"), "--task", "tag", "--at_speech_gate", "0.5",
                    *common])
    assert "not with --task tag" in capsys.readouterr().err
