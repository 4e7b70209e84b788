"""Audio-tagging metrics: mAP and mean AUC over the classes present, top-1 accuracy."""

from typing import Dict

import numpy as np


def tagging_metrics(scores: np.ndarray, targets: np.ndarray) -> Dict[str, float]:
    """``mAP``: macro average precision over classes with a positive clip; ``mAUC``: macro ROC
    AUC over classes with positive and negative clips; ``acc``: how often the top-scored class is
    one of the clip's labels. ``scores`` [N, C] (logits or probabilities), ``targets`` [N, C]."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.asarray(targets) > 0.5
    scores = np.asarray(scores, dtype=np.float64)
    positives = truth.sum(axis=0)
    with_pos = np.flatnonzero(positives > 0)
    both = np.flatnonzero((positives > 0) & (positives < len(truth)))
    nan = float("nan")
    ap = average_precision_score
    m_ap = ap(truth[:, with_pos], scores[:, with_pos]) if len(with_pos) else nan
    m_auc = roc_auc_score(truth[:, both], scores[:, both]) if len(both) else nan
    labelled = truth.any(axis=1)
    top = scores.argmax(axis=1)
    acc = truth[np.arange(len(truth)), top][labelled].mean() if labelled.any() else nan
    return {
        "mAP": float(m_ap),
        "mAUC": float(m_auc),
        "acc": float(acc),
        "classes": int(len(with_pos)),
    }


def chance_map(targets: np.ndarray) -> float:
    """Expected mAP of random scores: the mean prevalence of the classes present."""
    truth = np.asarray(targets) > 0.5
    prevalence = truth.mean(axis=0)
    return float(prevalence[prevalence > 0].mean())
