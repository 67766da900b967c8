"""Unit layouts: which parameters are units, and in which order (docs/architecture.md, "The method").

Three kinds of unit, each a slice of one weight; biases are never units:

``conv``
    One output filter of a convolution: the slice ``W[o]`` of a 4-D weight (the paper's unit).
``linear-out``
    One output feature of an ``nn.Linear`` (or of a multi-head attention's packed input
    projection): the row ``W[o, :]`` of its ``(out, in)`` weight, the analogue of a filter.
``linear-in``
    One input column ``W[:, j]`` of the same weight: the literal "column-wise" aggregation of a
    PyTorch ``(out, in)`` matrix.

Units are ordered by ``model.named_parameters()`` order of their weights, then by index. Which
weights are units is chosen by ``units``: ``conv`` (the paper's CNNs), ``linear``, ``all`` (both),
or ``auto``: convolutions when there are at least as many convolution layers as linear ones
(every CNN of the paper), else linear layers (a ViT, whose only convolution is its patch embedding). Embedding tables, weights
tied to them (an MLM decoder), normalisation layers and positional tables are never units; the
layout lists the weights it leaves out, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the query layer reads layouts without importing torch
    from torch import nn

KIND_CONV_FILTER = "conv-filter"
UNIT_CHOICES = ("auto", "conv", "linear", "all")
LINEAR_AXES = ("out", "in")


@dataclass(frozen=True)
class Layer:
    """One 4-D weight: ``out_channels`` consecutive units starting at ``offset``."""

    name: str  # parameter name without the trailing ".weight"
    param_name: str
    index: int
    out_channels: int  # units in the layer: filters (conv), output features (linear-out), input columns (linear-in)
    n_params: int  # weights per unit: C_in/groups * kh * kw (conv), in (linear-out), out (linear-in)
    offset: int
    kind: str = "conv"  # conv, linear-out or linear-in

    @property
    def stop(self) -> int:
        return self.offset + self.out_channels


@dataclass(frozen=True)
class UnitLayout:
    layers: tuple[Layer, ...]
    kind: str = KIND_CONV_FILTER  # conv-filter, linear-out, linear-in, or mixed
    excluded: tuple[tuple[str, str], ...] = field(default=())  # (parameter, why it is not a unit)

    @classmethod
    def from_module(cls, model: nn.Module, units: str = "conv", linear: str = "out") -> "UnitLayout":
        """The layout of ``model``: ``units`` one of UNIT_CHOICES, ``linear`` the axis of linear units."""
        if units not in UNIT_CHOICES:
            raise ValueError(f"unknown unit choice {units!r}; use one of {', '.join(UNIT_CHOICES)}")
        if linear not in LINEAR_AXES:
            raise ValueError(f"unknown linear unit axis {linear!r}; use out or in")
        candidates, excluded = _weights(model)
        if units == "auto":  # counted in layers: a VGG's three huge linear layers do not outweigh its convolutions
            conv = sum(k == "conv" for *_, k in candidates)
            units = "conv" if conv and conv >= len(candidates) - conv else "linear"
        layers, offset = [], 0
        for param_name, p, k in candidates:
            if units not in ("all", k):
                excluded.append((param_name, f"a {k} weight (units: {units})"))
                continue
            name = param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name
            if k == "conv":
                count, per, kind = int(p.shape[0]), int(p[0].numel()), "conv"
            elif linear == "out":
                count, per, kind = int(p.shape[0]), int(p.shape[1]), "linear-out"
            else:
                count, per, kind = int(p.shape[1]), int(p.shape[0]), "linear-in"
            layers.append(Layer(name, param_name, len(layers), count, per, offset, kind))
            offset += count
        if units == "conv":  # the paper's CNNs: exactly the layout of databases made before linear units
            return cls(tuple(layers))
        kinds = {l.kind for l in layers}
        return cls(tuple(layers), kinds.pop() if len(kinds) == 1 else "mixed", tuple(excluded))

    @property
    def n_units(self) -> int:
        return self.layers[-1].stop if self.layers else 0

    def layer_of(self, unit_ids: np.ndarray) -> np.ndarray:
        """Layer index of each unit id."""
        starts = np.array([layer.offset for layer in self.layers])
        return np.searchsorted(starts, np.asarray(unit_ids), side="right") - 1

    def columns(self) -> dict[str, np.ndarray | list]:
        """One row per unit: unit_id, layer, layer_index, channel, n_params."""
        unit_id = np.arange(self.n_units, dtype=np.int32)
        layer_index = np.concatenate([np.full(l.out_channels, l.index, np.int32) for l in self.layers])
        channel = np.concatenate([np.arange(l.out_channels, dtype=np.int32) for l in self.layers])
        n_params = np.concatenate([np.full(l.out_channels, l.n_params, np.int32) for l in self.layers])
        names = [l.name for l in self.layers]
        return {
            "unit_id": unit_id,
            "layer": [names[i] for i in layer_index],
            "layer_index": layer_index,
            "channel": channel,
            "n_params": n_params,
        }

    def to_dict(self) -> dict:
        """The manifest's ``units``; a conv-filter layout is written exactly as before linear units existed."""
        layers = []
        for l in self.layers:
            entry = {"name": l.name, "param": l.param_name, "out_channels": l.out_channels, "n_params": l.n_params}
            if l.kind != "conv":
                entry["kind"] = l.kind
            layers.append(entry)
        d = {"kind": self.kind, "n_units": self.n_units, "layers": layers}
        if self.kind != KIND_CONV_FILTER:
            d["excluded"] = [{"param": name, "reason": why} for name, why in self.excluded]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UnitLayout":
        layers, offset = [], 0
        for i, l in enumerate(d["layers"]):
            layers.append(Layer(l["name"], l["param"], i, int(l["out_channels"]), int(l["n_params"]), offset,
                                l.get("kind", "conv")))
            offset += int(l["out_channels"])
        excluded = tuple((e["param"], e["reason"]) for e in d.get("excluded", []))
        return cls(tuple(layers), d.get("kind", KIND_CONV_FILTER), excluded)


def _weights(model: nn.Module) -> tuple[list, list]:
    """Candidate unit weights in ``named_parameters()`` order, as (name, parameter, conv|linear), and the
    other weights of two or more dimensions with the reason they are not units."""
    from torch import nn

    linear_ids, embedding_ids, norm_ids = set(), set(), set()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            linear_ids.add(id(module.weight))
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            linear_ids.add(id(module.in_proj_weight))
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            embedding_ids.add(id(module.weight))
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
            norm_ids.update(id(p) for p in module.parameters(recurse=False))
    candidates, excluded = [], []
    # named_parameters() lists a tied tensor once, under its first name: an embedding tied to a
    # decoder is seen as the embedding, and the decoder's module weight is the same tensor
    for name, p in model.named_parameters():
        if id(p) in embedding_ids:
            tied = id(p) in linear_ids
            excluded.append((name, "an embedding table" + (" (tied to a linear layer's weight)" if tied else "")))
        elif p.dim() == 4:
            candidates.append((name, p, "conv"))
        elif id(p) in linear_ids and p.dim() == 2:
            candidates.append((name, p, "linear"))
        elif p.dim() >= 2 and id(p) not in norm_ids:
            excluded.append((name, f"a {p.dim()}-D parameter that is not a layer weight (e.g. a positional table)"))
    return candidates, excluded
