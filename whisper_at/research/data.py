"""Training data for TL-TR heads: feature dataset with the recipe's augmentations, samplers.

Augmentations follow the official recipe (``dataloader_feat.py``): mixup of two clips' features
with lambda ~ Beta(10, 10) and mixed targets, one time mask of up to ``timem`` pooled frames
(set to 0), and label smoothing (targets ``eps / C + (1 - eps) * y``). Their random draws come from
a generator seeded by (seed, epoch, clip index), so a clip is augmented the same way whatever the
number of processes, and a resumed run repeats an uninterrupted one.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .store import FeatureSet


class FeatureDataset(Dataset):
    """(features [n_layer, T, d], targets [C]) pairs of a feature set, optionally augmented."""

    def __init__(
        self,
        features: FeatureSet,
        num_classes: int,
        mixup: float = 0.0,
        timem: int = 0,
        label_smooth: float = 0.0,
        seed: int = 0,
    ):
        self.features = features
        self.targets = features.targets(num_classes, np.uint8)  # 1 byte per clip and class
        self.mixup = mixup
        self.timem = timem
        self.label_smooth = label_smooth
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.features.features(index)
        y = self.targets[index].astype(np.float32)
        if self.mixup or self.timem or self.label_smooth:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if self.mixup and rng.random() < self.mixup:
                other = int(rng.integers(len(self)))
                lam = rng.beta(10, 10)
                x = lam * x + (1 - lam) * self.features.features(other)
                y = lam * y + (1 - lam) * self.targets[other].astype(np.float32)
            if self.timem:
                width = int(rng.integers(0, self.timem))
                start = int(rng.integers(0, x.shape[1] - width + 1))
                x = x.copy()
                x[:, start : start + width] = 0
            if self.label_smooth:
                y = self.label_smooth / len(y) + (1 - self.label_smooth) * y
        return torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.as_tensor(y).float()


def balanced_weights(targets: np.ndarray) -> np.ndarray:
    """The recipe's sampling weight of each clip: sum over its labels of 1000 / (count + 0.01)."""
    label_weight = 1000.0 / ((targets > 0).sum(axis=0) + 0.01)
    clips, classes = np.nonzero(targets > 0)
    return np.bincount(clips, weights=label_weight[classes], minlength=len(targets))


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle per epoch, rank r takes positions r, r + world, ...)
    that can also draw clips with replacement in proportion to ``weights`` (balanced sampling).

    With the same seed, the union of the ranks' k-th batches of size B / world is the k-th
    batch of size B of a single process, so runs with any number of processes see the same data.
    """

    def __init__(self, dataset, world: int = 1, rank: int = 0, seed: int = 0, weights=None):
        super().__init__(dataset, world, rank, shuffle=True, seed=seed, drop_last=True)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self):
        if self.weights is None:
            return super().__iter__()
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.multinomial(self.weights, self.total_size, True, generator=g).tolist()
        return iter(order[self.rank : self.total_size : self.num_replicas])


def split(
    features: FeatureSet,
    eval_fold: Optional[int] = None,
    eval_fraction: float = 0.0,
    seed: int = 0,
) -> Tuple[FeatureSet, Optional[FeatureSet]]:
    """(train, eval) clips: those of fold ``eval_fold`` are held out, else a seeded random
    ``eval_fraction`` of them, else none."""
    n = len(features)
    if eval_fold is not None:
        held: Sequence[bool] = [fold == eval_fold for fold in features.folds]
        if not any(held):
            raise ValueError(f"no clip is in fold {eval_fold} (folds: {set(features.folds)})")
    elif eval_fraction > 0:
        order = np.random.default_rng(seed).permutation(n)
        chosen = set(order[: max(1, round(eval_fraction * n))].tolist())
        held = [i in chosen for i in range(n)]
    else:
        return features, None
    train = [i for i in range(n) if not held[i]]
    if not train:
        raise ValueError("no training clips left after holding out the evaluation clips")
    return features.subset(train), features.subset([i for i in range(n) if held[i]])
