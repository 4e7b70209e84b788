"""openai-whisper checkpoint dicts: building one (with alignment heads), loading, saving."""

import base64
import gzip
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np
import torch
import whisper
from whisper.model import ModelDimensions

from ..staging import atomic_path
from .ct2 import PathLike
from .weights import load_state_dict

# (n_mels, n_vocab, n_audio_state, n_audio_layer, n_text_layer) of the official models, to give
# converted ones openai-whisper's alignment heads; large-v1/v2 share dims, so neither is listed
_OPENAI_SIZES = {
    (80, 51864, 384, 4, 4): "tiny.en",
    (80, 51865, 384, 4, 4): "tiny",
    (80, 51864, 512, 6, 6): "base.en",
    (80, 51865, 512, 6, 6): "base",
    (80, 51864, 768, 12, 12): "small.en",
    (80, 51865, 768, 12, 12): "small",
    (80, 51864, 1024, 24, 24): "medium.en",
    (80, 51865, 1024, 24, 24): "medium",
    (128, 51866, 1280, 32, 32): "large-v3",
    (128, 51866, 1280, 32, 4): "large-v3-turbo",
}


def alignment_heads_mask(heads: Sequence[Sequence[int]], n_layer: int, n_head: int) -> torch.Tensor:
    """Bool [n_layer, n_head] mask from a list of (layer, head) pairs."""
    mask = torch.zeros(n_layer, n_head, dtype=torch.bool)
    for layer, head in heads:
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(f"Alignment head ({layer}, {head}) out of range {n_layer}x{n_head}")
        mask[layer, head] = True
    return mask


def make_checkpoint(dims: ModelDimensions, state: dict, heads: Optional[Sequence] = None) -> dict:
    """A checkpoint dict, with the model's own alignment heads (a list of (layer, head)) or,
    for an official model size, openai-whisper's (else openai-whisper's default applies)."""
    checkpoint = {"dims": asdict(dims), "model_state_dict": state}
    size = (dims.n_mels, dims.n_vocab, dims.n_audio_state, dims.n_audio_layer, dims.n_text_layer)
    if heads:
        checkpoint["alignment_heads"] = alignment_heads_mask(
            heads, dims.n_text_layer, dims.n_text_head
        )
    elif size in _OPENAI_SIZES:  # decoded as Whisper.set_alignment_heads does
        dump = whisper._ALIGNMENT_HEADS[_OPENAI_SIZES[size]]
        mask = np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)
        if mask.size == dims.n_text_layer * dims.n_text_head:
            shape = (dims.n_text_layer, dims.n_text_head)
            checkpoint["alignment_heads"] = torch.from_numpy(mask.reshape(shape).copy())
    return checkpoint


def load_openai(path: str) -> dict:
    """An OpenAI-format ``.pt`` file's checkpoint dict (weights only; other files refused)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch zip / legacy pickle
        raise ValueError(f"{path} is not a torch checkpoint (starts with {magic!r})")
    checkpoint = load_state_dict(path)  # weights_only: pickled code is refused, never run
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise ValueError(f"{path} is not an openai-whisper checkpoint (dims, model_state_dict)")
    return checkpoint


def save_checkpoint(checkpoint: dict, dst: PathLike) -> None:
    """Write a checkpoint with torch.save, atomically (temp file + os.replace)."""
    with atomic_path(dst) as path:
        torch.save(checkpoint, path)
