"""Cell classification: stratified or grouped splits of labelled cells, and the evaluation report."""

from __future__ import annotations

import math

import numpy as np


def split_cells(
    labels: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    train_size: float = 0.8,
    validation_size: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test positions, stratified by label, or by whole groups (e.g. donors) when given.

    Stratified: each label's cells are split in the given proportions (at least one training cell per label).
    Grouped: the groups are shuffled and assigned whole, so no group appears in two splits.
    """
    rng = np.random.default_rng(seed)
    if train_size + validation_size > 1 + 1e-9:
        msg = "train_size + validation_size must not exceed 1."
        raise ValueError(msg)
    splits: tuple[list, list, list] = ([], [], [])
    if groups is not None:
        unique = rng.permutation(np.unique(groups))
        n_train = max(1, math.ceil(train_size * len(unique) - 1e-9))
        n_val = math.floor(validation_size * len(unique) + 1e-9)
        assignment = {g: 0 if i < n_train else 1 if i < n_train + n_val else 2 for i, g in enumerate(unique)}
        for position, group in enumerate(groups):
            splits[assignment[group]].append(position)
    else:
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            n_train = max(1, math.ceil(train_size * len(members) - 1e-9))
            n_val = math.floor(validation_size * len(members) + 1e-9)
            splits[0].extend(members[:n_train])
            splits[1].extend(members[n_train : n_train + n_val])
            splits[2].extend(members[n_train + n_val :])
    return tuple(np.sort(np.asarray(s, dtype=np.int64)) for s in splits)


def classification_metrics(true: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1 and confusion matrix (rows: true class, columns: predicted) of class codes."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    codes = np.arange(len(classes))
    return {
        "accuracy": float(accuracy_score(true, predicted)) if len(true) else float("nan"),
        "macro_f1": float(f1_score(true, predicted, labels=codes, average="macro", zero_division=0))
        if len(true)
        else float("nan"),
        "confusion_matrix": confusion_matrix(true, predicted, labels=codes),
        "classes": list(classes),
        "n_cells": int(len(true)),
    }
