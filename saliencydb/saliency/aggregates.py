"""How one unit's weight gradient becomes one number of the profile.

``mean_abs`` is the paper's definition, mean over the unit's weights of |dL/dw|, and the
default. ``rms``, the root mean square of the same gradient, is an approximation of it
that the engine can compute without forming per-sample gradients for layers with small
feature maps (from the Gram matrix of the layer's input patches); its measured agreement
with ``mean_abs`` is printed by ``benchmarks/profiles.py`` and given in docs/benchmarks.md.
"""

from __future__ import annotations

import torch

from ..errors import SpecError

AGGREGATES = ("mean_abs", "rms")
DEFAULT_AGGREGATE = "mean_abs"


def check_aggregate(name: str) -> str:
    if name not in AGGREGATES:
        raise SpecError(f"unknown profile aggregate '{name}'; use one of {', '.join(AGGREGATES)}")
    return name


def aggregate_rows(grad: torch.Tensor, aggregate: str, *, differentiable: bool = False) -> torch.Tensor:
    """The aggregate over the last dimension of ``grad`` (..., K) -> (...).

    The root mean square is taken of the row divided by its largest magnitude: squares of
    small float32 gradients (below 1e-19) would otherwise underflow.
    """
    if aggregate == "mean_abs":
        return grad.abs().mean(-1)
    top = grad.abs().amax(-1, keepdim=True)
    ms = (grad / torch.where(top > 0, top, torch.ones_like(top))).square().mean(-1)
    # sqrt has an infinite slope at 0: for a unit whose gradient is exactly zero the
    # differentiable form stays a hair above zero, so input gradients do not become NaN
    return (ms.clamp_min(1e-30) if differentiable else ms).sqrt() * top[..., 0]
