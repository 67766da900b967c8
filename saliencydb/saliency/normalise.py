"""Profile normalisations: how a raw profile becomes the vector that neighbours, groups and
top units are computed from (docs/architecture.md, "The method").

Every normalisation is a per-sample *prescale* of the raw profile followed by the per-unit
standardisation ``(v - mean) / std``, with ``mean`` and ``std`` computed over the prescaled
rows of the reference splits:

``zscore``
    The paper's: no prescale. The default.
``zscore-unitnorm``
    ``raw / ||raw||_2``. Removes the per-sample scale of the profile, so a constant multiple
    of a profile has the same vector (an all-zero profile stays zero).
``zscore-dlogit``
    ``raw / ||dL/dlogits||_2`` with ``dL/dlogits = softmax(logits) - onehot(label)``, the exact
    factor the cross-entropy loss puts on every gradient of the network's last layer. A sample
    whose gradient is zero (``||dL/dlogits|| = 0``) keeps its zero profile.

Cross-entropy gradients of every unit scale with ``1 - p_true``, so after the plain z-score
high-loss samples all lean towards the all-positive direction; the two prescales take that
common scale out before the standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SpecError
from .stats import RunningStats, standardize

NORMALISATIONS = ("zscore", "zscore-unitnorm", "zscore-dlogit")
DEFAULT_NORMALISATION = "zscore"


def check_normalisation(name: str | None) -> str:
    """The normalisation named ``name`` (None: the default); SpecError for an unknown name."""
    if name is None:
        return DEFAULT_NORMALISATION
    if name not in NORMALISATIONS:
        raise SpecError(f"unknown profile normalisation {name!r}; use one of {', '.join(NORMALISATIONS)}")
    return name


def needs_dlogit(name: str) -> bool:
    """Whether the normalisation reads each sample's stored ``dlogit_norm``."""
    return name == "zscore-dlogit"


def _safe(den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, den, 1.0)


def prescale(raw: np.ndarray, name: str, dlogit: np.ndarray | None = None) -> np.ndarray:
    """The per-sample prescale of raw profiles ``raw`` (N, U), float64. ``dlogit``: (N,) norms of
    dL/dlogits, needed by ``zscore-dlogit`` only."""
    raw = np.asarray(raw, dtype=np.float64)
    if name == "zscore":
        return raw
    if name == "zscore-unitnorm":
        return raw / _safe(np.linalg.norm(raw, axis=1, keepdims=True))
    if name == "zscore-dlogit":
        if dlogit is None:
            raise SpecError("the zscore-dlogit normalisation needs each sample's dlogit_norm")
        d = np.asarray(dlogit, dtype=np.float64).reshape(-1, 1)
        if d.shape[0] != raw.shape[0] or not np.isfinite(d).all():
            raise SpecError("dlogit_norm is missing or not finite for some samples; re-index them with this version")
        return raw / _safe(d)
    raise SpecError(f"unknown profile normalisation {name!r}; use one of {', '.join(NORMALISATIONS)}")


def dlogit_norms(logits, y):
    """||softmax(logits) - onehot(y)||_2 per row of the tensor ``logits`` (B, K), in float64 (the
    cross-entropy's dL/dlogits)."""
    import torch

    p = logits.detach().double().softmax(dim=1)
    p[torch.arange(len(y), device=p.device), y] -= 1.0
    return p.norm(dim=1)


@dataclass(frozen=True)
class Normaliser:
    """A normalisation with its per-unit statistics: raw profiles -> standardised profiles."""

    name: str
    mean: np.ndarray
    std: np.ndarray

    @property
    def needs_dlogit(self) -> bool:
        return needs_dlogit(self.name)

    def __call__(self, raw: np.ndarray, dlogit: np.ndarray | None = None) -> np.ndarray:
        """Standardised profiles (N, U) float32 of raw profiles (N, U)."""
        return standardize(prescale(raw, self.name, dlogit), self.mean, self.std)

    def torch(self, raw, dlogit=None):
        """The same on a differentiable profile ``raw`` (U,), a tensor (``dlogit``: a 0-d tensor, differentiable too)."""
        import torch

        mean = torch.as_tensor(self.mean, device=raw.device).to(raw.dtype)
        std = torch.as_tensor(self.std, device=raw.device).to(raw.dtype)
        if self.name == "zscore-unitnorm":
            norm = raw.norm()
            raw = raw / torch.where(norm > 0, norm, torch.ones_like(norm))
        elif self.name == "zscore-dlogit":
            if dlogit is None:
                raise SpecError("the zscore-dlogit normalisation needs the sample's dL/dlogits")
            raw = raw / torch.where(dlogit > 0, dlogit, torch.ones_like(dlogit))
        return (raw - mean) / std


def running_stats(chunks, name: str, n_units: int) -> RunningStats:
    """Statistics of the prescaled rows of ``chunks``: (raw (N, U), dlogit (N,) or None) pairs."""
    stats = RunningStats(n_units)
    for raw, dlogit in chunks:
        stats.update(prescale(raw, name, dlogit))
    return stats
