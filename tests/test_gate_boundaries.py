"""The speech gate's boundaries, prompt reset, past-the-end rule and segment times, with speech
placed off the tag-row grid: espeak-ng speech A ending 0.5 s into row 1, white noise, then
speech B resuming 8.6 s into row 5 (that row holds 8.6 s of noise and 1.4 s of speech) and
ending 3 s into row 7, on both backends, with the speech head the test run trains
(conftest.speech_head_file).

That head finds speech readily (a row with 1.4 s of speech among noise scores 0.6-0.7, a row of
speech 0.9), so the threshold here is P = 0.8: the three rows that hold the ends of A and B and
the start of B are below it, and a gate deciding by rows alone would skip B's first words and
drop B's last sentence."""

import faster_whisper
import numpy as np
import pytest
import testkit
import torch
from faster_whisper.transcribe import Segment
from whisper.normalizers import EnglishTextNormalizer

import whisper_at
from whisper_at import gate

P = 0.8
ONSET = 58.6  # speech B starts 8.6 s into row 5 ([50, 60) s)
normalize = EnglishTextNormalizer()


def _words(text):
    return normalize(text).split()


@pytest.fixture(scope="module")
def offgrid(audio_dir):
    """(path, parts): speech A from 0.5 s, white noise, speech B from ONSET s; parts are
    (start, end, kind, text)."""
    path = audio_dir / "offgrid.wav"
    rate = testkit.RATE
    pieces, parts = [np.zeros(rate // 2, np.float32)], []

    def speech(sentences, name):
        start = sum(len(p) for p in pieces) / rate
        for i, text in enumerate(sentences):
            pieces.append(testkit.read_wav(testkit.espeak(text, audio_dir / f"{name}{i}.wav")))
            pieces.append(np.zeros(int(0.6 * rate), np.float32))
        end = sum(len(p) for p in pieces) / rate - 0.6
        parts.append((start, end, "speech", " ".join(sentences)))

    speech(testkit.SENTENCES[0:2], "offgrid_a")
    cursor = sum(len(p) for p in pieces) / rate
    noise = testkit.read_wav(testkit.synth(audio_dir / "offgrid_noise.wav", ONSET - cursor,
                                           "whitenoise", "vol", "0.05"))
    pieces.append(noise[: int(round((ONSET - cursor) * rate))])
    parts.append((cursor, ONSET, "noise", ""))
    speech(testkit.SENTENCES[3:6], "offgrid_b")
    testkit.write_wav(path, np.concatenate(pieces))
    return path, parts


@pytest.fixture(scope="module")
def fw_speech(ct2_tiny_en_dir, speech_head_file):
    from whisper_at.faster import WhisperModel

    return WhisperModel(str(ct2_tiny_en_dir), compute_type="int8", cpu_threads=2,
                        at_head=str(speech_head_file))


def _whisper(model, path, **options):
    torch.manual_seed(0)
    return whisper_at.transcribe(model, str(path), fp16=False, **options)


def _faster(model, path, **options):
    from whisper_at.faster import to_whisper_result

    segments, info = model.transcribe(str(path), language="en", **options)
    return to_whisper_result(segments, info)


@pytest.fixture(scope="module")
def results(tiny_speech, fw_speech, offgrid):
    path, _ = offgrid
    return {
        "openai-whisper": _whisper(tiny_speech, path, at_speech_gate=P, word_timestamps=True),
        "faster-whisper": _faster(fw_speech, path, at_speech_gate=P, word_timestamps=True,
                                  beam_size=1, temperature=0.0),
    }


def test_the_boundary_rows_are_below_the_threshold(tiny_speech, offgrid):
    """The premise: judged by their 10 s rows alone, both ends of speech A and B are
    non-speech, and the rows inside them speech."""
    path, parts = offgrid
    probs = gate.speech_probability(tiny_speech.tag(str(path))["audio_tag"])
    assert max(probs[1], probs[5], probs[7]) < P < min(probs[0], probs[6]), probs
    assert 10 < parts[0][1] < 11 and 72 < parts[2][1] < 75


@pytest.mark.parametrize("backend", ["openai-whisper", "faster-whisper"])
def test_decoding_resumes_before_speech_inside_a_non_speech_row(results, offgrid, backend):
    result = results[backend]
    _, (a, noise, b) = offgrid
    skipped = result["at_gate"]["skipped"]
    # the noise is skipped, up to a margin before speech B and never past its start
    resume = [end for start, end in skipped if start < ONSET <= end + 3]
    assert resume and ONSET - 0.5 - 1.6 <= resume[0] <= ONSET, skipped
    assert all(end <= ONSET for _, end in skipped) and all(start >= a[1] for start, _ in skipped)
    # so B's first sentence is transcribed, and its last one (in a row below P) is kept
    heard = [w for s in result["segments"] if s["start"] >= noise[0] for w in _words(s["text"])]
    spoken = _words(b[3])
    assert heard[:4] == spoken[:4] and {"football", "coffee", "winter"} <= set(heard), heard
    assert len(heard) >= len(spoken) - 2 and not result["at_gate"]["dropped_segments"]
    assert "stella" in _words(result["text"]) and "garden" in _words(result["text"])


@pytest.mark.parametrize("backend", ["openai-whisper", "faster-whisper"])
def test_segment_times_are_held_to_the_speech(results, offgrid, backend):
    result = results[backend]
    _, parts = offgrid
    speech = [(start, end) for start, end, kind, _ in parts if kind == "speech"]
    for segment in result["segments"]:
        if not segment["text"].strip():
            continue
        # every segment lies in one speech part, its ends within 1 s of it
        assert any(start - 1 <= segment["start"] and segment["end"] <= end + 1
                   for start, end in speech), segment
        for word in segment.get("words", []):
            assert segment["start"] <= word["start"] <= word["end"] <= segment["end"], segment
        if "at_original_times" in segment:
            assert [segment["start"], segment["end"]] != segment["at_original_times"]
    moved = result["at_gate"]["moved_segments"]
    assert all(set(m) == {"start", "end", "original"} for m in moved)


def test_prompt_starts_afresh_after_a_skip(tiny_speech, offgrid, monkeypatch):
    """Text before a skipped stretch is not the prompt after it; ``initial_prompt`` stays with
    ``carry_initial_prompt``, as after a high-temperature fallback."""
    from whisper_at import model as model_module

    path, _ = offgrid
    tokenizer = whisper_at.tokenizer.get_tokenizer(False)
    initial = tokenizer.encode(" Sentences read aloud.")
    prompts = []
    original = model_module.decode_function

    def recording(model, mel, options, **kwargs):
        prompts.append(list(options.prompt or []))
        return original(model, mel, options, **kwargs)

    monkeypatch.setattr(model_module, "decode_function", recording)
    for carry in (False, True):
        prompts.clear()
        result = _whisper(tiny_speech, path, at_speech_gate=P, temperature=0.0,
                          initial_prompt="Sentences read aloud.", carry_initial_prompt=carry)
        assert result["at_gate"]["skipped"] and len(prompts) >= 2
        # before the skip: the initial prompt; after it: nothing, or the initial prompt carried
        assert prompts[0] == initial
        assert prompts[1] == (initial if carry else []), (carry, prompts[1])
    # without the gate the text before the noise is the prompt of the window after it
    prompts.clear()
    _whisper(tiny_speech, path, temperature=0.0)
    assert len(prompts) >= 2 and len(prompts[1]) > 5


def test_faster_whisper_prompt_starts_afresh_after_a_skip(fw_speech, offgrid, monkeypatch):
    path, _ = offgrid
    prompts = []
    original = faster_whisper.WhisperModel.generate_with_fallback

    def recording(self, encoder_output, prompt, tokenizer, options):
        prompts.append((list(prompt), tokenizer.sot_prev))
        return original(self, encoder_output, prompt, tokenizer, options)

    monkeypatch.setattr(faster_whisper.WhisperModel, "generate_with_fallback", recording)
    _faster(fw_speech, path, at_speech_gate=P, beam_size=1, temperature=0.0)
    assert len(prompts) >= 2
    assert all(sot_prev not in prompt for prompt, sot_prev in prompts[1:2]), prompts[1]
    prompts.clear()
    _faster(fw_speech, path, beam_size=1, temperature=0.0)  # no gate: the text is the prompt
    assert any(sot_prev in prompt for prompt, sot_prev in prompts[1:])


def test_segments_past_the_end_are_flagged_and_dropped(fw_speech, offgrid):
    path, _ = offgrid
    segments, info = fw_speech.transcribe(str(path), language="en", at_speech_gate=P)
    segments = list(segments)
    duration = info.duration
    session = info._session
    ghost = Segment(id=99, seek=0, start=duration, end=duration + 3.0,
                    text=" The train to the city leaves the station.", tokens=[1, 2],
                    avg_logprob=-0.2, compression_ratio=1.2, no_speech_prob=0.0, words=None,
                    temperature=0.0)
    evidence = info.segment_info(ghost)
    assert evidence["at_hallucination"] and evidence["at_reason"] == gate.PAST_THE_END
    assert session.gate.judge(ghost, session.tagger) is None
    assert session.gate.dropped[-1]["reason"] == gate.PAST_THE_END
    # a real segment is kept, and its evidence does not flag it
    kept = [s for s in segments if "stella" in _words(s.text)]
    assert kept and not info.segment_info(kept[0])["at_hallucination"]
    # openai-whisper's rules are the same functions
    audio_tag = info.audio_tag
    probs = gate.speech_probability(audio_tag)
    flagged = gate.segment_evidence({"start": duration + 0.5, "end": duration + 2, "text": " x"},
                                    audio_tag, probs, 1000, P, duration=duration)
    assert flagged["at_hallucination"] and flagged["at_reason"] == gate.PAST_THE_END


def test_a_row_with_speech_the_frames_find_is_never_non_speech_whole(tiny_speech, offgrid):
    """The map the gate decides with, from the rows and 0.4 s frames of real encoder windows:
    every row that holds speech keeps it, and the frames place each boundary within a second
    (earlier rather than later)."""
    from whisper_at.mel import MelWindows
    from whisper_at.tagging import ChunkTagger

    path, parts = offgrid
    mel = MelWindows(testkit.read_wav(path), 80)
    tagger = ChunkTagger(tiny_speech.at_model, mel.content_frames, 10, speech_track=True)
    for seek, window in mel:
        _, pooled = tiny_speech.embed_audio_with_layers(window[None])
        tagger.add_window(seek, pooled[0], min(3000, mel.content_frames - seek))
    tagger.finish()
    speech_map = gate.SpeechMap.build(tagger, range(tagger.n_rows), P, 0.0)
    spans = [(a / 100, b / 100) for a, b in speech_map.spans]
    truth = [(start, end) for start, end, kind, _ in parts if kind == "speech"]
    assert len(spans) == len(truth), (spans, truth)
    for (a, b), (start, end) in zip(spans, truth):
        assert start - 1.2 <= a <= start + 0.1 and end - 0.1 <= b <= end + 1.6, (spans, truth)
    # rows 1, 5 and 7 are below P (test_the_boundary_rows_are_below_the_threshold), yet hold
    # speech; and a margin widens what is decoded on both sides
    wide = gate.SpeechMap.build(tagger, range(tagger.n_rows), P, 0.5).wide
    duration = mel.content_frames / 100
    assert [(a / 100, b / 100) for a, b in wide] == [
        (max(0, round(a - 0.5, 2)), min(duration, round(b + 0.5, 2))) for a, b in spans]
    assert speech_map.first_speech(3000, 6000) == round(spans[1][0] * 100)
    assert not speech_map.has_speech(3000, 5000)
