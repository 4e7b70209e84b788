"""``whisper-at features``: layer-wise pooled Whisper encoder features of a folder of clips.

Modes: ``trim10`` (the paper's training features) keeps the first 10 s of each clip (shorter
clips are padded) and runs the encoder on 1000 mel frames (positional embedding sliced), giving
[n_layer, 25, d]; ``pad30`` keeps Whisper's first 30 s window (what ``transcribe`` sees), giving
[n_layer, 75, d]. The window is built exactly as ``whisper_at.tag`` builds it (log-mel of the
whole clip, zero-padded in log-mel space), so ``trim10`` features are the features of
``tag(..., window_seconds=10)``, and ``pad30`` those of ``tag()`` and ``transcribe()``.
"""

import argparse
import itertools
import os
import sys
import warnings
from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..audio_io import load_audio
from ..mel import MelWindows
from ..options import positive_int
from .common import clip_id, default_device, list_audio, load_backbone
from .labelsets import read_labels
from .store import FeatureWriter

MODES = {"trim10": 10, "pad30": 30}


def check_mode(mode: str) -> int:
    """Seconds of a feature mode's window."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    return MODES[mode]


def clip_mel(audio: np.ndarray, n_mels: int, mode: str = "trim10") -> Tensor:
    """The log-mel window [n_mels, 100 * seconds] the encoder sees for a clip in ``mode``."""
    frames = check_mode(mode) * 100
    # the log-mel of the whole clip, as tag() and transcribe() compute it (its dynamic range
    # and the STFT frames at the window's end depend on the audio after the window)
    windows = MelWindows(torch.as_tensor(audio, dtype=torch.float32), n_mels, frames)
    window = next(iter(windows), None)
    if window is None:  # empty clip
        return torch.zeros(n_mels, frames)
    return window[1]


def extract(
    model, audios: Iterable[np.ndarray], mode: str = "trim10", batch_size: int = 8, fp16=False
) -> Iterable[np.ndarray]:
    """Pooled features [n_layer, T, d] (float32, or float16 if ``fp16``) of each clip, in order;
    ``fp16`` also runs the encoder in half precision on CUDA."""
    check_mode(mode)
    half = fp16 and model.device.type == "cuda"
    if half:
        model.half()
    dtype = torch.float16 if half else torch.float32
    out_dtype = np.float16 if fp16 else np.float32
    audios = iter(audios)
    while batch := list(itertools.islice(audios, batch_size)):
        mels = torch.stack([clip_mel(a, model.dims.n_mels, mode) for a in batch])
        _, pooled = model.embed_audio_with_layers(mels.to(model.device, dtype))
        for layers in pooled.float().cpu().numpy():
            yield layers.astype(out_dtype)


def _load(path: str) -> Optional[np.ndarray]:
    try:
        return load_audio(path)
    except (RuntimeError, OSError) as e:
        warnings.warn(f"skipping {path}: {e}", stacklevel=2)
        return None


def extract_dir(
    audio_dir: str,
    out_dir: str,
    model_name: str,
    mode: str = "trim10",
    fp16: bool = False,
    labels: Optional[str] = None,
    shard_size: int = 1000,
    resume: bool = False,
    batch_size: int = 8,
    device: Optional[str] = None,
    verbose: bool = True,
) -> int:
    """Extract features of every audio file under ``audio_dir`` into ``out_dir``; returns the
    number of clips extracted in this run (already-indexed clips are skipped on resume)."""
    from tqdm import tqdm

    seconds = check_mode(mode)
    table = read_labels(labels) if labels else None
    files = list_audio(audio_dir)
    model = load_backbone(model_name, default_device(device))
    meta = {
        "model": os.path.basename(model_name.rstrip("/")),
        "mode": mode,
        "dtype": "float16" if fp16 else "float32",
        "n_layer": model.dims.n_audio_layer,
        "n_state": model.dims.n_audio_state,
        "frames": seconds * 5 // 2,
        "labels": table.kind if table else None,
        "num_classes": table.num_classes if table else 0,
        "class_names": list(table.class_names) if table else [],
    }
    writer = FeatureWriter(out_dir, meta, shard_size, resume)
    todo: List[Tuple[str, Tuple[int, ...], Optional[int]]] = []
    for rel in files:
        if clip_id(rel) in writer.done:
            continue
        clip_labels, fold = table.lookup(rel) if table else ((), None)
        if clip_labels is None:
            warnings.warn(f"{rel} is not in {labels}: extracted without labels", stacklevel=2)
        todo.append((rel, clip_labels or (), fold))
    pairs = ((item, _load(os.path.join(audio_dir, item[0]))) for item in todo)
    pairs = ((item, audio) for item, audio in pairs if audio is not None)
    count = 0
    with tqdm(total=len(todo), disable=not verbose, unit="clip") as bar:
        while chunk := list(itertools.islice(pairs, batch_size)):
            clips = extract(model, [audio for _, audio in chunk], mode, batch_size, fp16)
            for (rel, clip_labels, fold), features in zip([item for item, _ in chunk], clips):
                writer.add(clip_id(rel), rel, features, clip_labels, fold)
            count += len(chunk)
            bar.update(len(chunk))
    writer.close()
    return count


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="whisper-at features", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("audio_dir", help="folder of audio clips (searched recursively)")
    parser.add_argument("out", help="features directory to create (or resume)")
    parser.add_argument("--model", default="large-v1", help="Whisper name or checkpoint path")
    parser.add_argument("--mode", choices=sorted(MODES), default="trim10")
    parser.add_argument("--fp16", action="store_true", help="store float16 (half the disk)")
    parser.add_argument("--labels", help="AudioSet-style or ESC-50-style label CSV")
    parser.add_argument("--shard_size", type=positive_int, default=1000, help="clips per shard")
    parser.add_argument(
        "--batch_size", type=positive_int, default=8, help="clips per encoder batch"
    )
    parser.add_argument("--resume", action="store_true", help="skip clips already extracted")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    n = extract_dir(
        args.audio_dir,
        args.out,
        args.model,
        args.mode,
        args.fp16,
        args.labels,
        args.shard_size,
        args.resume,
        args.batch_size,
        args.device,
    )
    print(f"extracted {n} clips into {args.out}", file=sys.stderr)
    return 0
