"""Sound-event outputs: real tiny.en transcriptions for the files, chosen logits for the rules."""

import json
import math
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

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
    assert "[speech" not in srt.lower()

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
    assert outputs.sdh_cues(speech, events) == [  # each sound at its onset
        (0.0, 4.0, "[dog barking]\nHello there."),
        (12.0, 16.0, "How are you?"),
        (20.0, 27.0, "[music]"),  # sound-only cues stay up 7 s at most
        (30.0, 34.0, "♪ la la la ♪"),
    ]
    cues = outputs.sdh_cues(speech, events, repeat=True)
    assert cues == [  # whisper-at 1.0's placement, in lower case
        (0.0, 4.0, "[dog barking]\nHello there."),
        (4.0, 12.0, "[dog barking]"),
        (12.0, 16.0, "[dog barking]\nHow are you?"),
        (16.0, 20.0, "[dog barking]"),
        (20.0, 30.0, "[music]"),
        (30.0, 34.0, "♪ la la la ♪"),
        (34.0, 35.0, "[singing]\n[music]"),
    ]
    srt, vtt = tmp_path / "cues.srt", tmp_path / "cues.vtt"
    sdh.write_sdh(str(srt), outputs.sdh_cues(speech, events), vtt=False)
    doc = (Path(__file__).resolve().parents[1] / "docs" / "outputs.md").read_text()
    example = doc[doc.index("Example (`sdh_cues`"):]
    example = example[example.index("```\n") + 4 : example.index("```\n\nIn Python")]
    assert srt.read_text(encoding="utf-8") == example + "\n"  # docs/outputs.md's example
    sdh.write_sdh(str(srt), cues[-2:], vtt=False)
    sdh.write_sdh(str(vtt), cues[-2:], vtt=True)
    assert srt.read_text(encoding="utf-8") == (
        "1\n00:00:30,000 --> 00:00:34,000\n♪ la la la ♪\n\n"
        "2\n00:00:34,000 --> 00:00:35,000\n[singing]\n[music]\n\n")
    assert vtt.read_text(encoding="utf-8") == (
        "WEBVTT\n\n00:30.000 --> 00:34.000\n♪ la la la ♪\n\n"
        "00:34.000 --> 00:35.000\n[singing]\n[music]\n\n")


def test_short_gaps_get_no_sound_cue_and_lines_are_capped():
    speech = [(0.0, 4.5, "One."), (5.0, 9.6, "Two.")]
    tag = _logits(1, {"Cough": [(0, 3.0)], "Knock": [(0, 2.0)], "Rain": [(0, 1.0)]})
    events = outputs.sound_events(tag, 10, 10.0, TagOptions(top_k=3, threshold=0))
    # two lines a cue, strongest first; the third new sound waits for the next cue
    assert outputs.sdh_cues(speech, events) == [
        (0.0, 4.5, "[coughing]\n[knocking]\nOne."), (5.0, 9.6, "[rain falling]\nTwo.")]
    assert outputs.sdh_cues(speech, events, repeat=True) == [
        (0.0, 4.5, "[coughing]\n[knocking]\nOne."), (5.0, 9.6, "[coughing]\n[knocking]\nTwo.")]


def test_caption_table():
    captions = outputs.captions()
    names = label_names("en")
    assert len(captions) == 527
    by_name = dict(zip(names, captions))
    for name in ("Speech", "Male speech, man speaking", "Narration, monologue",
                 "Speech synthesizer", "Silence", "Inside, small room"):
        assert by_name[name] is None, name
    assert by_name["Dog"] == by_name["Bark"] == by_name["Bow-wow"] == "dog barking"
    assert by_name["Music"] == by_name["Heavy metal"] == by_name["Violin, fiddle"] == "music"
    assert by_name["Choir"] == by_name["Rapping"] == "singing"
    assert by_name["Laughter"] == "laughter" and by_name["Shout"] == "shouting"
    assert by_name["Vehicle horn, car horn, honking"] == "car horn honking"
    assert by_name["Dental drill, dentist's drill"] == "dental drill"  # fallback: first part
    assert by_name["Cowbell"] == "cowbell"
    assert by_name["Television"] == "TV playing"  # acronyms keep their capitals
    assert all(c is None or ("," not in c and c == sdh.lower_case(c)) for c in captions)
    assert {c for c in captions if c and c != c.lower()} == {"TV playing"}
    # the table keeps 1.0's words: only the case changed
    for line in sdh.CAPTIONS.strip().splitlines():
        caption = line.split(":")[0]
        assert caption == "-" or caption == sdh.lower_case(caption), line


# ---- SDH rules on constructed events: one test per rule of docs/outputs.md


def _sound(name: str, start: float, end: float, peak: float = 1.0) -> dict:
    """An event as sound_events makes it."""
    return {"start": start, "end": end, "index": label_index(name), "label": name, "peak": peak}


def _every(seconds: float, until: float, length: float = 9.5) -> list:
    """Speech cues of `length` s starting every `seconds` s (gaps under 1 s: no sound-only cue)."""
    return [(t, t + length, f"line {i}") for i, t in enumerate(range(0, int(until), seconds))]


def _captions_at(cues) -> list:
    """(start, caption line) of every bracketed line."""
    return [(start, line) for start, _, text in cues for line in text.split("\n")
            if line.startswith("[")]


def test_sdh_sound_is_captioned_at_its_onset_only():
    speech = _every(10, 50)
    events = [_sound("Dog", 0, 50, 2.0), _sound("Rain", 12, 50, 1.0)]
    assert _captions_at(outputs.sdh_cues(speech, events, continues=0)) == [
        (0, "[dog barking]"), (10, "[rain falling]")]  # rain: on the first cue it overlaps
    repeated = _captions_at(outputs.sdh_cues(speech, events, repeat=True))
    assert len(repeated) == 5 + 4 and repeated[:3] == [
        (0, "[dog barking]"), (10, "[dog barking]"), (10, "[rain falling]")]


def test_sdh_sound_that_stops_and_starts_again_is_new_and_same_captions_are_one_sound():
    speech = _every(10, 40)
    events = [_sound("Dog", 0, 10), _sound("Dog", 20, 30), _sound("Bark", 30, 40)]
    assert _captions_at(outputs.sdh_cues(speech, events)) == [
        (0, "[dog barking]"), (20, "[dog barking]")]  # Bark goes on where Dog stopped: one sound


def test_sdh_continues_after_the_gap():
    speech = _every(10, 200)
    events = [_sound("Dog", 0, 200)]
    default = _captions_at(outputs.sdh_cues(speech, events))
    assert default == [(0, "[dog barking]"), (60, "[dog barking continues]"),
                       (120, "[dog barking continues]"), (180, "[dog barking continues]")]
    assert _captions_at(outputs.sdh_cues(speech, events, continues=45)) == [
        (0, "[dog barking]"), (50, "[dog barking continues]"), (100, "[dog barking continues]"),
        (150, "[dog barking continues]")]  # the first cue at least 45 s after the last
    assert _captions_at(outputs.sdh_cues(speech, events, continues=0)) == [(0, "[dog barking]")]
    assert len(_captions_at(outputs.sdh_cues(speech, events, repeat=True))) == 20


def test_sdh_new_sounds_come_before_reminders_and_the_rest_waits():
    speech = _every(10, 80)
    events = [_sound("Dog", 0, 80, 3.0), _sound("Rain", 60, 80, 1.0), _sound("Knock", 60, 80, 2.0)]
    assert _captions_at(outputs.sdh_cues(speech, events)) == [
        (0, "[dog barking]"), (60, "[knocking]"), (60, "[rain falling]"),
        (70, "[dog barking continues]")]


def test_sdh_sound_only_cues_between_speech():
    music = [_sound("Guitar", 0, 150)]
    assert outputs.sdh_cues([], music) == [  # no speech at all: 7 s at onset, then reminders
        (0, 7, "[music]"), (60, 67, "[music continues]"), (120, 127, "[music continues]")]
    assert outputs.sdh_cues([], music, repeat=True) == [(0, 150, "[music]")]
    speech = [(0.0, 4.0, "Hi."), (10.5, 12.0, "Bye.")]
    events = [_sound("Dog", 0, 4.5), _sound("Knock", 4.5, 6.0), _sound("Cough", 9.6, 12)]
    assert outputs.sdh_cues(speech, events) == [  # dog: 0.5 s after speech, no cue; cough: 0.9 s
        (0.0, 4.0, "[dog barking]\nHi."), (4.5, 6.0, "[knocking]"),
        (10.5, 12.0, "[coughing]\nBye.")]


def test_sdh_short_parts_of_a_gap_are_joined_not_flickered():
    """The sound set changes 0.3 s before the next speech cue (seen on real transcripts)."""
    speech = [(0.0, 38.8, "Before."), (40.3, 45.0, "After.")]
    events = [_sound("Sheep", 0, 67, 2.0), _sound("Filing (rasp)", 0, 40, 1.8),
              _sound("Telephone bell ringing", 10, 50, 1.6)]
    repeated = outputs.sdh_cues(speech, events, repeat=True)
    assert repeated[1] == (38.8, 40.3, "[sheep bleating]\n[filing]")  # not 38.8-40 and 40-40.3
    assert all(end - start >= 1.0 for start, end, _ in repeated)
    assert outputs.sdh_cues(speech, events) == [
        (0.0, 38.8, "[sheep bleating]\n[filing]\nBefore."), (38.8, 40.3, "[phone ringing]"),
        (40.3, 45.0, "After.")]


def test_sdh_lyrics_music_and_singing():
    speech = [(2.0, 6.0, "Welcome."), (12.0, 16.0, "la la"), (20.0, 24.0, "la la la"),
              (32.0, 36.0, "Thanks."), (52.0, 56.0, "Bye.")]
    events = [_sound("Guitar", 2, 40, 2.0), _sound("Singing", 12, 30, 3.0),
              _sound("Choir", 50, 55, 1.0)]
    assert outputs.sdh_cues(speech, events) == [
        (2.0, 6.0, "[music]\nWelcome."),
        (12.0, 16.0, "♪ la la ♪"),  # every lyric cue between ♪, no [singing] or [music] line
        (20.0, 24.0, "♪ la la la ♪"),
        (32.0, 36.0, "Thanks."),  # the music goes on: not captioned again
        (50.0, 52.0, "[singing]"),  # singing without a speech cue
        (52.0, 56.0, "♪ Bye. ♪"),
    ]


# ---- SDH on real transcripts


@pytest.fixture(scope="module")
def long_transcribed(tiny_at, long_speech_wav):
    """61+ s of espeak sentences (noise and hum under 20-45 s), tiny.en with the random head:
    its strongest class stays on for the whole file, as a constant tone bed under speech did."""
    result = whisper_at.transcribe(tiny_at, str(long_speech_wav), verbose=None, temperature=0)
    return result, _duration(long_speech_wav)


def _sounds(events: list) -> list:
    """(caption, start, end) of the sounds: events sharing a caption that overlap or touch."""
    merged = []
    for event in sorted(events, key=lambda e: e["start"]):
        caption = outputs.captions()[event["index"]]
        same = [m for m in merged if m[0] == caption and m[2] >= event["start"]]
        if caption and same:
            same[0][2] = max(same[0][2], event["end"])
        elif caption:
            merged.append([caption, event["start"], event["end"]])
    return merged


def test_sdh_on_a_real_transcript_captions_each_sound_once(long_transcribed):
    result, duration = long_transcribed
    events = outputs.sound_events(result["audio_tag"], 10, duration, TagOptions())
    speech = outputs.speech_cues(result, NO_WORD_OPTIONS)
    sounds = _sounds(events)
    assert len(speech) >= 10 and len(sounds) >= 5
    repeated = outputs.sdh_cues(speech, events, repeat=True)
    default = outputs.sdh_cues(speech, events)
    texts = [(s, e, "\n".join(x for x in t.split("\n") if not x.startswith("[")))
             for s, e, t in default]  # fmt: skip
    assert [cue for cue in texts if cue[2]] == speech  # speech text and times untouched
    # --at_sdh_repeat reproduces the complaint: one caption on every speech cue
    bed = [s for s in sounds if s[1] == 0 and s[2] == round(duration, 3)]
    assert bed and all(f"[{bed[0][0]}]" in text for _, _, text in repeated)
    # default: each sound at most once as itself, on the first cue where it is shown ...
    shown = _captions_at(default)
    for caption, start, end in sounds:
        onsets = [t for t, line in shown if line == f"[{caption}]" and start <= t < end]
        assert len(onsets) <= 1, (caption, onsets)
        later = [t for t, line in shown if line == f"[{caption} continues]" and start <= t < end]
        times = onsets + later  # ... then only as "continues", 60 s or more after the last
        assert all(b - a >= 60 for a, b in zip(times, times[1:])), (caption, times)
    assert [line for t, line in shown if line.startswith(f"[{bed[0][0]}")] == [
        f"[{bed[0][0]}]", f"[{bed[0][0]} continues]"]  # 67 s: once, then once more after 60 s
    assert shown[0] == (0.0, f"[{bed[0][0]}]")
    for start, end, text in default:  # every line is a sound the cue overlaps
        for line in (x for x in text.split("\n") if x.startswith("[")):
            caption = line[1:-1].removesuffix(" continues")
            assert any(c == caption and a < end and b > start for c, a, b in sounds), line
    assert len(shown) < len(_captions_at(repeated)) / 2  # measured: 17 lines instead of 46
    no_reminder = _captions_at(outputs.sdh_cues(speech, events, continues=0))
    assert not [line for _, line in no_reminder if "continues" in line]


def test_sdh_options_through_the_command(tmp_path, tiny_en_pt, tiny_head_file, speech_wav):
    """`-f sdh` with one cue per two words: the 5 s file's sounds all start at 0, so the
    default puts each once (two per cue, strongest first); --at_sdh_repeat on every cue."""
    from whisper_at import cli

    def run(out, *options):
        argv = [str(speech_wav), "--model", str(tiny_en_pt), "--at_head", str(tiny_head_file),
                "--beam_size", "None", "--verbose", "False", "-f", "sdh", "-o", str(out),
                "--word_timestamps", "True", "--max_words_per_line", "2", *options]
        assert cli.main(argv) == 0
        text = (out / "speech.sdh.srt").read_text(encoding="utf-8")
        return [[line for line in cue.split("\n")[2:] if line.startswith("[")]
                for cue in text.strip().split("\n\n")]

    default, repeated = run(tmp_path / "a"), run(tmp_path / "b", "--at_sdh_repeat")
    assert len(default) == len(repeated) >= 6
    lines = [line for cue in default for line in cue]
    assert len(lines) == len(set(lines)) >= 3 and all(len(cue) <= 2 for cue in default)
    assert default[0] == repeated[0] and default[1] and not default[-1]
    assert all(cue == repeated[0] for cue in repeated)


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
