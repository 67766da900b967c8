"""One sample's explanation: input-space saliency of its salient filters, GradCAM, its profile."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import QueryError
from ..results import Result
from .context import Explainer
from .figures import explain_figure
from .maps import gradcam, last_conv, map_stats, spearman
from .outputs import IMAGE_SUFFIXES, check_out_file  # noqa: F401 - re-exported


@dataclass
class ExplainedSample(Result):
    """The stored sample explained."""

    sample_id: int
    split: str
    key: str
    label: int
    label_name: str
    pred: int
    pred_name: str
    correct: bool


@dataclass
class Confidences(Result):
    """The stored true-class and predicted-class confidence and loss of a sample."""

    true_conf: float
    pred_conf: float
    loss: float


@dataclass
class UnitRow(Result):
    """One unit (filter) of a profile: its rank, id, layer, channel and standardised saliency z."""

    rank: int
    unit_id: int
    layer: str
    channel: int
    z: float


@dataclass
class MapStats(Result):
    """Numbers describing the raw input-space map."""

    height: int
    width: int
    max: float
    mean: float
    p90: float
    p99: float
    top5pct_mass: float  # share of the saliency held by the top 5% of pixels
    spearman_vs_gradcam: float | None  # None without GradCAM (TorchScript models)
    channel_reduce: str  # how the map reduced a pixel's channels: max-abs (max |g|) or abs-max (|max g|)


@dataclass
class GradCamInfo(Result):
    """Where GradCAM was taken: its layer, target class and maximum."""

    layer: str
    target: int
    max: float


@dataclass
class Explanation(Result):
    """An ``explain_sample`` result: the numbers (the JSON document) and the arrays drawn (kept out of it)."""

    sample: ExplainedSample
    confidences: Confidences
    top_units: list[UnitRow]
    boosted_units: list[UnitRow]  # the top units, or the units asked for
    map: MapStats
    gradcam: GradCamInfo | None  # None for TorchScript models and models without a convolution
    out: str | None  # the figure written
    image: np.ndarray  # (H, W) or (H, W, 3) in [0, 1], as the model saw it
    input_map: np.ndarray  # (H, W) raw input-space saliency
    cam: np.ndarray | None  # (H, W) GradCAM for the predicted label (None for TorchScript models and models without a convolution)

    internal = ("image", "input_map", "cam")

    def rows(self) -> list[dict]:
        """The boosted units, one row each (the CSV output)."""
        return [u.to_dict() for u in self.boosted_units]

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the image, input-space map and GradCAM inline, the top units table."""
        from ..query.html import explanation_html

        return explanation_html(self)


def explain_sample(ex: Explainer, sample_id: int, out: str | Path | None, *, top_k: int = 10, units=None) -> Explanation:
    """Compute the maps of one stored sample, draw the figure to ``out`` (when given) and return the numbers.

    The boosted units are the sample's top ``top_k`` units of its stored standardised profile, or ``units``.
    """
    s = ex.sample(sample_id)
    top = ex.top_units(s.z, top_k)
    boosted = top if units is None else np.asarray(units, dtype=np.int64)
    input_map = ex.input_map(s.x, s.y, units=boosted)[0]
    cam = None
    # GradCAM needs a convolution (and module hooks); without one (an MLP) the explanation has no GradCAM panel
    if not ex.scripted and any(isinstance(m, torch.nn.Conv2d) for m in ex.model.modules()):
        cam = gradcam(ex.model, s.x, torch.tensor([int(s.meta["pred"])]))[0]
    top_rows = ex.unit_rows(top, s.z)
    boosted_rows = top_rows if units is None else ex.unit_rows(boosted, s.z)
    if out is not None:
        try:
            explain_figure(out, image=ex.display_image(s.x), input_map=input_map, cam=cam, z=s.z, layout=ex.layout,
                           boosted=boosted, meta=s.meta, top_rows=boosted_rows,
                           cam_layer=last_conv(ex.model)[0] if cam is not None else "", channel_reduce=ex.channel_reduce)
        except OSError as e:
            raise QueryError(f"cannot write --out {str(out)!r}: {e.strerror or e}") from None
    meta = s.meta
    return Explanation(
        sample=ExplainedSample(**{k: meta[k] for k in ("sample_id", "split", "key", "label", "label_name", "pred",
                                                       "pred_name", "correct")}),
        confidences=Confidences(true_conf=float(meta["true_conf"]), pred_conf=float(meta["pred_conf"]),
                                loss=float(meta["loss"])),
        top_units=[UnitRow(**r) for r in top_rows],
        boosted_units=[UnitRow(**r) for r in boosted_rows],
        map=MapStats(**map_stats(input_map), spearman_vs_gradcam=None if cam is None else spearman(input_map, cam),
                     channel_reduce=ex.channel_reduce),
        gradcam=None if cam is None else GradCamInfo(layer=last_conv(ex.model)[0], target=int(meta["pred"]),
                                                     max=float(cam.max())),
        out=None if out is None else str(out),
        image=ex.display_image(s.x), input_map=input_map, cam=cam,
    )
