"""Smoke test: every benchmark script runs in --quick mode (tiny.en, 5 s) and prints its summary;
the audio the benchmarks make is the same each time it is made."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["bench_overhead", "bench_fallback", "bench_tagging", "bench_scaling", "bench_gate",
           "bench_faster", "bench_transformers", "bench_backends"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick(script, tiny_en_pt, request):
    if script == "bench_gate":  # it uses the speech head the tests train (cached)
        request.getfixturevalue("speech_head_file")
    # the scripts find tiny.en.pt (made by the tiny_en_pt fixture) in the shared test cache
    env = dict(os.environ, WHISPER_AT_TEST_CACHE=str(Path(tiny_en_pt).parent))
    cmd = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"SUMMARY {script}: tiny "), last
    assert re.search(r"x\d+\.\d{3}", last), last
    assert "| tiny |" in proc.stdout  # a results table was printed


def test_live_benchmark_quick(tiny_en_pt, ct2_tiny_en_dir, speech_head_file):
    """bench_live.py --quick: whisper_at.live with the gate and the whisper_streaming-style
    baseline on the recording's first 30 s (a speech block, silence, a melody)."""
    env = dict(os.environ, WHISPER_AT_TEST_CACHE=str(Path(tiny_en_pt).parent))
    cmd = [sys.executable, str(BENCHMARKS / "bench_live.py"), "--quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| live tiny.en + gate |" in proc.stdout and "| baseline tiny.en |" in proc.stdout
    last = proc.stdout.strip().splitlines()[-1]
    found = re.fullmatch(r"SUMMARY bench_live: live tiny\.en \+ gate: audio latency p50 / p95 "
                         r"([\d.]+) / ([\d.]+) s, WER vs offline ([\d.]+), (\d+) words in "
                         r"non-speech, compute RTF ([\d.]+)", last)  # fmt: skip
    assert found, last
    p50, p95, wer, invented, _ = (float(v) for v in found.groups())
    assert 0 < p50 <= p95 and wer <= 0.15 and invented == 0, last


def test_made_audio_is_the_same_each_time(tmp_path):
    """The speech, melody and noise the tests and benchmarks make are the same samples when made
    again (sox dithers and plucks at random unless repeatable): a recording rebuilt in a new
    cache gives the benchmarks the audio they were measured on."""
    import testkit

    def made(folder):
        folder.mkdir()
        return [path.read_bytes() for path in (
            testkit.espeak("Please call Stella.", folder / "speech.wav"),
            testkit.pluck_music(folder / "melody.wav", ["A2", "E3"], 0.25, 2),
            testkit.synth(folder / "noise.wav", 1, "pinknoise", "vol", "0.1"))]  # fmt: skip

    first, again = made(tmp_path / "a"), made(tmp_path / "b")
    assert all(len(a) > 16000 for a in first)
    assert first == again
