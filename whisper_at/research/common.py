"""Helpers shared by the research tools: atomic writes, audio listing, backbone loading."""

import json
import os
from contextlib import contextmanager
from typing import Iterator, List, Optional

import numpy as np
import torch

from .. import staging

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".webm", ".mkv")


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """``whisper_at.staging.atomic_path``, creating the file's directory first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with staging.atomic_path(path) as tmp:
        yield tmp


def save_torch(obj, path: str):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_npy(array: np.ndarray, path: str):
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def write_text(text: str, path: str):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(obj, path: str):
    write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def list_audio(root: str) -> List[str]:
    """Audio files under ``root`` (recursive), as sorted paths relative to ``root``."""
    if not os.path.isdir(root):
        raise NotADirectoryError(f"not a directory: {root}")
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(p.replace(os.sep, "/") for p in found)


def clip_id(relative_path: str) -> str:
    """A clip's id: its path relative to the audio directory, without extension."""
    return os.path.splitext(relative_path)[0]


def default_device(device: Optional[str] = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_backbone(name: str, device: Optional[str] = None):
    """A ``WhisperAT`` without head (official name, OpenAI checkpoint or converted directory)."""
    import whisper_at

    model = whisper_at.load_model(name, default_device(device), at_head=False)
    return model.eval()


def plot_lines(path: str, x, series: dict, xlabel: str, ylabel: str, title: str, thin=()):
    """Save a line plot of ``series`` ({name: ys}) against ``x``; names in ``thin`` are faint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ys in series.items():
        if name in thin:
            ax.plot(x, ys, linestyle="--", linewidth=0.9, alpha=0.6, label=name)
        else:
            ax.plot(x, ys, marker="o", linewidth=2.2, label=name)
    if len(x) <= 12:
        ax.set_xticks(list(x))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)
