"""whisper_at.integrations.whisperx: tags in whisperX's batched pipeline, with whisperX itself.

whisperX pins torch 2.8, so it runs in its own environment (.venv-whisperx, built by
tests/install.sh) through tests/whisperx_runner.py, once for the module: tiny.en as a local
CTranslate2 directory (int8, as whisperX's users run it on CPU), whisperX's bundled pyannote
VAD, the trained speech head, and gate.wav (speech, 20 s tone, 29 s noise, speech). The results
come back here and are checked against whisper_at's own tags of the same audio.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import whisper_at
from whisper_at.gate import speech_probability
from whisper_at.outputs import write_outputs

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv-whisperx" / "bin" / "python"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ct2_tiny_en_dir, speech_head_file, gate_wav):
    if not PYTHON.exists():
        if os.environ.get("WHISPER_AT_SKIP_WHISPERX"):
            pytest.skip("WHISPER_AT_SKIP_WHISPERX is set: no whisperX environment")
        pytest.fail(f"{PYTHON} is missing: run tests/install.sh (it builds whisperX's "
                    "environment)", pytrace=False)  # fmt: skip
    out = tmp_path_factory.mktemp("whisperx")
    path, parts = gate_wav
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [str(PYTHON), str(REPO / "tests" / "whisperx_runner.py"), str(ct2_tiny_en_dir),
         str(speech_head_file), str(path), str(out)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    tags = {p.stem: torch.from_numpy(np.load(p)) for p in out.glob("*.npy")}
    return results, tags, parts, path


def _covered_rows(segments, n_rows, res=10.0):
    """Rows that some whisperX chunk (one per segment of its result) overlaps."""
    return {k for s in segments for k in range(n_rows)
            if s["start"] < (k + 1) * res and s["end"] > k * res}  # fmt: skip


def test_transcript_unchanged_and_rows_placed(runs):
    results, tags, parts, _ = runs
    assert results["torch"].startswith("2.8")
    plain, tagged = results["plain"], results["tagged"]
    assert plain["keys"] == ["language", "segments"]
    assert tagged["keys"] == ["at_time_res", "audio_tag", "language", "segments"]
    assert tagged["segments"] == plain["segments"]  # text, times and scores, exactly
    assert results["single"]["segments"] == plain["segments"]
    duration = parts[-1][1]
    audio_tag = tags["tagged"]
    assert tagged["audio_tag_type"] == "Tensor" and audio_tag.dtype == torch.float32
    assert audio_tag.shape == (math.ceil(duration / 10), 527)
    # rows VAD removed (the tone and the noise) are NaN; every row a chunk touches is tagged
    covered = _covered_rows(plain["segments"], len(audio_tag))
    nan_rows = set(torch.isnan(audio_tag).any(dim=1).nonzero().flatten().tolist())
    assert nan_rows == set(range(len(audio_tag))) - covered and nan_rows
    # the same windows whatever the batch size
    torch.testing.assert_close(tags["single"], audio_tag, equal_nan=True, atol=1e-4, rtol=0)
    speech = speech_probability(audio_tag)
    for k in covered:  # rows holding >= 5 s of speech are heard as speech
        spoken = sum(max(0.0, min(10 * k + 10, p[1]) - max(10 * k, p[0]))
                     for p in parts if p[2] == "speech")  # fmt: skip
        assert spoken < 5 or speech[k] > 0.5, (k, speech)


def test_rows_match_whisper_at_where_windows_agree(runs, tiny_en_pt, speech_head_file):
    """With a VAD that keeps all the audio in 30 s chunks, whisperX's windows are those of
    whisper_at's model.tag: rows agree up to whisperX's per-chunk log-mel normalisation."""
    results, tags, parts, path = runs
    model = whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(speech_head_file))
    reference = model.tag(str(path), at_compute_type="float32")["audio_tag"]
    grid = tags["grid"]
    assert grid.shape == reference.shape and not torch.isnan(grid).any()
    whole = len(grid) - 1  # the last window: whisperX pads the audio, whisper_at the log-mel
    difference = (grid[:whole] - reference[:whole]).abs().amax(dim=1)
    assert float(difference.median()) < 0.02, difference
    assert float(difference.max()) < 0.25, difference
    for k in range(whole):  # the same top class; top-5 sets differ at most by a near tie
        top, expected = grid[k].topk(5).indices.tolist(), reference[k].topk(5).indices.tolist()
        assert top[0] == expected[0] and len(set(top) & set(expected)) >= 4, (k, top, expected)
    # at_fill_gaps: the rows VAD removed are tagged too, and tell tone/noise from speech
    filled, tagged = tags["filled"], tags["tagged"]
    assert not torch.isnan(filled).any()
    kept = ~torch.isnan(tagged).any(dim=1)
    inside = [k for k in range(len(filled)) if any(  # rows a chunk holds whole: not filled again
        s["start"] <= 10 * k and 10 * k + 10 <= s["end"] for s in results["plain"]["segments"])]
    assert inside
    torch.testing.assert_close(filled[inside], tagged[inside])
    speech = speech_probability(filled)
    gap = [k for k in range(len(filled)) if not kept[k]]
    assert all(speech[k] < 0.5 for k in gap), speech
    difference = (filled[gap] - reference[gap]).abs().amax(dim=1)
    assert float(difference.max()) < 0.25, difference


def test_segment_evidence_and_gate(runs):
    results, _, parts, _ = runs
    gated = results["gated"]
    plain = results["plain"]["segments"]
    assert [s["text"] for s in gated["segments"]] == [s["text"] for s in plain]
    for segment in gated["segments"]:
        assert segment["at_speech_prob"] > 0.5 and segment["at_hallucination"] is False
        assert {"at_events", "at_reason"} <= set(segment)
    assert gated["at_gate"]["dropped_segments"] == []
    # where VAD lets the tone and noise through, whisperX invents text there; the gate drops it
    grid, grid_gated = results["grid"]["segments"], results["grid_gated"]["segments"]
    non_speech = (parts[1][0], parts[2][1])  # tone, then noise
    invented = [s for s in grid if s["start"] >= non_speech[0] and s["end"] <= non_speech[1]
                and s["text"].strip()]  # fmt: skip
    assert invented, grid
    dropped = results["grid_gated"]["at_gate"]["dropped_segments"]
    assert {s["text"] for s in invented} <= {s["text"] for s in dropped}
    assert all(s["text"] not in {d["text"] for d in invented} for s in grid_gated)
    # segments holding >= 5 s of speech are kept, their ends held to the speech
    def speech_seconds(s):
        return sum(max(0.0, min(s["end"], p[1]) - max(s["start"], p[0]))
                   for p in parts if p[2] == "speech")  # fmt: skip

    kept = [s for s in grid if speech_seconds(s) >= 5]
    assert len(kept) >= 2
    by_text = {s["text"]: s for s in grid_gated}
    assert all(s["text"] in by_text for s in kept)
    noisy_start = [s for s in kept if s["start"] < parts[3][0] - 5 < s["end"]]  # 60 s: noise
    assert noisy_start, kept
    for s in noisy_start:
        held = by_text[s["text"]]
        assert held["at_original_times"] == [s["start"], s["end"]]
        assert parts[3][0] - 2 <= held["start"] <= parts[3][0] + 0.5, held


def test_result_works_downstream(runs, tmp_path):
    """whisperX's own diarization step, parse_at_label, openai-whisper's writers and the SDH
    captions all take the tagged result."""
    results, tags, _, path = runs
    assert results["diarized"] == {"speakers": ["SPEAKER_00", "SPEAKER_01"], "has_tags": True}
    result = dict(results["tagged"], audio_tag=tags["tagged"])
    labels = whisper_at.parse_at_label(result, language="en", top_k=3)
    assert len(labels) == len(tags["tagged"])
    assert labels[0]["audio tags"] and labels[4]["audio tags"] == []  # row 4: tone, VAD removed
    written = write_outputs(result, str(path), str(tmp_path), "all", {})
    names = {Path(p).name for p in written}
    assert {"gate.srt", "gate.vtt", "gate.json", "gate.sdh.srt", "gate.tags.json"} <= names
    srt = (tmp_path / "gate.srt").read_text()
    assert all(s["text"].strip() in srt for s in result["segments"])
    assert "-->" in (tmp_path / "gate.sdh.vtt").read_text()


def test_errors_name_the_problem(runs):
    results = runs[0]
    assert results["again"] == "this pipeline already tags sound events"
    assert results["not_a_pipeline"].startswith(
        "enable_tagging takes the pipeline whisperx.load_model returns"
    )
