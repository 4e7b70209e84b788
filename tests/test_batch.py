"""``whisper-at batch``: inputs, cross-file tagging, crash-safe shards and resume, engines.

Real tiny.en weights with the seeded random head, on clips cut from the espeak-ng recording.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from whisper_at.jobs import batch, inputs
from whisper_at.jobs.local_engine import BatchOptions, decode_ahead, process
from whisper_at.jobs.shards import (
    LOCK_NAME,
    finished_shards,
    lock_output_dir,
    read_results,
    shard_records,
)
from whisper_at.labels import label_names
from whisper_at.tagging import tag

REPO = Path(__file__).resolve().parents[1]
N_CLIPS = 12


def _sox(*args):
    subprocess.run(["sox", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def collection(long_speech_wav, tmp_path_factory) -> Path:
    """12 clips of 4 s (one FLAC, four in sub/), an undecodable .wav and a .txt note."""
    root = tmp_path_factory.mktemp("collection")
    (root / "sub").mkdir()
    for i in range(N_CLIPS):
        folder = root / "sub" if i % 3 == 0 else root
        _sox(long_speech_wav, folder / f"clip{i:02d}.{'flac' if i == 5 else 'wav'}",
             "trim", 5 * i, 4)
    (root / "broken.wav").write_bytes(b"this is not audio")
    (root / "notes.txt").write_text("not audio either\n")
    return root


@pytest.fixture(scope="module")
def model_args(tiny_en_pt, tiny_head_file):
    return ["--model", str(tiny_en_pt), "--at_head", str(tiny_head_file), "--verbose", "False"]


TRANSCRIBE = ["--task", "transcribe", "--beam_size", "None", "--best_of", "None"]
SHARDS_OF_2 = ["--shard_size", "2", "--shard_seconds", "3600"]  # not by time on a slow machine


def _env():
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _cli(*args) -> list:
    return [sys.executable, "-m", "whisper_at", "batch", *map(str, args)]


def assert_same_results(a: dict, b: dict, atol: float):
    assert sorted(a) == sorted(b)
    for path, expected in a.items():
        got = b[path]
        assert got.keys() == expected.keys(), path
        if "error" in expected:
            assert got["error"] == expected["error"]
            continue
        assert got.get("text") == expected.get("text"), path
        assert got["duration"] == expected["duration"]
        assert len(got["tags"]) == len(expected["tags"])
        for row_a, row_b in zip(expected["tags"], got["tags"]):
            assert [name for name, _ in row_a["tags"]] == [name for name, _ in row_b["tags"]]
            np.testing.assert_allclose(
                [v for _, v in row_b["tags"]], [v for _, v in row_a["tags"]], atol=atol, rtol=0
            )


def assert_no_duplicates(output_dir: Path):
    paths = [record["path"] for record in shard_records(str(output_dir))]
    assert len(paths) == len(set(paths))
    assert not [n for n in os.listdir(output_dir) if n.endswith(".tmp")]


# ---------------------------------------------------------------- inputs


def test_find_inputs_directory_glob_and_manifests(collection, tmp_path):
    audio = sorted(str(p) for p in collection.rglob("*") if p.suffix in (".wav", ".flac"))
    assert len(audio) == N_CLIPS + 1
    assert sorted(inputs.find_inputs(str(collection))) == audio  # recursive, .txt left out
    assert inputs.find_inputs(str(collection), ["flac"]) == [str(collection / "clip05.flac")]
    assert inputs.find_inputs(str(collection / "sub" / "*.wav")) == sorted(
        str(p) for p in (collection / "sub").glob("*.wav")
    )
    assert inputs.find_inputs(str(collection / "clip01.wav")) == [str(collection / "clip01.wav")]

    relative = [os.path.relpath(p, tmp_path) for p in audio[:3]]
    (tmp_path / "list.txt").write_text("# three files\n" + "\n".join(relative + relative[:1]))
    (tmp_path / "list.csv").write_text("id,path\n" + "".join(f"{i},{p}\n" for i, p in
                                                             enumerate(relative)))
    (tmp_path / "list.jsonl").write_text("".join(json.dumps({"path": p}) + "\n" for p in relative))
    for manifest in ("list.txt", "list.csv", "list.jsonl"):  # relative to the manifest
        assert inputs.find_inputs(str(tmp_path / manifest)) == audio[:3], manifest
    with pytest.raises(FileNotFoundError, match="input not found"):
        inputs.find_inputs(str(tmp_path / "missing"))


# ---------------------------------------------------------------- the local engine


def test_tag_batches_windows_across_files(tiny_at, collection, long_speech_wav, tmp_path):
    """The 10 s windows of a 61 s file and of clips share encoder batches of 3; every file's
    audio_tag equals whisper_at.tag on that file alone, and a broken file only fails itself.
    A 2 ms file (no full mel frame: no window) still gets its line, with no rows."""
    blip = tmp_path / "blip.wav"
    _sox(long_speech_wav, blip, "trim", "0", "0.002")
    paths = [str(collection / "clip01.wav"), str(long_speech_wav), str(collection / "broken.wav"),
             str(blip), str(collection / "clip02.wav")]
    options = BatchOptions(task="tag", batch_size=3, window_seconds=10)
    got = {line["path"]: (line, audio_tag)
           for line, audio_tag in process(tiny_at, decode_ahead(paths, 2), options)}
    assert sorted(got) == sorted(paths)
    assert "cannot decode audio file" in got[paths[2]][0]["error"]
    line, audio_tag = got[paths[3]]
    assert "error" not in line and line["tags"] == [] and audio_tag.shape == (0, 527)
    for path in paths[:2] + paths[4:]:
        line, audio_tag = got[path]
        expected = tag(tiny_at, path, window_seconds=10)["audio_tag"]
        assert audio_tag.shape == expected.shape
        assert (audio_tag - expected).abs().max() < 1e-5
        assert len(line["tags"]) == expected.shape[0] and line["tags"][0]["tags"]


def test_tag_task_takes_at_compute_type(tiny_at, collection, model_args, tmp_path):
    """batch --task tag --at_compute_type bfloat16: each file's rows are model.tag's in
    bfloat16 (10 s windows: emulated bfloat16 is slow on this CPU)."""
    paths = [str(collection / "clip01.wav"), str(collection / "clip02.wav")]
    status = batch.main([str(collection / "clip0[12].wav"), str(tmp_path), *model_args,
                         "--task", "tag", "--at_window", "10", "--at_compute_type", "bfloat16",
                         "--at_top_k", "527", "--at_threshold=-inf"])
    assert status == 0
    records = {record["path"]: record for record in shard_records(str(tmp_path))}
    assert sorted(records) == paths
    index = {name: i for i, name in enumerate(label_names("en"))}
    for path in paths:
        expected = tag(tiny_at, path, window_seconds=10, at_compute_type="bfloat16")["audio_tag"]
        got = np.full(tuple(expected.shape), np.nan, np.float32)
        for k, row in enumerate(records[path]["tags"]):
            for name, value in row["tags"]:
                got[k, index[name]] = value
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-5, rtol=0)  # JSON: 6 decimals


@pytest.fixture(scope="module")
def uninterrupted(collection, model_args, tmp_path_factory) -> Path:
    """One uninterrupted local transcribe run over the collection, with per-file outputs."""
    out = tmp_path_factory.mktemp("uninterrupted")
    status = batch.main([str(collection), str(out), *model_args, *TRANSCRIBE,
                         *SHARDS_OF_2, "--output_format", "all"])
    assert status == 0
    return out


def test_uninterrupted_run_writes_shards_and_outputs(uninterrupted, collection, speech_text):
    results = read_results(str(uninterrupted))
    assert len(results) == N_CLIPS + 1
    shards = finished_shards(str(uninterrupted))
    assert [os.path.basename(s) for s in shards] == [
        f"results-{i:05d}.jsonl" for i in range(len(shards))
    ]
    assert all(len(Path(s).read_text().splitlines()) <= 2 for s in shards)
    assert_no_duplicates(uninterrupted)
    assert "cannot decode" in results[str(collection / "broken.wav")]["error"]
    clip = results[str(collection / "clip01.wav")]  # 5-9 s: "My favorite color is green..."
    assert "favorite color" in clip["text"].lower() and clip["language"] == "en"
    assert clip["duration"] == 4.0 and clip["segments"][0]["text"].strip()
    # per-file outputs mirror the input tree: openai-whisper's and the sound-event ones
    for name in ("clip01.srt", "clip01.json", "clip01.tags.json", "sub/clip03.txt"):
        assert (uninterrupted / name).is_file(), name
    assert (uninterrupted / "clip01.txt").read_text().split() == clip["text"].split()
    assert not (uninterrupted / "broken.srt").exists()


def test_kill_mid_run_then_resume_matches_uninterrupted(
    uninterrupted, collection, model_args, tmp_path
):
    out = tmp_path / "killed"
    command = _cli(collection, out, *model_args, *TRANSCRIBE, *SHARDS_OF_2)
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (out / "results-00000.jsonl").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard finished in 300 s"
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    survived = list(shard_records(str(out)))
    assert 2 <= len(survived) < N_CLIPS + 1

    status = batch.main([str(collection), str(out), *model_args, *TRANSCRIBE,
                         *SHARDS_OF_2])
    assert status == 0
    assert_no_duplicates(out)
    resumed = read_results(str(out))
    for record in survived:  # finished shards were kept, not redone
        assert resumed[record["path"]] == record
    assert_same_results(read_results(str(uninterrupted)), resumed, atol=1e-5)


def test_sigterm_finishes_the_open_shard(collection, model_args, tmp_path):
    out = tmp_path / "terminated"
    command = _cli(collection, out, *model_args, "--task", "tag", "--at_window", "10",
                   "--batch_size", "1")
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / ".results-00000.jsonl.tmp").exists():  # the first line is written
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    records = list(shard_records(str(out)))
    assert 1 <= len(records) < N_CLIPS + 1
    assert all("tags" in r or "error" in r for r in records)
    assert_no_duplicates(out)


def test_leftover_temp_shard_is_removed_and_its_files_redone(collection, model_args, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done, cut_short, new = (str(collection / f"clip0{i}.wav") for i in (1, 2, 4))
    finished = {"path": done, "duration": 4.0, "at_time_res": 10, "tags": [], "events": []}
    (out / "results-00000.jsonl").write_text(json.dumps(finished) + "\n")
    (out / ".results-00001.jsonl.tmp").write_text(json.dumps({"path": cut_short})[:-5])
    (out / "list.txt").write_text("\n".join([done, cut_short, new]))
    status = batch.main([str(out / "list.txt"), str(out), *model_args, "--task", "tag"])
    assert status == 0
    assert not (out / ".results-00001.jsonl.tmp").exists()
    assert [r["path"] for r in shard_records(str(out))] == [done, cut_short, new]
    results = read_results(str(out))
    assert results[done] == finished  # skipped: its shard was finished
    assert results[cut_short]["duration"] == 4.0 and results[cut_short]["tags"][0]["tags"]
    assert_no_duplicates(out)


def test_output_dir_held_by_another_run(collection, model_args, tmp_path, capsys):
    lock = lock_output_dir(str(tmp_path))
    try:
        status = batch.main([str(collection), str(tmp_path), *model_args, "--task", "tag"])
    finally:
        lock.release()
    assert status == 2
    assert "another whisper-at batch run is writing" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [LOCK_NAME]


# ---------------------------------------------------------------- the Ray engine


RAY_SCRIPT = """
import sys, ray
from whisper_at.jobs import batch
ray.init(address="local", num_cpus=2, include_dashboard=False)  # a new instance
for out, task in (("ray_transcribe", {transcribe!r} + ["-f", "srt"]),
                  ("ray_tag", ["--task", "tag"])):
    argv = [{manifest!r}, {root!r} + "/" + out, *{model_args!r}, *task, "--engine", "ray",
            "--files_per_batch", "2"]
    if batch.main(argv) != 0:
        sys.exit(1)
"""


def test_ray_engine_matches_local_engine(uninterrupted, collection, model_args, tmp_path):
    pytest.importorskip("ray")
    files = [str(collection / name) for name in
             ("clip01.wav", "sub/clip03.wav", "clip05.flac", "broken.wav")]
    (tmp_path / "files.txt").write_text("\n".join(files))
    script = RAY_SCRIPT.format(transcribe=TRANSCRIBE, manifest=str(tmp_path / "files.txt"),
                               root=str(tmp_path), model_args=model_args)
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    local = read_results(str(uninterrupted))
    ray_transcribe = read_results(str(tmp_path / "ray_transcribe"))
    assert_same_results({p: local[p] for p in files}, ray_transcribe, atol=1e-4)
    for srt in ("clip01.srt", "sub/clip03.srt", "clip05.srt"):  # written by the driver
        assert (tmp_path / "ray_transcribe" / srt).read_text() == (uninterrupted / srt).read_text()
    local_tag = [str(tmp_path / "files.txt"), str(tmp_path / "local_tag"), *model_args]
    assert batch.main([*local_tag, "--task", "tag"]) == 0
    assert_same_results(read_results(str(tmp_path / "local_tag")),
                        read_results(str(tmp_path / "ray_tag")), atol=1e-4)
    for out in ("ray_transcribe", "ray_tag"):
        assert_no_duplicates(tmp_path / out)


# makes `import <name>` fail as for a package that is not installed, for each name in $BLOCK
BLOCKER = """
import os, sys
class Missing:
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in os.environ["BLOCK"].split(","):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
sys.meta_path.insert(0, Missing())
"""


@pytest.mark.parametrize("missing, says", [
    ("pyarrow", "--engine ray needs Ray Data (pyarrow is not installed): "),
    ("ray", "--engine ray needs Ray: "),
])
def test_ray_engine_without_its_dependencies_says_what_to_install(
    collection, model_args, tmp_path, missing, says
):
    pytest.importorskip("ray")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = _env()
    env.update(BLOCK=missing, PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{env['PYTHONPATH']}")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "whisper_at", "batch", str(collection), str(out), *model_args,
         "--engine", "ray"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        f"whisper-at batch: error: {says}pip install 'whisper-at[ray]' "
        "(Ray with its Data dependencies, 'ray[data]')")
    assert not out.exists()  # nothing was started
