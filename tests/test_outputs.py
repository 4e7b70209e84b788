"""Sound-event outputs: real tiny.en transcriptions for the files, chosen logits for the rules."""

import json
import math
import os
import signal
import subprocess
import sys
import wave

import pytest
import torch

import whisper_at
from whisper_at import outputs
from whisper_at.labels import label_index, label_names, parse_at_label
from whisper_at.outputs import TagOptions, sdh

NO_WORD_OPTIONS = {"highlight_words": False, "max_line_count": None, "max_line_width": None,
                   "max_words_per_line": None}
AT_FILES = ["tags.json", "tags.tsv", "events.tsv", "sdh.srt", "sdh.vtt", "events.png"]


def _duration(path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture(scope="module")
def transcribed(tiny_at, speech_wav):
    return whisper_at.transcribe(tiny_at, str(speech_wav), verbose=None, word_timestamps=True)


def _read_tsv(path) -> list:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_all_outputs_agree_with_the_logits(tmp_path, transcribed, speech_wav):
    duration = _duration(speech_wav)
    written = outputs.write_outputs(transcribed, str(speech_wav), str(tmp_path), "all",
                                    NO_WORD_OPTIONS, TagOptions(), duration)
    expected = [f"speech.{ext}" for ext in ["txt", "vtt", "srt", "tsv", "json"] + AT_FILES]
    assert sorted(os.path.basename(p) for p in written) == sorted(expected)
    assert sorted(os.listdir(tmp_path)) == sorted(expected)  # no staging directory left
    logits = transcribed["audio_tag"]
    names = label_names("en")

    doc = json.loads((tmp_path / "speech.tags.json").read_text())
    assert doc["duration"] == pytest.approx(duration, abs=1e-3) and doc["language"] == "en"
    top = torch.topk(logits, 5, dim=1)
    assert len(doc["chunks"]) == logits.shape[0] == 1
    chunk = doc["chunks"][0]
    assert (chunk["start"], chunk["end"]) == (0, round(duration, 3))
    assert [t["index"] for t in chunk["top"]] == top.indices[0].tolist()
    assert [t["label"] for t in chunk["top"]] == [names[i] for i in top.indices[0].tolist()]
    assert [t["logit"] for t in chunk["top"]] == pytest.approx(top.values[0].tolist(), abs=1e-4)
    parsed = json.loads(json.dumps(parse_at_label(transcribed)))
    assert doc["parsed"] == parsed

    rows = _read_tsv(tmp_path / "speech.tags.tsv")
    assert rows[0] == ["start", "end", "label", "logit"]
    assert rows[1:] == [["0", str(round(1000 * duration)), label, f"{logit:.4f}"]
                        for label, logit in parsed[0]["audio tags"]]

    speech = set(range(label_index("Speech"), label_index("Speech synthesizer") + 1))
    others = [i for i in range(527) if i not in speech]
    best = sorted(others, key=lambda i: -logits[0, i].item())[:5]
    events = _read_tsv(tmp_path / "speech.events.tsv")
    assert events[0] == ["start", "end", "label", "peak_logit"]
    assert sorted(row[2] for row in events[1:]) == sorted(names[i] for i in best)
    assert all(row[:2] == ["0", str(round(1000 * duration))] for row in events[1:])
    assert doc["events"] == outputs.sound_events(logits, 10, duration, TagOptions())

    srt = (tmp_path / "speech.sdh.srt").read_text()
    assert transcribed["segments"][0]["text"].strip() in srt
    captions = outputs.captions()
    lines = [f"[{captions[i]}]" for i in best if captions[i]]
    assert lines and any(line in srt for line in lines)
    assert "[Speech" not in srt

    import matplotlib.image

    picture = matplotlib.image.imread(str(tmp_path / "speech.events.png"))
    assert picture.shape[1] >= 1200 and picture.shape[0] >= 300


@pytest.mark.parametrize("word_options", [
    {"max_line_width": 16, "max_line_count": 2}, {"highlight_words": True, "max_words_per_line": 3}
])
def test_sdh_without_sounds_equals_whisper_subtitles(tmp_path, transcribed, speech_wav,
                                                     word_options):
    quiet = dict(transcribed, audio_tag=torch.full_like(transcribed["audio_tag"], -10.0))
    options = dict(NO_WORD_OPTIONS, **word_options)
    outputs.write_outputs(quiet, str(speech_wav), str(tmp_path), "all", options)
    assert (tmp_path / "speech.sdh.srt").read_bytes() == (tmp_path / "speech.srt").read_bytes()
    assert (tmp_path / "speech.sdh.vtt").read_bytes() == (tmp_path / "speech.vtt").read_bytes()
    assert (tmp_path / "speech.srt").read_text().count("-->") > 2
    assert _read_tsv(tmp_path / "speech.events.tsv") == [["start", "end", "label", "peak_logit"]]


def _logits(rows: int, active: dict) -> torch.Tensor:
    """Logits of -5 everywhere except {class name: [(row, logit), ...]}; NaN rows via None."""
    tag = torch.full((rows, 527), -5.0)
    for name, cells in active.items():
        for row, logit in cells:
            if name is None:
                tag[row] = float("nan")
            else:
                tag[row, label_index(name)] = logit
    return tag


def test_events_merge_rows_and_skip_speech():
    tag = _logits(5, {
        "Dog": [(0, 2.0), (1, 3.0), (3, 1.0)],
        "Speech": [(0, 6.0), (1, 6.0), (2, 6.0)],
        "Music": [(2, 0.5), (3, 0.2), (4, 4.0)],
        None: [(3, 0)],
    })
    events = outputs.sound_events(tag, 10, 44.5, TagOptions(top_k=2, threshold=0))
    assert [(e["label"], e["start"], e["end"], e["peak"]) for e in events] == [
        ("Dog", 0, 20, 3.0), ("Music", 20, 30, 0.5), ("Music", 40, 44.5, 4.0)]
    with_speech = outputs.sound_events(tag, 10, 44.5, TagOptions(1, 0, "en", True))
    assert [(e["label"], e["start"], e["end"]) for e in with_speech] == [
        ("Speech", 0, 30), ("Music", 40, 44.5)]
    assert outputs.sound_events(tag, 10, 44.5, TagOptions(5, 5.0)) == []


def test_sdh_caption_rules(tmp_path):
    speech = [(0.0, 4.0, "Hello there."), (12.0, 16.0, "How are you?"), (30.0, 34.0, "la la la")]
    tag = _logits(4, {
        "Dog": [(0, 2.0), (1, 1.5)], "Bark": [(1, 2.5)],
        "Speech": [(0, 6.0), (1, 6.0)], "Inside, small room": [(0, 3.0), (1, 3.0)],
        "Pop music": [(2, 1.0)], "Guitar": [(2, 2.0), (3, 1.0)], "Singing": [(3, 3.0)],
    })
    events = outputs.sound_events(tag, 10, 35.0, TagOptions(top_k=3, threshold=0))
    cues = outputs.sdh_cues(speech, events)
    assert cues == [
        (0.0, 4.0, "[Dog barking]\nHello there."),
        (4.0, 12.0, "[Dog barking]"),
        (12.0, 16.0, "[Dog barking]\nHow are you?"),
        (16.0, 20.0, "[Dog barking]"),
        (20.0, 30.0, "[Music]"),
        (30.0, 34.0, "♪ la la la ♪"),
        (34.0, 35.0, "[Singing]\n[Music]"),
    ]
    srt, vtt = tmp_path / "cues.srt", tmp_path / "cues.vtt"
    sdh.write_sdh(str(srt), cues[-2:], vtt=False)
    sdh.write_sdh(str(vtt), cues[-2:], vtt=True)
    assert srt.read_text(encoding="utf-8") == (
        "1\n00:00:30,000 --> 00:00:34,000\n♪ la la la ♪\n\n"
        "2\n00:00:34,000 --> 00:00:35,000\n[Singing]\n[Music]\n\n")
    assert vtt.read_text(encoding="utf-8") == (
        "WEBVTT\n\n00:30.000 --> 00:34.000\n♪ la la la ♪\n\n"
        "00:34.000 --> 00:35.000\n[Singing]\n[Music]\n\n")


def test_short_gaps_get_no_sound_cue_and_lines_are_capped():
    speech = [(0.0, 4.5, "One."), (5.0, 9.6, "Two.")]
    tag = _logits(1, {"Cough": [(0, 3.0)], "Knock": [(0, 2.0)], "Rain": [(0, 1.0)]})
    events = outputs.sound_events(tag, 10, 10.0, TagOptions(top_k=3, threshold=0))
    assert outputs.sdh_cues(speech, events) == [
        (0.0, 4.5, "[Coughing]\n[Knocking]\nOne."), (5.0, 9.6, "[Coughing]\n[Knocking]\nTwo.")]


def test_caption_table():
    captions = outputs.captions()
    names = label_names("en")
    assert len(captions) == 527
    by_name = dict(zip(names, captions))
    for name in ("Speech", "Male speech, man speaking", "Narration, monologue",
                 "Speech synthesizer", "Silence", "Inside, small room"):
        assert by_name[name] is None, name
    assert by_name["Dog"] == by_name["Bark"] == by_name["Bow-wow"] == "Dog barking"
    assert by_name["Music"] == by_name["Heavy metal"] == by_name["Violin, fiddle"] == "Music"
    assert by_name["Choir"] == by_name["Rapping"] == "Singing"
    assert by_name["Laughter"] == "Laughter" and by_name["Shout"] == "Shouting"
    assert by_name["Vehicle horn, car horn, honking"] == "Car horn honking"
    assert by_name["Dental drill, dentist's drill"] == "Dental drill"  # fallback: first part
    assert by_name["Cowbell"] == "Cowbell"
    assert all(c is None or (c[0].isupper() and "," not in c) for c in captions)


def test_failed_write_leaves_nothing(tmp_path, transcribed, speech_wav):
    broken = dict(transcribed, audio_tag=torch.zeros(1, 3))  # not [rows, 527]
    with pytest.raises((IndexError, ValueError)):  # after the whisper files were staged
        outputs.write_outputs(broken, str(speech_wav), str(tmp_path), "all", NO_WORD_OPTIONS)
    assert os.listdir(tmp_path) == []


def test_missing_matplotlib_skips_only_the_picture(monkeypatch, tmp_path, transcribed,
                                                   speech_wav):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.warns(UserWarning, match="matplotlib is not installed.*speech.events.png"):
        written = outputs.write_outputs(transcribed, str(speech_wav), str(tmp_path), "all",
                                        NO_WORD_OPTIONS)
    names = sorted(os.path.basename(p) for p in written)
    assert "speech.events.png" not in names and "speech.sdh.srt" in names and len(names) == 10


def test_row_times_end_with_the_audio():
    assert outputs.row_times(3, 10, 25.4) == [(0, 10), (10, 20), (20, 25.4)]
    assert outputs.row_times(2, 0.4, 0.5) == [(0, 0.4), (0.4, 0.5)]
    assert not any(math.isnan(t) for pair in outputs.row_times(4, 4.4, 15) for t in pair)


# A writer that stops inside write_outputs, its files staged, before the first rename: it is
# SIGKILLed there ("die") or waits there for its stdin to close ("wait").
STAGING_WRITER = """
import os, signal, sys, torch
from whisper_at import outputs

def replace(src, dst):
    print(os.path.dirname(src), flush=True)
    if sys.argv[2] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()
    os.rename(src, dst)

outputs.os.replace = replace
result = {"text": "", "segments": [], "language": "en", "audio_tag": torch.zeros(1, 527),
          "at_time_res": 10}
outputs.write_outputs(result, sys.argv[2] + ".wav", sys.argv[1], "tags", {}, duration=10.0)
"""


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL")
def test_staging_dirs_of_killed_writers_are_removed(tmp_path):
    command = [sys.executable, "-c", STAGING_WRITER, str(tmp_path)]
    live = subprocess.Popen(
        command + ["wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        live_stage = live.stdout.readline().strip()  # (its own sweep done before the kill)
        killed = subprocess.Popen(command + ["die"], stdout=subprocess.PIPE, text=True)
        dead_stage = killed.communicate(timeout=300)[0].strip()
        assert killed.returncode == -signal.SIGKILL
        assert os.path.basename(dead_stage).startswith(f".whisper-at-stage-{killed.pid}@")
        assert os.path.basename(live_stage).startswith(f".whisper-at-stage-{live.pid}@")
        assert sorted(os.listdir(dead_stage)) == ["die.tags.json", "die.tags.tsv"]
        assert os.path.isdir(live_stage) and live.poll() is None
        elsewhere = tmp_path / f".whisper-at-stage-{killed.pid}@otherhost-abc123xy"  # not here
        elsewhere.mkdir()
        (tmp_path / ".whisper-at-batch.lock").write_text("")

        result = dict(text="hi", segments=[], language="en", audio_tag=torch.zeros(1, 527))
        result["at_time_res"] = 10
        written = outputs.write_outputs(result, "new.wav", str(tmp_path), "tags", {})
        assert sorted(os.path.basename(p) for p in written) == ["new.tags.json", "new.tags.tsv"]
        assert not os.path.exists(dead_stage)  # its process is gone
        assert os.path.isdir(live_stage) and os.listdir(live_stage)  # its process still writes
        assert elsewhere.is_dir() and (tmp_path / ".whisper-at-batch.lock").is_file()

        live.stdin.close()  # the live writer finishes: its files in place, its stage removed
        assert live.wait(timeout=60) == 0
        assert not os.path.exists(live_stage)
        files = [f"{name}.tags.{ext}" for name in ("new", "wait") for ext in ("json", "tsv")]
        assert sorted(os.listdir(tmp_path)) == [".whisper-at-batch.lock", elsewhere.name, *files]
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
