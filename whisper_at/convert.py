"""Convert CTranslate2 (faster-whisper) and HF transformers Whisper models to openai-whisper
checkpoints, and back to the transformers layout. ``whisper-at convert SRC DST`` is ``main``."""

import argparse
import base64
import gzip
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict
from functools import partial
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
import whisper
from whisper.model import AudioEncoder, ModelDimensions, TextDecoder, sinusoids

from .ct2 import CT2Source, PathLike, _is_ct2_file, _part_number, read_ct2_model
from .weights import load_state_dict

_HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
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


def alignment_heads_mask(heads: Sequence[Sequence[int]], n_layer: int, n_head: int) -> torch.Tensor:
    """Bool [n_layer, n_head] mask from a list of (layer, head) pairs."""
    mask = torch.zeros(n_layer, n_head, dtype=torch.bool)
    for layer, head in heads:
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(f"Alignment head ({layer}, {head}) out of range {n_layer}x{n_head}")
        mask[layer, head] = True
    return mask


def _checkpoint(dims: ModelDimensions, state: dict, heads: Optional[Sequence] = None) -> dict:
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


def ct2_to_openai(src: CT2Source) -> dict:
    """Convert a CTranslate2 Whisper model to an openai-whisper checkpoint dict.

    Returns {"dims", "model_state_dict"} plus "alignment_heads" (bool [n_text_layer,
    n_text_head]) when the model's config.json lists them.
    """
    variables, config = read_ct2_model(src)
    required = ("encoder/conv1/weight", "decoder/embeddings/weight")
    if any(name not in variables for name in required):
        raise ValueError(f"Not a CTranslate2 Whisper model (no {' / '.join(required)}): {src}")

    n_audio_state, n_mels, _ = variables["encoder/conv1/weight"].shape
    n_vocab, n_text_state = variables["decoder/embeddings/weight"].shape
    audio_pos_name = "encoder/position_encodings/encodings"
    text_pos_name = "decoder/position_encodings/encodings"
    audio_pos, text_pos = variables.get(audio_pos_name), variables.get(text_pos_name)
    if text_pos is None:
        raise ValueError(f"CTranslate2 model has no decoder position encodings: {src}")
    dims = ModelDimensions(
        n_mels=int(n_mels),
        n_audio_ctx=int(audio_pos.shape[0]) if audio_pos is not None else 1500,
        n_audio_state=int(n_audio_state),
        n_audio_head=_num_heads(variables, config, "encoder", int(n_audio_state)),
        n_audio_layer=_num_layers(variables, "encoder"),
        n_vocab=int(n_vocab),
        n_text_ctx=int(text_pos.shape[0]),
        n_text_state=int(n_text_state),
        n_text_head=_num_heads(variables, config, "decoder", int(n_text_state)),
        n_text_layer=_num_layers(variables, "decoder"),
    )

    state: Dict[str, torch.Tensor] = {}
    if audio_pos is not None:
        state["encoder.positional_embedding"] = _weight(variables, audio_pos_name)
    else:  # the encoder uses fixed sinusoids; CT2 may leave them out
        sinusoid = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
        state["encoder.positional_embedding"] = sinusoid.half()
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = _weight(variables, f"encoder/{conv}/weight")
        state[f"encoder.{conv}.bias"] = _weight(variables, f"encoder/{conv}/bias")
    for i in range(dims.n_audio_layer):
        state.update(_convert_block(variables, f"encoder/layer_{i}", f"encoder.blocks.{i}", False))
    state["encoder.ln_post.weight"] = _weight(variables, "encoder/layer_norm/gamma")
    state["encoder.ln_post.bias"] = _weight(variables, "encoder/layer_norm/beta")

    state["decoder.positional_embedding"] = _weight(variables, text_pos_name)
    state["decoder.token_embedding.weight"] = _weight(variables, "decoder/embeddings/weight")
    for i in range(dims.n_text_layer):
        state.update(_convert_block(variables, f"decoder/layer_{i}", f"decoder.blocks.{i}", True))
    state["decoder.ln.weight"] = _weight(variables, "decoder/layer_norm/gamma")
    state["decoder.ln.bias"] = _weight(variables, "decoder/layer_norm/beta")

    return _checkpoint(dims, state, config.get("alignment_heads"))



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
    if "config.json" in names and names.intersection(_HF_WEIGHTS):
        return "hf"
    raise ValueError(
        f"Unrecognized model directory {path}: expected model.bin or model.bin.part* "
        "(CTranslate2) or config.json with model.safetensors/pytorch_model.bin (transformers)"
    )


# transformers names of openai-whisper modules (inside blocks, then outside) and dimensions
_HF_BLOCK = {"attn": "self_attn", "cross_attn": "encoder_attn", "query": "q_proj", "key": "k_proj",
             "value": "v_proj", "out": "out_proj", "attn_ln": "self_attn_layer_norm",
             "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2",
             "mlp_ln": "final_layer_norm"}  # fmt: skip
_HF_TOP = {"encoder.conv1": "encoder.conv1", "encoder.conv2": "encoder.conv2",
           "encoder.ln_post": "encoder.layer_norm", "decoder.ln": "decoder.layer_norm",
           "decoder.token_embedding": "decoder.embed_tokens"}  # fmt: skip
_HF_DIMS = {"n_mels": "num_mel_bins", "n_audio_ctx": "max_source_positions",
            "n_audio_state": "d_model", "n_audio_head": "encoder_attention_heads",
            "n_audio_layer": "encoder_layers", "n_vocab": "vocab_size",
            "n_text_ctx": "max_target_positions", "n_text_state": "d_model",
            "n_text_head": "decoder_attention_heads", "n_text_layer": "decoder_layers"}  # fmt: skip


def _hf_key(key: str) -> str:
    """The WhisperForConditionalGeneration name of an openai-whisper state_dict entry."""
    module, param = key.rsplit(".", 1)
    if param == "positional_embedding":
        return f"model.{module}.embed_positions.weight"
    block = re.match(r"(encoder|decoder)\.blocks\.(\d+)\.(.+)$", module)
    if block:  # "cross_attn.query" -> "encoder_attn.q_proj"; "mlp.0" -> "fc1"
        inner = _HF_BLOCK.get(block[3]) or ".".join(_HF_BLOCK[p] for p in block[3].split("."))
        return f"model.{block[1]}.layers.{block[2]}.{inner}.{param}"
    return f"model.{_HF_TOP[module]}.{param}"


def _openai_shapes(dims: ModelDimensions) -> Dict[str, torch.Size]:
    """Names and shapes of an openai-whisper state_dict, in order (built on the meta device)."""
    d = dims
    with torch.device("meta"):
        encoder = AudioEncoder(d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head,
                               d.n_audio_layer)  # fmt: skip
        decoder = TextDecoder(d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head,
                              d.n_text_layer)  # fmt: skip
    parts = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}
    return {f"{part}.{k}": v.shape for part, state in parts.items() for k, v in state.items()}


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _hf_dims(path: str) -> ModelDimensions:
    config = _read_json(path)
    if config.get("model_type") != "whisper":
        raise ValueError(f"{path}: model_type is {config.get('model_type')!r}, not 'whisper'")
    try:
        dims = ModelDimensions(**{k: int(config[v]) for k, v in _HF_DIMS.items()})
        ffn = (config["encoder_ffn_dim"], config["decoder_ffn_dim"])
    except KeyError as e:
        raise ValueError(f"{path} has no {e}") from None
    width = 4 * dims.n_audio_state
    gelu = config.get("activation_function", "gelu") == "gelu"
    if ffn != (width, width) or not gelu or config.get("scale_embedding"):
        raise ValueError(
            f"{path}: not openai-whisper's architecture (needs ffn dims 4 x d_model = {width}, "
            f"gelu, unscaled embeddings; got ffn {ffn})"
        )
    return dims


def _hf_weights(path: str) -> Dict[str, torch.Tensor]:
    """All tensors of a transformers model directory: one weights file, or shards + index."""
    name = next((n for n in _HF_WEIGHTS if os.path.isfile(os.path.join(path, n))), None)
    if name is None:
        raise FileNotFoundError(f"no {' / '.join(_HF_WEIGHTS)} in {path}")
    files = [name]
    if name.endswith(".index.json"):
        files = sorted(set(_read_json(os.path.join(path, name))["weight_map"].values()))
    tensors = {}
    for name in files:
        state = load_state_dict(os.path.join(path, name))
        if not isinstance(state, dict):
            raise ValueError(f"{os.path.join(path, name)} holds no state_dict")
        # WhisperModel saves "encoder.*"; WhisperForConditionalGeneration "model.encoder.*"
        prefix = "" if any(key.startswith("model.") for key in state) else "model."
        for key, value in state.items():
            tensors[key if key.startswith("proj_out.") else prefix + key] = value
    return tensors


def _hf_to_openai(path: str) -> dict:
    """Convert a transformers Whisper directory (config.json + safetensors or pytorch_model.bin,
    possibly sharded); alignment heads come from generation_config.json when it lists them."""
    dims = _hf_dims(os.path.join(path, "config.json"))
    tensors = _hf_weights(path)
    state, problems = {}, []
    for key, shape in _openai_shapes(dims).items():
        value = tensors.pop(_hf_key(key), None)
        if value is None or value.shape != shape:
            found = "missing" if value is None else f"shape {tuple(value.shape)}"
            problems.append(f"{_hf_key(key)}: {found}, expected {tuple(shape)}")
        else:
            state[key] = value.contiguous()
    proj_out = tensors.pop("proj_out.weight", None)
    embedding = state.get("decoder.token_embedding.weight")
    if proj_out is not None and embedding is not None and not torch.equal(proj_out, embedding):
        problems.append("proj_out.weight differs from embed_tokens (openai-whisper ties them)")
    problems += [f"{key}: unexpected" for key in tensors]
    if problems:
        more = [f"and {len(problems) - 5} more"] if len(problems) > 5 else []
        raise ValueError(f"{path}: not a Whisper model: " + "; ".join(problems[:5] + more))
    generation = os.path.join(path, "generation_config.json")
    heads = _read_json(generation).get("alignment_heads") if os.path.isfile(generation) else None
    return _checkpoint(dims, state, heads)


def openai_to_hf(checkpoint: dict, dst: PathLike) -> None:
    """Write a checkpoint as a transformers WhisperForConditionalGeneration directory:
    model.safetensors, generation_config.json (token ids, alignment heads), config.json.
    For transformers' pipelines, add the tokenizer files of the matching openai/whisper-* repo."""
    from safetensors.torch import save_file

    dims = ModelDimensions(**checkpoint["dims"])
    if dims.n_audio_state != dims.n_text_state:
        raise ValueError("transformers' Whisper needs n_audio_state == n_text_state")
    eot = 50256 + (dims.n_vocab >= 51865)  # <|endoftext|>; <|startoftranscript|> follows
    tokens = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot}
    tokens["decoder_start_token_id"] = eot + 1
    config = {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper"}
    config.update({v: getattr(dims, k) for k, v in _HF_DIMS.items()}, **tokens)
    config.update(encoder_ffn_dim=4 * dims.n_audio_state, decoder_ffn_dim=4 * dims.n_text_state)
    config.update(activation_function="gelu", scale_embedding=False, tie_word_embeddings=True)
    generation = dict(tokens, max_length=dims.n_text_ctx)
    if checkpoint.get("alignment_heads") is not None:
        mask = torch.as_tensor(checkpoint["alignment_heads"])
        mask = mask.to_dense() if mask.is_sparse else mask
        generation["alignment_heads"] = mask.nonzero().tolist()
    tensors = {_hf_key(k): v.contiguous() for k, v in checkpoint["model_state_dict"].items()}
    os.makedirs(dst, exist_ok=True)  # config.json last: the directory is complete once it exists
    save = partial(save_file, tensors, metadata={"format": "pt"})
    _write_atomic(os.path.join(dst, "model.safetensors"), save)
    for name, data in (("generation_config.json", generation), ("config.json", config)):
        _write_atomic(os.path.join(dst, name), partial(_write_json, data=data))


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")


def _load_openai(path: str) -> dict:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch zip / legacy pickle
        raise ValueError(f"{path} is not a torch checkpoint (starts with {magic!r})")
    checkpoint = load_state_dict(path)  # weights_only: pickled code is refused, never run
    if not isinstance(checkpoint, dict) or not {"dims", "model_state_dict"} <= checkpoint.keys():
        raise ValueError(f"{path} is not an openai-whisper checkpoint (dims, model_state_dict)")
    return checkpoint


def load_checkpoint(path: PathLike) -> dict:
    """Load any supported model as an openai-whisper checkpoint dict."""
    path = os.fspath(path)
    fmt = detect_format(path)
    if fmt == "openai":
        return _load_openai(path)
    if fmt == "ct2":
        return ct2_to_openai(path)
    return _hf_to_openai(path)


def _write_atomic(dst: PathLike, write: Callable[[str], object]) -> None:
    """Call write(path) with a temp file beside dst, then fsync it and rename it to dst."""
    directory, name = os.path.split(os.path.abspath(os.fspath(dst)))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(checkpoint: dict, dst: PathLike) -> None:
    """Write a checkpoint with torch.save, atomically (temp file + os.replace)."""
    _write_atomic(dst, lambda path: torch.save(checkpoint, path))


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
