"""Segmentation metrics, each written from its definition.

Conventions: ``prob`` is the predicted probability of the *cell* class (class 1, white in
ISBI 2012's in-out masks) per pixel; ``label`` holds class indices (1 = cell, 0 = membrane).

* pixel error = 1 - max over thresholds t of F1(prob >= t, label == 1), the F-score of
  the cell pixels at the best threshold (the ISBI 2012 "pixel error");
* IoU_c  = |P_c ∩ L_c| / |P_c ∪ L_c| and Dice_c = 2 |P_c ∩ L_c| / (|P_c| + |L_c|) per
  class c, with P = argmax prediction; both are 1 when P_c and L_c are both empty.
"""
from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLDS = np.linspace(0.05, 0.95, 19)


def f1_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN) of two boolean masks; 1 when both are empty."""
    tp = np.count_nonzero(pred & truth)
    denominator = 2 * tp + np.count_nonzero(pred & ~truth) + np.count_nonzero(~pred & truth)
    return 1.0 if denominator == 0 else 2 * tp / denominator


def pixel_error(prob: np.ndarray, label: np.ndarray, thresholds=DEFAULT_THRESHOLDS) -> float:
    """1 - the best F1 of the cell class over ``thresholds``."""
    truth = label == 1
    return 1.0 - max(f1_score(prob >= t, truth) for t in thresholds)


def iou(pred: np.ndarray, label: np.ndarray, cls: int) -> float:
    """Intersection over union of class ``cls`` between two label images."""
    p, t = pred == cls, label == cls
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else np.count_nonzero(p & t) / union


def dice(pred: np.ndarray, label: np.ndarray, cls: int) -> float:
    """Dice coefficient (F1) of class ``cls`` between two label images."""
    return f1_score(pred == cls, label == cls)


def basic_metrics(probs: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """Pixel error, cell IoU and cell Dice for probabilities [n_classes, H, W] and a label [H, W]."""
    pred = probs.argmax(axis=0)
    return {"pixel_error": pixel_error(probs[1], label), "iou_cell": iou(pred, label, 1), "dice_cell": dice(pred, label, 1)}
