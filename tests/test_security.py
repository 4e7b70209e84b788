"""Checkpoints are never unpickled with code execution: a payload whose ``__reduce__`` returns
``os.system`` is refused, with a clear error, wherever a file is loaded, and never runs."""

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import whisper_at
from whisper_at.formats import convert, weights


class _Payload:
    """Unpickling this runs `touch marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_zip(path: Path, marker: Path) -> Path:
    torch.save({"dims": {}, "model_state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, path)
    return path


def _torch_legacy(path: Path, marker: Path) -> Path:
    torch.save({"at_model.x": _Payload(marker)}, path, _use_new_zipfile_serialization=False)
    return path


def _raw_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    return path


MAKERS = {"torch-zip": _torch_zip, "torch-legacy": _torch_legacy, "raw-pickle": _raw_pickle}
REFUSED = "refusing to load .*not a plain weights checkpoint.*never unpickled"


def test_the_payload_is_live(tmp_path: Path):
    """Control: loaded without weights_only, each file does run its payload."""
    for name, make in MAKERS.items():
        marker = tmp_path / f"ran-{name}"
        path = make(tmp_path / f"{name}.pt", marker)
        with open(path, "rb") as f:
            torch.load(f, weights_only=False) if name != "raw-pickle" else pickle.load(f)
        assert marker.exists(), name


@pytest.mark.parametrize("kind", list(MAKERS))
def test_model_checkpoint_is_refused(kind, tmp_path: Path, tiny_head_file: Path):
    marker = tmp_path / "ran"
    path = MAKERS[kind](tmp_path / "model.pt", marker)
    with pytest.raises(RuntimeError, match=REFUSED) as info:
        whisper_at.load_model(str(path), device="cpu", at_head=str(tiny_head_file))
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", list(MAKERS))
def test_head_file_is_refused(kind, tmp_path: Path, tiny_en_pt: Path):
    marker = tmp_path / "ran"
    path = MAKERS[kind](tmp_path / "head.pth", marker)
    with pytest.raises(RuntimeError, match=REFUSED) as info:
        whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=str(path))
    assert str(path) in str(info.value)
    with pytest.raises(RuntimeError, match=REFUSED):
        whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=path.read_bytes())
    assert not marker.exists()


TINY_EN_HF_CONFIG = {
    "model_type": "whisper",
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "d_model": 384,
    "encoder_attention_heads": 6,
    "encoder_layers": 4,
    "vocab_size": 51864,
    "max_target_positions": 448,
    "decoder_attention_heads": 6,
    "decoder_layers": 4,
    "encoder_ffn_dim": 1536,
    "decoder_ffn_dim": 1536,
}


def test_hf_pytorch_model_bin_is_refused(tmp_path: Path, tiny_head_file: Path):
    marker = tmp_path / "ran"
    model_dir = tmp_path / "hf"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(TINY_EN_HF_CONFIG))
    path = _torch_zip(model_dir / "pytorch_model.bin", marker)
    assert convert.detect_format(model_dir) == "hf"
    with pytest.raises(RuntimeError, match=REFUSED) as info:
        whisper_at.load_model(str(model_dir), device="cpu", at_head=str(tiny_head_file))
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_downloaded_head_is_loaded_weights_only(tmp_path: Path, monkeypatch):
    """A cached official head file goes through the same weights_only loader."""
    marker = tmp_path / "ran"
    cache = tmp_path / "cache"
    cache.mkdir()
    _torch_zip(cache / "tiny_ori.pth", marker)
    monkeypatch.setitem(weights.HEAD_URLS, "tiny", "http://127.0.0.1:9/s/x/tiny_ori.pth")
    monkeypatch.delitem(weights.HEAD_SHA256, "tiny", raising=False)
    with pytest.warns(UserWarning, match="refusing"), pytest.raises(RuntimeError):
        weights.load_head_file("tiny", False, str(cache))  # refused, then re-download fails
    assert not marker.exists()
