"""Which filters an intervention edits: the salient ones and the two controls (random, least salient).

All choices are unit ids (see ``saliencydb.saliency.layout``), taken from a standardised profile ``z``
(a sample's, or a group's mean): the salient filters are the top-k of ``z``, the least-salient filters
the bottom-k, and the random control k distinct filters drawn (seeded) from the units outside the
salient top-k, so the control never shares a filter with the set it controls for.
"""

from __future__ import annotations

import numpy as np

from ..errors import QueryError

SALIENT = "salient"
RANDOM = "random"
LEAST_SALIENT = "least_salient"
WHOLE_NETWORK = "whole_network"  # fine-tuning only: every parameter of the model takes the step
CHOICES = (SALIENT, RANDOM, LEAST_SALIENT)


def max_k(n_units: int) -> int:
    """The largest k every choice can use: the random control needs k units outside the top-k."""
    return n_units // 2


def check_k(k: int, n_units: int, option: str = "--top-k") -> int:
    top = max_k(n_units)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= top:
        raise QueryError(f"{option} {k} is out of range: the model has {n_units} filters and the random control needs "
                         f"k filters outside the top-k, so use 1 <= k <= {top}")
    return int(k)


DEFAULT_KS = (1, 5, 10, 25, 50)


def parse_ks(text: str | None, n_units: int) -> list[int]:
    """'1,5,10' -> [1, 5, 10] (sorted, distinct), each checked against the model's filter count;
    None: the default values that fit the model (1, 5, 10, 25, 50 up to its largest k)."""
    if text is None:
        return [k for k in DEFAULT_KS if k <= max_k(n_units)] or [1]
    items = [s.strip() for s in str(text).split(",")]
    if not items or any(not s for s in items) or not all(s.lstrip("+").isdigit() for s in items):
        raise QueryError(f"--ks {text!r} is not a comma-separated list of positive integers such as 1,5,10,25,50")
    ks = sorted({int(s) for s in items})
    for k in ks:
        check_k(k, n_units, "--ks value")
    return ks


def parse_eps(text: str) -> list[float]:
    """'0.001,0.01' -> [0.001, 0.01]: the radii of ``adversarial`` (positive, finite; empty items skipped)."""
    try:
        eps = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise QueryError(f"--eps {text!r} is not a comma-separated list of numbers such as 0.001,0.01,0.1") from None
    if not eps or any(not (e > 0 and e != float("inf")) for e in eps):
        raise QueryError(f"--eps {text!r}: give positive numbers such as 0.001,0.01,0.1")
    return eps


def salient_filters(z: np.ndarray, k: int) -> np.ndarray:
    """The k units of highest standardised saliency, most salient first (ties: lower unit id first)."""
    return np.argsort(-np.asarray(z, dtype=np.float64), kind="stable")[:k].astype(np.int64)


def least_salient_filters(z: np.ndarray, k: int) -> np.ndarray:
    """The k units of lowest standardised saliency, least salient first (ties: lower unit id first)."""
    return np.argsort(np.asarray(z, dtype=np.float64), kind="stable")[:k].astype(np.int64)


def random_filters(n_units: int, k: int, exclude: np.ndarray, seed) -> np.ndarray:
    """k distinct units drawn uniformly from those not in ``exclude`` (sorted); ``seed`` as numpy's
    ``default_rng`` takes it, e.g. ``[seed, sample_id, k]`` for one reproducible draw per sample and k."""
    pool = np.setdiff1d(np.arange(n_units, dtype=np.int64), np.asarray(exclude, dtype=np.int64))
    if k > len(pool):
        raise QueryError(f"cannot draw {k} random filters outside the {len(exclude)} salient ones ({n_units} in all); lower k")
    return np.sort(np.random.default_rng(seed).choice(pool, size=k, replace=False)).astype(np.int64)


def draw_seed(seed: int, sample_id: int, k: int, draw: int = 0) -> list[int]:
    """The seed of draw ``draw`` of the random control of one sample at one k: ``[seed, sample_id, k]`` for the
    first draw (the single draw of earlier versions), ``[seed, sample_id, k, draw]`` for the others."""
    key = [int(seed), int(sample_id), int(k)]
    return key if draw == 0 else key + [int(draw)]


def choose_filters(z: np.ndarray, k: int, seed) -> dict[str, np.ndarray]:
    """The three filter choices for profile ``z`` at ``k``: salient, random (outside the salient set), least salient."""
    z = np.asarray(z)
    k = check_k(k, len(z))
    salient = salient_filters(z, k)
    return {SALIENT: salient, RANDOM: random_filters(len(z), k, salient, seed), LEAST_SALIENT: least_salient_filters(z, k)}


def describe_units(layout, unit_ids) -> list[str]:
    """'layer[channel]' of each unit id, e.g. 'features.3[5]'."""
    ids = np.asarray(unit_ids, dtype=np.int64)
    if ids.size == 0:
        return []
    layers = layout.layers
    return [f"{layers[int(li)].name}[{int(u) - layers[int(li)].offset}]" for u, li in zip(ids, layout.layer_of(ids))]


def seeded_subset(ids: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """``--limit``: a seeded random subset of ``limit`` of the sample ids (sorted), or all of them."""
    if limit is not None:
        if limit < 1:
            raise QueryError(f"--limit must be at least 1, got {limit}")
        if limit < len(ids):
            ids = np.sort(np.random.default_rng(seed).choice(ids, size=limit, replace=False))
    return ids
