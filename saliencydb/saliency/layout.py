"""Unit layouts: which parameters are units, and in which order.

A unit is one output filter of a convolution (docs/architecture.md, "The method"): the slice ``W[o]`` of a
4-D weight. Units are ordered by ``model.named_parameters()`` order of the 4-D
weights, then by output channel. Biases are not units.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the query layer reads layouts without importing torch
    from torch import nn

KIND_CONV_FILTER = "conv-filter"


@dataclass(frozen=True)
class Layer:
    """One 4-D weight: ``out_channels`` consecutive units starting at ``offset``."""

    name: str  # parameter name without the trailing ".weight"
    param_name: str
    index: int
    out_channels: int
    n_params: int  # weights per unit: C_in/groups * kh * kw
    offset: int

    @property
    def stop(self) -> int:
        return self.offset + self.out_channels


@dataclass(frozen=True)
class UnitLayout:
    layers: tuple[Layer, ...]
    kind: str = KIND_CONV_FILTER

    @classmethod
    def from_module(cls, model: nn.Module) -> "UnitLayout":
        layers = []
        offset = 0
        for param_name, p in model.named_parameters():
            if p.dim() != 4:
                continue
            name = param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name
            n_params = int(p[0].numel())
            layers.append(Layer(name, param_name, len(layers), int(p.shape[0]), n_params, offset))
            offset += int(p.shape[0])
        return cls(tuple(layers))

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
        return {
            "kind": self.kind,
            "n_units": self.n_units,
            "layers": [
                {"name": l.name, "param": l.param_name, "out_channels": l.out_channels, "n_params": l.n_params}
                for l in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "UnitLayout":
        layers, offset = [], 0
        for i, l in enumerate(d["layers"]):
            layers.append(Layer(l["name"], l["param"], i, int(l["out_channels"]), int(l["n_params"]), offset))
            offset += int(l["out_channels"])
        return cls(tuple(layers), d.get("kind", KIND_CONV_FILTER))
