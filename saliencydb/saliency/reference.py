"""The definition, one sample at a time: one forward and one backward pass per sample.

This is the slow baseline the batched engine is tested against (and the fallback for
TorchScript models, whose compiled graphs take no module hooks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .aggregates import DEFAULT_AGGREGATE, aggregate_rows, check_aggregate
from .layout import UnitLayout
from ..models.modes import evaluating


def reference_profiles(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout: UnitLayout | None = None,
                       aggregate: str = DEFAULT_AGGREGATE) -> torch.Tensor:
    """(B, U) raw profiles by per-sample autograd, model in eval mode; restores the model's flags."""
    check_aggregate(aggregate)
    layout = layout or UnitLayout.from_module(model)
    params = dict(model.named_parameters())
    weights = [params[layer.param_name] for layer in layout.layers]
    out = torch.zeros(x.shape[0], layout.n_units, dtype=torch.float32, device=x.device)
    with evaluating(model, grad_params=weights):
        for i in range(x.shape[0]):
            logits = model(x[i : i + 1])
            if not isinstance(logits, torch.Tensor):
                logits = logits[0]
            loss = F.cross_entropy(logits, y[i : i + 1].long())
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for layer, grad in zip(layout.layers, grads):
                if grad is not None:  # rows: a filter, an output feature's row, or an input column
                    rows = grad.t() if layer.kind == "linear-in" else grad.flatten(1)
                    out[i, layer.offset : layer.stop] = aggregate_rows(rows, aggregate)
    return out
