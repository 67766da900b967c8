"""The explainer: a database's model, input transform, statistics and stored samples' images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.transforms import transform_from_dict
from ..data.sources import SourceCatalog
from ..errors import QueryError
from ..models.inference import predict
from ..models.stored import load_stored_model
from ..saliency import UnitLayout
from ..saliency.normalise import Normaliser
from ..saliency.input_space import DEFAULT_CHANNEL_REDUCE, check_channel_reduce, input_saliency, token_saliency


@dataclass
class StoredSample:
    meta: dict  # sample_id, split, key, label, label_name, pred, pred_name, correct, loss, true_conf, pred_conf
    x: torch.Tensor  # (1, C, H, W) the model's input
    z: np.ndarray  # (U,) standardised stored profile

    @property
    def y(self) -> torch.Tensor:
        return torch.tensor([int(self.meta["label"])])


class Explainer:
    """Everything the explanation commands need from one database, loaded once.

    >>> ex = Explainer(saliencydb.open("db"))
    >>> s = ex.sample(42); m = ex.input_map(s.x, s.y, units=ex.top_units(s.z, 10))

    ``channel_reduce`` (``max-abs`` or ``abs-max``, ``saliency.input_space.reduce_channels``): how the input-space
    maps it computes reduce a pixel's colour channels, unless a call names another.
    """

    def __init__(self, db, channel_reduce: str = DEFAULT_CHANNEL_REDUCE):
        self.db = db
        self.channel_reduce = check_channel_reduce(channel_reduce)
        m = db.manifest
        self.mean, self.std = db.stats
        self.normalisation = db.normalisation
        self.layout = UnitLayout.from_dict(m.units)
        self.aggregate = m.aggregate
        self.transform = transform_from_dict(m.model.transform)
        loaded = load_stored_model(m)
        self.model = loaded.module.eval()
        self.scripted = loaded.scripted
        self.class_names = m.class_names
        self.modality = db.modality
        self._catalog = SourceCatalog()  # data sources opened on first use, once

    def require_images(self, what: str) -> None:
        """Image-only work (pixel maps, GradCAM, pixel masking, perturbations) refused on a text database."""
        if self.modality != "image":
            raise QueryError(f"{what} works on images; '{self.db.path}' is a text database (its samples are sentences): "
                             "use `saliencydb explain --id N --out FILE.png` for token-level saliency")

    # -- samples ------------------------------------------------------------------------
    def _source(self, split: str, fresh: bool = False):
        rec = self.db.manifest.splits.get(split)
        if rec is None:
            raise QueryError(f"unknown split '{split}'; the database has {', '.join(sorted(self.db.manifest.splits))}")
        return self._catalog.get(rec.source, fresh)

    def image_tensor(self, split: str, key: str) -> torch.Tensor:
        """The model input (1, C, H, W) of a stored sample, re-read from its data source."""
        source, index = self._source(split)
        i = index.get(key)
        if i is None:  # the cached listing may be stale: list the source again once
            source, index = self._source(split, fresh=True)
            i = index.get(key)
        if i is None:
            raise QueryError(f"sample '{key}' is no longer in the data source {source.spec!r} of split '{split}'; "
                             "restore the file or re-index the split")
        return self.transform(source.load(i))[None]

    def sample(self, sample_id: int) -> StoredSample:
        meta = self.db.sample(sample_id)
        x = self.image_tensor(meta["split"], meta["key"])
        z = self.db.z([sample_id])[0]
        return StoredSample(meta, x, z)

    def samples(self, ids) -> list[StoredSample]:
        return [self.sample(int(i)) for i in ids]

    def display_image(self, x: torch.Tensor) -> np.ndarray:
        """The model input (1, C, H, W) back in [0, 1] as (H, W) for one channel or (H, W, 3)."""
        self.require_images("drawing a sample")
        mean = torch.tensor(self.transform.mean).view(-1, 1, 1)
        std = torch.tensor(self.transform.std).view(-1, 1, 1)
        img = (x[0].detach().cpu() * std + mean).clamp(0, 1).numpy()
        return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)

    def fill_value(self, fill: str) -> torch.Tensor:
        """(C, 1, 1) value of a masked pixel in the model's input space: 'black' = normalised 0, 'mean' = 0."""
        self.require_images("masking pixels")
        if fill == "black":
            return (-torch.tensor(self.transform.mean) / torch.tensor(self.transform.std)).view(-1, 1, 1)
        if fill == "mean":
            return torch.zeros(len(self.transform.mean), 1, 1)
        raise QueryError(f"unknown fill '{fill}'; use black or mean")

    # -- units --------------------------------------------------------------------------
    def top_units(self, z: np.ndarray, k: int) -> np.ndarray:
        if not 1 <= k <= len(z):
            raise QueryError(f"--top-k must lie in 1..{len(z)}, got {k}")
        return np.argsort(-np.asarray(z), kind="stable")[:k].astype(np.int64)

    def parse_units(self, spec: str) -> np.ndarray:
        """'LAYER:CHANNEL,...' (a layer name such as features.3, or a layer index) -> unit ids."""
        layers = self.layout.layers
        by_name = {l.name: l for l in layers}
        ids = []
        for item in [s.strip() for s in spec.split(",") if s.strip()] or [""]:
            name, sep, ch = item.rpartition(":")
            layer = by_name.get(name) or (layers[int(name)] if name.isdigit() and int(name) < len(layers) else None)
            if not sep or layer is None:
                raise QueryError(f"--units item {item!r} is not LAYER:CHANNEL with LAYER one of {_layer_list(layers)} "
                                 f"(or an index 0..{len(layers) - 1})")
            if not ch.isdigit() or int(ch) >= layer.out_channels:
                raise QueryError(f"--units item {item!r}: channel must be an integer in 0..{layer.out_channels - 1} "
                                 f"for layer {layer.name}")
            ids.append(layer.offset + int(ch))
        return np.array(sorted(set(ids)), dtype=np.int64)

    def unit_rows(self, unit_ids, z: np.ndarray) -> list[dict]:
        layer_of = self.layout.layer_of(np.asarray(unit_ids))
        rows = []
        for rank, (u, li) in enumerate(zip(unit_ids, layer_of), start=1):
            layer = self.layout.layers[int(li)]
            rows.append({"rank": rank, "unit_id": int(u), "layer": layer.name, "channel": int(u) - layer.offset,
                         "z": round(float(z[int(u)]), 4)})
        return rows

    @property
    def normaliser(self) -> Normaliser:
        """Raw profiles -> standardised profiles, as the database's view standardises them."""
        return Normaliser(self.normalisation, self.mean, self.std)

    # -- model --------------------------------------------------------------------------
    def input_map(self, x: torch.Tensor, y: torch.Tensor, *, units=None, top_k: int = 10, model=None,
                  mean=None, std=None, channel_reduce: str | None = None) -> np.ndarray:
        """Input-space saliency (B, H, W) with the database's statistics (or the given ones), its channels reduced
        by ``channel_reduce`` (None: the explainer's)."""
        self.require_images("an input-space (pixel) map")
        return input_saliency(model or self.model, x, y, self.mean if mean is None else mean,
                              self.std if std is None else std, top_k=top_k, units=units, aggregate=self.aggregate,
                              normalisation=self.normalisation, layout=self.layout,
                              channel_reduce=channel_reduce or self.channel_reduce).numpy()

    def token_map(self, x: torch.Tensor, y: torch.Tensor, *, units=None, top_k: int = 10) -> np.ndarray:
        """Token-level saliency (L,) of one stored sentence ``x`` (1, 2, L) with the database's statistics."""
        return token_saliency(self.model, x, y, self.mean, self.std, top_k=top_k, units=units, aggregate=self.aggregate,
                              normalisation=self.normalisation, layout=self.layout).numpy()

    def confidences(self, x: torch.Tensor, y: torch.Tensor, model=None) -> dict[str, np.ndarray]:
        """Predicted label, true-class and predicted-class softmax probability per row of ``x``."""
        p = predict(model or self.model, x, y)
        return {"pred": p.pred.numpy(), "pred_conf": p.pred_conf.numpy(), "true_conf": p.true_conf.numpy(),
                "prob": p.prob.numpy()}


def _layer_list(layers) -> str:
    names = [l.name for l in layers]
    return ", ".join(names) if len(names) <= 8 else ", ".join(names[:4]) + ", ..., " + ", ".join(names[-2:])
