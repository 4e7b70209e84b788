"""TL-TR training, weight averaging, resume, DDP and the linear probe, on a synthetic sound set.

Features come from the real tiny.en encoder; the set has 6 AudioSet classes (speech, sine,
chirp, hum, white and pink noise) in known combinations: 48 training clips and 24 held out.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_research_synth import AUDIOSET_INDICES, make_synth_set

import whisper_at
from whisper_at.research import main as research_main
from whisper_at.research.checkpoint import epoch_path, load_head_state
from whisper_at.research.data import EpochSampler
from whisper_at.research.metrics import chance_map, tagging_metrics
from whisper_at.research.store import FeatureSet, read_index
from whisper_at.research.train import TrainOptions, recipe_options

REPO = Path(__file__).resolve().parents[1]
# 6 steps of 8 clips per epoch; otherwise the official recipe (lr 1e-4 for tiny, mixup 0.5,
# time mask 10, label smoothing 0.1, balanced sampling)
SMALL = ["--batch_size", "8", "--epoch_fraction", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    sources = root / "sources"
    return {
        "train": make_synth_set(root / "train", 48, seed=1, sources_dir=sources),
        "eval": make_synth_set(root / "eval", 24, seed=2, sources_dir=sources),
    }


@pytest.fixture(scope="module")
def features(synth, tiny_en_pt, tmp_path_factory):
    """Features directories of both sets (AudioSet-style labels; train sharded by 20)."""
    out = tmp_path_factory.mktemp("features")
    for name, shard_size in (("train", "20"), ("eval", "1000")):
        args = ["features", str(synth[name].audio_dir), str(out / name)]
        args += ["--model", str(tiny_en_pt), "--labels", str(synth[name].audioset_csv)]
        assert research_main(args + ["--shard_size", shard_size]) == 0
    return {"train": str(out / "train"), "eval": str(out / "eval")}


def _train(features, out: Path, *extra: str) -> dict:
    args = ["train", features["train"], str(out), "--eval_dir", features["eval"], *SMALL, *extra]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the head is small: 1 thread is faster, and immune to a busy CPU
    try:
        assert research_main(args) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "log.json").read_text())


@pytest.fixture(scope="module")
def run(features, tmp_path_factory) -> Path:
    """A 15-epoch run, weights averaged over epochs 8-15."""
    out = tmp_path_factory.mktemp("run")
    _train(features, out, "--epochs", "15", "--avg_start", "8")
    return out


def _assert_same_run(out: Path, reference: Path, loss: dict, mAP: dict, weights: dict):
    """The training run in ``out`` ends like the one in ``reference``: the same epochs, each
    with the same train loss and mAP (``loss``, ``mAP``: pytest.approx keywords), and the same
    best_avg.pth (``weights``: torch.testing.assert_close keywords)."""
    ours = json.loads((out / "log.json").read_text())["epochs"]
    theirs = json.loads((reference / "log.json").read_text())["epochs"]
    assert [e["epoch"] for e in ours] == [e["epoch"] for e in theirs] == [1, 2, 3, 4]
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], **loss)
        assert a["mAP"] == pytest.approx(b["mAP"], **mAP)
    state = load_head_state(str(out / "best_avg.pth"))
    for key, value in load_head_state(str(reference / "best_avg.pth")).items():
        torch.testing.assert_close(state[key], value, **weights)


@pytest.fixture(scope="module")
def short_run(features, tmp_path_factory) -> Path:
    """A 4-epoch single-process run: the reference of the resume and DDP tests."""
    out = tmp_path_factory.mktemp("short")
    _train(features, out, "--epochs", "4", "--avg_start", "3")
    return out


def test_features_are_sharded_labelled_and_match_the_tagging_path(synth, features, tiny_at):
    entries = read_index(features["train"])
    assert [e.clip_id for e in entries] == sorted(synth["train"].labels)
    assert [e.shard for e in entries] == [i // 20 for i in range(48)]
    assert all(e.labels == synth["train"].labels[e.clip_id] for e in entries)
    train = FeatureSet(features["train"])
    assert train.shape == (4, 25, 384) and train.num_classes == 527
    assert train.meta["mode"] == "trim10"
    # the features are what whisper_at.tag computes for 10 s windows at inference
    for i in (0, 17, 47):
        wav = synth["train"].audio_dir / entries[i].path
        result = whisper_at.tag(tiny_at, str(wav), window_seconds=10, return_audio_features=True,
                                at_compute_type="float32")  # features are float32
        expected = result["audio_features_for_at"][0].numpy()
        np.testing.assert_allclose(train.features(i), expected, atol=2e-4, rtol=1e-4)


def test_training_reaches_high_map_and_averages_the_chosen_epochs(run, features):
    log = json.loads((run / "log.json").read_text())
    eval_targets = FeatureSet(features["eval"]).targets()
    chance = chance_map(eval_targets)
    first, last, average = log["epochs"][0], log["epochs"][-1], log["average"]
    assert log["options"]["lr"] == 1e-4 and log["options"]["epochs"] == 15
    assert last["train_loss"] < first["train_loss"]
    assert average["epochs"] == list(range(8, 16)) and average["classes"] == 6
    assert average["mAP"] > 0.8 and average["mAP"] > chance + 0.45, (average, chance)
    assert average["mAUC"] > 0.85

    saved = torch.load(run / "best_avg.pth", weights_only=True)
    assert saved and all(key.startswith("at_model.") for key in saved)
    epochs = [load_head_state(epoch_path(str(run), e)) for e in range(8, 16)]
    for key, value in saved.items():
        mean = torch.stack([state[key[len("at_model.") :]] for state in epochs]).mean(dim=0)
        torch.testing.assert_close(value, mean, rtol=1e-6, atol=1e-7)
    assert not torch.equal(epochs[0]["mlp_layer.1.weight"], epochs[-1]["mlp_layer.1.weight"])


def test_trained_head_loads_with_load_model_and_tags_held_out_clips(
    run, synth, features, tiny_en_pt
):
    head = str(run / "best_avg.pth")
    model = whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=head)
    held_out = FeatureSet(features["eval"])
    with torch.no_grad():
        stored = torch.stack([torch.from_numpy(x) for x in held_out.iter_features()])
        expected = model.at_model.forward_chunks(stored).numpy()
    assert tagging_metrics(expected, held_out.targets())["mAP"] > 0.8
    # the top class of each held-out clip is one of the six synthetic classes
    assert set(expected.argmax(axis=1)) <= set(AUDIOSET_INDICES)
    # tagging the audio files gives the logits of the stored features
    for i in range(0, len(held_out), 4):
        wav = synth["eval"].audio_dir / held_out.entries[i].path
        logits = model.tag(str(wav), window_seconds=10, at_compute_type="float32")["audio_tag"]
        assert logits.shape == (1, 527)
        np.testing.assert_allclose(logits[0].numpy(), expected[i], atol=2e-3, rtol=1e-3)


def test_resume_continues_exactly_like_an_uninterrupted_run(features, short_run, tmp_path):
    _train(features, tmp_path, "--epochs", "2", "--avg_start", "3")
    assert not (tmp_path / "epoch_003.pth").exists()
    _train(features, tmp_path, "--epochs", "4", "--avg_start", "3", "--resume")
    exact = {"rel": 1e-6}
    _assert_same_run(
        tmp_path, short_run, loss=exact, mAP=exact, weights={"rtol": 1e-5, "atol": 1e-6}
    )


def test_two_process_ddp_matches_the_single_process_run(features, short_run, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(29500 + os.getpid() % 1000)]
    cmd += ["-m", "whisper_at.research", "train", features["train"], str(tmp_path)]
    cmd += ["--eval_dir", features["eval"], *SMALL, "--epochs", "4", "--avg_start", "3"]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 4 ") == 1  # only rank 0 reports
    # same global batches and augmentations; only float summation order differs
    tolerances = {
        "loss": {"rel": 1e-4},
        "mAP": {"abs": 1e-3},
        "weights": {"rtol": 1e-3, "atol": 1e-5},
    }
    _assert_same_run(tmp_path, short_run, **tolerances)


def test_probe_reports_layerwise_accuracy_with_folds_and_plots(synth, features, tmp_path, capsys):
    out, plot = tmp_path / "probe.json", tmp_path / "probe.png"
    args = ["probe", features["train"], "--labels", str(synth["train"].esc50_csv)]
    assert research_main(args + ["--out", str(out), "--plot", str(plot)]) == 0
    result = json.loads(out.read_text())
    assert result["clips"] == 48 and result["classes"] == 5
    assert result["cv"].startswith("5 folds")
    assert len(result["accuracy"]) == 4  # one per encoder layer of tiny
    assert min(result["accuracy"]) > max(0.6, 3 * result["chance"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    # multi-label (AudioSet-style) labels are refused with a hint; bad input is named
    assert research_main(["probe", features["train"]]) == 1
    assert "whisper-at probe: error: " in capsys.readouterr().err
    no_folds = tmp_path / "no_folds.csv"  # the ESC-50 labels without their folds: k-fold CV
    with open(synth["train"].esc50_csv, newline="") as f:
        rows = [row[:1] + row[2:] for row in csv.reader(f)]
    with open(no_folds, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    bad = {
        "n_splits must be at least 2": ["--labels", str(no_folds), "--n_splits", "1"],
        "missing.csv": ["--labels", str(tmp_path / "missing.csv")],
    }
    for expected, args in bad.items():
        assert research_main(["probe", features["train"], *args]) == 1
        message = capsys.readouterr().err
        assert message.startswith("whisper-at probe: error: ") and expected in message
    assert research_main(["probe", str(tmp_path / "nothing")]) == 1
    assert "nothing is not a features directory" in capsys.readouterr().err


def test_low_compute_head_trains_and_loads_as_tltr_512(features, tiny_en_pt, tmp_path):
    log = _train(features, tmp_path, "--low_compute", "--epochs", "1", "--mixup", "0")
    assert log["options"]["low_compute"] and log["average"]["epochs"] == [1]
    head = str(tmp_path / "best_avg.pth")
    model = whisper_at.load_model(str(tiny_en_pt), device="cpu", at_head=head, at_low_compute=True)
    assert model.at_model.low_compute and model.at_model.down_layer[1].out_features == 512


def test_recipe_defaults_follow_the_official_table():
    large = recipe_options(TrainOptions(), 1280)
    assert (large.lr, large.epochs, large.avg_start, large.avg_end) == (5e-5, 30, 16, 30)
    low = recipe_options(TrainOptions(low_compute=True), 1024)
    assert (low.lr, low.epochs, low.avg_start, low.avg_end) == (1e-4, 30, 16, 30)
    tiny = recipe_options(TrainOptions(), 384)
    assert (tiny.lr, tiny.epochs, tiny.avg_start, tiny.avg_end) == (1e-4, 50, 21, 50)
    short = recipe_options(TrainOptions(epochs=5, lr=3e-4), 384)
    assert (short.lr, short.epochs, short.avg_start, short.avg_end) == (3e-4, 5, 5, 5)


@pytest.mark.parametrize("weights", [None, np.arange(1.0, 52.0)])
def test_rank_batches_together_are_the_single_process_batches(weights):
    data, batch = list(range(51)), 6
    for epoch in (1, 2):
        single = EpochSampler(data, 1, 0, seed=3, weights=weights)
        single.set_epoch(epoch)
        expected = list(single)
        ranks = []
        for rank in range(3):
            sampler = EpochSampler(data, 3, rank, seed=3, weights=weights)
            sampler.set_epoch(epoch)
            ranks.append(list(sampler))
        for k in range(len(data) // batch):
            together = sorted(sum((r[k * 2 : (k + 1) * 2] for r in ranks), []))
            assert together == sorted(expected[k * batch : (k + 1) * batch])
    assert expected != list(range(51))  # shuffled (or drawn)
