"""Time-and-Layer-wise Transformer (TL-TR) audio-tagging heads of Whisper-AT.

The module layout (and so the state_dict keys) matches the official Whisper-AT head files,
which store these modules under the ``at_model.`` prefix of the model's state_dict.
"""

import math
from typing import Dict, Mapping

import torch
from torch import Tensor, nn
from whisper.model import ResidualAttentionBlock

NUM_CLASSES = 527
LOW_COMPUTE_DIM = 512
POOL_STRIDE = 20  # encoder frames (20 ms each) averaged into one pooled frame
MEL_PER_POOLED = 2 * POOL_STRIDE  # mel frames (10 ms) per pooled frame
FRAMES_PER_SECOND = 2.5  # pooled frames per second of audio: 100 / 2 / 20


def frames_per_chunk(at_time_res: float) -> int:
    """Number of pooled frames in one tag row of ``at_time_res`` seconds."""
    return int(round(at_time_res * FRAMES_PER_SECOND))


class TLTR(nn.Module):
    """TL-TR head: attention over time within each layer, then over the layers.

    ``low_compute=True`` gives TL-TR-512, which first projects features to 512 dims.
    """

    def __init__(
        self,
        n_layer: int,
        n_state: int,
        low_compute: bool = False,
        n_time_head: int = 1,
        n_layer_head: int = 8,
        n_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.n_layer = n_layer
        self.n_state = n_state
        self.low_compute = low_compute
        dim = n_state
        if low_compute:
            dim = LOW_COMPUTE_DIM
            self.down_layer = nn.Sequential(nn.LayerNorm(n_state), nn.Linear(n_state, dim))
        self.time_tr = ResidualAttentionBlock(dim, n_time_head)
        self.layer_tr = ResidualAttentionBlock(dim, n_layer_head)
        self.mlp_layer = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, n_classes))

    def forward_chunks(self, x: Tensor) -> Tensor:
        """Logits of feature chunks: [n_chunks, n_layer, frames, n_state] -> [n_chunks, 527]."""
        n_chunks, n_layer, n_frames, n_state = x.shape
        if n_layer != self.n_layer or n_state != self.n_state:
            raise ValueError(
                f"features have {n_layer} layers of width {n_state}, but this head expects "
                f"{self.n_layer} layers of width {self.n_state}"
            )
        x = x.float().reshape(n_chunks * n_layer, n_frames, n_state)
        if self.low_compute:
            x = self.down_layer(x)
        x = self.time_tr(x).mean(dim=1)  # attention over time, per (chunk, layer)
        x = x.reshape(n_chunks, n_layer, -1)
        x = self.layer_tr(x).mean(dim=1)  # attention over layers, per chunk
        return self.mlp_layer(x)

    def forward(self, features: Tensor, at_time_res: float = 10) -> Tensor:
        """Logits for one window's pooled features [n_layer, T, n_state] -> [ceil(T / w), 527].

        ``w = at_time_res * 2.5`` pooled frames; the last chunk is zero-padded, as in the paper.
        """
        window = frames_per_chunk(at_time_res)
        n_layer, n_frames, n_state = features.shape
        n_chunks = max(1, math.ceil(n_frames / window))
        pad = n_chunks * window - n_frames
        if pad:
            features = nn.functional.pad(features, (0, 0, 0, pad))
        x = features.reshape(n_layer, n_chunks, window, n_state).transpose(0, 1)
        return self.forward_chunks(x)


def head_state_dict(checkpoint: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Extract head weights from a head file's state_dict: strips ``at_model.``/``module.``."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"an AT head checkpoint must be a state_dict, got {type(checkpoint)}")
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], Mapping):
        checkpoint = checkpoint["state_dict"]
    state = {}
    for key, value in checkpoint.items():
        for prefix in ("module.", "at_model."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        state[key] = value
    return state


def load_head(state: Mapping[str, Tensor], n_layer: int, n_state: int) -> TLTR:
    """Build the TL-TR / TL-TR-512 head that ``state`` holds, for a backbone of the given dims."""
    state = head_state_dict(state)
    try:
        low_compute = "down_layer.1.weight" in state
        key = "down_layer.0.weight" if low_compute else "time_tr.attn.query.weight"
        width = state[key].shape[-1]
        n_classes = state["mlp_layer.1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"not a TL-TR head checkpoint: missing key {e}") from None
    if width != n_state:
        raise ValueError(
            f"the AT head expects encoder features of width {width}, but the backbone's are "
            f"{n_state} wide: the head belongs to another model size"
        )
    # built on the meta device and given the checkpoint's tensors: no random init, so loading a
    # head leaves torch's global RNG as openai-whisper's load_model leaves it (seeded scripts
    # sample the same temperature fallbacks)
    with torch.device("meta"):
        head = TLTR(n_layer, n_state, low_compute=low_compute, n_classes=n_classes)
    state = {k: v.to(torch.float32, copy=True) if torch.is_tensor(v) else v
             for k, v in state.items()}
    try:
        head.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"the AT head checkpoint does not fit a TL-TR head: {e}") from None
    return head
