"""Tests for whisper_at.formats.convert on real CTranslate2 Whisper weights and espeak-ng speech."""

import base64
import gzip
import json
import os
import re
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper, sinusoids

from whisper_at.formats import convert, hf
from whisper_at.staging import atomic_path


def _words(text: str) -> List[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def _key_words(text: str) -> List[str]:
    return [w for w in _words(text) if len(w) >= 4]


def _model(checkpoint: dict) -> Whisper:
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    return model.eval()


def _assert_transcribes(model: Whisper, wav: Path, text: str) -> dict:
    result = whisper.transcribe(model, str(wav), fp16=False, temperature=0.0)
    heard = set(_words(result["text"]))
    missing = [w for w in _key_words(text) if w not in heard]
    assert not missing, f"missing {missing} in {result['text']!r}"
    return result


def _openai_alignment_heads(name: str, dims: dict) -> torch.Tensor:
    raw = gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name]))
    mask = np.frombuffer(raw, dtype=bool).reshape(dims["n_text_layer"], dims["n_text_head"])
    return torch.from_numpy(mask.copy())


@pytest.fixture(scope="module")
def tiny_en_checkpoint(ct2_tiny_en_dir: Path) -> dict:
    return convert.ct2_to_openai(str(ct2_tiny_en_dir))


@pytest.fixture(scope="module")
def tiny_en_text(tiny_en_checkpoint, speech_wav, speech_text) -> str:
    """What the CT2-converted tiny.en hears in speech_wav (checked against speech_text)."""
    return _assert_transcribes(_model(tiny_en_checkpoint), speech_wav, speech_text)["text"]


@pytest.fixture(scope="module")
def base_checkpoint(ct2_base_dir: Path) -> dict:
    return convert.ct2_to_openai(str(ct2_base_dir))


def test_read_ct2_model_tiny_en(ct2_tiny_en_dir: Path):
    variables, config = convert.read_ct2_model(str(ct2_tiny_en_dir))
    embeddings = variables["decoder/embeddings/weight"]
    assert embeddings.shape == (51864, 384) and embeddings.dtype == np.float16
    assert variables["decoder/projection/weight"] is embeddings  # alias resolved
    assert int(variables["encoder/num_heads"]) == 6
    assert variables["encoder/conv1/weight"].shape == (384, 80, 3)
    assert config["alignment_heads"][0] == [1, 0]
    assert convert.read_ct2_model(ct2_tiny_en_dir / "model.bin")[1] == config


def test_read_ct2_model_parts_in_any_order(ct2_base_dir: Path):
    assert not (ct2_base_dir / "model.bin").exists()
    from_dir, config = convert.read_ct2_model(str(ct2_base_dir))
    parts = [str(ct2_base_dir / "model.bin.part2"), str(ct2_base_dir / "model.bin.part1")]
    from_list, config_from_list = convert.read_ct2_model(parts)
    assert config == config_from_list and len(config["alignment_heads"]) == 8
    assert from_dir.keys() == from_list.keys()
    for name, value in from_dir.items():
        np.testing.assert_array_equal(value, from_list[name], err_msg=name)


def test_missing_parts_are_reported(ct2_base_dir: Path, tmp_path: Path):
    only_first = tmp_path / "only_first"
    only_first.mkdir()
    os.symlink(ct2_base_dir / "model.bin.part1", only_first / "model.bin.part1")
    with pytest.raises(ValueError, match="Truncated"):
        convert.read_ct2_model(str(only_first))

    gap = tmp_path / "gap"
    gap.mkdir()
    os.symlink(ct2_base_dir / "model.bin.part1", gap / "model.bin.part1")
    os.symlink(ct2_base_dir / "model.bin.part2", gap / "model.bin.part3")
    with pytest.raises(ValueError, match="Missing CTranslate2 model parts"):
        convert.read_ct2_model(str(gap))


def test_tiny_en_strict_load_and_transcribe(tiny_en_checkpoint, tiny_en_text):
    assert tiny_en_checkpoint["dims"] == dict(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=384,
        n_audio_head=6,
        n_audio_layer=4,
        n_vocab=51864,
        n_text_ctx=448,
        n_text_state=384,
        n_text_head=6,
        n_text_layer=4,
    )
    state = tiny_en_checkpoint["model_state_dict"]
    reference = Whisper(ModelDimensions(**tiny_en_checkpoint["dims"])).state_dict()
    assert list(state) == list(reference)
    for name, value in state.items():
        assert value.dtype == torch.float16 and value.shape == reference[name].shape, name
    assert tiny_en_text  # the fixture transcribed speech_wav with the converted model


def test_base_from_split_parts(base_checkpoint, speech_wav, speech_text):
    dims = base_checkpoint["dims"]
    assert (dims["n_audio_layer"], dims["n_audio_state"], dims["n_vocab"]) == (6, 512, 51865)
    assert (dims["n_text_layer"], dims["n_text_head"], dims["n_audio_head"]) == (6, 8, 8)
    result = _assert_transcribes(_model(base_checkpoint), speech_wav, speech_text)
    assert result["language"] == "en"


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_alignment_heads_match_openai(name, tiny_en_checkpoint, base_checkpoint):
    checkpoint = tiny_en_checkpoint if name == "tiny.en" else base_checkpoint
    mask = checkpoint["alignment_heads"]
    assert mask.dtype == torch.bool and int(mask.sum()) == 8
    assert torch.equal(mask, _openai_alignment_heads(name, checkpoint["dims"]))


def test_encoder_positional_embedding_is_sinusoids(tiny_en_checkpoint):
    stored = tiny_en_checkpoint["model_state_dict"]["encoder.positional_embedding"].float()
    torch.testing.assert_close(stored, sinusoids(1500, 384), atol=1e-3, rtol=0)


def test_alignment_heads_mask_rejects_out_of_range():
    assert convert.alignment_heads_mask([[1, 2]], 2, 3).nonzero().tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="out of range"):
        convert.alignment_heads_mask([[2, 0]], 2, 3)


def test_save_checkpoint_round_trip(tiny_en_checkpoint, tmp_path: Path):
    path = tmp_path / "tiny.en.pt"
    convert.save_checkpoint(tiny_en_checkpoint, path)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.en.pt"]  # no temp files left
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert loaded["dims"] == tiny_en_checkpoint["dims"]
    assert torch.equal(loaded["alignment_heads"], tiny_en_checkpoint["alignment_heads"])
    assert loaded["model_state_dict"].keys() == tiny_en_checkpoint["model_state_dict"].keys()
    for name, value in tiny_en_checkpoint["model_state_dict"].items():
        assert torch.equal(loaded["model_state_dict"][name], value), name
    assert convert.load_checkpoint(path)["dims"] == tiny_en_checkpoint["dims"]


def test_cached_checkpoints_load_with_openai_whisper(tiny_en_pt, base_pt, speech_wav, speech_text):
    assert convert.detect_format(tiny_en_pt) == "openai"
    model = whisper.load_model(str(tiny_en_pt), device="cpu")  # weights_only under the hood
    _assert_transcribes(model, speech_wav, speech_text)
    assert convert.load_checkpoint(base_pt)["dims"]["n_vocab"] == 51865


def test_detect_format(ct2_tiny_en_dir, ct2_base_dir, tiny_en_pt, tmp_path: Path):
    assert convert.detect_format(tiny_en_pt) == "openai"
    assert convert.detect_format(ct2_tiny_en_dir) == "ct2"
    assert convert.detect_format(str(ct2_base_dir)) == "ct2"
    assert convert.detect_format(ct2_tiny_en_dir / "model.bin") == "ct2"

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert convert.detect_format(hf) == "hf"
    with pytest.raises(ValueError, match="model_type is None, not 'whisper'"):
        convert.load_checkpoint(hf)

    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        convert.detect_format(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        convert.load_checkpoint(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")  # config alone is neither CT2 nor HF
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        convert.detect_format(empty)


class _NotAWeight:
    pass


def test_load_checkpoint_refuses_pickled_objects(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"dims": {}, "model_state_dict": {}, "extra": _NotAWeight()}, path)
    with pytest.raises(RuntimeError, match="not a plain weights checkpoint"):
        convert.load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not an openai-whisper checkpoint"):
        convert.load_checkpoint(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        convert.load_checkpoint(junk)


# --- a CT2 writer (mirrors ctranslate2.specs.model_spec.ModelSpec._serialize) ----------


def _ct2_string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def _write_ct2(
    variables: Dict[str, Tuple[int, np.ndarray]], aliases: Dict[str, str], spec="WhisperSpec"
) -> bytes:
    out = [struct.pack("<I", 6), _ct2_string(spec), struct.pack("<II", 3, len(variables))]
    for name, (type_id, array) in sorted(variables.items()):
        out += [_ct2_string(name), struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)]
        out += [struct.pack("<BI", type_id, array.nbytes), array.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_ct2_string(alias) + _ct2_string(target) for alias, target in aliases.items()]
    return b"".join(out)


def test_quantized_bfloat16_and_no_encoder_positions(ct2_tiny_en_dir, tiny_en_checkpoint, tmp_path):
    variables, config = convert.read_ct2_model(ct2_tiny_en_dir)
    type_ids = {np.dtype("float16"): 4, np.dtype("int16"): 2, np.dtype("int8"): 1}
    written = {n: (type_ids[v.dtype], v) for n, v in variables.items() if "projection" not in n}
    del written["encoder/position_encodings/encodings"]
    for name, (_, value) in list(written.items()):
        if name.endswith("ffn/linear_0/weight"):  # int8 with per-row scales, as CT2 quantizes
            value = value.astype(np.float32)
            scale = (127.0 / np.abs(value).max(axis=1)).astype(np.float32)
            written[name] = (1, np.rint(value * scale[:, None]).astype(np.int8))
            written[name + "_scale"] = (0, scale)
        elif name.endswith("layer_norm/gamma"):  # bfloat16 bits = top half of float32
            bits = value.astype(np.float32).view(np.uint32) >> 16
            written[name] = (5, bits.astype(np.uint16))
    data = _write_ct2(written, {"decoder/projection/weight": "decoder/embeddings/weight"})

    model_dir = tmp_path / "ct2"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config))
    chunks = np.array_split(np.frombuffer(data, dtype=np.uint8), 11)  # part10 after part9
    for i, chunk in enumerate(chunks, start=1):
        (model_dir / f"model.bin.part{i}").write_bytes(chunk.tobytes())
    assert convert.detect_format(model_dir) == "ct2"

    converted = convert.ct2_to_openai(model_dir)
    assert converted["dims"] == tiny_en_checkpoint["dims"]
    state, expected = converted["model_state_dict"], tiny_en_checkpoint["model_state_dict"]
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        if name == "encoder.positional_embedding":
            tolerance = 1e-3  # recomputed sinusoids
        elif ".mlp.0.weight" in name:
            tolerance = float(value.float().abs().max()) / 127 * 0.51 + 1e-3  # int8 rounding
        elif name.split(".")[-2].endswith(("ln", "ln_post")) and name.endswith(".weight"):
            tolerance = float(value.float().abs().max()) * 2**-7 + 1e-3  # 8-bit mantissa
        else:
            assert torch.equal(state[name], value), name
            continue
        torch.testing.assert_close(state[name].float(), value.float(), atol=tolerance, rtol=0)


def test_rejects_other_ct2_specs(tmp_path: Path):
    (tmp_path / "model.bin").write_bytes(_write_ct2({}, {}, spec="TransformerSpec"))
    with pytest.raises(ValueError, match="Not a CTranslate2 Whisper model"):
        convert.read_ct2_model(tmp_path)


# --- transformers layout and the CLI --------------------------------------------------------


def _forward(model, mel: torch.Tensor, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(encoder output, decoder logits) of an openai-whisper or transformers model."""
    with torch.no_grad():
        if isinstance(model, Whisper):
            audio = model.encoder(mel)
            return audio, model.decoder(tokens, audio)
        out = model(input_features=mel, decoder_input_ids=tokens)
        return out.encoder_last_hidden_state, out.logits


def test_hf_round_trip_through_transformers(
    tiny_en_checkpoint, tiny_en_text, tmp_path, speech_wav, speech_text
):
    from transformers import WhisperForConditionalGeneration

    written = tmp_path / "written"
    convert.openai_to_hf(tiny_en_checkpoint, written)
    files = ["config.json", "generation_config.json", "model.safetensors"]
    assert sorted(os.listdir(written)) == files
    hf, info = WhisperForConditionalGeneration.from_pretrained(
        written, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    saved = tmp_path / "saved"
    hf.save_pretrained(saved, max_shard_size="40MB")  # fp32, sharded with an index
    assert convert.detect_format(saved) == "hf"
    assert (saved / "model.safetensors.index.json").exists()
    back = convert.load_checkpoint(saved)
    assert back["dims"] == tiny_en_checkpoint["dims"]
    assert torch.equal(back["alignment_heads"], tiny_en_checkpoint["alignment_heads"])
    assert list(back["model_state_dict"]) == list(tiny_en_checkpoint["model_state_dict"])

    original, converted = _model(tiny_en_checkpoint), _model(back)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(whisper.load_audio(str(speech_wav))))
    tokenizer = whisper.tokenizer.get_tokenizer(multilingual=False)
    prompt = list(tokenizer.sot_sequence_including_notimestamps) + tokenizer.encode(speech_text)
    tokens = torch.tensor([prompt])
    audio, logits = _forward(original, mel[None], tokens)
    for model in (hf.eval(), converted):
        model_audio, model_logits = _forward(model, mel[None], tokens)
        torch.testing.assert_close(model_audio, audio, atol=1e-4, rtol=0)
        torch.testing.assert_close(model_logits, logits, atol=1e-4, rtol=0)
    result = whisper.transcribe(converted, str(speech_wav), fp16=False, temperature=0.0)
    assert result["text"] == tiny_en_text


@pytest.fixture(scope="module")
def hf_state(tiny_en_checkpoint) -> Dict[str, torch.Tensor]:
    return {hf._hf_key(k): v for k, v in tiny_en_checkpoint["model_state_dict"].items()}


def test_hf_pytorch_bin_without_generation_config(tiny_en_checkpoint, hf_state, tmp_path):
    convert.openai_to_hf(tiny_en_checkpoint, tmp_path)
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "model.safetensors").unlink()
    # as WhisperModel saves it: no "model." prefix; proj_out only in the ...Generation class
    torch.save({k[len("model.") :]: v for k, v in hf_state.items()}, tmp_path / "pytorch_model.bin")
    back = convert.load_checkpoint(tmp_path)
    for name, value in tiny_en_checkpoint["model_state_dict"].items():
        assert torch.equal(back["model_state_dict"][name], value), name
    # no generation_config.json: tiny.en's dims select openai-whisper's tiny.en heads
    assert torch.equal(back["alignment_heads"], _openai_alignment_heads("tiny.en", back["dims"]))
    (tmp_path / "generation_config.json").write_text(json.dumps({"alignment_heads": [[3, 5]]}))
    assert convert.load_checkpoint(tmp_path)["alignment_heads"].nonzero().tolist() == [[3, 5]]


def test_hf_problems_are_named(tiny_en_checkpoint, hf_state, tmp_path):
    from safetensors.torch import save_file

    convert.openai_to_hf(tiny_en_checkpoint, tmp_path)
    state = {k: v for k, v in hf_state.items() if "layers.2.fc1.bias" not in k}
    state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"] + 1
    state["classifier.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    message = (
        r"not a Whisper model: model.encoder.layers.2.fc1.bias: missing, expected \(1536,\); "
        r"model.decoder.layers.2.fc1.bias: missing.*; proj_out.weight differs from embed_tokens "
        r"\(openai-whisper ties them\); classifier.weight: unexpected$"
    )
    with pytest.raises(ValueError, match=message):
        convert.load_checkpoint(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(config, decoder_ffn_dim=3072)))
    with pytest.raises(ValueError, match=r"ffn dims 4 x d_model = 1536.*got ffn \(1536, 3072\)"):
        convert.load_checkpoint(tmp_path)
    del config["decoder_layers"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json has no 'decoder_layers'"):
        convert.load_checkpoint(tmp_path)


def test_convert_cli(ct2_tiny_en_dir, tiny_en_checkpoint, tmp_path, capsys):
    dst = tmp_path / "tiny.en.pt"
    assert convert.main([str(ct2_tiny_en_dir), str(dst)]) == 0
    assert "(ct2, 4+4 layers of 384)" in capsys.readouterr().out
    assert os.listdir(tmp_path) == ["tiny.en.pt"]  # written via a temp file, renamed
    loaded = convert.load_checkpoint(dst)
    assert loaded["dims"] == tiny_en_checkpoint["dims"]
    assert torch.equal(loaded["alignment_heads"], tiny_en_checkpoint["alignment_heads"])
    for name, value in tiny_en_checkpoint["model_state_dict"].items():
        assert torch.equal(loaded["model_state_dict"][name], value), name

    before = dst.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        convert.main([str(ct2_tiny_en_dir), str(dst)])
    assert exit_info.value.code == 2 and "exists; pass --force" in capsys.readouterr().err
    assert dst.stat().st_mtime_ns == before

    missing, out = tmp_path / "missing", tmp_path / "out.pt"
    assert convert.main([str(missing), str(out)]) == 1
    error = capsys.readouterr().err
    assert f"whisper-at convert: error: Model checkpoint not found: {missing}" in error
    assert not out.exists()

    hf_dir = tmp_path / "hf"
    assert convert.main([str(dst), str(hf_dir), "--to", "hf"]) == 0
    assert convert.load_checkpoint(hf_dir)["dims"] == tiny_en_checkpoint["dims"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(tmp_path / "out.pt") as path:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")
    assert os.listdir(tmp_path) == []
