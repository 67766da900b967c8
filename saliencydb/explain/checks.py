"""Checks of the explanation, with numbers (appendix A.1, A.9, A.11).

- masking: set the top p% pixels of the input-space map to a fill value and measure the change in
  the true-class and predicted-class confidence; controls: the map of k random units, random pixels.
- SmoothGrad parameter saliency vs the plain profile: cosine, top-k overlap, prediction changes.
- cascading model randomisation: Spearman rank correlation of the input-space map with the original.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import QueryError
from ..results import Result
from ..saliency import ProfileEngine, RunningStats
from ..saliency.normalise import dlogit_norms, prescale
from ..saliency.input_space import random_units
from ..saliency.variants import agreement, smoothgrad_profiles
from .context import Explainer
from .maps import spearman, top_pixels

FILLS = ("mean", "black")  # "mean": 0 in the model's input space (the transform's zero); "black": normalised 0
SMOOTHGRAD_LEVELS = (0.01, 0.05, 0.1, 0.5)
SAMPLE_FIELDS = ("sample_id", "split", "key", "label_name", "pred_name", "correct")


def parse_levels(text: str) -> list[float]:
    """'0.01,0.05' -> [0.01, 0.05]: the noise levels of ``smoothgrad`` (empty items skipped; checked there)."""
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise QueryError(f"--levels {text!r} is not a comma-separated list of numbers such as 0.01,0.05") from None


@dataclass
class CheckedSample(Result):
    """The stored sample a check ran on."""

    sample_id: int
    split: str
    key: str
    label_name: str
    pred_name: str
    correct: bool

    @classmethod
    def of(cls, meta: dict) -> CheckedSample:
        return cls(**{k: meta[k] for k in SAMPLE_FIELDS})


@dataclass
class MaskingRow(Result):
    """The confidences before and after masking the top pixels of one map (or random pixels)."""

    masked_by: str  # salient units, random units or random pixels
    pixels: int
    pixels_changed: int  # masking an already-black pixel black changes nothing
    true_conf_before: float
    true_conf_after: float
    delta_true_conf: float
    pred_conf_before: float
    pred_conf_after: float  # the confidence of the ORIGINAL predicted class after masking
    delta_pred_conf: float
    pred_after: int
    pred_name_after: str


@dataclass
class Masking(Result):
    """A ``masking`` result."""

    sample: CheckedSample
    top_p: float
    fill: str
    fill_value: list[float]
    top_k: int
    seed: int
    maps_spearman: float  # how alike the salient-unit and the random-unit maps are
    results: list[MaskingRow]

    def rows(self) -> list[dict]:
        """One row per map (the CSV output)."""
        return [r.to_dict() for r in self.results]


@dataclass
class Correction(Result):
    """A mistake whose true-class confidence rose enough when its salient pixels were masked."""

    sample_id: int
    key: str
    label_name: str
    pred_name: str
    true_conf_before: float
    true_conf_after: float
    rise: float
    pred_name_after: str
    corrected: bool


@dataclass
class Corrections(Result):
    """A ``find_corrections`` result: the mistakes found, largest rise first, and the controls' counts."""

    split: str
    mistakes: int  # checked
    top_p: float
    fill: str
    min_rise: float
    found: int
    corrected: int
    found_with_random_units: int
    found_with_random_pixels: int
    samples: list[Correction]

    def rows(self) -> list[dict]:
        """One row per mistake found (the table and CSV output)."""
        return [r.to_dict() for r in self.samples]


@dataclass
class NoiseLevel(Result):
    """SmoothGrad parameter saliency at one noise level against the plain profile."""

    level: float
    noise_std: float
    cosine: float
    topk_overlap: float
    share_pred_changed: float
    majority_pred: str
    prediction_changed: bool


@dataclass
class SmoothGrad(Result):
    """A ``smoothgrad`` result."""

    sample: CheckedSample
    plain_pred: str
    n_noise: int
    k: int
    seed: int
    levels: list[NoiseLevel]

    def rows(self) -> list[dict]:
        """One row per noise level (the table and CSV output)."""
        return [r.to_dict() for r in self.levels]


@dataclass
class RandomizationStep(Result):
    """The map of the model with its last ``step`` conv/linear layers re-initialised."""

    step: int
    randomized: str  # the layers re-initialised, "(none)" for the original model
    spearman: float  # with the original model's map
    pred_name: str


@dataclass
class Randomization(Result):
    """A ``randomization`` result."""

    sample: CheckedSample
    top_k: int
    stats_samples: int
    seed: int
    steps: list[RandomizationStep]

    def rows(self) -> list[dict]:
        """One row per step (the table and CSV output)."""
        return [r.to_dict() for r in self.steps]


def mask_pixels(x: torch.Tensor, flat_idx: np.ndarray, fill: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` (1, C, H, W) with the pixels ``flat_idx`` (into H*W) set to ``fill`` (C, 1, 1) in every channel."""
    out = x.detach().clone()
    C, H, W = out.shape[1:]
    flat = out.view(1, C, H * W)
    flat[0][:, torch.as_tensor(flat_idx, dtype=torch.long)] = fill.view(C, 1).to(out.dtype)
    return out


def _check_share(top_p: float) -> float:
    if not 0 < top_p <= 100:
        raise QueryError(f"--top-p is a percentage of pixels in (0, 100], got {top_p}")
    return top_p / 100.0


def _conf_row(name: str, before: dict, after: dict, names: list[str], n_masked: int, n_changed: int) -> MaskingRow:
    pred = int(after["pred"][0])
    return MaskingRow(
        masked_by=name, pixels=n_masked, pixels_changed=n_changed,
        true_conf_before=float(before["true_conf"][0]), true_conf_after=float(after["true_conf"][0]),
        delta_true_conf=float(after["true_conf"][0] - before["true_conf"][0]),
        pred_conf_before=float(before["pred_conf"][0]),
        # the confidence of the ORIGINAL predicted class after masking
        pred_conf_after=float(after["prob"][0, int(before["pred"][0])]),
        delta_pred_conf=float(after["prob"][0, int(before["pred"][0])] - before["pred_conf"][0]),
        pred_after=pred, pred_name_after=names[pred],
    )


def masking(ex: Explainer, sample_id: int, *, top_p: float = 5.0, fill: str = "mean", top_k: int = 10,
            seed: int = 0) -> Masking:
    """Mask the top ``top_p`` % pixels of the sample's input-space map (boosting its top-k units) and report
    the confidence changes, with two controls: the map of ``top_k`` random units, and random pixels."""
    share = _check_share(top_p)
    fill_value = ex.fill_value(fill)
    s = ex.sample(sample_id)
    H, W = s.x.shape[-2:]
    units = ex.top_units(s.z, top_k)
    maps = {
        "salient units": ex.input_map(s.x, s.y, units=units)[0],
        "random units": ex.input_map(s.x, s.y, units=random_units(len(s.z), top_k, seed))[0],
    }
    selections = {name: top_pixels(m, share) for name, m in maps.items()}
    n = len(selections["salient units"])
    selections["random pixels"] = np.random.default_rng(seed).choice(H * W, size=n, replace=False)
    before = ex.confidences(s.x, s.y)
    rows = []
    for name, idx in selections.items():
        xm = mask_pixels(s.x, idx, fill_value)
        changed = int((xm != s.x).any(dim=1).sum())  # masking an already-black pixel black changes nothing
        rows.append(_conf_row(name, before, ex.confidences(xm, s.y), ex.class_names, n, changed))
    return Masking(
        sample=CheckedSample.of(s.meta), top_p=top_p, fill=fill, fill_value=fill_value.flatten().tolist(), top_k=top_k,
        seed=seed, maps_spearman=spearman(maps["salient units"], maps["random units"]), results=rows,
    )


def find_corrections(ex: Explainer, split: str, *, top_p: float = 5.0, fill: str = "mean", top_k: int = 10,
                     min_rise: float = 0.25, seed: int = 0, limit: int | None = None, progress=None) -> Corrections:
    """Misclassified samples of ``split`` whose true-class confidence rises by at least ``min_rise`` when the top
    ``top_p`` % pixels of their input-space map are masked (A.9); the same count with random-unit maps as a control."""
    share = _check_share(top_p)
    if not 0 <= min_rise <= 1:
        raise QueryError(f"--min-rise is a confidence difference in [0, 1], got {min_rise}")
    fill_value = ex.fill_value(fill)
    ids = ex.db.ids_where("NOT correct", split)
    if limit is not None:
        ids = ids[:limit]
    task = progress.task(f"masking the mistakes of {split}", len(ids), unit="samples") if progress else None
    found, control_hits, pixel_hits = [], 0, 0
    rng = np.random.default_rng(seed)
    for sid in ids.tolist():
        s = ex.sample(sid)
        before, masked = _masked_confidences(ex, s, sid, share, fill_value, top_k, seed, rng)
        control_hits += float(masked["random"]["true_conf"][0] - before["true_conf"][0]) >= min_rise
        pixel_hits += float(masked["pixels"]["true_conf"][0] - before["true_conf"][0]) >= min_rise
        rise = float(masked["salient"]["true_conf"][0] - before["true_conf"][0])
        if rise >= min_rise:
            pred = int(masked["salient"]["pred"][0])
            found.append(Correction(
                sample_id=sid, key=s.meta["key"], label_name=s.meta["label_name"], pred_name=s.meta["pred_name"],
                true_conf_before=float(before["true_conf"][0]), true_conf_after=float(masked["salient"]["true_conf"][0]),
                rise=rise, pred_name_after=ex.class_names[pred], corrected=pred == int(s.meta["label"])))
        if task:
            task.advance(1)
    if task:
        task.close()
    found.sort(key=lambda r: -r.rise)
    return Corrections(split=split, mistakes=int(len(ids)), top_p=top_p, fill=fill, min_rise=min_rise, found=len(found),
                       corrected=int(sum(r.corrected for r in found)), found_with_random_units=int(control_hits),
                       found_with_random_pixels=int(pixel_hits), samples=found)


def _masked_confidences(ex: Explainer, s, sid: int, share: float, fill_value: torch.Tensor, top_k: int, seed: int,
                        rng: np.random.Generator) -> tuple[dict, dict]:
    """The sample's confidences, and those with the top pixels of its salient-unit map, of a random-unit map
    and random pixels masked (``salient``, ``random``, ``pixels``)."""
    before = ex.confidences(s.x, s.y)
    masked = {}
    for name, units in (("salient", ex.top_units(s.z, top_k)), ("random", random_units(len(s.z), top_k, [seed, sid]))):
        m = ex.input_map(s.x, s.y, units=units)[0]
        masked[name] = ex.confidences(mask_pixels(s.x, top_pixels(m, share), fill_value), s.y)
    H, W = s.x.shape[-2:]
    n_px = max(1, int(round(share * H * W)))
    masked["pixels"] = ex.confidences(mask_pixels(s.x, rng.choice(H * W, size=n_px, replace=False), fill_value), s.y)
    return before, masked


def smoothgrad(ex: Explainer, sample_id: int, *, levels=SMOOTHGRAD_LEVELS, n: int = 32, k: int = 10,
               seed: int = 0) -> SmoothGrad:
    """SmoothGrad parameter saliency at each noise level vs the plain profile (both standardised).
    ``levels``: fractions of the input's range, or a comma-separated string of them."""
    if isinstance(levels, str):
        levels = parse_levels(levels)
    if any(level < 0 for level in levels):
        raise QueryError(f"noise levels must be >= 0, got {list(levels)}")
    if n < 1:
        raise QueryError(f"--n-noise must be at least 1, got {n}")
    _require_hooks(ex, "check smoothgrad profiles batches of noisy copies with module hooks")
    s = ex.sample(sample_id)
    engine = ProfileEngine(ex.model, aggregate=ex.aggregate, layout=ex.layout)
    plain = engine.profile(s.x, s.y)
    # SmoothGrad profiles are prescaled with the plain input's ||dL/dlogits|| (zscore-dlogit)
    dlogit = dlogit_norms(plain.logits, s.y).numpy()
    z_plain = ex.normaliser(plain.raw.numpy(), dlogit)[0]
    plain_pred = int(plain.pred[0])
    rows = []
    for level in levels:
        sg = smoothgrad_profiles(engine, s.x, s.y, level=level, n=n, seed=seed)
        z = ex.normaliser(sg.raw.numpy(), dlogit)[0]
        preds = sg.preds[0].numpy()
        majority = int(np.bincount(preds, minlength=len(ex.class_names)).argmax())
        rows.append(NoiseLevel(level=level, noise_std=float(sg.noise_std[0]), **agreement(z_plain, z, k),
                               share_pred_changed=float((preds != plain_pred).mean()),
                               majority_pred=ex.class_names[majority], prediction_changed=majority != plain_pred))
    return SmoothGrad(sample=CheckedSample.of(s.meta), plain_pred=ex.class_names[plain_pred], n_noise=n, k=k, seed=seed,
                      levels=rows)


def _require_hooks(ex: Explainer, what: str) -> None:
    """Refuse, in one line, a check that needs the model's modules on a TorchScript model (a compiled graph)."""
    if ex.scripted:
        raise QueryError(f"{what}; a TorchScript model takes no hooks and exposes no layers: index the model as "
                         "python:, torchvision:, timm: or hf: to run it")


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers in definition order (the randomisation cascade runs over them from the end)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and hasattr(m, "reset_parameters")]


def randomized_copy(model: nn.Module, k: int, seed: int = 0) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` with the last ``k`` conv/linear layers re-initialised (their default init, seeded)."""
    m = copy.deepcopy(model)
    layers = weighted_layers(m)[::-1][:k]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for _, layer in layers:
                layer.reset_parameters()
    return m.eval(), [name for name, _ in layers]


def _reference_stats(ex: Explainer, model: nn.Module, xs: torch.Tensor, ys: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    engine = ProfileEngine(model, aggregate=ex.aggregate, layout=ex.layout)
    stats = RunningStats(ex.layout.n_units)
    for i in range(0, len(xs), 128):
        out = engine.profile(xs[i : i + 128], ys[i : i + 128])
        stats.update(prescale(out.raw.double().numpy(), ex.normalisation, dlogit_norms(out.logits, ys[i : i + 128]).numpy()))
    return stats.mean, stats.std


def randomization(ex: Explainer, sample_id: int, *, top_k: int = 10, stats_samples: int = 256, seed: int = 0,
                  progress=None) -> Randomization:
    """Cascading model randomisation (Adebayo et al.; appendix A.11).

    Step k re-initialises the last k conv/linear layers. Each model's input-space map boosts the top-k units of
    its own standardised profile; the standardisation statistics of every model (the original included, for a
    like-for-like comparison) are recomputed over ``stats_samples`` evenly spaced samples of the database's
    statistics splits (0: use the database's statistics for all models).
    """
    if stats_samples < 0:
        raise QueryError(f"--stats-samples must be >= 0, got {stats_samples}")
    _require_hooks(ex, "check randomization re-initialises the model's layers and profiles each copy with module hooks")
    s = ex.sample(sample_id)
    ref = None
    if stats_samples:
        splits = ex.db.manifest.stats.splits
        pool = np.concatenate([ex.db.ids_where(split=sp) for sp in splits])
        pick = pool[np.linspace(0, len(pool) - 1, min(stats_samples, len(pool))).round().astype(int)]
        metas = [ex.db.sample(int(i)) for i in pick]
        ref = (torch.cat([ex.image_tensor(m["split"], m["key"]) for m in metas]),
               torch.tensor([int(m["label"]) for m in metas]))
    n_layers = len(weighted_layers(ex.model))
    task = progress.task("randomising layers", n_layers + 1, unit="models") if progress else None
    rows, original = [], None
    for k in range(n_layers + 1):
        model, names = randomized_copy(ex.model, k, seed)
        mean, std = _reference_stats(ex, model, *ref) if ref is not None else (ex.mean, ex.std)
        m = ex.input_map(s.x, s.y, top_k=top_k, model=model, mean=mean, std=std)[0]
        original = m if original is None else original
        pred = int(ex.confidences(s.x, s.y, model=model)["pred"][0])
        rows.append(RandomizationStep(step=k, randomized=", ".join(names) or "(none)", spearman=spearman(original, m),
                                      pred_name=ex.class_names[pred]))
        if task:
            task.advance(1)
    if task:
        task.close()
    return Randomization(sample=CheckedSample.of(s.meta), top_k=top_k,
                         stats_samples=stats_samples if ref is None else int(len(ref[1])), seed=seed, steps=rows)
