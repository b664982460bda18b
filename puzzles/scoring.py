"""The one scoring function: exact (whole puzzle) and token accuracy of predictions against labels."""

from __future__ import annotations

import numpy as np

IGNORE_LABEL = -100


def score_predictions(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Exact and token accuracy over positions whose label is not -100; ``count`` puzzles scored."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions have shape {predictions.shape}, labels {labels.shape}")
    valid = labels != IGNORE_LABEL
    correct = (predictions == labels) & valid
    rows = valid.any(axis=1)
    exact = (correct.sum(axis=1) == valid.sum(axis=1)) & rows
    return {
        "exact_accuracy": float(exact.sum() / max(int(rows.sum()), 1)),
        "token_accuracy": float(correct.sum() / max(int(valid.sum()), 1)),
        "count": int(rows.sum()),
    }
