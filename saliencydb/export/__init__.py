"""Exports of a database to other tools: ``to_fiftyone`` (a FiftyOne dataset with a saliency similarity index)."""

from ..lazy import lazy_attributes

_WHERE = {"FiftyOneExport": ".fiftyone", "to_fiftyone": ".fiftyone"}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
