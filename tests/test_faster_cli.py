"""``whisper-at --backend faster-whisper``: the same output files from faster-whisper."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import wav_duration
from whisper.audio import SAMPLE_RATE

from whisper_at import cli
from whisper_at.faster.cli import fw_options

FILES = ["txt", "srt", "vtt", "tsv", "json", "tags.json", "tags.tsv", "events.tsv", "sdh.srt",
         "sdh.vtt"]  # fmt: skip


@pytest.fixture(scope="module")
def fw_args(ct2_tiny_en_dir, tiny_head_file):
    return ["--backend", "faster-whisper", "--model", str(ct2_tiny_en_dir), "--at_head",
            str(tiny_head_file), "--compute_type", "int8", "--beam_size", "1",
            "--verbose", "False"]  # fmt: skip


def _run(argv, out):
    return cli.main(argv + ["-o", str(out), "-f", "all"])


def test_outputs_of_both_backends(tmp_path, fw_args, speech_wav, tiny_en_pt, tiny_head_file):
    fw, ow = tmp_path / "fw", tmp_path / "ow"
    assert _run([str(speech_wav)] + fw_args + ["--word_timestamps", "True"], fw) == 0
    for ext in FILES:
        assert (fw / f"speech.{ext}").stat().st_size > 0, ext
    result = json.loads((fw / "speech.json").read_text())
    assert "favorite color" in result["text"] and result["segments"][0]["words"]
    tags = json.loads((fw / "speech.tags.json").read_text())
    assert len(tags["chunks"]) == 1 and tags["at_time_res"] == 10
    # the openai-whisper backend writes the same set of files
    assert _run([str(speech_wav), "--model", str(tiny_en_pt), "--at_head",
                 str(tiny_head_file), "--beam_size", "None", "--verbose", "False"], ow) == 0
    assert sorted(p.name for p in ow.iterdir()) == sorted(p.name for p in fw.iterdir())


def test_vad_and_batched_pipeline(tmp_path, fw_args, long_speech_wav, capsys):
    argv = [str(long_speech_wav)] + fw_args + ["--vad_filter", "True", "--at_time_res", "2",
                                               "--batch_size", "4", "--verbose", "True"]
    assert _run(argv, tmp_path) == 0
    out = capsys.readouterr().out  # verbose: one line per segment, as openai-whisper prints
    assert re.search(r"^\[\d\d:\d\d\.\d{3} --> \d\d:\d\d\.\d{3}\] .*favorite", out, re.M)
    tags = json.loads((tmp_path / "long_speech.tags.json").read_text())
    duration = tags["duration"]
    assert len(tags["chunks"]) == -(-round(duration * SAMPLE_RATE) // (2 * SAMPLE_RATE))
    assert "favorite color" in (tmp_path / "long_speech.txt").read_text()


def test_batched_pipeline_defaults_and_long_clips(tmp_path, fw_args, long_speech_wav):
    """--batch_size alone turns VAD on, as faster-whisper's pipeline does (else a file over 30 s
    has nothing to cut it); a clip over 30 s is decoded whole, in pieces of at most 30 s."""
    assert _run([str(long_speech_wav)] + fw_args + ["--batch_size", "4"], tmp_path / "vad") == 0
    text = (tmp_path / "vad" / "long_speech.txt").read_text()
    assert "Please call" in text and "listening" in text
    # "5": from 5 s to the end, one clip of ~56 s
    argv = [str(long_speech_wav)] + fw_args + ["--batch_size", "4", "--clip_timestamps", "5"]
    assert _run(argv, tmp_path / "clip") == 0
    text = (tmp_path / "clip" / "long_speech.txt").read_text()
    # the clip's first sentence, and its last one (after 30 s of clip, in a later piece)
    assert "Please call" not in text and "favorite" in text and "listening" in text
    # a clip that starts after the end: nothing decoded, as with openai-whisper (no error)
    argv[-1] = f"{wav_duration(long_speech_wav) + 1:.1f}"
    assert _run(argv, tmp_path / "after") == 0
    assert (tmp_path / "after" / "long_speech.txt").read_text() == ""


def test_language_names_become_codes():
    assert fw_options({"language": "French"}, {})["language"] == "fr"
    assert fw_options({"language": "en"}, {})["language"] == "en"
    assert fw_options({"language": None}, {})["language"] is None


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--compute_type", "int8"], "--compute_type needs --backend faster-whisper"),
        (["--vad_filter", "True"], "--vad_filter needs --backend faster-whisper"),
        (["--backend", "faster-whisper", "--batch_size", "0"], "must be at least 1"),
        (["--backend", "faster-whisper", "--at_encoder", "fast"], "invalid choice"),
    ],
)
def test_bad_backend_options_exit_2(tmp_path, capsys, speech_wav, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(speech_wav), "--model", "tiny.en", "-o", str(tmp_path)] + extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_carry_initial_prompt_and_missing_head(tmp_path, capsys, fw_args, ct2_tiny_en_dir,
                                               speech_wav):  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(speech_wav)] + fw_args + ["--carry_initial_prompt", "True"])
    assert exit_info.value.code == 2
    assert "--carry_initial_prompt is not supported" in capsys.readouterr().err
    argv = [str(speech_wav), "--backend", "faster-whisper", "--model", str(ct2_tiny_en_dir),
            "-f", "sdh", "-o", str(tmp_path)]  # fmt: skip
    with pytest.warns(UserWarning, match="no official Whisper-AT head"):
        status = cli.main(argv)
    assert status == 2 and "needs an audio-tagging head" in capsys.readouterr().err


def test_clip_timestamps_for_the_batched_pipeline(long_speech_wav):
    """Clips become the pipeline's list; one over 30 s is cut in a pause, not in a word."""
    from whisper_at.audio_io import load_audio
    from whisper_at.faster.cli import batched_clips

    audio = load_audio(str(long_speech_wav))
    duration = audio.shape[-1] / SAMPLE_RATE
    assert batched_clips("0", audio) is None
    assert batched_clips("5,25,40", audio) == [{"start": 5.0, "end": 25.0},
                                                {"start": 40.0, "end": duration}]  # fmt: skip
    assert batched_clips(f"5,{duration + 30}", audio) == batched_clips("5", audio)  # clamped
    assert batched_clips(f"{duration + 1}", audio) == []
    pieces = batched_clips("5", audio)
    assert [p["start"] for p in pieces[1:]] == [p["end"] for p in pieces[:-1]]
    assert pieces[0]["start"] == 5.0 and pieces[-1]["end"] == duration and len(pieces) >= 2
    for piece in pieces:
        assert 0 < piece["end"] - piece["start"] <= 30.0
    for piece in pieces[:-1]:
        assert piece["end"] - piece["start"] >= 22.0  # cut in the last 8 s of 30
    speech_rms = np.sqrt(np.mean(np.square(audio[5 * SAMPLE_RATE:])))
    for cut in (p["end"] for p in pieces[:-1]):
        around = audio[int((cut - 0.15) * SAMPLE_RATE): int((cut + 0.15) * SAMPLE_RATE)]
        assert np.sqrt(np.mean(np.square(around))) < 0.3 * speech_rms, cut  # a pause


def _records(out):
    lines = [json.loads(line) for path in sorted(out.glob("results-*.jsonl"))
             for line in path.read_text().splitlines()]  # fmt: skip
    return {Path(line["path"]).name: line for line in lines}


@pytest.mark.parametrize("extra", [[], ["--batch_size", "2", "--vad_filter", "True"]],
                         ids=["sequential", "batched-vad"])  # fmt: skip
def test_batch_command_with_the_faster_whisper_backend(tmp_path, fw_args, speech_wav, tone_wav,
                                                       extra):  # fmt: skip
    from whisper_at.jobs import batch

    inputs = tmp_path / "in"
    inputs.mkdir()
    for wav in (speech_wav, tone_wav):
        (inputs / wav.name).write_bytes(wav.read_bytes())
    out = tmp_path / "out"
    argv = [str(inputs), str(out)] + [a for a in fw_args if a != "--verbose" and a != "False"]
    assert batch.main(argv + extra) == 0
    records = _records(out)
    assert set(records) == {"speech.wav", "tone.wav"}
    speech = records["speech.wav"]
    assert "favorite color" in speech["text"] and speech["language"] == "en"
    assert len(speech["tags"]) == 1 and speech["tags"][0]["tags"]
    assert records["tone.wav"]["duration"] == 5.0


def test_batch_tag_task_refuses_the_backend(tmp_path, capsys, speech_wav):
    from whisper_at.jobs import batch

    with pytest.raises(SystemExit) as exit_info:
        batch.main([str(speech_wav), str(tmp_path), "--task", "tag", "--backend",
                    "faster-whisper"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "--backend applies to transcribe" in capsys.readouterr().err
