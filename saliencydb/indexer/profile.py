"""The profile step of an indexing job: loaded batches -> rows of profiles, features and
predictions, with the samples that cannot be profiled set aside as failures (named by key)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data.sources import SampleDataset, Source, collate_samples
from ..data.transforms import Transform
from ..errors import ModelError
from ..models.inference import outputs_from_logits
from ..models.loading import LoadedModel
from ..saliency import ProfileEngine, UnitLayout, reference_profiles
from ..saliency.engine import Profiles
from ..saliency.normalise import dlogit_norms
from ..schemas import Manifest


def pad_rows(batch_size: int, todo: int) -> int | None:
    """The batch size every profiled batch of a job is padded to: ``batch_size`` when the job has at least that
    many samples (its short last batch, and batches that lost failed samples, are filled up), else None.

    A sample's numbers then never depend on which other samples, or how many, shared its batch: the forward and
    backward kernels run on the same shapes (BLAS and oneDNN can round differently for another batch size, by
    up to 1e-4 relative on a ResNet-18), so a resumed `index` and an `ingest` store what one `index` run stores. A job smaller than one
    batch runs as it is (it costs up to a batch of padding otherwise): its last bits can differ from a larger
    job's (docs/method.md, "Reproducible bytes")."""
    return batch_size if todo >= batch_size > 1 else None


class Profiler:
    """One model on one device, profiling batches of one source into database rows (``pad_to``: ``pad_rows``)."""

    def __init__(self, model: LoadedModel, m: Manifest, source: Source, device: torch.device,
                 label_map: tuple[np.ndarray, dict[int, str]] | None, pad_to: int | None = None):
        self.pad_to = pad_to
        self.module = model.module.to(device)
        self.layout = UnitLayout.from_dict(m.units)
        self.engine = None if model.scripted else ProfileEngine(self.module, aggregate=m.aggregate, layout=self.layout)
        self.aggregate, self.num_classes = m.aggregate, m.model.num_classes
        self.source, self.device, self.label_map = source, device, label_map

    def rows(self, batch, failures: list) -> dict[str, np.ndarray] | None:
        """Profile one loaded batch; the rows to store (None if none), failures appended to ``failures``."""
        failures += [(self.source.key(i), reason) for i, reason in batch.failed]
        x, y, idx = self._known_labels(batch.x, batch.y, batch.indices, failures)
        if not len(idx):
            return None
        try:
            rows = self._profile(x.to(self.device, non_blocking=True), y.to(self.device))
        except (RuntimeError, ValueError, TypeError, IndexError) as e:  # the model's own error on this input
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelError(f"profiling a batch of inputs of shape {tuple(x.shape)} failed ({type(e).__name__}: {text}); "
                             "committed samples are kept. Check the model and its --transform, or lower --batch-size "
                             "if memory ran out") from None
        finite = np.isfinite(rows["loss"]) & np.isfinite(rows["dlogit_norm"]) & np.isfinite(rows["raw"]).all(1)
        if "feature" in rows:
            finite &= np.isfinite(rows["feature"]).all(1)
        for i in idx.numpy()[~finite].tolist():
            failures.append((self.source.key(i), "non-finite loss, profile" + (" or feature" if "feature" in rows else "")))
        if not finite.any():
            return None
        rows = {k: v[finite] for k, v in rows.items()}
        rows["index"] = idx.numpy()[finite]
        rows["label"] = y.numpy()[finite]
        return rows

    def _known_labels(self, x, y, idx, failures: list):
        """The batch without the samples whose label the database does not know (they become failures)."""
        if self.label_map is not None:  # the source names its labels: the database's index of each name
            mapping, reasons = self.label_map
            local = y.numpy()
            y = torch.from_numpy(mapping[local])
            unknown = y < 0
            failures += [(self.source.key(i), reasons[l]) for i, l in zip(idx[unknown].tolist(), local[unknown.numpy()].tolist())]
            x, y, idx = x[~unknown], y[~unknown], idx[~unknown]
        bad_label = (y < 0) | (y >= self.num_classes)
        for i, label in zip(idx[bad_label].tolist(), y[bad_label].tolist()):
            failures.append((self.source.key(i), f"label {label} is outside the model's {self.num_classes} classes"))
        keep = ~bad_label
        return x[keep], y[keep], idx[keep]

    def _profile(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, np.ndarray]:
        if self.engine is None:  # TorchScript: no module hooks on compiled graphs; the per-sample definition, no feature
            raw = reference_profiles(self.module, x, y, self.layout, self.aggregate)
            with torch.no_grad():
                logits = self.module(x)
            outs = outputs_from_logits(logits, y)
            return {
                "raw": raw.cpu().numpy(),
                "dlogit_norm": dlogit_norms(logits, y).cpu().numpy().astype(np.float32),
                **{k: v.cpu().numpy().astype(np.float32) if v.is_floating_point() else v.cpu().numpy() for k, v in outs.items()},
            }
        n, extra = len(x), max(0, (self.pad_to or 0) - len(x))
        if extra:  # fill the batch up with copies of its first sample; their rows are dropped below
            x, y = torch.cat([x, x[:1].expand(extra, *x.shape[1:])]), torch.cat([y, y[:1].expand(extra)])
        out = self.engine.profile(x, y)
        if extra:
            out, y = Profiles(**{f.name: getattr(out, f.name)[:n] for f in dataclasses.fields(out)}), y[:n]
        return {
            "raw": out.raw.cpu().numpy(),
            "feature": out.feature.cpu().numpy().astype(np.float32),
            "loss": out.loss.cpu().numpy().astype(np.float32),
            "pred": out.pred.cpu().numpy(),
            "true_conf": out.true_conf.cpu().numpy().astype(np.float32),
            "pred_conf": out.pred_conf.cpu().numpy().astype(np.float32),
            "dlogit_norm": dlogit_norms(out.logits, y).cpu().numpy().astype(np.float32),
        }


def loader(source: Source, transform: Transform, indices: list[int], *, batch_size: int, workers: int,
           device: torch.device) -> torch.utils.data.DataLoader:
    """Batches of the samples ``indices``, decoded in ``workers`` processes when that pays off.

    Worker processes are spawned, not forked: a fork of a process whose Arrow / OpenMP / FAISS
    thread pools are running can crash the child."""
    workers = workers if source.decodes_files and len(indices) >= 4 * batch_size else 0
    return torch.utils.data.DataLoader(
        SampleDataset(source, transform, indices),
        batch_size=batch_size,
        num_workers=workers,
        multiprocessing_context="spawn" if workers else None,
        persistent_workers=False,
        collate_fn=collate_samples,
        pin_memory=device.type == "cuda",
    )
