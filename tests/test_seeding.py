"""Seeded scripts: loading a model draws from torch's global RNG exactly as openai-whisper's
``load_model`` does, so ``torch.manual_seed(0); load_model(...); transcribe(...)`` samples the same
temperature fallbacks with either library. Real tiny.en weights, the seeded random head."""

import pytest
import torch
import whisper

import whisper_at
from whisper_at.audio_io import load_audio


def _rng_after(load) -> torch.Tensor:
    torch.manual_seed(0)
    load()
    return torch.get_rng_state()


@pytest.mark.parametrize("low_compute", [False, True])
def test_load_model_leaves_the_rng_as_openai_whisper(tiny_en_pt, tmp_path, low_compute):
    head = whisper_at.TLTR(4, 384, low_compute=low_compute).state_dict()
    torch.save({f"at_model.{k}": v for k, v in head.items()}, tmp_path / "head.pth")

    expected = _rng_after(lambda: whisper.load_model(str(tiny_en_pt), device="cpu"))
    assert not torch.equal(expected, _rng_after(lambda: None))  # Whisper(dims) itself draws
    actual = _rng_after(lambda: whisper_at.load_model(
        str(tiny_en_pt), device="cpu", at_head=str(tmp_path / "head.pth")))
    assert torch.equal(actual, expected)
    model = whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(tmp_path / "head.pth"))
    assert model.at_model.low_compute == low_compute
    for name, value in model.at_model.state_dict().items():  # the checkpoint's values, float32
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        assert torch.equal(value, head[name]), name


def test_load_from_ctranslate2_dir_leaves_the_rng_as_openai_whisper(
    ct2_tiny_en_dir, tiny_en_pt, tiny_head_file
):
    # openai-whisper cannot read the CTranslate2 directory: compare with its load of the
    # same weights converted to an OpenAI checkpoint
    expected = _rng_after(lambda: whisper.load_model(str(tiny_en_pt), device="cpu"))
    actual = _rng_after(lambda: whisper_at.load_model(
        str(ct2_tiny_en_dir), device="cpu", at_head=str(tiny_head_file)))
    assert torch.equal(actual, expected)


def test_seeded_script_samples_the_same_fallback_as_openai_whisper(
    tiny_en_pt, tiny_head_file, noise_wav
):
    """The same script, openai-whisper then whisper_at: seed, load, transcribe noise that
    makes temperature 0 fail, so tokens are sampled at 0.2 and above."""
    audio = load_audio(str(noise_wav))
    results = []
    for load, transcribe, extra in (
        (whisper.load_model, whisper.transcribe, {}),
        (whisper_at.load_model, whisper_at.transcribe, {"at_head": str(tiny_head_file)}),
    ):
        torch.manual_seed(0)
        model = load(str(tiny_en_pt), device="cpu", **extra)
        # no_speech_threshold=None keeps the sampled segments; sample_len=32 keeps it quick
        # (the 32 tokens at temperature 0 still repeat: the fallback comes all the same)
        results.append(transcribe(
            model, audio, fp16=False, no_speech_threshold=None, sample_len=32))
    expected, actual = results
    assert expected["segments"] and min(s["temperature"] for s in expected["segments"]) > 0
    assert actual["audio_tag"].shape == (1, 527)
    del actual["audio_tag"], actual["at_time_res"]
    assert actual == expected
