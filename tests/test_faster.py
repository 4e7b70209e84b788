"""whisper_at.faster: faster-whisper's transcript + sound events, real weights and audio."""

import json
import math
import subprocess
import sys
from pathlib import Path

import faster_whisper
import numpy as np
import pytest
import torch
from conftest import _run, _sox_out
from faster_whisper.audio import decode_audio, pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.vad import VadOptions, get_speech_timestamps

import whisper_at
from whisper_at.faster import (
    BatchedInferencePipeline,
    TaggedTranscriptionInfo,
    WhisperModel,
    enable_tagging,
    to_whisper_result,
)
from whisper_at.head import frames_per_chunk
from whisper_at.tagging import ChunkTagger

GREEDY = dict(beam_size=1, temperature=0.0)
pytestmark = pytest.mark.filterwarnings("ignore:at_time_res=")


@pytest.fixture(scope="module")
def tiny_dir(ct2_tiny_en_dir):
    return str(ct2_tiny_en_dir)


@pytest.fixture(scope="module")
def fw_plain(tiny_dir):
    return faster_whisper.WhisperModel(tiny_dir, device="cpu", compute_type="int8")


@pytest.fixture(scope="module")
def fw_one_pass(tiny_dir, tiny_head_file):
    # float32: its tags are compared with whisper_at's (float32) to float tolerance
    return WhisperModel(tiny_dir, device="cpu", compute_type="int8", at_head=str(tiny_head_file),
                        at_compute_type="float32")


@pytest.fixture(scope="module")
def fw_exact(tiny_dir, tiny_head_file):
    return WhisperModel(tiny_dir, compute_type="int8", at_head=str(tiny_head_file),
                        at_encoder="exact", at_compute_type="float32")  # fmt: skip


@pytest.fixture(scope="module")
def long_audio(long_speech_wav):
    return decode_audio(str(long_speech_wav))


@pytest.fixture(scope="module")
def gap_audio(speech_wav, audio_dir):
    """speech (5.3 s), 30 s of digital silence, speech again: ~41 s, VAD removes the middle."""
    path = audio_dir / "speech_gap.wav"
    silence = audio_dir / "silence30.wav"
    _run(["sox", "-n", *_sox_out(silence), "trim", "0", "30"])
    _run(["sox", str(speech_wav), str(silence), str(speech_wav), *_sox_out(path)])
    return decode_audio(str(path))


@pytest.fixture(scope="module")
def plain_long(fw_plain, long_audio):
    return _run_fw(fw_plain, long_audio, **GREEDY)


@pytest.fixture(scope="module")
def one_pass_long(fw_one_pass, long_audio):
    return _run_fw(fw_one_pass, long_audio, **GREEDY)


def _run_fw(model, audio, **options):
    torch.manual_seed(0)
    segments, info = model.transcribe(audio, **options)
    return list(segments), info


def _same_segments(a, b):
    assert [s.text for s in a] == [s.text for s in b]
    assert [(s.start, s.end, s.tokens) for s in a] == [(s.start, s.end, s.tokens) for s in b]


def _expected_rows(at_model, features, seeks, n_frames, at_time_res, window_frames=3000):
    """The rows whisper_at's own model and ChunkTagger give on the windows FW decoded
    (``window_frames`` of audio each, padded to 30 s as FW pads them)."""
    tagger = ChunkTagger(at_model.at_model, n_frames, at_time_res)
    content = features.shape[-1] - 1
    for seek in seeks:
        size = min(window_frames, content - seek)
        window = torch.from_numpy(pad_or_trim(features[:, seek : seek + size]))
        _, pooled = at_model.embed_audio_with_layers(window)
        tagger.add_window(seek, pooled, size)
    return tagger.finish()


# ---------------------------------------------------------------- sequential transcribe


def test_exact_mode_text_identical_to_faster_whisper(plain_long, fw_exact, tiny_at, long_audio):
    plain, _ = plain_long
    ours, info = _run_fw(fw_exact, long_audio, **GREEDY)
    _same_segments(plain, ours)
    assert isinstance(info, TaggedTranscriptionInfo)
    assert info.audio_tag.shape == (math.ceil(len(long_audio) / 16000 / 10), 527)
    # the tagging passes (in a worker thread) land on the rows of the windows FW decoded
    features = fw_exact.feature_extractor(long_audio)
    seeks = sorted({segment.seek for segment in ours})
    expected = _expected_rows(tiny_at, features, seeks, len(long_audio) // 160, 10)
    torch.testing.assert_close(info.audio_tag, expected, atol=1e-4, rtol=1e-4)


def test_one_pass_tags_equal_whisper_at_on_the_same_windows(fw_one_pass, one_pass_long, tiny_at,
                                                            long_audio):  # fmt: skip
    """Same mel windows (FW's numpy mel) through whisper_at's model and ChunkTagger."""
    segments, info = one_pass_long
    features = fw_one_pass.feature_extractor(long_audio)
    # the windows FW encoded and decoded (a window can yield no segment)
    seeks = [round(start * 100) for start, _ in info.at_windows]
    assert len(seeks) >= 3 and set(seeks) >= {segment.seek for segment in segments}
    expected = _expected_rows(tiny_at, features, seeks, len(long_audio) // 160, 10)
    torch.testing.assert_close(info.audio_tag, expected, atol=1e-4, rtol=1e-4)
    # end to end, against whisper_at.transcribe on openai-whisper's (torch) mel: where both
    # decoded the same windows (the int8 decoder's text, hence its next seek, can differ from
    # openai-whisper's float32 one, sooner or later by CPU), the rows agree to the mels' difference
    torch.manual_seed(0)
    reference = whisper_at.transcribe(tiny_at, long_audio, temperature=0)
    assert reference["audio_tag"].shape == info.audio_tag.shape
    end = len(long_audio) // 160
    ours = seeks + [end]
    theirs = sorted({segment["seek"] for segment in reference["segments"]}) + [end]
    shared = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b or i == len(ours) - 1)
    same_until = min(ours[shared], theirs[shared]) / 100  # seconds decoded in the same windows
    rows = int(same_until // 10)
    assert rows >= 2, (ours, theirs)
    similarity = torch.nn.functional.cosine_similarity(reference["audio_tag"][:rows],
                                                       info.audio_tag[:rows], dim=1)  # fmt: skip
    assert similarity.min() > 0.9999, similarity


def test_auto_compute_type(tiny_dir, tiny_head_file, fw_one_pass, plain_long, long_audio):
    """The default tagging encoder: bfloat16 on CPUs that compute it natively (else float32),
    close to float32 in features, tags and text."""
    import jiwer

    from whisper_at.precision import native_bfloat16

    auto = WhisperModel(tiny_dir, compute_type="int8", at_head=str(tiny_head_file))
    expected = torch.bfloat16 if native_bfloat16() else torch.float32
    assert auto.at_torch_encoder.compute_dtype == expected
    features = auto.feature_extractor(long_audio)[None, :, :3000]
    out32, pooled32 = fw_one_pass.at_torch_encoder(features)
    out, pooled = auto.at_torch_encoder(features)
    assert out.dtype == pooled.dtype == torch.float32
    for layer in range(pooled.shape[1]):  # the last layer has a few large, rounded values
        error = (pooled[0, layer] - pooled32[0, layer]).norm() / pooled32[0, layer].norm()
        assert error < 0.1, (layer, error)
    difference = (auto.at_model(pooled[0]) - fw_one_pass.at_model(pooled32[0])).abs()
    assert difference.max() < 0.1 and difference.mean() < 0.02, difference
    segments, info = _run_fw(auto, long_audio, **GREEDY)
    text = " ".join(s.text for s in segments)
    assert jiwer.wer(" ".join(s.text for s in plain_long[0]), text) < 0.1
    assert info.audio_tag.shape == (math.ceil(len(long_audio) / 16000 / 10), 527)
    for bad in ("int8", "float64"):
        with pytest.raises(ValueError, match="at_compute_type must be one of"):
            WhisperModel(tiny_dir, compute_type="int8", at_head=False, at_compute_type=bad)
    with pytest.raises(ValueError, match="'float16' needs CUDA"):
        WhisperModel(tiny_dir, compute_type="int8", at_head=False, at_compute_type="float16")


def test_one_pass_text_close_to_faster_whisper(plain_long, one_pass_long):
    import jiwer

    plain, ours = plain_long[0], one_pass_long[0]
    error = jiwer.wer(" ".join(s.text for s in plain), " ".join(s.text for s in ours))
    assert error < 0.1


def test_tags_need_the_segments_consumed_and_convert(fw_one_pass, speech_wav, speech_text):
    segments, info = fw_one_pass.transcribe(str(speech_wav), word_timestamps=True)
    with pytest.raises(RuntimeError, match="consume the segments"):
        _ = info.audio_tag
    with pytest.raises(RuntimeError, match="consume the segments"):
        whisper_at.parse_at_label(info)
    result = to_whisper_result(segments, info)
    assert info.tags_ready and result["audio_tag"].shape == (1, 527)
    assert result["at_time_res"] == 10 and result["language"] == "en"
    assert "favorite color" in result["text"]
    first = result["segments"][0]
    assert first["id"] == 0 and first["words"] and first["words"][0]["word"].strip()
    labels = whisper_at.parse_at_label(info, top_k=3)
    assert labels == whisper_at.parse_at_label(result, top_k=3)
    assert len(labels) == 1 and len(labels[0]["audio tags"]) == 3


def test_our_writers_take_the_result(fw_one_pass, speech_wav, tmp_path):
    """openai-whisper's writers (through whisper_at.outputs) and the sound-event outputs."""
    from whisper_at import outputs

    result = to_whisper_result(*fw_one_pass.transcribe(str(speech_wav), word_timestamps=True))
    args = {"highlight_words": True, "max_line_width": None, "max_line_count": None,
            "max_words_per_line": None}  # fmt: skip
    written = outputs.write_outputs(result, str(speech_wav), str(tmp_path), "all", args)
    names = {Path(p).name for p in written}
    assert {"speech.srt", "speech.json", "speech.tags.json", "speech.sdh.srt"} <= names
    assert "favorite" in (tmp_path / "speech.srt").read_text()
    assert json.loads((tmp_path / "speech.json").read_text())["segments"][0]["words"]
    assert len(json.loads((tmp_path / "speech.tags.json").read_text())["chunks"]) == 1


def test_lazy_segments_consumed_in_another_thread(fw_one_pass, one_pass_long, long_audio):
    import threading

    reference, ref_info = one_pass_long
    torch.manual_seed(0)
    segments, info = fw_one_pass.transcribe(long_audio, **GREEDY)
    out = []
    worker = threading.Thread(target=lambda: out.extend(segments))
    worker.start()
    worker.join()
    _same_segments(reference, out)
    torch.testing.assert_close(info.audio_tag, ref_info.audio_tag)


def test_word_timestamps_and_clip_timestamps(fw_one_pass, long_audio):
    segments, info = _run_fw(
        fw_one_pass, long_audio, word_timestamps=True, clip_timestamps="5,25,40,52", **GREEDY
    )
    assert segments and all(s.words for s in segments)
    assert all(5 - 0.5 <= s.start and s.end <= 52.5 for s in segments)
    # as whisper_at.transcribe (test_transcribe.py): rows no clip touches are NaN
    nan = torch.isnan(info.audio_tag).all(dim=1)
    assert nan.tolist() == [False, False, False, True, False, False, True]


@pytest.fixture
def fresh_feature_extractors(fw_plain, fw_exact, fw_one_pass):
    """FW's feature extractor keeps a ``chunk_length`` for the model's later calls (FW 1.2.1):
    give the shared models fresh ones afterwards."""
    yield
    for model in (fw_plain, fw_exact, fw_one_pass):
        model.feature_extractor = FeatureExtractor(**model.feat_kwargs)


@pytest.mark.usefixtures("fresh_feature_extractors")
def test_chunk_length_10_windows(fw_plain, fw_exact, fw_one_pass, tiny_at, long_audio):
    """FW's chunk_length=10: windows of 10 s of audio (FW pads each to 30 s before encoding);
    exact text is FW's; tag rows come from those windows."""
    plain, _ = _run_fw(fw_plain, long_audio, chunk_length=10, **GREEDY)
    exact, info = _run_fw(fw_exact, long_audio, chunk_length=10, **GREEDY)
    _same_segments(plain, exact)
    one, one_info = _run_fw(fw_one_pass, long_audio, chunk_length=10, **GREEDY)
    assert "favorite color" in " ".join(s.text for s in one)
    features = fw_one_pass.feature_extractor(long_audio, chunk_length=10)
    seeks = [round(start * 100) for start, _ in one_info.at_windows]
    assert len(seeks) >= 6 and all(b - a <= 1000 for a, b in zip(seeks, seeks[1:]))
    expected = _expected_rows(tiny_at, features, seeks, len(long_audio) // 160, 10, 1000)
    assert not torch.isnan(expected).any()
    torch.testing.assert_close(one_info.audio_tag, expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- VAD: the original timeline


def _speech_rows(chunks, n_rows, res_frames, whole=False):
    rows = []
    for k in range(n_rows):
        lo, hi = k * res_frames * 160, (k + 1) * res_frames * 160
        if whole:
            rows.append(any(c["start"] <= lo and hi <= c["end"] for c in chunks))
        else:
            rows.append(any(min(hi, c["end"]) > max(lo, c["start"]) for c in chunks))
    return rows


def test_vad_rows_map_back_to_the_original_audio(fw_one_pass, tiny_at, gap_audio):
    res = 0.8
    segments, info = _run_fw(fw_one_pass, gap_audio, vad_filter=True, at_time_res=res, **GREEDY)
    assert info.duration_after_vad < info.duration - 25
    assert [s.text.count("favorite") for s in segments].count(1) == 2
    assert segments[-1].end > 35  # FW's own timestamps are in the original timeline
    chunks = get_speech_timestamps(gap_audio, VadOptions())
    assert len(chunks) == 2
    tags = info.audio_tag
    res_frames = round(res * 100)
    n_rows = tags.shape[0]
    assert n_rows == math.ceil(len(gap_audio) / 160 / res_frames)
    tagged = (~torch.isnan(tags).any(dim=1)).tolist()
    assert tagged == _speech_rows(chunks, n_rows, res_frames)
    assert tagged.count(False) > 25 / res  # the silence VAD removed is not analysed

    # a row inside a speech chunk comes from the filtered audio's window at the shifted frame
    filtered = np.concatenate([gap_audio[c["start"] : c["end"]] for c in chunks])
    features = fw_one_pass.feature_extractor(filtered)
    content = features.shape[-1] - 1
    window = torch.from_numpy(pad_or_trim(features[:, :content]))
    _, pooled = tiny_at.embed_audio_with_layers(window)
    width = frames_per_chunk(res)
    inside = [k for k, ok in enumerate(_speech_rows(chunks, n_rows, res_frames, True)) if ok]
    assert len(inside) > 8
    shift, position = {}, 0
    for c in chunks:
        shift[c["start"]] = round((c["start"] - position) / 160)
        position += c["end"] - c["start"]
    for k in inside:
        start = max(s for s in shift if s <= k * res_frames * 160)
        offset = math.floor((k * res_frames - shift[start]) / 40 + 0.5)
        expected = tiny_at.at_model.forward_chunks(pooled[None, :, offset : offset + width])
        torch.testing.assert_close(tags[k], expected[0], atol=1e-4, rtol=1e-4)


def test_vad_fill_gaps_tags_every_row(fw_one_pass, gap_audio):
    res = 0.8
    _, plain = _run_fw(fw_one_pass, gap_audio, vad_filter=True, at_time_res=res, **GREEDY)
    _, filled = _run_fw(fw_one_pass, gap_audio, vad_filter=True, at_time_res=res,
                        at_fill_gaps=True, **GREEDY)  # fmt: skip
    assert torch.isfinite(filled.audio_tag).all()
    chunks = get_speech_timestamps(gap_audio, VadOptions())
    inside = _speech_rows(chunks, plain.audio_tag.shape[0], 80, whole=True)
    assert sum(inside) > 8
    torch.testing.assert_close(filled.audio_tag[inside], plain.audio_tag[inside])
    # the silence gets its own features: its rows differ from any speech row
    silent = ~torch.tensor(_speech_rows(chunks, plain.audio_tag.shape[0], 80))
    gap_rows, speech_rows = filled.audio_tag[silent], filled.audio_tag[inside]
    assert (gap_rows[:, None] - speech_rows[None]).abs().amax(-1).min() > 1e-3


# ---------------------------------------------------------------- batched pipeline


def test_batched_pipeline_text_and_rows(fw_plain, fw_exact, fw_one_pass, long_audio):
    plain = faster_whisper.BatchedInferencePipeline(fw_plain)
    segments, _ = _run_fw(plain, long_audio, batch_size=4, **GREEDY)
    exact, info = _run_fw(BatchedInferencePipeline(fw_exact), long_audio, batch_size=4, **GREEDY)
    _same_segments(segments, exact)
    one, one_info = _run_fw(BatchedInferencePipeline(fw_one_pass), long_audio, batch_size=4,
                            at_time_res=2, **GREEDY)  # fmt: skip
    assert len(one) >= 2  # without_timestamps: one segment per chunk
    chunks = get_speech_timestamps(long_audio, VadOptions(max_speech_duration_s=30,
                                                          min_silence_duration_ms=160))
    tagged = (~torch.isnan(one_info.audio_tag).any(dim=1)).tolist()
    assert tagged == _speech_rows(chunks, len(tagged), 200)
    # without VAD: clips given in seconds are placed where they are
    clips = [{"start": 0.0, "end": 20.0}, {"start": 40.0, "end": 55.0}]
    _, clip_info = _run_fw(BatchedInferencePipeline(fw_one_pass), long_audio, vad_filter=False,
                           clip_timestamps=clips, **GREEDY)  # fmt: skip
    nan = torch.isnan(clip_info.audio_tag).all(dim=1).tolist()
    assert nan == [False, False, True, True, False, False, True]


# ---------------------------------------------------------------- multilingual base


def test_base_language_detection_encodes_the_first_window_once(fw_base_dir, base_head_file,
                                                                 long_audio):  # fmt: skip
    class Counting(faster_whisper.WhisperModel):  # a subclass with its own encode (whisperX)
        def encode(self, features):
            self.calls = getattr(self, "calls", 0) + 1
            return super().encode(features)

    options = dict(clip_timestamps="0,30", without_timestamps=True, **GREEDY)
    plain = Counting(str(fw_base_dir), compute_type="int8")
    plain_segments, plain_info = _run_fw(plain, long_audio, **options)
    model = enable_tagging(Counting(str(fw_base_dir), compute_type="int8"), str(fw_base_dir),
                           at_head=str(base_head_file), at_encoder="exact")  # fmt: skip
    assert type(model).__name__ == "TaggingCounting"
    model.calls = 0
    segments, info = _run_fw(model, long_audio, **options)
    assert info.language == plain_info.language == "en"
    assert info.language_probability == plain_info.language_probability
    _same_segments(plain_segments, segments)
    assert model.calls == plain.calls - 1  # detection and first decode share one pass
    assert torch.isfinite(info.audio_tag[:3]).all() and torch.isnan(info.audio_tag[3:]).all()

    model.at_encoder = "one_pass"
    segments, info = _run_fw(model, long_audio, **options)
    assert info.language == "en" and "Stella" in "".join(s.text for s in segments)


# ---------------------------------------------------------------- enable_tagging, errors


def test_enable_tagging_on_a_plain_model_equals_whisper_model(tiny_dir, tiny_head_file,
                                                              fw_one_pass, speech_wav):  # fmt: skip
    model = enable_tagging(faster_whisper.WhisperModel(tiny_dir, compute_type="int8"), tiny_dir,
                           at_head=str(tiny_head_file), at_compute_type="float32")  # fmt: skip
    assert model.has_at_head and model.at_encoder == "one_pass"
    a, info_a = _run_fw(model, str(speech_wav))
    b, info_b = _run_fw(fw_one_pass, str(speech_wav))
    _same_segments(a, b)
    torch.testing.assert_close(info_a.audio_tag, info_b.audio_tag)
    with pytest.raises(ValueError, match="already"):
        enable_tagging(model, tiny_dir)


def test_bad_arguments(tiny_dir, fw_plain, fw_one_pass, tiny_head_file, speech_wav, tmp_path):
    head = str(tiny_head_file)
    with pytest.raises(ValueError, match="at_encoder"):
        WhisperModel(tiny_dir, at_head=head, at_encoder="fast")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        WhisperModel(tiny_dir, at_head=str(tmp_path / "nowhere.pt"))
    with pytest.raises(ValueError, match="files="):
        WhisperModel(tiny_dir, at_head=head, files={"model.bin": b""})
    with pytest.raises(ValueError, match="TL-TR-512"):
        WhisperModel(tiny_dir, at_head=head, at_low_compute=True)
    with pytest.raises(TypeError, match="faster_whisper.WhisperModel"):
        enable_tagging(object(), tiny_dir)
    with pytest.raises(TypeError, match="enable_tagging"):
        BatchedInferencePipeline(fw_plain)
    with pytest.raises(ValueError, match="multiple of 0.4"):
        fw_one_pass.transcribe(str(speech_wav), at_time_res=0.5)
    with pytest.raises(TypeError, match="at_fill_gaps"):
        fw_one_pass.transcribe(str(speech_wav), at_fill_gaps="yes")
    with pytest.raises(ValueError, match="a file"):
        enable_tagging(faster_whisper.WhisperModel(tiny_dir), str(speech_wav))
    with pytest.raises(ValueError, match="at_compute_type"):
        WhisperModel(str(tmp_path / "not loaded: checked first"), at_compute_type="int8")
    plain = faster_whisper.WhisperModel(tiny_dir, compute_type="int8")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        enable_tagging(plain, tiny_dir, at_head=str(tmp_path / "nowhere.pt"))
    assert type(plain) is faster_whisper.WhisperModel  # a failed call left it alone


def test_no_head_is_plain_faster_whisper(tiny_dir, fw_plain, speech_wav):
    """Without a head nothing is tagged, and FW's own encoder makes the text (no torch pass)."""
    model = WhisperModel(tiny_dir, compute_type="int8", at_head=False)
    assert not model.has_at_head and model.at_torch_encoder is None
    segments, info = _run_fw(model, str(speech_wav))
    _same_segments(_run_fw(fw_plain, str(speech_wav))[0], segments)
    result = to_whisper_result(segments, info)
    assert "favorite" in result["text"] and "audio_tag" not in result


def test_import_whisper_at_does_not_import_faster_whisper():
    code = "import sys, whisper_at; print('faster_whisper' in sys.modules)"
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=repo, env={"PYTHONPATH": repo, "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_documented_example_runs(tiny_dir, tiny_head_file):
    root = Path(__file__).resolve().parents[1]
    script, audio = root / "examples" / "faster_quickstart.py", root / "examples" / "speech.wav"
    out = subprocess.run(
        [sys.executable, str(script), str(audio), "--model", tiny_dir,
         "--at_head", str(tiny_head_file), "--vad_filter"],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "laughter" in lines[0].lower() and lines[0].startswith("[0.")
    assert lines[-2].startswith("0s-10s: ") and lines[-1].startswith("10s-20s:")  # VAD: NaN


def test_ct2_encoder_reads_only_the_encoder(ct2_base_dir, base_pt):
    from whisper_at.formats.convert import ct2_encoder
    from whisper_at.formats.ct2 import read_ct2_model

    dims, state = ct2_encoder(ct2_base_dir)  # split parts: skipped reads cross the boundary
    full = torch.load(base_pt, map_location="cpu", weights_only=True)
    assert dims == {k: v for k, v in full["dims"].items() if k in dims} and len(dims) == 5
    expected = {k: v for k, v in full["model_state_dict"].items() if k.startswith("encoder.")}
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    variables, _ = read_ct2_model(ct2_base_dir, keep=lambda name: name.endswith("/gamma"))
    assert variables and all(name.endswith("/gamma") for name in variables)
