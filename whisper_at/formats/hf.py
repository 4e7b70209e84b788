"""transformers (Hugging Face) Whisper directories: reading them as openai-whisper checkpoints
and writing checkpoints in their layout."""

import json
import os
import re
from typing import Dict

import torch
from whisper.model import AudioEncoder, ModelDimensions, TextDecoder

from ..staging import atomic_path
from .checkpoint import make_checkpoint
from .ct2 import PathLike
from .weights import load_state_dict

HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
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
    name = next((n for n in HF_WEIGHTS if os.path.isfile(os.path.join(path, n))), None)
    if name is None:
        raise FileNotFoundError(f"no {' / '.join(HF_WEIGHTS)} in {path}")
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


def hf_to_openai(path: str) -> dict:
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
    return make_checkpoint(dims, state, heads)


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
    with atomic_path(os.path.join(dst, "model.safetensors")) as path:
        save_file(tensors, path, metadata={"format": "pt"})
    for name, data in (("generation_config.json", generation), ("config.json", config)):
        with atomic_path(os.path.join(dst, name)) as path, open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=2) + "\n")
