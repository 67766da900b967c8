"""In-place edits of a model's filters that are always undone.

A unit is an output filter ``W[o]`` of a 4-D convolution weight (biases are not units and are never
touched by a filter edit: pruning zeroes a filter's weights and keeps its bias, as weight pruning
does). Every edit happens inside ``FilterEditor.editing(units)``, which copies the original slices
on entry and writes them back on exit, even when the edit or its evaluation fails, so one model
copy serves any number of interventions without a deep copy per attempt, and is bit-for-bit the
original again after each.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ..errors import QueryError
from ..saliency import UnitLayout


class FilterEditor:
    """Edits (and restores) the filters of ``model``, addressed by unit id in ``layout``'s order."""

    def __init__(self, model: nn.Module, layout: UnitLayout):
        self.model = model
        self.layout = layout
        self.params = dict(model.named_parameters())
        missing = [l.param_name for l in layout.layers if l.param_name not in self.params]
        if missing:
            raise QueryError(f"the model has no parameter {missing[0]!r} of the database's unit layout; "
                             "was the database made with another model?")
        self.weights = [self.params[l.param_name] for l in layout.layers]
        # a linear-in unit is a column W[:, j]: addressed through the transposed view, whose rows are the columns
        self.transposed = {l.param_name for l in layout.layers if l.kind == "linear-in"}

    def unit_view(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` (a weight, or its gradient) with one unit per row (a view: edits reach the weight)."""
        return t.t() if name in self.transposed else t

    # -- addressing -------------------------------------------------------------------------
    def slices(self, units) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(parameter name, weight, output-channel index) of each layer holding some of ``units``."""
        units = np.asarray(units, dtype=np.int64).reshape(-1)
        if units.size and (units.min() < 0 or units.max() >= self.layout.n_units):
            raise QueryError(f"unit ids must lie in 0..{self.layout.n_units - 1}")
        layer_of = self.layout.layer_of(units)
        out = []
        for li in np.unique(layer_of):
            layer = self.layout.layers[int(li)]
            w = self.unit_view(layer.param_name, self.weights[int(li)])
            channels = torch.as_tensor(np.unique(units[layer_of == li]) - layer.offset, dtype=torch.long, device=w.device)
            out.append((layer.param_name, w, channels))
        return out

    # -- save / restore ---------------------------------------------------------------------
    @contextmanager
    def editing(self, units=None):
        """Within the block the filters ``units`` (every parameter of the model when None) may be changed
        in place; their original values are copied on entry and written back on exit."""
        if units is None:
            saved = [(p, None, p.detach().clone()) for p in self.params.values()]
        else:
            saved = [(w, ch, w.detach()[ch].clone()) for _, w, ch in self.slices(units)]
        try:
            yield self
        finally:
            with torch.no_grad():
                for p, ch, original in saved:
                    if ch is None:
                        p.copy_(original)
                    else:
                        p[ch] = original

    # -- edits (call inside ``editing``) -----------------------------------------------------
    @torch.no_grad()
    def zero(self, units) -> None:
        """Pruning: the weights of the filters become 0; biases stay."""
        for _, w, ch in self.slices(units):
            w[ch] = 0

    @torch.no_grad()
    def add_noise(self, units, sigma: float, generator: torch.Generator) -> None:
        """Perturbation: i.i.d. N(0, sigma^2) noise added to every weight of the filters (drawn on the CPU, so a
        seed gives the same noise on any device)."""
        for _, w, ch in self.slices(units):
            noise = torch.randn((len(ch), *w.shape[1:]), generator=generator, dtype=torch.float32)
            w[ch] += (sigma * noise).to(device=w.device, dtype=w.dtype)

    @torch.no_grad()
    def step(self, units, grads: dict[str, torch.Tensor], lr: float, scale: float = 1.0) -> None:
        """Fine-tuning: one SGD step ``W[o] -= lr * scale * dL/dW[o]`` on the filters only."""
        for name, w, ch in self.slices(units):
            w[ch] -= (lr * scale) * self.unit_view(name, grads[name])[ch].to(w.dtype)

    @torch.no_grad()
    def step_all(self, grads: dict[str, torch.Tensor], lr: float) -> None:
        """Fine-tuning the whole network: one SGD step on every parameter that has a gradient."""
        for name, p in self.params.items():
            g = grads.get(name)
            if g is not None:
                p -= lr * g.to(p.dtype)

    def grad_norm(self, units, grads: dict[str, torch.Tensor]) -> float:
        """L2 norm of the gradient restricted to the filters ``units`` (all their weights together)."""
        total = 0.0
        for name, _, ch in self.slices(units):
            total += float(self.unit_view(name, grads[name])[ch].double().pow(2).sum())
        return total ** 0.5
