"""Classification metrics on numpy arrays: accuracy, macro-F1, ROC-AUC (one-vs-rest) and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        matrix[int(t), int(p)] += 1
    return matrix


def macro_f1(matrix: np.ndarray) -> float:
    """The unweighted mean of per-class F1 over classes present in the truth or the predictions."""
    scores = []
    for c in range(matrix.shape[0]):
        tp = matrix[c, c]
        fp = matrix[:, c].sum() - tp
        fn = matrix[c, :].sum() - tp
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC by the rank-sum formula (ties get average ranks); NaN unless both classes are present."""
    y_true = np.asarray(y_true).astype(bool)
    pos, neg = int(y_true.sum()), int((~y_true).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y_true].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_auc(y_true: Sequence[int], probabilities: np.ndarray) -> float:
    """Binary AUC of the second column, or the macro one-vs-rest AUC over classes present in the truth."""
    y = np.asarray(y_true)
    probs = np.asarray(probabilities)
    if probs.shape[1] == 2:
        return binary_auc(y == 1, probs[:, 1])
    aucs = [binary_auc(y == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_report(y_true: Sequence[int], probabilities: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, ROC-AUC, the confusion matrix and per-class counts for predicted probabilities."""
    probs = np.asarray(probabilities)
    y = np.asarray(y_true, dtype=np.int64)
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    matrix = confusion_matrix(y, pred, len(labels))
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro_f1": macro_f1(matrix),
        "roc_auc": roc_auc(y, probs) if len(y) else float("nan"),
        "confusion_matrix": matrix.tolist(),
        "labels": list(labels),
        "support": {label: int((y == i).sum()) for i, label in enumerate(labels)},
        "n": int(len(y)),
    }
