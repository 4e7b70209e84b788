"""Windows whose content repeats (digital silence): each is tagged where it sits.

Both backends keep the last encoded window and reuse it when the same content comes again
(language detection, then the first decode; temperature fallbacks). In a long stretch of digital
silence, windows at different places have bit-identical log-mels: the reuse must not leave their
rows untagged, place them at an earlier identical window, or let the speech gate decide them
with another window's rows."""

import numpy as np
import pytest
import torch

import whisper_at

SECONDS = 100  # 5 s of noise, then 95 s of zeros: windows at 30, 60 and 90 s are all silence


@pytest.fixture(scope="module")
def silence_audio() -> np.ndarray:
    audio = np.zeros(16000 * SECONDS, np.float32)
    noise = np.random.default_rng(0).standard_normal(16000 * 5).astype(np.float32)
    audio[: noise.size] = 0.1 * noise
    return audio


@pytest.fixture(scope="module")
def tiny_random(tiny_en_pt, tiny_head_file):
    return whisper_at.load_model(str(tiny_en_pt), at_head=str(tiny_head_file))


@pytest.fixture(scope="module")
def reference(tiny_random, silence_audio):
    """Tags of the whole file, gate off; windows start at 0, 30, 60 and 90 s."""
    torch.manual_seed(0)
    return tiny_random.transcribe(silence_audio, temperature=0, at_time_res=10)


def test_every_row_of_repeated_windows_is_tagged(tiny_random, silence_audio, reference):
    tags = reference["audio_tag"]
    assert tags.shape == (10, 527) and torch.isfinite(tags).all()
    # the 60 s window is the 30 s window's content: its rows are that window's rows, where it is
    torch.testing.assert_close(tags[6:9], tags[3:6], atol=0, rtol=0)
    assert not torch.equal(tags[0], tags[3])  # noise and silence are told apart

    result = tiny_random.transcribe(silence_audio, temperature=0, return_audio_features=True)
    features = result["audio_features_for_at"]
    assert features.shape[0] == 4  # one per decoded window, the repeated ones too


def test_gate_decides_each_repeated_window_with_its_own_rows(tiny_random, silence_audio,
                                                             reference):  # fmt: skip
    # a random head never reaches P = 1: every window is skipped whole, none decoded
    result = tiny_random.transcribe(silence_audio, temperature=0, at_speech_gate=1.0)
    gate = result["at_gate"]
    assert (gate["windows"], gate["windows_skipped"]) == (4, 4)
    assert gate["skipped"] == [[0.0, float(SECONDS)]] and result["text"] == ""
    torch.testing.assert_close(result["audio_tag"], reference["audio_tag"])


@pytest.mark.parametrize("at_encoder", ["one_pass", "exact"])
def test_faster_whisper_tags_repeated_windows_where_they_sit(
    ct2_tiny_en_dir, tiny_head_file, silence_audio, reference, at_encoder
):
    from whisper_at.faster import WhisperModel

    model = WhisperModel(str(ct2_tiny_en_dir), compute_type="int8", at_head=str(tiny_head_file),
                         at_encoder=at_encoder, at_compute_type="float32")  # fmt: skip
    segments, info = model.transcribe(silence_audio, beam_size=1, temperature=0)
    list(segments)
    assert info.at_windows == [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0), (90.0, 100.0)]
    torch.testing.assert_close(info.audio_tag, reference["audio_tag"], atol=1e-4, rtol=1e-4)

    segments, info = model.transcribe(silence_audio, beam_size=1, temperature=0,
                                      at_speech_gate=1.0)  # fmt: skip
    assert list(segments) == []
    assert (info.at_gate["windows"], info.at_gate["windows_skipped"]) == (4, 4)
    torch.testing.assert_close(info.audio_tag, reference["audio_tag"], atol=1e-4, rtol=1e-4)
