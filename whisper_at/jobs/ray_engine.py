"""The Ray engine of ``whisper-at batch``: a Ray Data pipeline over the files to do.

paths (``from_items``) -> decode on CPU tasks (``map``; the waveform travels as 16-bit PCM,
which is what ``load_audio`` decodes, so nothing is lost) -> model actors (``map_batches`` with a
callable class: one model load per actor, on a GPU when the actor has one; each call runs
``local_engine.process`` on ``--files_per_batch`` files) -> the driver, which iterates the
results as they stream in and writes them with the local engine's shard writer. So shards,
resume and per-file outputs behave the same with either engine, and only the driver needs to
write OUTPUT_DIR; every node needs the input paths and whisper-at installed.

Failures: a file that fails to decode or to run is retried ``--retries`` times in place, then
recorded with its error. A decode task or model actor that dies (node lost, out of memory) is
retried or restarted by Ray, as Ray Data does by default (task ``max_retries``; actors restarted
with their batch resubmitted).
Ray is imported only here, so the base install does not need it (``pip install whisper-at[ray]``:
Ray with its Data dependencies, ``ray[data]``).
"""

import dataclasses
import json
import logging
import warnings
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from ..labels import NUM_CLASSES
from ..precision import encoder_dtype
from .local_engine import (
    BatchOptions,
    Decoded,
    decode_file,
    for_model,
    load_batch_model,
    process,
)
from .shards import jsonable

MAX_BLOCKS = 10_000
# Each decode task reserves this memory (ffmpeg and a long waveform); as the model actors
# reserve none, Ray also keeps the two steps apart instead of fusing decoding into the actors.
DECODE_MEMORY = 256 * 1024**2


def require_ray():
    """The ``ray`` module with Ray Data importable, or a RuntimeError naming what to install
    (plain ``pip install ray`` lacks Ray Data's dependencies, e.g. pyarrow)."""
    install = "pip install 'whisper-at[ray]' (Ray with its Data dependencies, 'ray[data]')"
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--engine ray needs Ray: {install}") from None
    try:
        import ray.data  # noqa: F401
    except ImportError as e:
        missing = f"{e.name} is not installed" if e.name else str(e)
        raise RuntimeError(f"--engine ray needs Ray Data ({missing}): {install}") from None
    return ray


def _decode_row(row: Dict, retries: int) -> Dict:
    item = decode_file(row["path"], retries)
    pcm = b"" if item.audio is None else np.round(item.audio * 32768).astype(np.int16).tobytes()
    return {"path": item.path, "pcm": pcm, "error": item.error or ""}


class ModelActor:
    """Holds one model; each call tags or transcribes a batch of decoded files."""

    def __init__(self, options: BatchOptions):
        self.model = load_batch_model(options)
        self.options = for_model(options, self.model)

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        items = [
            Decoded(path, None, error) if error else
            Decoded(path, np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0)
            for path, pcm, error in zip(batch["path"], batch["pcm"], batch["error"])
        ]
        records, tags = [], []
        for line, audio_tag in process(self.model, items, self.options):
            records.append(json.dumps(line, ensure_ascii=False, default=jsonable))
            tags.append(b"" if audio_tag is None else audio_tag.float().numpy().tobytes())
        return {"record": np.array(records, dtype=object), "audio_tag": np.array(tags, object)}


def _connect(address: str, num_cpus: Optional[int]) -> bool:
    """Start or join Ray unless this process already has; whether we did."""
    import ray

    if ray.is_initialized():
        return False
    if num_cpus is not None and address != "local":
        raise ValueError("--num_cpus sizes a local Ray instance (--address local) only")
    kwargs = {"logging_level": logging.WARNING, "include_dashboard": False}
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    return True


def _actors(num_actors, num_gpus_per_actor, cpus_per_actor):
    """(actors, GPUs per actor) from the options and the cluster's resources."""
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if num_gpus_per_actor is None:
        num_gpus_per_actor = 1 if gpus else 0
    if num_actors is None:
        if num_gpus_per_actor:
            num_actors = int(gpus // num_gpus_per_actor)
        else:  # leave about half of the CPUs to decoding
            num_actors = int(resources.get("CPU", 1) // (2 * cpus_per_actor))
    num_actors = max(1, num_actors)
    cpus = resources.get("CPU", 0)
    if num_actors * cpus_per_actor > cpus - 1:
        warnings.warn(
            f"{num_actors} model actors x {cpus_per_actor:g} CPUs leave no CPU of the cluster's "
            f"{cpus:g} for decoding: the run waits until Ray has more CPUs",
            stacklevel=3,
        )
    return num_actors, num_gpus_per_actor


def run_ray(
    options: BatchOptions, paths: List[str], sink: Callable, address: str = "local",
    num_actors: Optional[int] = None, num_gpus_per_actor: Optional[float] = None,
    cpus_per_actor: float = 1, num_cpus: Optional[int] = None, files_per_batch: int = 8,
) -> None:
    """Run every file on Ray; ``sink(record, audio_tag)`` takes each result on this driver."""
    ray = require_ray()
    started = _connect(address, num_cpus)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the driver's tqdm bar counts files
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        actors, gpus = _actors(num_actors, num_gpus_per_actor, cpus_per_actor)
        options = dataclasses.replace(  # actors with a GPU use it; others, their CPUs
            options, device="cuda" if gpus else "cpu",
            threads=options.threads or max(1, int(cpus_per_actor)),
        )
        if options.task == "tag" or options.backend == "faster-whisper":  # before any actor
            encoder_dtype(torch.device(options.device), options.at_compute_type)
        blocks = min(MAX_BLOCKS, max(1, -(-len(paths) // files_per_batch)))
        results = (
            ray.data.from_items([{"path": path} for path in paths], override_num_blocks=blocks)
            .map(_decode_row, fn_kwargs={"retries": options.retries}, num_cpus=1,
                 memory=DECODE_MEMORY)
            .map_batches(
                ModelActor, fn_constructor_kwargs={"options": options},
                batch_size=files_per_batch, compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=cpus_per_actor, num_gpus=gpus, batch_format="numpy",
            )
        )
        for row in results.iter_rows():
            audio_tag = None
            if row["audio_tag"]:
                logits = np.frombuffer(row["audio_tag"], np.float32).reshape(-1, NUM_CLASSES)
                audio_tag = torch.from_numpy(logits.copy())
            sink(json.loads(row["record"]), audio_tag)
    finally:
        if started:
            ray.shutdown()
