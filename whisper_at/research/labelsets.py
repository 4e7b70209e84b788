"""Clip labels from AudioSet-style and ESC-50-style CSV files.

AudioSet segment lists (``balanced_train_segments.csv`` ...) have ``#`` comment lines, then
``YTID, start_seconds, end_seconds, "mid1,mid2"``; mids become indices of the 527 classes
(``whisper_at.labels.class_ids()``). A clip file matches a row when its name (without extension)
is the YTID, or starts with it (``YTID_30.000.wav``), or with ``Y`` + YTID (``Y--PJHxphWEs...``).

ESC-50's ``meta/esc50.csv`` has the header ``filename,fold,target,category,...``: one label
(``target``, 0..49) and a cross-validation ``fold`` per file, matched by file name.
"""

import csv
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..labels import class_ids, label_names

YTID_LENGTH = 11


@dataclass(frozen=True)
class LabelTable:
    """Labels (class indices) and folds by clip key, plus the class names."""

    kind: str  # "audioset" or "esc50"
    class_names: Tuple[str, ...]
    labels: Dict[str, Tuple[int, ...]]
    folds: Dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def key_for(self, clip: str) -> Optional[str]:
        """The table key of a clip id (or relative path), or None if the clip is not listed."""
        stem = os.path.splitext(os.path.basename(clip))[0]
        candidates = [stem, os.path.basename(clip)]
        if self.kind == "audioset":
            candidates += [stem[:YTID_LENGTH]]
            if stem.startswith("Y"):
                candidates += [stem[1 : 1 + YTID_LENGTH]]
        return next((c for c in candidates if c in self.labels), None)

    def lookup(self, clip: str) -> Tuple[Optional[Tuple[int, ...]], Optional[int]]:
        """(labels, fold) of a clip; (None, None) if it is not listed."""
        key = self.key_for(clip)
        if key is None:
            return None, None
        return self.labels[key], self.folds.get(key)


def _rows(path: str) -> List[List[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    return [[cell.strip() for cell in row] for row in csv.reader(lines, skipinitialspace=True)]


def _read_esc50(rows: List[List[str]], path: str) -> LabelTable:
    header = rows[0]
    col = {name: header.index(name) for name in ("filename", "target", "category")}
    fold_col = header.index("fold") if "fold" in header else None
    labels, folds, names = {}, {}, {}
    for row in rows[1:]:
        target = int(row[col["target"]])
        key = os.path.splitext(row[col["filename"]])[0]
        labels[key] = (target,)
        names[target] = row[col["category"]]
        if fold_col is not None:
            folds[key] = int(row[fold_col])
    n_classes = max(names) + 1
    missing = [i for i in range(n_classes) if i not in names]
    if missing:
        raise ValueError(f"{path}: no rows for targets {missing[:10]}; class names unknown")
    class_names = tuple(names[i] for i in range(n_classes))
    return LabelTable("esc50", class_names, labels, folds)


def _read_audioset(rows: List[List[str]], path: str) -> LabelTable:
    index = {mid: i for i, mid in enumerate(class_ids())}
    labels = {}
    for number, row in enumerate(rows, 1):
        if len(row) < 4:
            raise ValueError(
                f"{path}: row {number} {row!r} is neither AudioSet-style "
                '(YTID, start, end, "mids") nor ESC-50-style (filename,fold,target,category)'
            )
        mids = [m.strip() for m in ",".join(row[3:]).split(",") if m.strip()]
        unknown = [m for m in mids if m not in index]
        if unknown:
            raise ValueError(f"{path}: row {number}: unknown AudioSet class ids {unknown}")
        labels[row[0]] = tuple(sorted({index[m] for m in mids}))
    return LabelTable("audioset", tuple(label_names("en")), labels, {})


def read_labels(path: str) -> LabelTable:
    """Read an AudioSet-style or ESC-50-style label CSV (detected from its first row)."""
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path}: no label rows")
    if {"filename", "target", "category"} <= set(rows[0]):
        return _read_esc50(rows, path)
    if rows[0][0].lower() == "ytid":  # a header row without the leading '#'
        rows = rows[1:]
    return _read_audioset(rows, path)
