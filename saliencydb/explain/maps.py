"""Saliency maps for display and comparison: the B.2 post-processing, GradCAM, rank correlation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelError

if TYPE_CHECKING:  # torch is imported by the functions that need it: plotting stored maps does not
    import torch
    from torch import nn

# OpenCV's 3x3 Gaussian (sigma = 0.3 * ((3 - 1) / 2 - 1) + 0.8 = 0.8), as GaussianBlur(m, (3, 3), 0) uses
_G = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.8**2))
GAUSS3 = _G / _G.sum()


def blur3(m: np.ndarray) -> np.ndarray:
    """3x3 Gaussian blur of an (H, W) map, borders reflected (OpenCV's default border)."""
    p = np.pad(np.asarray(m, dtype=np.float64), 1, mode="reflect" if min(m.shape) > 1 else "edge")
    rows = GAUSS3[0] * p[:-2] + GAUSS3[1] * p[1:-1] + GAUSS3[2] * p[2:]
    return GAUSS3[0] * rows[:, :-2] + GAUSS3[1] * rows[:, 1:-1] + GAUSS3[2] * rows[:, 2:]


def display_map(m: np.ndarray, threshold_pct: float = 90.0, clip_pct: float = 99.0) -> np.ndarray:
    """An (H, W) map in [0, 1] for display: values below the 90th percentile set to 0, a 3x3 Gaussian
    blur, then clipped at the 99th percentile of the blurred map and divided by it."""
    m = np.asarray(m, dtype=np.float64)
    t = np.where(m >= np.percentile(m, threshold_pct), m, 0.0)
    b = blur3(t)
    hi = np.percentile(b, clip_pct)
    hi = hi if hi > 0 else b.max()
    return np.clip(b / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(b)


def top_pixels(m: np.ndarray, share: float) -> np.ndarray:
    """Flat indices of the ``share`` (0..1) largest pixels of an (H, W) map (at least one; ties by position)."""
    n = max(1, int(round(share * m.size)))
    return np.argsort(-np.asarray(m).ravel(), kind="stable")[:n]


def map_stats(m: np.ndarray) -> dict:
    """Numbers describing a raw (H, W) map."""
    flat = np.asarray(m, dtype=np.float64).ravel()
    total = flat.sum()
    top5 = top_pixels(m, 0.05)
    return {
        "height": int(m.shape[0]), "width": int(m.shape[1]),
        "max": float(flat.max()), "mean": float(flat.mean()),
        "p90": float(np.percentile(flat, 90)), "p99": float(np.percentile(flat, 99)),
        "top5pct_mass": float(flat[top5].sum() / total) if total > 0 else 0.0,
    }


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = np.arange(a.size)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally sized arrays (0.0 when either is constant)."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64).ravel()), _ranks(np.asarray(b, dtype=np.float64).ravel())
    if ra.size != rb.size:
        raise ValueError(f"arrays of {ra.size} and {rb.size} values")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / den) if den > 0 else 0.0


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    from torch import nn

    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError("the model has no nn.Conv2d layer; GradCAM needs one")
    return convs[-1]


def gradcam(model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: nn.Module | None = None) -> np.ndarray:
    """GradCAM (Selvaraju et al.) maps (B, H, W) at the output of ``layer`` (default: the last Conv2d) for the
    class ``target`` (B,): ReLU(sum_k mean_ij(d logit / d A_k) * A_k), bilinearly upsampled to the input size.

    Eval mode; the model's flags are restored and the temporary hook removed.
    """
    import torch
    import torch.nn.functional as F

    from ..models.modes import evaluating

    layer = layer if layer is not None else last_conv(model)[1]
    store = {}
    handle = layer.register_forward_hook(lambda mod, inp, out: store.__setitem__("a", out))
    try:
        with evaluating(model, grad=True):
            xin = x.detach().clone().requires_grad_(True)
            logits = model(xin)
            a = store["a"]
            score = logits.gather(1, torch.as_tensor(target, device=x.device).long().view(-1, 1)).sum()
            (g,) = torch.autograd.grad(score, a)
    finally:
        handle.remove()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a.detach()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0].numpy()


def overlay(image: np.ndarray, heat: np.ndarray, cmap: str = "inferno", max_alpha: float = 0.85) -> np.ndarray:
    """(H, W, 3) float RGB: the image in grey (or colour) under ``heat`` in [0, 1], whose alpha follows its value."""
    from matplotlib import colormaps

    base = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    base = 0.25 + 0.5 * base  # a dimmed background keeps the heat legible on black or white
    rgb = colormaps[cmap](heat)[..., :3]
    alpha = (max_alpha * heat)[..., None]
    return base * (1 - alpha) + rgb * alpha
