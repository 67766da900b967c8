"""The model side: load a classifier from a spec, record it in a database and load it back
checked, choose the device, run it (predictions and confidences), and restore its modes.

Everything that needs a model goes through this package (docs/architecture.md). The modules
import torch; they are loaded on first use, so that the query layer starts without it.
"""

from ..lazy import lazy_attributes

_WHERE = {
    "LoadedModel": ".loading", "load_model": ".loading", "state_dict_sha256": ".loading", "MODEL_SPEC_HELP": ".loading",
    "HFImageClassifier": ".loading",
    "load_stored_model": ".stored", "model_record": ".stored", "initialised_at_random": ".stored",
    "resolve_device": ".device",
    "Predictions": ".inference", "predict": ".inference", "outputs_from_logits": ".inference", "logits_of": ".inference",
    "evaluating": ".modes",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_attributes(__name__, _WHERE)
