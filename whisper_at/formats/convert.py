"""Convert CTranslate2 (faster-whisper) and HF transformers Whisper models to openai-whisper
checkpoints, and back to the transformers layout. ``whisper-at convert SRC DST`` is ``main``."""

import argparse
import os
import re
import sys
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from whisper.model import ModelDimensions, sinusoids

from .checkpoint import alignment_heads_mask, load_openai, make_checkpoint, save_checkpoint
from .ct2 import CT2Source, PathLike, _is_ct2_file, _part_number, read_ct2_model
from .hf import HF_WEIGHTS, hf_to_openai, openai_to_hf

__all__ = ["alignment_heads_mask", "ct2_encoder", "ct2_to_openai", "detect_format",
           "load_checkpoint", "openai_to_hf", "read_ct2_model", "save_checkpoint"]  # fmt: skip


def _weight(variables: Dict[str, np.ndarray], name: str) -> torch.Tensor:
    """A CT2 variable as an fp16 tensor, dequantized when stored as int8/int16."""
    value = torch.from_numpy(np.ascontiguousarray(variables[name])).float()
    scale = variables.get(name + "_scale")
    if scale is not None:
        scale = torch.from_numpy(np.asarray(scale, dtype=np.float32))
        value = value / (scale.reshape(-1, *([1] * (value.ndim - 1))) if scale.ndim else scale)
    return value.half()


def _scalar(variables: Dict[str, np.ndarray], name: str) -> Optional[int]:
    value = variables.get(name)
    return None if value is None or value.size != 1 else int(value.reshape(()))


def _num_layers(variables: Dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"Non-contiguous {prefix} layers in CTranslate2 model: {sorted(indices)}")
    return len(indices)


def _num_heads(variables: Dict[str, np.ndarray], config: dict, prefix: str, state: int) -> int:
    heads = _scalar(variables, f"{prefix}/num_heads") or config.get("num_heads")
    return int(heads) if heads else state // 64


def _convert_block(
    variables: Dict[str, np.ndarray], src: str, dst: str, cross: bool
) -> Dict[str, torch.Tensor]:
    def w(name: str) -> torch.Tensor:
        return _weight(variables, f"{src}/{name}")

    out: Dict[str, torch.Tensor] = {}
    qkv_weight, qkv_bias = w("self_attention/linear_0/weight"), w("self_attention/linear_0/bias")
    q_w, k_w, v_w = qkv_weight.chunk(3, dim=0)
    q_b, _, v_b = qkv_bias.chunk(3, dim=0)  # key bias: zeros, and softmax-invariant anyway
    out.update({"attn.query.weight": q_w, "attn.query.bias": q_b, "attn.key.weight": k_w})
    out.update({"attn.value.weight": v_w, "attn.value.bias": v_b})
    out["attn.out.weight"] = w("self_attention/linear_1/weight")
    out["attn.out.bias"] = w("self_attention/linear_1/bias")
    out["attn_ln.weight"] = w("self_attention/layer_norm/gamma")
    out["attn_ln.bias"] = w("self_attention/layer_norm/beta")
    if cross:
        out["cross_attn.query.weight"] = w("attention/linear_0/weight")
        out["cross_attn.query.bias"] = w("attention/linear_0/bias")
        k_w, v_w = w("attention/linear_1/weight").chunk(2, dim=0)
        _, v_b = w("attention/linear_1/bias").chunk(2, dim=0)
        out.update({"cross_attn.key.weight": k_w})
        out.update({"cross_attn.value.weight": v_w, "cross_attn.value.bias": v_b})
        out["cross_attn.out.weight"] = w("attention/linear_2/weight")
        out["cross_attn.out.bias"] = w("attention/linear_2/bias")
        out["cross_attn_ln.weight"] = w("attention/layer_norm/gamma")
        out["cross_attn_ln.bias"] = w("attention/layer_norm/beta")
    out["mlp.0.weight"] = w("ffn/linear_0/weight")
    out["mlp.0.bias"] = w("ffn/linear_0/bias")
    out["mlp.2.weight"] = w("ffn/linear_1/weight")
    out["mlp.2.bias"] = w("ffn/linear_1/bias")
    out["mlp_ln.weight"] = w("ffn/layer_norm/gamma")
    out["mlp_ln.bias"] = w("ffn/layer_norm/beta")
    return {f"{dst}.{key}": value.contiguous() for key, value in out.items()}


def _encoder_part(variables: Dict[str, np.ndarray], config: dict, src) -> tuple:
    """The audio encoder's dimensions (``n_mels``, ``n_audio_*``) and "encoder.*" state."""
    if "encoder/conv1/weight" not in variables:
        raise ValueError(f"Not a CTranslate2 Whisper model (no encoder/conv1/weight): {src}")
    n_audio_state, n_mels, _ = variables["encoder/conv1/weight"].shape
    audio_pos_name = "encoder/position_encodings/encodings"
    audio_pos = variables.get(audio_pos_name)
    dims = dict(
        n_mels=int(n_mels),
        n_audio_ctx=int(audio_pos.shape[0]) if audio_pos is not None else 1500,
        n_audio_state=int(n_audio_state),
        n_audio_head=_num_heads(variables, config, "encoder", int(n_audio_state)),
        n_audio_layer=_num_layers(variables, "encoder"),
    )
    state: Dict[str, torch.Tensor] = {}
    if audio_pos is not None:
        state["encoder.positional_embedding"] = _weight(variables, audio_pos_name)
    else:  # the encoder uses fixed sinusoids; CT2 may leave them out
        sinusoid = sinusoids(dims["n_audio_ctx"], dims["n_audio_state"])
        state["encoder.positional_embedding"] = sinusoid.half()
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = _weight(variables, f"encoder/{conv}/weight")
        state[f"encoder.{conv}.bias"] = _weight(variables, f"encoder/{conv}/bias")
    for i in range(dims["n_audio_layer"]):
        state.update(_convert_block(variables, f"encoder/layer_{i}", f"encoder.blocks.{i}", False))
    state["encoder.ln_post.weight"] = _weight(variables, "encoder/layer_norm/gamma")
    state["encoder.ln_post.bias"] = _weight(variables, "encoder/layer_norm/beta")
    return dims, state


def ct2_encoder(src: CT2Source) -> tuple:
    """Only the audio encoder of a CTranslate2 Whisper model (the decoder is not even read):
    (dims dict with ``n_mels`` and ``n_audio_*``, fp16 state dict with "encoder.*" keys)."""
    variables, config = read_ct2_model(src, keep=lambda name: name.startswith("encoder/"))
    return _encoder_part(variables, config, src)


def ct2_to_openai(src: CT2Source) -> dict:
    """Convert a CTranslate2 Whisper model to an openai-whisper checkpoint dict.

    Returns {"dims", "model_state_dict"} plus "alignment_heads" (bool [n_text_layer,
    n_text_head]) when the model's config.json lists them.
    """
    variables, config = read_ct2_model(src)
    required = ("encoder/conv1/weight", "decoder/embeddings/weight")
    if any(name not in variables for name in required):
        raise ValueError(f"Not a CTranslate2 Whisper model (no {' / '.join(required)}): {src}")

    audio_dims, state = _encoder_part(variables, config, src)
    n_vocab, n_text_state = variables["decoder/embeddings/weight"].shape
    text_pos_name = "decoder/position_encodings/encodings"
    text_pos = variables.get(text_pos_name)
    if text_pos is None:
        raise ValueError(f"CTranslate2 model has no decoder position encodings: {src}")
    dims = ModelDimensions(
        **audio_dims,
        n_vocab=int(n_vocab),
        n_text_ctx=int(text_pos.shape[0]),
        n_text_state=int(n_text_state),
        n_text_head=_num_heads(variables, config, "decoder", int(n_text_state)),
        n_text_layer=_num_layers(variables, "decoder"),
    )

    state["decoder.positional_embedding"] = _weight(variables, text_pos_name)
    state["decoder.token_embedding.weight"] = _weight(variables, "decoder/embeddings/weight")
    for i in range(dims.n_text_layer):
        state.update(_convert_block(variables, f"decoder/layer_{i}", f"decoder.blocks.{i}", True))
    state["decoder.ln.weight"] = _weight(variables, "decoder/layer_norm/gamma")
    state["decoder.ln.bias"] = _weight(variables, "decoder/layer_norm/beta")

    return make_checkpoint(dims, state, config.get("alignment_heads"))


def detect_format(path: PathLike) -> str:
    """Return "openai" (torch checkpoint file), "ct2" or "hf" (model directories)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return "ct2" if _is_ct2_file(path) else "openai"
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Model checkpoint not found: {path}")
    names = set(os.listdir(path))
    if "model.bin" in names or any(_part_number(n) >= 0 for n in names):
        return "ct2"
    if "config.json" in names and names.intersection(HF_WEIGHTS):
        return "hf"
    raise ValueError(
        f"Unrecognized model directory {path}: expected model.bin or model.bin.part* "
        "(CTranslate2) or config.json with model.safetensors/pytorch_model.bin (transformers)"
    )


def load_checkpoint(path: PathLike) -> dict:
    """Load any supported model as an openai-whisper checkpoint dict."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "openai":
        return load_openai(path)
    if fmt == "ct2":
        return ct2_to_openai(path)
    return hf_to_openai(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``whisper-at convert SRC DST``: argv holds the arguments after ``convert``."""
    parser = argparse.ArgumentParser(
        prog="whisper-at convert",
        description="Convert a Whisper model (OpenAI .pt, CTranslate2 or transformers "
        "directory) to an OpenAI-format checkpoint (or, with --to hf, a transformers directory).",
    )
    parser.add_argument("src", help="model file or directory to convert")
    parser.add_argument("dst", help="output .pt file (--to openai) or directory (--to hf)")
    parser.add_argument("--to", choices=("openai", "hf"), default="openai", help="output format")
    parser.add_argument("--force", action="store_true", help="overwrite an existing DST")
    args = parser.parse_args(argv)
    if os.path.lexists(args.dst) and not args.force:
        parser.error(f"{args.dst} exists; pass --force to overwrite it")
    try:
        fmt = detect_format(args.src)
        checkpoint = load_checkpoint(args.src)
        (openai_to_hf if args.to == "hf" else save_checkpoint)(checkpoint, args.dst)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"whisper-at convert: error: {e}", file=sys.stderr)
        return 1
    dims = checkpoint["dims"]
    print(
        f"{args.src} ({fmt}, {dims['n_audio_layer']}+{dims['n_text_layer']} layers of "
        f"{dims['n_audio_state']}) -> {args.dst} ({args.to})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
