"""The math: unit layouts, the batched profile engine, running statistics."""

from .engine import ProfileEngine, Profiles
from .layout import Layer, UnitLayout
from .reference import reference_profiles
from .stats import RunningStats, l2_normalize, standardize

__all__ = ["ProfileEngine", "Profiles", "Layer", "UnitLayout", "reference_profiles", "RunningStats", "l2_normalize", "standardize"]
