"""Baselines for the shared-mistake statistic: what a sample's neighbours look like when they are
chosen without its saliency profile. They separate what saliency adds from what the loss alone
explains (the cross-entropy gradient scales with 1 - p_true for every unit at once, so high-loss
samples lean the same way after standardisation).

- ``random``: k other samples of the split drawn uniformly; the exact expectation, no sampling.
- ``label``: k other samples of the split with the same label, drawn uniformly; exact expectation.
- ``loss``: the k other samples of the split whose loss is closest to the sample's.

Each gives, per sample, the share of correctly classified neighbours and (for a mistake) the share
with its exact (label, prediction) pair: the same per-sample values the neighbour graph gives.
"""

from __future__ import annotations

import numpy as np

BASELINES = ("loss", "label", "random")


def baseline_shares(correct: np.ndarray, label: np.ndarray, pred: np.ndarray, loss: np.ndarray,
                    k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per baseline: (share of correct neighbours, share with the same confusion pair) of every sample
    of one split (NaN where a sample has no such neighbours, e.g. the only sample of its label)."""
    return {"loss": _loss_matched(correct, label, pred, loss, k),
            "label": _expected(correct, label, pred, group=label),
            "random": _expected(correct, label, pred, group=np.zeros(len(correct), dtype=np.int64))}


def _expected(correct, label, pred, group) -> tuple[np.ndarray, np.ndarray]:
    """The expected shares over neighbours drawn uniformly from the others of the sample's group."""
    _, g = np.unique(group, return_inverse=True)
    size = np.bincount(g).astype(np.float64)
    n_correct = np.bincount(g, weights=correct.astype(np.float64))
    pair = np.unique(np.stack([g, label, pred], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    pair_size = np.bincount(pair).astype(np.float64)
    others = size[g] - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        share_correct = np.where(others > 0, (n_correct[g] - correct) / others, np.nan)
        same_pair = np.where(others > 0, (pair_size[pair] - 1) / others, np.nan)
    return share_correct, same_pair


def _loss_matched(correct, label, pred, loss, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The shares among the k other samples of closest loss; ties go to the nearer place in loss order,
    then to the lower one. With that rule the k nearest lie within k places on either side in loss
    order (every place in between is at least as close), so 2k candidates suffice."""
    n = len(loss)
    if n <= k:
        return np.full(n, np.nan), np.full(n, np.nan)
    order = np.argsort(loss, kind="stable")
    sorted_loss = loss[order].astype(np.float64)
    offsets = np.array([o for d in range(1, k + 1) for o in (-d, d)])  # nearer places first, the lower one first
    cand = np.arange(n)[:, None] + offsets[None, :]
    valid = (cand >= 0) & (cand < n)
    cand = np.clip(cand, 0, n - 1)
    dist = np.where(valid, np.abs(sorted_loss[cand] - sorted_loss[:, None]), np.inf)
    pick = np.argsort(dist, axis=1, kind="stable")[:, :k]
    nb_sorted = np.take_along_axis(cand, pick, axis=1)
    nb = np.empty((n, k), dtype=np.int64)
    nb[order] = order[nb_sorted]
    share_correct = correct[nb].mean(axis=1)
    same_pair = ((label[nb] == label[:, None]) & (pred[nb] == pred[:, None])).mean(axis=1)
    return share_correct, same_pair
