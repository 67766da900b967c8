"""The math: unit layouts, the batched profile engine, running statistics.

The engine and the reference import torch; they are loaded on first use, so that the query
layer (layouts and statistics only) starts without it.
"""

from ..lazy import lazy_attributes
from .layout import Layer, UnitLayout
from .stats import RunningStats, l2_normalize, standardize

__all__ = ["ProfileEngine", "Profiles", "Layer", "UnitLayout", "reference_profiles", "RunningStats", "l2_normalize", "standardize"]
__getattr__ = lazy_attributes(__name__, {"ProfileEngine": ".engine", "Profiles": ".engine", "reference_profiles": ".reference"})
