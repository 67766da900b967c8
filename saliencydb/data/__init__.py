"""Data: spec strings -> image sources and preprocessing transforms (models: ``saliencydb.models``)."""

from saliencydb.data.sources import Batch, SampleDataset, Source, collate_samples, parse_data_spec
from saliencydb.data.transforms import Transform

__all__ = [
    "Batch",
    "SampleDataset",
    "Source",
    "Transform",
    "collate_samples",
    "parse_data_spec",
]
