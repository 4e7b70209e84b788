"""The tapped torch encoder that serves a faster-whisper model.

Its weights are the CTranslate2 model's own encoder weights, converted in memory by
:func:`whisper_at.formats.convert.ct2_encoder` (the decoder is not read). Its precision is
``at_compute_type``, whatever FW's ``compute_type`` (CTranslate2's int8 kernels have no torch twin,
and the TL-TR heads were trained on float encoder features), chosen by
:func:`whisper_at.precision.encoder_dtype` as for tagging only: ``"auto"`` is float16 on CUDA,
bfloat16 on a CPU that computes it natively (AVX512-BF16 or AMX: about 1.7x faster than float32
and closer to float32 than CTranslate2's int8 encoder; docs/faster.md has the measurements),
float32 on other CPUs. On CPU, bfloat16 runs under ``torch.autocast``: weights stay float32,
layer norms run in float32, and the pooled layers and the output are float32. On CUDA the
weights are converted to the compute dtype.
"""

from typing import Tuple

import ctranslate2
import numpy as np
import torch
from torch import Tensor
from whisper.model import AudioEncoder

from ..formats.convert import ct2_encoder
from ..model import embed_with_layers, tap_encoder
from ..precision import autocast_dtype, encoder_dtype

# activation type of a CTranslate2 compute type ("int8_float16" -> float16; "int8" -> float32)
_CT2_ACTIVATIONS = {
    "float16": ctranslate2.DataType.float16,
    "bfloat16": ctranslate2.DataType.bfloat16,
}


def ct2_activation(compute_type: str):
    """The dtype CTranslate2 computes activations in (and expects encoder output in)."""
    return _CT2_ACTIVATIONS.get(compute_type.split("_")[-1], ctranslate2.DataType.float32)


def torch_device(ct2_model) -> torch.device:
    """The torch device matching a ``ctranslate2.models.Whisper`` (its first GPU on CUDA)."""
    if ct2_model.device == "cuda":
        index = ct2_model.device_index
        return torch.device("cuda", index[0] if isinstance(index, (list, tuple)) else index)
    return torch.device("cpu")


class TorchEncoder:
    """openai-whisper's ``AudioEncoder`` with the pooled tap, loaded from a CTranslate2 model."""

    def __init__(self, source, device: torch.device, activation=ctranslate2.DataType.float32,
                 compute_type: str = "auto"):  # fmt: skip
        self.compute_dtype = encoder_dtype(device, compute_type)
        dims, state = ct2_encoder(source)
        self.dims = dims
        self.device = device
        # on CPU the weights stay float32 and bfloat16 runs under autocast
        self.dtype = self.compute_dtype if device.type == "cuda" else torch.float32
        self.activation = activation
        encoder = AudioEncoder(
            dims["n_mels"], dims["n_audio_ctx"], dims["n_audio_state"],
            dims["n_audio_head"], dims["n_audio_layer"],
        )  # fmt: skip
        encoder.load_state_dict({k[len("encoder.") :]: v for k, v in state.items()})
        del state
        self.module = tap_encoder(encoder.to(device, self.dtype).eval())

    def __call__(self, mel) -> Tuple[Tensor, Tensor]:
        """(encoder output [B, n_ctx, d], pooled layers [B, n_layer, 75, d]) of mel
        [B, n_mels, 3000] (a numpy array or a tensor)."""
        if not torch.is_tensor(mel):
            mel = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))
        if mel.ndim == 2:
            mel = mel.unsqueeze(0)
        n_mels = self.dims["n_mels"]
        if mel.ndim != 3 or mel.shape[1] != n_mels:
            raise ValueError(
                f"expected mel features [batch, {n_mels}, frames], got {tuple(mel.shape)}"
            )
        autocast = autocast_dtype(self.compute_dtype, self.dtype)  # bfloat16 on CPU
        return embed_with_layers(self.module, mel.to(self.device, self.dtype), autocast)

    def storage(self, output: Tensor) -> ctranslate2.StorageView:
        """Encoder output as the ``StorageView`` CTranslate2's generate/detect_language/align
        take in place of a mel. On CPU it wraps a numpy array without copying; the view
        holds a reference to that array, so the buffer lives as long as the view."""
        output = output.contiguous()
        if output.dtype == torch.bfloat16:  # neither numpy nor CTranslate2's arrays take it
            output = output.float()
        if output.device.type == "cpu":
            view = ctranslate2.StorageView.from_array(output.numpy())
        else:  # CUDA: shared through __cuda_array_interface__
            view = ctranslate2.StorageView.from_array(output)
        if view.dtype != self.activation:
            view = view.to(self.activation)
        return view

