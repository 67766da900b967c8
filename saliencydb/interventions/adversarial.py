"""Adversarial parameter saliency (paper appendix A.7) and its agreement with the plain profile.

For one sample, the convolution weights θ (the database's units) are moved to maximise (or minimise) the
sample's loss inside the L2 ball ‖θ − θ0‖₂ ≤ ε (all conv weights together), by projected gradient steps:
``δ ← Π_ε(δ ± α ∇L(θ0 + δ) / ‖∇L(θ0 + δ)‖)`` from δ = 0, with α = 2.5 ε / steps; θ* is the best iterate
(highest, or lowest, loss). The profile is |θ* − θ0| averaged over each filter's weights: one number per
unit, in the database's unit order.

To first order θ* − θ0 = ±ε ∇L/‖∇L‖, so for small ε the adversarial profile is the plain raw profile
(mean |∂L/∂w| per filter) times ε/‖∇L‖, and the two agree up to that per-sample scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QueryError
from ..progress import NullProgress
from ..results import Result
from ..saliency import UnitLayout
from ..models.modes import evaluating
from ..saliency.variants import agreement
from .editor import FilterEditor
from .filters import parse_eps, seeded_subset

DEFAULT_EPS = (1e-3, 1e-2, 1e-1)
DEFAULT_STEPS = 10
DEFAULT_LIMIT = 100
TOP_K = 10
_TINY_NORM = 1e-30


@dataclass
class AdversarialProfiles:
    raw: torch.Tensor  # (B, U) mean |θ* − θ0| per unit
    grad_norm: torch.Tensor  # (B,) ‖∂L/∂θ‖ over all conv weights at θ0
    delta_norm: torch.Tensor  # (B,) ‖θ* − θ0‖
    loss_before: torch.Tensor  # (B,)
    loss_after: torch.Tensor  # (B,)
    pred_before: torch.Tensor  # (B,)
    pred_after: torch.Tensor  # (B,)


@dataclass
class AgreementRow(Result):
    """Mean agreement of the adversarial profiles with the plain ones at one radius and direction."""

    eps: float
    direction: str  # max or min (the loss)
    samples: int
    cosine_raw: float
    top10_overlap_raw: float
    cosine_std: float
    top10_overlap_std: float
    mean_delta_loss: float
    share_pred_changed: float
    mean_delta_norm: float


@dataclass
class AdversarialAgreement(Result):
    """An ``adversarial_agreement`` result. ``table`` is the JSON document's ``rows``."""

    split: str | None
    samples: int
    steps: int
    seed: int
    top_k: int
    sample_ids: list[int]
    table: list[AgreementRow]

    def to_dict(self) -> dict:
        return {("rows" if key == "table" else key): value for key, value in super().to_dict().items()}

    def rows(self) -> list[dict]:
        """One row per radius and direction (the table and CSV output)."""
        return [r.to_dict() for r in self.table]


def adversarial_profiles(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = DEFAULT_STEPS,
                         maximize: bool = True, layout: UnitLayout | None = None,
                         editor: FilterEditor | None = None) -> AdversarialProfiles:
    """Adversarial parameter-saliency profiles of the batch ``x`` (B, C, H, W), one sample at a time (each has
    its own θ*). The model is edited in place and restored exactly, and left in the mode it was in."""
    if not (np.isfinite(eps) and eps > 0):
        raise QueryError(f"--eps values must be positive numbers, got {eps}")
    if steps < 1:
        raise QueryError(f"--steps must be at least 1, got {steps}")
    layout = layout or UnitLayout.from_module(model)
    editor = editor or FilterEditor(model, layout)
    weights = editor.weights
    device = weights[0].device
    y = torch.as_tensor(y, dtype=torch.long).reshape(-1)
    alpha = 2.5 * eps / steps
    sign = 1.0 if maximize else -1.0
    out = {k: [] for k in ("raw", "grad_norm", "delta_norm", "loss_before", "loss_after", "pred_before", "pred_after")}
    all_units = np.arange(layout.n_units)
    with evaluating(model, grad_params=weights), editor.editing(all_units):
        theta0 = [w.detach().clone() for w in weights]
        for i in range(x.shape[0]):
            xi, yi = x[i : i + 1].to(device), y[i : i + 1].to(device)
            delta = [torch.zeros_like(w) for w in weights]
            g0, best = None, None  # best: (signed loss, its delta, its prediction) over the iterates
            for t in range(steps + 1):
                _set(weights, theta0, delta)
                logits = _logits(model(xi))
                loss = F.cross_entropy(logits.float(), yi)
                value = float(loss.detach())
                if best is None or sign * value > best[0]:
                    best = (sign * value, [d.clone() for d in delta], int(logits.detach().argmax(1)))
                if t == steps:
                    break
                grads = [torch.zeros_like(w) if g is None else g
                         for w, g in zip(weights, torch.autograd.grad(loss, weights, allow_unused=True))]
                gnorm = float(torch.sqrt(sum(g.double().pow(2).sum() for g in grads)))
                if g0 is None:
                    g0 = (gnorm, value, int(logits.detach().argmax(1)))
                if not (gnorm > _TINY_NORM and np.isfinite(gnorm)):
                    break  # a (numerically) flat loss, e.g. a loss minimised to 0: no direction left
                with torch.no_grad():
                    for d, g in zip(delta, grads):
                        d += (sign * alpha / gnorm) * g
                    dnorm = float(torch.sqrt(sum(d.double().pow(2).sum() for d in delta)))
                    if dnorm > eps:
                        for d in delta:
                            d *= eps / dnorm
            # the attack's answer is its best iterate (large steps can overshoot at large eps)
            delta = best[1]
            out["loss_after"].append(sign * best[0])
            out["pred_after"].append(best[2])
            out["grad_norm"].append(g0[0])
            out["loss_before"].append(g0[1])
            out["pred_before"].append(g0[2])
            out["delta_norm"].append(float(torch.sqrt(sum(d.double().pow(2).sum() for d in delta))))
            out["raw"].append(torch.cat([editor.unit_view(l.param_name, d).abs().flatten(1).mean(1).float().cpu()
                                         for l, d in zip(layout.layers, delta)]))
    return AdversarialProfiles(raw=torch.stack(out["raw"]), **{k: torch.tensor(v) for k, v in out.items() if k != "raw"})


def adversarial_agreement(bench, *, split: str | None = None, limit: int | None = DEFAULT_LIMIT, eps=DEFAULT_EPS,
                          steps: int = DEFAULT_STEPS, seed: int = 0, progress=None) -> AdversarialAgreement:
    """At each ε and direction, the mean agreement of the adversarial profiles of (a seeded random ``limit`` of)
    the samples of ``split`` with their stored plain profiles. ``eps``: radii, or a comma-separated string of them.

    - raw: cosine similarity and top-10 overlap between |θ* − θ0| per unit and the stored raw profile
      (mean |∂L/∂w| per unit); both are scale-free, so the ε/‖∇L‖ scale does not matter;
    - standardised: the adversarial profile is first put in gradient units (times ‖∇L‖/ε, the first-order
      scale), then standardised with the database's statistics and compared with the stored standardised profile.
    """
    db = bench.db
    eps = sorted({float(e) for e in (parse_eps(eps) if isinstance(eps, str) else eps)})
    if not eps:
        raise QueryError("--eps is empty; give values such as 0.001,0.01,0.1")
    ids = _attacked_samples(db, split, limit, seed)
    bench.prepare(ids)
    raw = db.rows("raw_profile", ids).astype(np.float64)
    z = bench.z(ids)
    # the database's normalisation; zscore-dlogit prescales with the sample's stored ||dL/dlogits||
    norm = db.normaliser
    dlogit = db.dlogit_norms(ids) if norm.needs_dlogit else None
    x, y = bench.inputs(ids), torch.as_tensor(bench.labels(ids))
    progress = progress or NullProgress()
    task = progress.task(f"adversarial profiles of {len(ids)} samples", len(eps) * 2 * len(ids), unit="samples")
    rows = []
    for e in eps:
        for maximize in (True, False):
            adv = adversarial_profiles(bench.model, x, y, e, steps=steps, maximize=maximize, layout=bench.layout,
                                       editor=bench.editor)
            task.advance(len(ids))
            rows.append(_agreement_row(adv, e, maximize, raw, z, lambda v: norm(v, dlogit)))
    task.close()
    return AdversarialAgreement(split=split, samples=int(len(ids)), steps=steps, seed=seed, top_k=TOP_K,
                                sample_ids=[int(i) for i in ids], table=rows)


def _attacked_samples(db, split: str | None, limit: int | None, seed: int) -> np.ndarray:
    """The samples of ``split`` (all: None); with ``limit``, a seeded random subset of them."""
    ids = db.ids_where(split=split)
    if len(ids) == 0:
        raise QueryError("no samples to attack" + (f" in split '{split}'" if split else ""))
    return seeded_subset(ids, limit, seed)


def _agreement_row(adv: AdversarialProfiles, e: float, maximize: bool, raw: np.ndarray, z: np.ndarray,
                   standardise) -> AgreementRow:
    """Mean agreement of the batch's adversarial profiles with the stored raw (``raw``) and standardised (``z``) ones."""
    n = len(raw)
    a = adv.raw.double().numpy()
    za = standardise(a * (adv.grad_norm.double().numpy() / e)[:, None])
    raw_agree = [agreement(a[i], raw[i], TOP_K) for i in range(n)]
    z_agree = [agreement(za[i], z[i], TOP_K) for i in range(n)]
    return AgreementRow(
        eps=e, direction="max" if maximize else "min", samples=int(n),
        cosine_raw=float(np.mean([r["cosine"] for r in raw_agree])),
        top10_overlap_raw=float(np.mean([r["topk_overlap"] for r in raw_agree])),
        cosine_std=float(np.mean([r["cosine"] for r in z_agree])),
        top10_overlap_std=float(np.mean([r["topk_overlap"] for r in z_agree])),
        mean_delta_loss=float((adv.loss_after - adv.loss_before).mean()),
        share_pred_changed=float((adv.pred_after != adv.pred_before).double().mean()),
        mean_delta_norm=float(adv.delta_norm.mean()),
    )


def _set(weights, theta0, delta) -> None:
    with torch.no_grad():
        for w, w0, d in zip(weights, theta0, delta):
            w.copy_(w0 + d)


def _logits(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]
