"""Data and model loading: spec strings -> image sources, preprocessing transforms and CPU models."""

from saliencydb.data.models import LoadedModel, load_model, state_dict_sha256
from saliencydb.data.sources import Batch, SampleDataset, Source, collate_samples, parse_data_spec
from saliencydb.data.transforms import Transform

__all__ = [
    "Batch",
    "LoadedModel",
    "SampleDataset",
    "Source",
    "Transform",
    "collate_samples",
    "load_model",
    "parse_data_spec",
    "state_dict_sha256",
]
