"""The ``whisper-at`` command, in-process on real tiny.en weights and espeak-ng audio: same
options and outputs as openai-whisper's CLI, sub-command dispatch, bad input, ``tag`` mode."""

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from whisper.audio import SAMPLE_RATE

import whisper_at
from whisper_at import cli
from whisper_at.labels import label_names

UPSTREAM_OUTPUTS = ("txt", "vtt", "srt", "tsv", "json")
GREEDY = ["--beam_size", "None", "--verbose", "False"]  # beam search is slow on CPU


@pytest.fixture(scope="module")
def model_args(tiny_en_pt, tiny_head_file):
    return ["--model", str(tiny_en_pt), "--at_head", str(tiny_head_file)] + GREEDY


@pytest.fixture(scope="module")
def tiny_en_no_heads(tmp_path_factory, tiny_en_pt):
    """tiny.en without its "alignment_heads": openai-whisper ignores them in a local
    checkpoint (it uses all heads of the upper decoder half), whisper_at.load_model uses them,
    so word timings are compared on a checkpoint that has none."""
    checkpoint = torch.load(tiny_en_pt, weights_only=True)
    del checkpoint["alignment_heads"]
    path = tmp_path_factory.mktemp("ckpt") / "tiny.en-no-heads.pt"
    torch.save(checkpoint, path)
    return path


def _help_options(text: str) -> dict:
    """{option string: (metavar, default)} from an argparse help text (defaults formatter)."""
    entries, current = [], None
    for line in text.splitlines():
        if re.match(r"^  -", line):
            current = [line.strip()]
            entries.append(current)
        elif current is not None and re.match(r"^ {4,}\S", line):
            current.append(line.strip())
        else:
            current = None
    options = {}
    for entry in entries:
        invocation, _, help_text = entry[0].partition("  ")
        help_text = " ".join([help_text.strip()] + entry[1:])
        default = re.search(r"\(default: (.*)\)$", help_text)
        for part in invocation.split(", "):
            name, _, metavar = part.partition(" ")
            options[name] = (metavar, default.group(1) if default else None)
    return options


def test_options_and_defaults_are_upstreams(monkeypatch):
    env = dict(os.environ, COLUMNS="3000")
    upstream = subprocess.run(
        [sys.executable, "-m", "whisper", "--help"], capture_output=True, text=True, env=env
    )
    assert upstream.returncode == 0, upstream.stderr
    monkeypatch.setenv("COLUMNS", "3000")
    ours = _help_options(cli.build_parser().format_help())
    theirs = _help_options(upstream.stdout)
    assert len(theirs) > 30 and "--word_timestamps" in theirs
    for option, (metavar, default) in theirs.items():
        assert option in ours, option
        assert ours[option][1] == default, option
        if option not in ("--output_format", "-f"):
            assert ours[option][0] == metavar, option
    assert ours["-f"][0] == "{txt,vtt,srt,tsv,json,all,tags,events,sdh,png}"
    added = {option: ours[option][1] for option in set(ours) - set(theirs)}
    assert added == {
        "--at_head": "None", "--at_head_mirror": "None", "--at_low_compute": "False",
        "--at_time_res": "10", "--at_top_k": "5", "--at_threshold": "-1",
        "--at_language": "follow_asr", "--at_speech_events": "False",
        "--at_sdh_repeat": "False", "--at_sdh_continues": "60.0",
        "--at_speech_gate": "None", "--at_gate_margin": "0.5", "--at_segment_info": "False",
        "--backend": "openai-whisper", "--compute_type": "default",
        "--vad_filter": "None", "--batch_size": "None", "--at_encoder": "one_pass",
        "--at_compute_type": "auto",
        "--at_fill_gaps": "False",
    }


def _upstream_cli():
    import importlib

    return importlib.import_module("whisper.transcribe").cli


@pytest.mark.parametrize(
    "options",
    [[], GREEDY + ["--word_timestamps", "True", "--max_line_width", "24", "--max_line_count", "2"]],
    ids=["defaults", "words"],
)
def test_whisper_outputs_byte_identical(
    monkeypatch, tmp_path, capsys, tiny_en_no_heads, tiny_head_file, speech_wav, options
):
    common = [str(speech_wav), "--model", str(tiny_en_no_heads)] + options
    monkeypatch.setattr(sys, "argv", ["whisper"] + common + ["-o", str(tmp_path / "whisper")])
    torch.manual_seed(0)
    _upstream_cli()()
    upstream_printed = capsys.readouterr().out
    torch.manual_seed(0)
    ours = common + ["-o", str(tmp_path / "ours"), "--at_head", str(tiny_head_file)]
    assert cli.main(ours) == 0
    printed = capsys.readouterr().out
    if "--verbose" not in options:  # verbose: the transcript as whisper prints it, then the tags
        transcript, events = printed.split("Sound events:\n")
        assert transcript.endswith(upstream_printed)
        tags = json.loads((tmp_path / "ours" / "speech.tags.json").read_text())
        labels = ", ".join(label for label, _ in tags["parsed"][0]["audio tags"])
        assert events == f"[00:00.000 --> 00:0{tags['duration']:.3f}] {labels}\n"
    for ext in UPSTREAM_OUTPUTS:
        expected = (tmp_path / "whisper" / f"speech.{ext}").read_bytes()
        assert expected, ext
        assert (tmp_path / "ours" / f"speech.{ext}").read_bytes() == expected, ext
    written = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert written == sorted(
        [f"speech.{ext}" for ext in UPSTREAM_OUTPUTS]
        + ["speech.tags.json", "speech.tags.tsv", "speech.events.tsv", "speech.sdh.srt",
           "speech.sdh.vtt", "speech.events.png"]
    )


def test_single_format_and_file_named_like_a_subcommand(monkeypatch, tmp_path, model_args,
                                                          speech_wav):
    shutil.copy(speech_wav, tmp_path / "tag")
    monkeypatch.chdir(tmp_path)
    argv = ["./tag"] + model_args
    assert cli.main(argv + ["-f", "txt"]) == 0
    assert sorted(os.listdir(".")) == ["tag", "tag.txt"]
    assert "garden" in (tmp_path / "tag.txt").read_text()
    assert cli.main(argv + ["-f", "events", "-o", "ev"]) == 0
    assert os.listdir("ev") == ["tag.events.tsv"]


def test_subcommand_dispatch(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tag", "--help"])
    assert exit_info.value.code == 0
    assert "whisper-at tag" in capsys.readouterr().out
    module = tmp_path / "fake_research.py"
    module.write_text("def main(argv):\n    print('ran', argv)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "probe", "fake_research")
    monkeypatch.setitem(cli.SUBCOMMANDS, "serve", "fake_research")
    monkeypatch.setattr(cli, "MULTI_COMMAND_MODULES", {"fake_research"})
    assert cli.main(["probe", "--x", "1"]) == 3
    assert "ran ['probe', '--x', '1']" in capsys.readouterr().out
    monkeypatch.setattr(cli, "MULTI_COMMAND_MODULES", set())
    assert cli.main(["serve", "a"]) == 3
    assert "ran ['a']" in capsys.readouterr().out
    monkeypatch.setitem(cli.SUBCOMMANDS, "serve", "whisper_at.no_such_module")
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["whisper-at: error: sub-command 'serve' is not available in this "
                   "installation (whisper_at.no_such_module)"]


def _errors(capsys) -> list:
    """Our error lines on stderr (openai-whisper shows a progress bar there too)."""
    lines = capsys.readouterr().err.splitlines()
    return [line for line in lines if line.startswith("whisper-at:")]


@pytest.mark.parametrize("argv, message", [
    (["a.wav", "--at_time_res", "0.5"], "argument --at_time_res: at_time_res must be a multiple"),
    (["a.wav", "--at_top_k", "0"], "argument --at_top_k: must be at least 1, got 0"),
    (["a.wav", "--at_threshold", "nan"], "argument --at_threshold: must be a number"),
    (["a.wav", "--at_sdh_continues", "-1"], "--at_sdh_continues: must be a number of seconds >= 0"),
    (["a.wav", "-f", "pdf"], "argument --output_format/-f: invalid choice: 'pdf'"),
    (["a.wav", "--clip_timestamps", "5,x"], "argument --clip_timestamps: expected comma-separated"),
    (["a.wav", "--clip_timestamps", "-1"], "argument --clip_timestamps: expected comma-separated"),
    (["batch", "in", "out", "--clip_timestamps", ""], "argument --clip_timestamps: expected"),
    (["a.wav", "--highlight_words", "True"], "--highlight_words requires --word_timestamps"),
    (["tag", "a.wav", "--batch_size", "0"], "argument --batch_size: must be at least 1"),
    (["tag", "a.wav", "--at_window", "20"], "argument --at_window: invalid choice: 20"),
    (["tag", "a.wav", "--at_compute_type", "int8"],
     "argument --at_compute_type: invalid choice: 'int8'"),
    (["tag", "a.wav", "--device", "cpu", "--at_compute_type", "float16"],
     "--at_compute_type='float16' needs CUDA; on CPU use 'bfloat16' or 'float32'"),
    (["batch", "in", "out", "--task", "tag", "--device", "cpu", "--at_compute_type", "float16"],
     "--at_compute_type='float16' needs CUDA"),
    (["batch", "in", "out", "--at_compute_type", "bfloat16"],
     "--at_compute_type needs --backend faster-whisper, or tagging only"),
    (["a.wav", "--at_compute_type", "bfloat16"],
     "--at_compute_type needs --backend faster-whisper, or tagging only"),
    (["batch", "in", "out", "--shard_size", "0"], "argument --shard_size: must be at least 1"),
    (["batch", "in", "out", "--prefetch", "-2"], "argument --prefetch: must be at least 1"),
    (["batch", "in", "out", "--retries", "-1"], "argument --retries: must be at least 0"),
    (["batch", "in", "out", "--files_per_batch", "x"], "argument --files_per_batch: invalid"),
])
def test_bad_options_exit_2_before_loading(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["--model", "tiny.en"])  # never loaded
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _bad_inputs(tmp_path: Path) -> list:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 50)
    empty = tmp_path / "empty.wav"
    subprocess.run(["sox", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(empty),
                    "trim", "0", "0"], check=True)
    return [str(tmp_path / "missing.wav"), str(corrupt), str(empty), str(tmp_path)]


def test_bad_inputs_are_reported_and_skipped(tmp_path, capsys, model_args, speech_wav):
    bad = _bad_inputs(tmp_path)
    model = model_args
    out = tmp_path / "out"
    assert cli.main(bad + [str(speech_wav)] + model + ["-o", str(out)]) == 0
    err = _errors(capsys)
    assert len(err) == len(bad) + 1
    for path, line in zip(bad, err):
        assert line.startswith("whisper-at: error: ") and path in line
    assert "empty" in err[2] and "directory" in err[3]
    assert err[-1].startswith(f"whisper-at: error: 4 of 5 files failed: {bad[0]}")
    names = os.listdir(out)
    assert "speech.txt" in names and "speech.sdh.srt" in names
    assert not [n for n in names if not n.startswith("speech.")]  # nothing for bad files

    assert cli.main(bad + model + ["-o", str(out)]) == 1
    assert _errors(capsys)[-1] == "whisper-at: error: none of the 4 files succeeded"


def test_unwritable_outputs(tmp_path, capsys, model_args, speech_wav):
    model = model_args
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert cli.main([str(speech_wav)] + model + ["-o", str(not_a_dir / "out")]) == 2
    err = _errors(capsys)
    assert err == [f"whisper-at: error: cannot write to output directory {not_a_dir / 'out'}: "
                   "Not a directory"]
    out = tmp_path / "out"
    (out / "speech.txt").mkdir(parents=True)  # blocks one output file
    other = tmp_path / "other.wav"
    shutil.copy(speech_wav, other)
    assert cli.main([str(speech_wav), str(other), "-f", "txt"] + model + ["-o", str(out)]) == 0
    err = _errors(capsys)
    assert err[0].startswith(f"whisper-at: error: {speech_wav}: cannot write {out / 'speech.txt'}")
    assert sorted(os.listdir(out)) == ["other.txt", "speech.txt"]  # no staging dirs left
    assert (out / "speech.txt").is_dir()


def test_missing_head_and_matplotlib_are_clear(monkeypatch, tmp_path, capsys, tiny_en_pt,
                                               speech_wav):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        status = cli.main([str(speech_wav), "--model", str(tiny_en_pt), "-f", "sdh",
                           "-o", str(tmp_path)])
    assert status == 2
    assert "needs an audio-tagging head: pass --at_head" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main([str(speech_wav), "--model", str(tiny_en_pt), "-f", "png"]) == 2
    assert "needs matplotlib" in capsys.readouterr().err


# ---------------------------------------------------------------- whisper-at tag


def _lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(record: dict) -> torch.Tensor:
    """All-class logits per row from a JSONL record written with --at_top_k 527."""
    index = {name: i for i, name in enumerate(label_names("en"))}
    rows = torch.full((len(record["tags"]), 527), float("nan"))
    for k, chunk in enumerate(record["tags"]):
        for name, logit in chunk["tags"]:
            rows[k, index[name]] = logit
    return rows


@pytest.fixture(scope="module")
def long_transcribed(tiny_at, long_speech_wav):
    return whisper_at.transcribe(tiny_at, str(long_speech_wav), verbose=None)["audio_tag"]


def test_tag_rows_equal_transcribe(tmp_path, tiny_at, tiny_en_pt, tiny_head_file, speech_wav,
                                   long_speech_wav, long_transcribed, capsys):
    out = tmp_path / "tags.jsonl"
    argv = ["tag", str(speech_wav), str(long_speech_wav), "--model", str(tiny_en_pt),
            "--at_head", str(tiny_head_file), "--output", str(out), "--batch_size", "2",
            "--at_top_k", "527", "--at_threshold=-inf", "--verbose", "False",
            "--at_compute_type", "float32"]  # transcribe encodes in float32
    assert cli.main(argv) == 0
    short, long = _lines(out)
    assert short["path"] == str(speech_wav) and long["path"] == str(long_speech_wav)
    assert short["duration"] == pytest.approx(5.3, abs=0.2) and short["at_time_res"] == 10
    expected = whisper_at.transcribe(tiny_at, str(speech_wav), verbose=None)["audio_tag"]
    torch.testing.assert_close(_rows(short), expected, atol=1e-4, rtol=0)

    # long audio: rows inside the first 30 s window are the same; later rows come from windows
    # that start where transcribe's do not (documented in docs/cli.md)
    rows = _rows(long)
    assert rows.shape == long_transcribed.shape == (7, 527)
    torch.testing.assert_close(rows[:3], long_transcribed[:3], atol=1e-4, rtol=0)
    later = (rows[3:] - long_transcribed[3:]).abs()
    with capsys.disabled():
        print(f"\ntag vs transcribe, rows 3-6 of 61 s: max |diff| {later.max():.3f}, "
              f"mean {later.mean():.3f}; top-1 agree {_top1(rows, long_transcribed)}")
    assert torch.isfinite(rows).all()
    assert long["events"] and all(e["end"] <= long["duration"] for e in long["events"])


def _top1(a: torch.Tensor, b: torch.Tensor) -> str:
    same = (a.argmax(dim=1) == b.argmax(dim=1)).tolist()
    return f"{sum(same)}/{len(same)}"


def _tagged_rows(tmp_path, tiny_en_pt, tiny_head_file, audio, *options) -> torch.Tensor:
    """The rows ``whisper-at tag AUDIO ... OPTIONS`` writes (every class, to JSON's 6 decimals)."""
    out = tmp_path / "tags.jsonl"
    argv = ["tag", str(audio), "--model", str(tiny_en_pt), "--at_head", str(tiny_head_file),
            "--output", str(out), "--at_top_k", "527", "--at_threshold=-inf", "--verbose",
            "False", *options]  # fmt: skip
    assert cli.main(argv) == 0
    (line,) = _lines(out)
    return _rows(line)


def test_tag_ten_second_windows(tmp_path, tiny_at, tiny_en_pt, tiny_head_file, speech_wav):
    rows = _tagged_rows(tmp_path, tiny_en_pt, tiny_head_file, speech_wav, "--at_window", "10")
    expected = tiny_at.tag(str(speech_wav), window_seconds=10)["audio_tag"]
    torch.testing.assert_close(rows, expected, atol=1e-4, rtol=0)


def test_tag_compute_type(tmp_path, tiny_at, tiny_en_pt, tiny_head_file, speech_wav):
    """--at_compute_type bfloat16: the rows of model.tag(..., at_compute_type="bfloat16"),
    not float32's (the default here: this CPU has no native bfloat16)."""
    rows = _tagged_rows(tmp_path, tiny_en_pt, tiny_head_file, speech_wav, "--at_compute_type",
                        "bfloat16")  # fmt: skip
    bf16 = tiny_at.tag(str(speech_wav), at_compute_type="bfloat16")["audio_tag"]
    f32 = tiny_at.tag(str(speech_wav), at_compute_type="float32")["audio_tag"]
    torch.testing.assert_close(rows, bf16, atol=1e-5, rtol=0)  # JSON: 6 decimals
    assert (rows - f32).abs().max() > 1e-3


def test_tag_directories_failures_and_resume(tmp_path, capsys, tiny_en_pt, tiny_head_file,
                                             speech_wav, tone_wav):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    shutil.copy(speech_wav, data / "speech.wav")
    subprocess.run(["sox", str(tone_wav), str(data / "sub" / "tone.flac")], check=True)
    (data / "notes.txt").write_text("not audio")
    (data / "broken.wav").write_bytes(b"\x00" * 4000)
    out = tmp_path / "tags.jsonl"
    argv = ["tag", str(data), str(tmp_path / "missing.mp3"), "--model", str(tiny_en_pt),
            "--at_head", str(tiny_head_file), "--output", str(out), "--verbose", "False"]
    assert cli.main(argv) == 0
    lines = _lines(out)
    by_path = {line["path"]: line for line in lines}
    assert sorted(by_path) == sorted(
        [str(data / "broken.wav"), str(data / "speech.wav"), str(data / "sub" / "tone.flac"),
         str(tmp_path / "missing.mp3")]
    )
    assert set(by_path[str(data / "broken.wav")]) == {"path", "error"}
    assert "not found" in by_path[str(tmp_path / "missing.mp3")]["error"]
    tone = by_path[str(data / "sub" / "tone.flac")]
    assert [len(chunk["tags"]) for chunk in tone["tags"]] == [5]
    assert tone["tags"][0]["end"] == pytest.approx(5.0, abs=0.01)
    err = capsys.readouterr().err
    assert "broken.wav" in err and "2 of 4 files failed" in err

    with open(out, "a") as f:
        f.write('{"path": "cut sho')  # an interrupted run
    argv[1:3] = [str(data)]
    assert cli.main(argv + ["--resume"]) == 1  # only broken.wav was tried again, and failed
    text = out.read_text()
    assert text.endswith("\n") and '{"path": "cut sho\n' in text
    assert [json.loads(x)["path"] for x in text.splitlines()[len(lines) + 1:]] == [
        str(data / "broken.wav")]
    assert "none of the 1 files succeeded" in capsys.readouterr().err


def test_console_script_and_module_run(tmp_path, tiny_en_pt, tiny_head_file, speech_wav):
    # the script of the environment running the tests (.venv/bin is not on PATH unless activated)
    script = Path(sys.executable).parent / "whisper-at"
    assert script.exists(), f"{script} is missing: pip install -e ."
    shown = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--at_speech_events" in shown.stdout
    out = tmp_path / "tags.jsonl"
    run = subprocess.run(
        [sys.executable, "-m", "whisper_at", "tag", str(speech_wav), str(tmp_path / "nope.wav"),
         "--model", str(tiny_en_pt), "--at_head", str(tiny_head_file), "--output", str(out),
         "--verbose", "False"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[-1] == (
        f"whisper-at: error: 1 of 2 files failed: {tmp_path / 'nope.wav'}")
    assert sorted(sorted(line) for line in _lines(out)) == [  # lines come in completion order
        ["at_time_res", "duration", "events", "path", "tags"], ["error", "path"]]
