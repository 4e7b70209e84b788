"""Sharded on-disk store of layer-wise pooled features.

A features directory holds ``meta.json`` (model, mode, shapes, classes), numbered shards
``shard_00000.npy`` ([n, n_layer, T, d] arrays) and, per shard, ``shard_00000.csv`` with one row
per clip: ``clip_id, path, shard, row, labels, fold`` (labels are space-separated class indices).
A shard's CSV is written after its array, both atomically, so the CSVs are the index of what is
complete; ``index.csv`` is their concatenation, rewritten when an extraction run finishes.
"""

import csv
import glob
import os
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .common import atomic_path, read_json, save_npy, write_json

FIELDS = ["clip_id", "path", "shard", "row", "labels", "fold"]


@dataclass(frozen=True)
class Entry:
    clip_id: str
    path: str
    shard: int
    row: int
    labels: Tuple[int, ...]
    fold: Optional[int]


def _shard_name(number: int, ext: str) -> str:
    return f"shard_{number:05d}.{ext}"


def _write_csv(path: str, entries: Sequence[Entry]):
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for e in entries:
            fold = "" if e.fold is None else e.fold
            writer.writerow([e.clip_id, e.path, e.shard, e.row, " ".join(map(str, e.labels)), fold])


def _read_csv(path: str) -> List[Entry]:
    with open(path, encoding="utf-8", newline="") as f:
        return [
            Entry(
                r["clip_id"],
                r["path"],
                int(r["shard"]),
                int(r["row"]),
                tuple(int(x) for x in r["labels"].split()),
                int(r["fold"]) if r["fold"] else None,
            )
            for r in csv.DictReader(f)
        ]


def read_index(directory: str) -> List[Entry]:
    """Every complete clip of a features directory, in shard order."""
    entries = []
    for path in sorted(glob.glob(os.path.join(directory, "shard_*.csv"))):
        entries.extend(_read_csv(path))
    return entries


class FeatureWriter:
    """Appends clips' features to a store, one shard every ``shard_size`` clips."""

    def __init__(self, directory: str, meta: dict, shard_size: int = 1000, resume=False):
        if shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.directory = directory
        self.shard_size = shard_size
        meta_path = os.path.join(directory, "meta.json")
        existing = read_index(directory) if os.path.isdir(directory) else []
        if os.path.exists(meta_path) and (existing or resume):
            if not resume:
                raise FileExistsError(f"{directory} already holds features; pass --resume")
            old = read_json(meta_path)
            changed = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
            if changed:
                raise ValueError(f"cannot resume {directory}: settings differ {changed}")
        write_json(meta, meta_path)
        self.entries = existing
        self.done = {e.clip_id for e in existing}
        shards = glob.glob(os.path.join(directory, "shard_*.npy"))
        numbers = [int(os.path.basename(p)[6:11]) for p in shards]
        self.next_shard = max(numbers, default=-1) + 1  # never reuse an orphan array's number
        self.pending: List[Tuple[str, str, np.ndarray, Tuple[int, ...], Optional[int]]] = []

    def add(self, clip_id: str, path: str, features: np.ndarray, labels=(), fold=None):
        self.pending.append((clip_id, path, features, tuple(labels), fold))
        self.done.add(clip_id)
        if len(self.pending) >= self.shard_size:
            self.flush()

    def flush(self):
        if not self.pending:
            return
        number = self.next_shard
        array = np.stack([item[2] for item in self.pending])
        entries = [
            Entry(cid, path, number, row, labels, fold)
            for row, (cid, path, _, labels, fold) in enumerate(self.pending)
        ]
        save_npy(array, os.path.join(self.directory, _shard_name(number, "npy")))
        _write_csv(os.path.join(self.directory, _shard_name(number, "csv")), entries)
        self.entries.extend(entries)
        self.next_shard += 1
        self.pending = []

    def close(self):
        self.flush()
        _write_csv(os.path.join(self.directory, "index.csv"), self.entries)


class FeatureSet:
    """Read access to a features directory (shards memory-mapped)."""

    def __init__(self, directory: str, entries: Optional[List[Entry]] = None):
        meta_path = os.path.join(directory, "meta.json")
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"{directory} is not a features directory (no meta.json)")
        self.directory = directory
        self.meta = read_json(meta_path)
        self.entries = read_index(directory) if entries is None else entries
        if not self.entries:
            raise ValueError(f"{directory} holds no features")
        self._shards: Dict[int, np.ndarray] = {}

    def subset(self, keep: Sequence[int]) -> "FeatureSet":
        """The clips at positions ``keep``, sharing this set's open shards."""
        subset = FeatureSet(self.directory, [self.entries[i] for i in keep])
        subset.meta = self.meta
        subset._shards = self._shards
        return subset

    def relabel(self, table) -> "FeatureSet":
        """This set with labels and folds from a ``labelsets.LabelTable`` instead of the index's
        (clips the table lacks get none), e.g. to probe AudioSet-labelled features by ESC-50
        classes without extracting them again."""
        entries = []
        for e in self.entries:
            labels, fold = table.lookup(e.path)
            entries.append(replace(e, labels=labels or (), fold=fold))
        relabelled = FeatureSet(self.directory, entries)
        relabelled.meta = dict(
            self.meta,
            labels=table.kind,
            num_classes=table.num_classes,
            class_names=list(table.class_names),
        )
        relabelled._shards = self._shards
        return relabelled

    def __len__(self) -> int:
        return len(self.entries)

    def shard(self, number: int) -> np.ndarray:
        if number not in self._shards:
            path = os.path.join(self.directory, _shard_name(number, "npy"))
            self._shards[number] = np.load(path, mmap_mode="r")
        return self._shards[number]

    def features(self, i: int) -> np.ndarray:
        """Features of clip i, [n_layer, T, d] (float32)."""
        entry = self.entries[i]
        return np.array(self.shard(entry.shard)[entry.row], dtype=np.float32)

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.shard(self.entries[0].shard).shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes") or 0)

    @property
    def folds(self) -> List[Optional[int]]:
        return [e.fold for e in self.entries]

    def targets(self, num_classes: Optional[int] = None, dtype=np.float32) -> np.ndarray:
        """Multi-hot labels [N, num_classes]."""
        n = num_classes or self.num_classes
        y = np.zeros((len(self.entries), n), dtype=dtype)
        for i, entry in enumerate(self.entries):
            if any(label >= n for label in entry.labels):
                raise ValueError(f"clip {entry.clip_id} has labels {entry.labels} >= {n} classes")
            y[i, list(entry.labels)] = 1
        return y

    def time_pooled(self) -> np.ndarray:
        """Every clip's features averaged over time, per layer: [n_layer, N, d] (float32)."""
        out = np.zeros((self.shape[0], len(self), self.shape[2]), dtype=np.float32)
        for i, x in enumerate(self.iter_features()):
            out[:, i] = x.mean(axis=1)
        return out

    def iter_features(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.features(i)
