"""Whisper large-v3 / turbo shaped backbones: 128 mel bins, the 51866-token vocabulary and fewer
decoder than encoder layers (as turbo), on a small random checkpoint (tiny's widths). No official
head exists for these backbones: a random head of the right shape, then one trained here with
``whisper-at features`` + ``whisper-at train``."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

import whisper_at
from whisper_at.audio_io import load_audio
from whisper_at.formats.checkpoint import make_checkpoint, save_checkpoint
from whisper_at.labels import class_ids, label_index
from whisper_at.research import main as research_main
from whisper_at.research.store import FeatureSet

DIMS = ModelDimensions(
    n_mels=128, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
    n_vocab=51866, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=2,
)
OPTIONS = dict(fp16=False, sample_len=16, temperature=(0.0, 0.5), best_of=2)  # a few steps


@pytest.fixture(scope="module")
def mel128_pt(tmp_path_factory) -> Path:
    """An OpenAI-format checkpoint of a random 128-mel Whisper (seeded; global RNG untouched)."""
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        state = Whisper(DIMS).state_dict()
    for name, value in state.items():
        if name != "encoder.positional_embedding":  # keep the sinusoids
            value.copy_(torch.randn(value.shape, generator=generator) * 0.05)
    path = tmp_path_factory.mktemp("mel128") / "large-v3-shaped.pt"
    save_checkpoint(make_checkpoint(DIMS, state), path)
    return path


@pytest.fixture(scope="module")
def mel128_head(mel128_pt) -> Path:
    """A seeded random TL-TR head for the backbone's 4 layers of width 384."""
    generator = torch.Generator().manual_seed(1)
    with torch.random.fork_rng():
        state = whisper_at.TLTR(DIMS.n_audio_layer, DIMS.n_audio_state).state_dict()
    for value in state.values():
        value.copy_(torch.randn(value.shape, generator=generator) * 0.05)
    path = mel128_pt.with_name("head.pth")
    torch.save({f"at_model.{k}": v for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def model(mel128_pt, mel128_head):
    return whisper_at.load_model(str(mel128_pt), device="cpu", at_head=str(mel128_head))


@pytest.fixture(scope="module")
def clip(speech_wav, tmp_path_factory) -> Path:
    """The first 3 s of the test sentence."""
    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    subprocess.run(["sox", str(speech_wav), str(path), "trim", "0", "3"], check=True)
    return path


class MelShapes:
    """Shapes of the log-mels the encoder of ``model`` is given."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.encoder.conv1.register_forward_hook(self._record)

    def _record(self, module, inputs, output):
        self.shapes.append(tuple(inputs[0].shape))

    def __enter__(self):
        return self.shapes

    def __exit__(self, *exc):
        self.handle.remove()


def test_transcribe_is_openai_whisper_s_on_a_128_mel_backbone(mel128_pt, model, clip):
    audio = load_audio(str(clip))
    plain = whisper.load_model(str(mel128_pt), device="cpu")
    results, shapes = [], []
    for net, transcribe in ((plain, whisper.transcribe), (model, whisper_at.transcribe)):
        with MelShapes(net) as seen:
            torch.manual_seed(0)
            results.append(transcribe(net, audio, **OPTIONS))  # language detection included
        shapes.append(seen)
    expected, actual = results
    tags = actual.pop("audio_tag")
    assert actual.pop("at_time_res") == 10
    assert actual == expected
    assert expected["text"].strip() and expected["language"] in whisper.tokenizer.LANGUAGES
    assert shapes[1] and all(shape[-2:] == (128, 3000) for shape in shapes[0] + shapes[1])
    assert tags.shape == (1, 527) and tags.dtype == torch.float32 and torch.isfinite(tags).all()


@pytest.mark.parametrize("window_seconds", [30, 10])
def test_tag_on_a_128_mel_backbone(model, clip, window_seconds):
    with MelShapes(model) as seen:
        result = model.tag(str(clip), window_seconds=window_seconds, return_audio_features=True,
                           at_compute_type="float32")  # as transcribe and features
    assert seen == [(1, 128, window_seconds * 100)]
    tags, features = result["audio_tag"], result["audio_features_for_at"]
    assert tags.shape == (1, 527) and torch.isfinite(tags).all()
    assert features.shape == (1, 4, window_seconds * 5 // 2, 384)
    assert torch.isfinite(features).all()
    if window_seconds == 30:  # on up to 30 s of audio, tagging only equals transcribe's rows
        transcribed = whisper_at.transcribe(model, str(clip), **OPTIONS)["audio_tag"]
        torch.testing.assert_close(tags, transcribed, atol=1e-4, rtol=1e-4)


def test_features_and_a_trained_head_for_a_128_mel_backbone(
    mel128_pt, model, speech_wav, tone_wav, noise_wav, silence_wav, clip, tmp_path
):
    """``whisper-at features`` + ``whisper-at train`` make a head that ``load_model`` takes."""
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    labels = {"speech": "Speech", "tone": "Sine wave", "noise": "White noise", "silence": "Silence"}
    sources = {"speech": speech_wav, "tone": tone_wav, "noise": noise_wav, "silence": silence_wav}
    mids = class_ids()
    lines = ["# YTID, start_seconds, end_seconds, positive_labels"]
    for name, source in sources.items():
        (audio_dir / f"{name}.wav").write_bytes(Path(source).read_bytes())
        lines.append(f'{name}, 0.000, 10.000, "{mids[label_index(labels[name])]}"')
    (tmp_path / "segments.csv").write_text("\n".join(lines) + "\n")

    features_dir, run_dir = tmp_path / "features", tmp_path / "run"
    assert research_main(["features", str(audio_dir), str(features_dir), "--model",
                          str(mel128_pt), "--labels", str(tmp_path / "segments.csv")]) == 0
    features = FeatureSet(str(features_dir))
    assert features.shape == (4, 25, 384) and len(features.entries) == 4
    # the features are those of the 128-mel tagging path (tag with 10 s windows)
    for i, entry in enumerate(features.entries):
        expected = model.tag(str(audio_dir / entry.path), window_seconds=10,
                             return_audio_features=True,
                             at_compute_type="float32")["audio_features_for_at"][0]
        assert np.isfinite(features.features(i)).all()
        np.testing.assert_allclose(features.features(i), expected.numpy(), atol=2e-4, rtol=1e-4)

    assert research_main(["train", str(features_dir), str(run_dir), "--epochs", "2",
                          "--batch_size", "4"]) == 0
    trained = whisper_at.load_model(str(mel128_pt), device="cpu",
                                    at_head=str(run_dir / "best_avg.pth"))
    tags = trained.tag(str(clip))["audio_tag"]
    assert tags.shape == (1, 527) and torch.isfinite(tags).all()
