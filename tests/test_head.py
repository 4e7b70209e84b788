"""TL-TR heads: key compatibility and equal logits against the 2023 reference implementation."""

import pytest
import torch

from whisper_at.head import TLTR, head_state_dict, load_head

# (n_audio_layer, n_audio_state) of every official Whisper size
OFFICIAL_DIMS = {
    "tiny": (4, 384),
    "base": (6, 512),
    "small": (12, 768),
    "medium": (24, 1024),
    "large": (32, 1280),
}


def _randomized(module: torch.nn.Module, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    for value in state.values():
        value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
    module.load_state_dict(state)
    return {f"at_model.{k}": v for k, v in state.items()}


@pytest.mark.parametrize("size", list(OFFICIAL_DIMS))
@pytest.mark.parametrize("low_compute", [False, True])
def test_reference_head_loads_strictly_and_gives_equal_logits(ref_module, size, low_compute):
    n_layer, n_state = OFFICIAL_DIMS[size]
    mode = "tl_down_tr_512_1_8" if low_compute else "tl_tr_1_8"
    ref = ref_module.model.ATModel(n_layer=n_layer, rep_dim=n_state, mode=mode).eval()
    checkpoint = _randomized(ref, seed=n_layer)

    head = TLTR(n_layer, n_state, low_compute=low_compute)
    head.load_state_dict(head_state_dict(checkpoint), strict=True)
    head.eval()
    assert load_head(checkpoint, n_layer, n_state).low_compute == low_compute

    features = torch.randn(n_layer, 75, n_state, generator=torch.Generator().manual_seed(1))
    for res in (10, 0.4, 4.4, 30):
        with torch.no_grad():
            expected = ref(features, time_resolution=res)
            actual = head(features, res)
        assert actual.shape == expected.shape == (-(-75 // round(res * 2.5)), 527)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_reference_model_prefix_matches(ref_module):
    """The reference Whisper stores its head under ``at_model.``; our loader reads those keys."""
    dims = ref_module.model.ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
        n_vocab=51864, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4,
    )
    ref = ref_module.model.Whisper(dims)
    head_keys = {k for k in ref.state_dict() if k.startswith("at_model.")}
    ours = {f"at_model.{k}" for k in TLTR(4, 384).state_dict()}
    assert head_keys == ours


def test_head_of_other_size_is_refused():
    checkpoint = {f"at_model.{k}": v for k, v in TLTR(4, 384).state_dict().items()}
    with pytest.raises(ValueError, match="width 384.*512"):
        load_head(checkpoint, 6, 512)
    with pytest.raises(ValueError, match="missing key"):
        load_head({"foo": torch.zeros(1)}, 4, 384)


def test_features_of_wrong_shape_are_refused():
    head = TLTR(4, 384)
    with pytest.raises(ValueError, match="4 layers of width 384"):
        head(torch.zeros(6, 75, 384))
