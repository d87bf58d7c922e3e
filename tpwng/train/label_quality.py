"""How good the pseudo-labels are: precision, recall and F1 against frame-level truth (a
training diagnostic, logged each epoch where the training set has annotations)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def pseudo_label_quality(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of binary pseudo-labels against ground truth (0 if undefined)."""
    p = np.asarray(pred)
    t = np.asarray(truth)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"pred and truth must be 1-D of one length, got {p.shape} and {t.shape}")
    if p.size == 0:
        raise ValueError("pseudo-label quality of empty vectors is undefined")
    for name, arr in (("pred", p), ("truth", t)):
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name} must hold only 0 and 1")
    precision, recall, f1, _ = precision_recall_fscore_support(
        t.astype(np.int64), p.astype(np.int64), average="binary", pos_label=1, zero_division=0
    )
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
