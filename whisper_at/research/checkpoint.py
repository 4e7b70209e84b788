"""Head checkpoints of a training run, and checkpoint weight averaging.

Files in a run directory: ``epoch_001.pth`` ... (the head after each epoch), ``last.pth``
(everything needed to resume), ``best_avg.pth`` (the average of epochs avg_start..avg_end).
Head files store the head's tensors as ``at_model.<key>``, like the official head files, so
``whisper_at.load_model(name, at_head="best_avg.pth")`` loads them.
"""

import os
from typing import Dict, List, Mapping, Sequence

import torch

from ..formats.weights import load_state_dict
from ..head import head_state_dict
from .common import save_torch

PREFIX = "at_model."


def epoch_path(run_dir: str, epoch: int) -> str:
    return os.path.join(run_dir, f"epoch_{epoch:03d}.pth")


def save_head(state: Mapping[str, torch.Tensor], path: str):
    """Atomically save a head state_dict with ``at_model.`` keys (CPU tensors)."""
    save_torch({PREFIX + k: v.detach().cpu().clone() for k, v in state.items()}, path)


def load_head_state(path: str) -> Dict[str, torch.Tensor]:
    """A head file's state_dict with plain TLTR keys."""
    return head_state_dict(load_state_dict(path))


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of state_dicts with equal keys (accumulated in float64)."""
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[0])
    if any(list(s) != keys for s in states[1:]):
        raise ValueError("checkpoints to average have different keys")
    average = {}
    for key in keys:
        total = sum(s[key].double() for s in states)
        average[key] = (total / len(states)).to(states[0][key].dtype)
    return average


def average_epochs(run_dir: str, start: int, end: int) -> List[int]:
    """Average the epoch checkpoints start..end that exist into ``best_avg.pth``; returns the
    epochs averaged."""
    epochs = [e for e in range(start, end + 1) if os.path.exists(epoch_path(run_dir, e))]
    if not epochs:
        raise FileNotFoundError(f"no epoch checkpoints {start}..{end} in {run_dir}")
    states = [load_head_state(epoch_path(run_dir, e)) for e in epochs]
    save_head(average_states(states), os.path.join(run_dir, "best_avg.pth"))
    return epochs
