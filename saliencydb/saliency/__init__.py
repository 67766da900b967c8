"""The math: unit layouts, the batched profile engine, running statistics.

The engine and the reference import torch; they are loaded on first use, so that the query
layer (layouts and statistics only) starts without it.
"""

import importlib

from .layout import Layer, UnitLayout
from .stats import RunningStats, l2_normalize, standardize

_LAZY = {"ProfileEngine": ".engine", "Profiles": ".engine", "reference_profiles": ".reference"}

__all__ = ["ProfileEngine", "Profiles", "Layer", "UnitLayout", "reference_profiles", "RunningStats", "l2_normalize", "standardize"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
