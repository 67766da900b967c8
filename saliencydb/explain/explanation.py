"""One sample's explanation: input-space saliency of its salient filters, GradCAM, its profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import QueryError
from .context import Explainer
from .figures import explain_figure
from .maps import gradcam, last_conv, map_stats, spearman
from .outputs import IMAGE_SUFFIXES, check_out_file  # noqa: F401 - re-exported


@dataclass
class Explanation:
    numbers: dict  # JSON-safe: sample, confidences, top_units, boosted_units, map, gradcam, out
    image: np.ndarray  # (H, W) or (H, W, 3) in [0, 1], as the model saw it
    input_map: np.ndarray  # (H, W) raw input-space saliency
    cam: np.ndarray | None  # (H, W) GradCAM for the predicted label (None for TorchScript models)

    def to_dict(self) -> dict:
        return self.numbers


def explain_sample(ex: Explainer, sample_id: int, out: str | Path | None, *, top_k: int = 10, units=None) -> Explanation:
    """Compute the maps of one stored sample, draw the figure to ``out`` (when given) and return the numbers.

    The boosted units are the sample's top ``top_k`` units of its stored standardised profile, or ``units``.
    """
    s = ex.sample(sample_id)
    top = ex.top_units(s.z, top_k)
    boosted = top if units is None else np.asarray(units, dtype=np.int64)
    input_map = ex.input_map(s.x, s.y, units=boosted)[0]
    cam = None
    if not ex.scripted:
        cam = gradcam(ex.model, s.x, torch.tensor([int(s.meta["pred"])]))[0]
    top_rows = ex.unit_rows(top, s.z)
    boosted_rows = top_rows if units is None else ex.unit_rows(boosted, s.z)
    if out is not None:
        try:
            explain_figure(out, image=ex.display_image(s.x), input_map=input_map, cam=cam, z=s.z, layout=ex.layout,
                           boosted=boosted, meta=s.meta, top_rows=boosted_rows,
                           cam_layer=last_conv(ex.model)[0] if cam is not None else "")
        except OSError as e:
            raise QueryError(f"cannot write --out {str(out)!r}: {e.strerror or e}") from None
    meta = {k: s.meta[k] for k in ("sample_id", "split", "key", "label", "label_name", "pred", "pred_name", "correct")}
    numbers = {
        "sample": meta,
        "confidences": {"true_conf": float(s.meta["true_conf"]), "pred_conf": float(s.meta["pred_conf"]),
                        "loss": float(s.meta["loss"])},
        "top_units": top_rows,
        "boosted_units": boosted_rows,
        "map": {**map_stats(input_map), "spearman_vs_gradcam": None if cam is None else spearman(input_map, cam)},
        "gradcam": None if cam is None else {"layer": last_conv(ex.model)[0], "target": int(s.meta["pred"]),
                                              "max": float(cam.max())},
        "out": None if out is None else str(out),
    }
    return Explanation(numbers, ex.display_image(s.x), input_map, cam)
