"""``whisper-at probe``: layer-wise linear probe of stored features (the paper's Figure 1, lower).

Each clip's features are averaged over time, per layer; a standardised logistic regression is
trained on every layer separately and its accuracy reported. With folds in the index (ESC-50) the
accuracy is the mean over leave-one-fold-out splits, else over stratified k-fold splits. The
clips must have exactly one label each (ESC-50-style labels); unlabelled clips are left out.
"""

import argparse
import sys
from typing import List, Optional, Sequence

import numpy as np

from .common import plot_lines, write_json
from .labelsets import read_labels
from .store import FeatureSet


def _splits(y: np.ndarray, folds: Optional[Sequence[int]], n_splits: int, seed: int):
    if folds is not None:
        folds = np.asarray(folds)
        return [(np.flatnonzero(folds != f), np.flatnonzero(folds == f)) for f in np.unique(folds)]
    from sklearn.model_selection import StratifiedKFold

    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    smallest = np.bincount(y)[np.unique(y)].min()
    k = min(n_splits, int(smallest))
    if k < 2:
        raise ValueError("every class needs at least 2 clips for cross-validation")
    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def probe_layers(
    x: np.ndarray,
    y: np.ndarray,
    folds: Optional[Sequence[int]] = None,
    n_splits: int = 5,
    seed: int = 0,
    max_iter: int = 2000,
) -> List[float]:
    """Cross-validated accuracy of a linear classifier on each layer: x [n_layer, N, d], y [N]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(y)
    splits = _splits(y, folds, n_splits, seed)
    accuracies = []
    for layer in x:
        scores = []
        for train, test in splits:
            classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
            classifier.fit(layer[train], y[train])
            scores.append(classifier.score(layer[test], y[test]))
        accuracies.append(float(np.mean(scores)))
    return accuracies


def probe_features(features: FeatureSet, n_splits: int = 5, seed: int = 0) -> dict:
    """Per-layer probe accuracies of a labelled feature set."""
    keep = [i for i, e in enumerate(features.entries) if e.labels]
    multi = [e.clip_id for e in features.entries if len(e.labels) > 1]
    if multi:
        raise ValueError(
            f"{len(multi)} clips have several labels (e.g. {multi[0]}); the probe needs one "
            "label per clip (ESC-50-style labels)"
        )
    if len(keep) < 2:
        raise ValueError("the probe needs labelled clips: extract with --labels")
    subset = features.subset(keep)
    y = np.array([e.labels[0] for e in subset.entries])
    folds = subset.folds if all(f is not None for f in subset.folds) else None
    accuracies = probe_layers(subset.time_pooled(), y, folds, n_splits, seed)
    return {
        "model": features.meta.get("model"),
        "clips": len(y),
        "classes": int(len(np.unique(y))),
        "cv": f"{len(set(folds))} folds (from the labels)" if folds else f"{n_splits}-fold",
        "chance": float(np.bincount(y).max() / len(y)),
        "accuracy": accuracies,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="whisper-at probe", description=__doc__.split("\n")[0])
    parser.add_argument("features_dir")
    parser.add_argument("--labels", help="label CSV to use instead of the features' own labels")
    parser.add_argument("--plot", help="save the accuracy-per-layer curve (png/pdf/svg)")
    parser.add_argument("--out", help="save the results as JSON")
    parser.add_argument("--n_splits", type=int, default=5, help="k of k-fold CV without folds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    features = FeatureSet(args.features_dir)
    if args.labels:
        features = features.relabel(read_labels(args.labels))
    result = probe_features(features, args.n_splits, args.seed)
    print(f"{result['clips']} clips, {result['classes']} classes, {result['cv']} CV")
    for layer, acc in enumerate(result["accuracy"], 1):
        print(f"layer {layer:2d}  accuracy {acc:.4f}")
    if args.out:
        write_json(result, args.out)
    if args.plot:
        layers = list(range(1, len(result["accuracy"]) + 1))
        series = {"linear probe": result["accuracy"], "chance": [result["chance"]] * len(layers)}
        title = f"Layer-wise linear probe ({result['model']}, {result['clips']} clips)"
        plot_lines(args.plot, layers, series, "encoder layer", "accuracy", title, ["chance"])
        print(f"plot saved to {args.plot}", file=sys.stderr)
    return 0
