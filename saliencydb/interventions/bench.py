"""The work bench of a run of interventions: one private copy of the database's model, loaded once,
the inputs and baseline outputs of the samples involved, computed once, and batched evaluation.

A sweep over hundreds of mistakes does, per sample, one backward pass (fine-tuning) and one small
forward pass per edit; the model is never reloaded or deep-copied per attempt (``FilterEditor``
restores the edited slices in place), the baseline of a sample is computed once whatever the number
of controls, and an edited model is evaluated on all the samples it concerns (the target, its
neighbours, or a whole split) in batched forward passes.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import QueryError
from ..explain.context import Explainer
from ..models.inference import logits_of, predict
from ..models.modes import evaluating
from ..query.lists import neighbor_lists
from .editor import FilterEditor

DEFAULT_BATCH = 256
DEFAULT_CACHE_BYTES = 1 << 30  # inputs kept in memory between evaluations; beyond it they are re-read


def model_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose parameters are leaves: ``copy.deepcopy`` of a TorchScript module gives
    parameters that are not, which autograd flags and edits then refuse; it is copied through its serialised form."""
    if isinstance(module, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location="cpu")
    return copy.deepcopy(module)


class Bench:
    """>>> bench = Bench(saliencydb.open("db"))
    >>> bench.prepare(ids); base = bench.baseline(ids)
    >>> with bench.editor.editing(units):
    ...     bench.editor.zero(units); after = bench.evaluate(ids)
    """

    def __init__(self, db, explainer: Explainer | None = None, *, device: str | torch.device = "cpu",
                 batch_size: int = DEFAULT_BATCH, cache_bytes: int = DEFAULT_CACHE_BYTES):
        if batch_size < 1:
            raise QueryError(f"--batch-size must be at least 1, got {batch_size}")
        self.db = db
        self.ex = explainer if explainer is not None else Explainer(db)
        self.device = torch.device(device)
        # the explainer's model stays the pristine reference; every edit happens on this copy
        self.model = model_copy(self.ex.model).to(self.device).eval()
        self.layout = self.ex.layout
        self.n_units = self.layout.n_units
        self.editor = FilterEditor(self.model, self.layout)
        self.class_names = self.ex.class_names
        self.weights_sha256 = db.manifest.model.weights_sha256
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self._cached = 0
        self._meta: dict[int, tuple[str, str, int]] = {}  # id -> (split, key, label)
        self._x: dict[int, torch.Tensor] = {}  # id -> (C, H, W) input on the CPU
        self._base: dict[int, tuple[int, float, float]] = {}  # id -> (pred, true_conf, pred_conf) of the original model

    # -- samples -------------------------------------------------------------------------------
    def prepare(self, ids) -> None:
        """Read the metadata and compute the baseline outputs of ``ids`` (once per sample)."""
        ids = _ids(ids)
        new = [i for i in dict.fromkeys(ids.tolist()) if i not in self._meta]
        if new:
            rows = self.db._execute(
                "SELECT sample_id, split, key, label FROM samples WHERE sample_id IN (SELECT unnest(?::BIGINT[]))", [new]
            ).fetchall()
            for sid, split, key, label in rows:
                self._meta[int(sid)] = (split, key, int(label))
            for i in new:
                if i not in self._meta:
                    self.db.sample(i)  # raises the one-line "no sample with id" error
        todo = np.array([i for i in dict.fromkeys(ids.tolist()) if i not in self._base], dtype=np.int64)
        if len(todo):
            out = self._forward(todo)
            for i, p, t, c in zip(todo.tolist(), out["pred"].tolist(), out["true_conf"].tolist(), out["prob_max"].tolist()):
                self._base[i] = (int(p), float(t), float(c))

    def labels(self, ids) -> np.ndarray:
        return np.array([self._meta[i][2] for i in _ids(ids).tolist()], dtype=np.int64)

    def splits(self, ids) -> list[str]:
        return [self._meta[i][0] for i in _ids(ids).tolist()]

    def inputs(self, ids) -> torch.Tensor:
        """Model inputs (n, C, H, W), or padded token tensors (n, 2, L), on the CPU, re-read from the data source through the explainer
        (kept in memory up to ``cache_bytes``)."""
        xs = []
        for i in _ids(ids).tolist():
            x = self._x.get(i)
            if x is None:
                split, key, _ = self._meta[i]
                x = self.ex.image_tensor(split, key)[0]
                if self._cached + x.numel() * x.element_size() <= self.cache_bytes:
                    self._x[i] = x
                    self._cached += x.numel() * x.element_size()
            xs.append(x)
        if xs and not xs[0].is_floating_point():  # sentences' token tensors (data.text): padded to the longest
            from ..data.sources import pad_tokens

            return pad_tokens(xs)
        return torch.stack(xs)

    def baseline(self, ids) -> dict[str, np.ndarray]:
        """Prediction, true-class and predicted-class confidence of the original model (``prepare`` first)."""
        rows = [self._base[i] for i in _ids(ids).tolist()]
        pred = np.array([r[0] for r in rows], dtype=np.int64)
        return {"pred": pred, "true_conf": np.array([r[1] for r in rows]), "pred_conf": np.array([r[2] for r in rows]),
                "correct": pred == self.labels(ids)}

    def z(self, ids) -> np.ndarray:
        """Standardised stored profiles (n, U) of ``ids``."""
        return self.db.z(_ids(ids))

    # -- the (possibly edited) model ------------------------------------------------------------
    def evaluate(self, ids) -> dict[str, np.ndarray]:
        """Outputs of the model as it is now, next to the baseline: pred, correct, true_conf and the confidence
        of each sample's ORIGINAL prediction (``pred_conf``), and their changes."""
        ids = _ids(ids)
        base = self.baseline(ids)
        out = self._forward(ids, classes=base["pred"])
        return {"pred": out["pred"], "correct": out["pred"] == self.labels(ids), "true_conf": out["true_conf"],
                "pred_conf": out["class_conf"], "delta_true_conf": out["true_conf"] - base["true_conf"],
                "delta_pred_conf": out["class_conf"] - base["pred_conf"], "correct_before": base["correct"]}

    def _forward(self, ids: np.ndarray, classes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        labels = torch.as_tensor(self.labels(ids))
        outs = {"pred": [], "true_conf": [], "prob_max": [], "class_conf": []}
        for s in range(0, len(ids), self.batch_size):
            chunk = ids[s : s + self.batch_size]
            p = predict(self.model, self.inputs(chunk).to(self.device), labels[s : s + len(chunk)],
                        None if classes is None else classes[s : s + len(chunk)])
            outs["pred"].append(p.pred)
            outs["prob_max"].append(p.pred_conf.double())
            outs["true_conf"].append(p.true_conf.double())
            if p.class_conf is not None:
                outs["class_conf"].append(p.class_conf.double())
        return {k: torch.cat(v).numpy() for k, v in outs.items() if v}

    def gradient(self, ids) -> dict[str, torch.Tensor]:
        """Gradient of the SUMMED cross-entropy of ``ids`` with respect to every parameter, at the model as it
        is now (eval mode: batch-norm statistics frozen), one batched pass per chunk; name -> tensor."""
        ids = _ids(ids)
        labels = torch.as_tensor(self.labels(ids))
        names = list(self.editor.params)
        params = [self.editor.params[n] for n in names]
        total = [torch.zeros_like(p) for p in params]
        with evaluating(self.model, params, grad=True):
            for s in range(0, len(ids), self.batch_size):
                chunk = ids[s : s + self.batch_size]
                logits = logits_of(self.model(self.inputs(chunk).to(self.device)))
                loss = F.cross_entropy(logits.float(), labels[s : s + len(chunk)].to(self.device), reduction="sum")
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for t, g in zip(total, grads):
                    if g is not None:
                        t += g
        return dict(zip(names, total))

    # -- neighbours ---------------------------------------------------------------------------------
    def neighbors(self, ids, n: int) -> np.ndarray:
        """The ``n`` nearest saliency neighbours (n_ids, n) of each sample within its split, itself excluded:
        from the stored ``knn`` table where it holds them, else searched in the saliency index."""
        ids = _ids(ids)
        if n < 1:
            raise QueryError(f"--neighbors must be at least 1, got {n}")

        def splits(todo: np.ndarray) -> list[str]:
            self.prepare(todo)  # the samples to search: their metadata (an unknown id is one line) and baselines
            return self.splits(todo)

        found = neighbor_lists(self.db, ids, n, ("saliency",), complete=True, split_of=splits)
        out = np.full((len(ids), n), -1, dtype=np.int64)
        for p, sid in enumerate(ids.tolist()):
            row = found.get(sid, "saliency")
            if row is not None:
                out[p] = [nb for nb, _ in row]
        return out


def _ids(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).reshape(-1)
