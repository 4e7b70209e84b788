"""Convert CTranslate2 (faster-whisper) Whisper models to openai-whisper checkpoints."""

import json
import os
import pickle
import re
import struct
import tempfile
from dataclasses import asdict
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from whisper.model import ModelDimensions, sinusoids

PathLike = Union[str, "os.PathLike[str]"]
CT2Source = Union[PathLike, Sequence[PathLike]]

# order of the DataType enum in CTranslate2's include/ctranslate2/types.h
_CT2_DTYPES = {
    0: np.dtype("<f4"),  # FLOAT32
    1: np.dtype("i1"),  # INT8
    2: np.dtype("<i2"),  # INT16
    3: np.dtype("<i4"),  # INT32
    4: np.dtype("<f2"),  # FLOAT16
    5: np.dtype("<u2"),  # BFLOAT16 (raw bits, widened to float32 on read)
}
_BFLOAT16 = 5
_PART_RE = re.compile(r"^model\.bin\.part(\d+)$")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


class _ChainReader:
    """Sequential reader over several files, as if they were concatenated."""

    def __init__(self, paths: List[str]):
        self.paths = list(paths)
        self.index = 0
        self.file: Optional[BinaryIO] = open(self.paths[0], "rb")

    def readinto(self, buffer: memoryview) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self.file is not None:
            n = self.file.readinto(view[filled:])
            if n:
                filled += n
                continue
            self.file.close()
            self.index += 1
            self.file = open(self.paths[self.index], "rb") if self.index < len(self.paths) else None
        return filled

    def read_exact(self, size: int) -> bytes:
        data = bytearray(size)
        if self.readinto(memoryview(data)) != size:
            raise ValueError(f"Truncated CTranslate2 model: {self.paths}")
        return bytes(data)

    def at_eof(self) -> bool:
        return self.readinto(memoryview(bytearray(1))) == 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _part_number(path: str) -> int:
    match = _PART_RE.match(os.path.basename(path))
    return int(match.group(1)) if match else -1


def _ct2_files(src: CT2Source) -> Tuple[List[str], Optional[str]]:
    """Return the model.bin file(s) to read, in order, and the model directory."""
    if not isinstance(src, (str, os.PathLike)):
        paths = [os.fspath(p) for p in src]
        if not paths:
            raise ValueError("Empty list of CTranslate2 model parts")
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"CTranslate2 model part not found: {path}")
        if all(_part_number(p) >= 0 for p in paths):
            paths.sort(key=_part_number)
        return paths, os.path.dirname(os.path.abspath(paths[0]))

    path = os.fspath(src)
    if os.path.isfile(path):
        directory = os.path.dirname(os.path.abspath(path))
        if _part_number(path) < 0:
            return [path], directory
        path = directory
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CTranslate2 model not found: {path}")
    if os.path.isfile(os.path.join(path, "model.bin")):
        return [os.path.join(path, "model.bin")], path
    parts = sorted((p for p in os.listdir(path) if _part_number(p) >= 0), key=_part_number)
    if not parts:
        raise ValueError(f"No model.bin or model.bin.part* in CTranslate2 directory: {path}")
    numbers = [_part_number(p) for p in parts]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ValueError(f"Missing CTranslate2 model parts in {path}: found {parts}")
    return [os.path.join(path, p) for p in parts], path


def read_ct2_model(path: CT2Source) -> Tuple[Dict[str, np.ndarray], dict]:
    """Parse a CTranslate2 model.bin (possibly split in parts) and its config.json.

    Returns the variables by name (aliases resolved; bfloat16 widened to float32) and the
    parsed config.json of the model directory, or an empty dict when there is none.
    """
    files, directory = _ct2_files(path)
    reader = _ChainReader(files)
    try:

        def unpack(fmt: str):
            return struct.unpack("<" + fmt, reader.read_exact(struct.calcsize("<" + fmt)))

        def read_string() -> str:
            (length,) = unpack("H")
            return reader.read_exact(length).rstrip(b"\0").decode("utf-8")

        (version,) = unpack("I")
        if not 1 <= version <= 6:
            raise ValueError(f"Unsupported CTranslate2 binary version {version} in {files[0]}")
        if version >= 2:
            spec = read_string()
            unpack("I")  # spec revision
            if spec != "WhisperSpec":
                raise ValueError(f"Not a CTranslate2 Whisper model ({spec}): {files[0]}")
        (count,) = unpack("I")
        variables: Dict[str, np.ndarray] = {}
        for _ in range(count):
            name = read_string()
            (rank,) = unpack("B")
            shape = unpack(f"{rank}I") if rank else ()
            if version >= 4:
                type_id, num_bytes = unpack("BI")
            else:  # older binaries store the item size (float32 or int8/int16 only)
                item_size, num_items = unpack("BI")
                type_id, num_bytes = {4: 0, 1: 1, 2: 2}.get(item_size, -1), item_size * num_items
            if type_id not in _CT2_DTYPES:
                raise ValueError(f"Unsupported CTranslate2 dtype id {type_id} for {name}")
            array = np.empty(num_bytes // _CT2_DTYPES[type_id].itemsize, _CT2_DTYPES[type_id])
            if reader.readinto(memoryview(array)) != num_bytes:
                raise ValueError(f"Truncated CTranslate2 model while reading {name}: {files}")
            if type_id == _BFLOAT16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array.reshape(shape)
        if version >= 3:
            (num_aliases,) = unpack("I")
            for _ in range(num_aliases):
                alias, target = read_string(), read_string()
                variables[alias] = variables[target]
        if not reader.at_eof():
            raise ValueError(f"Trailing data after CTranslate2 model: {files}")
    finally:
        reader.close()

    config = {}
    config_path = os.path.join(directory, "config.json") if directory else None
    if config_path and os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    return variables, config


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

    checkpoint = {"dims": asdict(dims), "model_state_dict": state}
    if config.get("alignment_heads"):
        checkpoint["alignment_heads"] = alignment_heads_mask(
            config["alignment_heads"], dims.n_text_layer, dims.n_text_head
        )
    return checkpoint


def _is_ct2_file(path: str) -> bool:
    """A model.bin.partN file, or a model.bin starting with a CT2 binary version."""
    if _part_number(path) >= 0:
        return True
    if os.path.basename(path) != "model.bin":
        return False
    with open(path, "rb") as f:
        header = f.read(4)
    return len(header) == 4 and 1 <= struct.unpack("<I", header)[0] <= 6


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


def _hf_to_openai(path: str) -> dict:
    """Convert a Hugging Face transformers Whisper checkpoint directory."""
    raise NotImplementedError("HF transformers checkpoints: see issue 5")


def _load_openai(path: str) -> dict:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04" and not magic.startswith(b"\x80"):  # torch zip / legacy pickle
        raise ValueError(f"{path} is not a torch checkpoint (starts with {magic!r})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(
            f"{path} is not a plain weights checkpoint (it holds pickled objects that "
            f"weights_only loading refuses): {e}"
        ) from e
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


def save_checkpoint(checkpoint: dict, dst: PathLike) -> None:
    """Write a checkpoint with torch.save, atomically (temp file + os.replace)."""
    dst = os.path.abspath(os.fspath(dst))
    directory, name = os.path.split(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
