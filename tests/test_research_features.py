"""`whisper-at features`: pooled layer features, shards, labels, fp16 and resume (tiny.en)."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import whisper_at
from whisper_at.research.features import extract_dir
from whisper_at.research.store import FeatureSet, read_index


@pytest.fixture(scope="module")
def clips(tmp_path_factory, speech_wav, tone_wav, noise_wav, silence_wav) -> Path:
    """Four clips (speech, 440 Hz tone, white noise, silence) and an undecodable file."""
    folder = tmp_path_factory.mktemp("clips")
    for wav in (speech_wav, tone_wav, noise_wav, silence_wav):
        shutil.copy(wav, folder / wav.name)
    (folder / "sub").mkdir()
    shutil.copy(speech_wav, folder / "sub" / "speech2.wav")
    (folder / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return folder


@pytest.fixture(scope="module")
def esc50_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("labels") / "esc50.csv"
    rows = [("speech.wav", 1, 0, "speech"), ("speech2.wav", 2, 0, "speech")]
    rows += [("tone.wav", 1, 1, "tone"), ("noise.wav", 2, 2, "noise")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows([(*row, "False", "x", "A") for row in rows])
    return path


@pytest.fixture(scope="module")
def reference(clips, esc50_csv, tiny_en_pt, tmp_path_factory) -> FeatureSet:
    """float32 trim10 features of the clips, one shard."""
    out = tmp_path_factory.mktemp("reference") / "features"
    with pytest.warns(UserWarning) as record:
        n = extract_dir(str(clips), str(out), str(tiny_en_pt), labels=str(esc50_csv))
    messages = [str(w.message) for w in record]
    assert any("skipping" in m and "broken.wav" in m for m in messages)
    assert any("silence.wav is not in" in m for m in messages)
    assert n == 5
    return FeatureSet(str(out))


def test_index_holds_labels_folds_and_trim10_shapes(reference):
    by_id = {e.clip_id: e for e in reference.entries}
    assert sorted(by_id) == ["noise", "silence", "speech", "sub/speech2", "tone"]
    assert by_id["sub/speech2"].labels == (0,) and by_id["sub/speech2"].fold == 2
    assert by_id["tone"].labels == (1,) and by_id["tone"].fold == 1
    assert by_id["silence"].labels == () and by_id["silence"].fold is None
    assert reference.shape == (4, 25, 384)
    assert reference.meta["labels"] == "esc50" and reference.meta["class_names"][2] == "noise"
    # the same audio in two files gives the same features; different sounds do not
    speech = reference.features(reference.entries.index(by_id["speech"]))
    copy = reference.features(reference.entries.index(by_id["sub/speech2"]))
    tone = reference.features(reference.entries.index(by_id["tone"]))
    np.testing.assert_array_equal(speech, copy)
    assert np.abs(speech - tone).mean() > 0.1


def test_pad30_features_equal_the_first_30s_window_of_tag(
    tmp_path, tiny_at, tiny_en_pt, speech_wav, long_speech_wav
):
    audio = tmp_path / "audio"
    audio.mkdir()
    for wav in (speech_wav, long_speech_wav):
        shutil.copy(wav, audio / wav.name)
    extract_dir(str(audio), str(tmp_path / "f"), str(tiny_en_pt), mode="pad30", verbose=False)
    features = FeatureSet(str(tmp_path / "f"))
    assert features.shape == (4, 75, 384) and features.meta["frames"] == 75
    for i, entry in enumerate(features.entries):
        result = whisper_at.tag(tiny_at, str(audio / entry.path), return_audio_features=True,
                                at_compute_type="float32")  # features are float32
        window = result["audio_features_for_at"][0].numpy()  # the first 30 s window
        np.testing.assert_allclose(features.features(i), window, atol=2e-4, rtol=1e-4)


def test_fp16_shards_resume_after_an_interruption(clips, reference, tiny_en_pt, tmp_path):
    out = tmp_path / "f16"
    with pytest.warns(UserWarning, match="broken.wav"):
        assert extract_dir(str(clips), str(out), str(tiny_en_pt), fp16=True, shard_size=2) == 5
    assert sorted(p.name for p in out.glob("shard_*.npy")) == [
        "shard_00000.npy",
        "shard_00001.npy",
        "shard_00002.npy",
    ]
    half = FeatureSet(str(out))
    assert half.shard(0).dtype == np.float16 and half.meta["dtype"] == "float16"
    order = [e.clip_id for e in half.entries]
    assert order == [e.clip_id for e in reference.entries]
    full = np.stack(list(reference.iter_features()))
    before = np.stack(list(half.iter_features()))
    np.testing.assert_allclose(before, full, rtol=2e-3, atol=2e-3)

    # a run killed after writing shard 1's array but before its index: shards 1-2 are lost
    (out / "shard_00001.csv").unlink()
    (out / "shard_00002.csv").unlink()
    assert len(read_index(str(out))) == 2
    with pytest.raises(FileExistsError, match="--resume"):
        extract_dir(str(clips), str(out), str(tiny_en_pt), fp16=True, shard_size=2)
    with pytest.raises(ValueError, match="settings differ"):
        extract_dir(str(clips), str(out), str(tiny_en_pt), shard_size=2, resume=True)
    with pytest.warns(UserWarning, match="broken.wav"):
        n = extract_dir(str(clips), str(out), str(tiny_en_pt), fp16=True, shard_size=2, resume=True)
    assert n == 3  # only the clips that were not indexed
    entries = read_index(str(out))
    assert sorted(e.clip_id for e in entries) == sorted(order)
    assert sorted({e.shard for e in entries}) == [0, 3, 4]  # orphan arrays are never reused
    assert (out / "index.csv").read_text().count("\n") == 6  # header + 5 clips
    resumed = FeatureSet(str(out))
    by_id = {e.clip_id: i for i, e in enumerate(resumed.entries)}
    after = np.stack([resumed.features(by_id[cid]) for cid in order])
    np.testing.assert_array_equal(after, before)
