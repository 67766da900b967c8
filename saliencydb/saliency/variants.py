"""Variants of the parameter-saliency profile and their agreement with the plain one (appendix A.1).

SmoothGrad parameter saliency: the raw profile averaged over ``n`` copies of the input with
Gaussian noise of standard deviation ``level * (max(x) - min(x))`` (per sample), the gradient
still taken with respect to the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from .engine import ProfileEngine


@dataclass
class SmoothGradProfiles:
    raw: torch.Tensor  # (B, U) raw profile averaged over the noisy copies
    preds: torch.Tensor  # (B, n) prediction on each noisy copy
    noise_std: torch.Tensor  # (B,) the noise standard deviation used per sample


def smoothgrad_profiles(model: nn.Module | ProfileEngine, x: torch.Tensor, y: torch.Tensor, *, level: float,
                        n: int = 32, seed: int = 0) -> SmoothGradProfiles:
    """SmoothGrad raw profiles of the batch ``x`` (B, C, H, W); the n copies of a sample form one batch."""
    if n < 1:
        raise ModelError(f"the number of noisy copies must be at least 1, got {n}")
    if level < 0:
        raise ModelError(f"the noise level must be >= 0, got {level}")
    engine = model if isinstance(model, ProfileEngine) else ProfileEngine(model)
    y = torch.as_tensor(y).to(device=x.device, dtype=torch.long).reshape(-1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    raws, preds, stds = [], [], []
    for i in range(x.shape[0]):
        xi = x[i].detach()
        std = level * float(xi.max() - xi.min())
        noise = torch.randn((n, *xi.shape), generator=gen, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
        out = engine.profile(xi[None] + std * noise, y[i].repeat(n))
        raws.append(out.raw.double().mean(0).float())
        preds.append(out.pred)
        stds.append(std)
    return SmoothGradProfiles(torch.stack(raws), torch.stack(preds), torch.tensor(stds))


def agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict[str, float]:
    """Cosine similarity and top-k overlap (share of shared units among the k largest) of two profiles."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0
    k = min(k, a.size)
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return {"cosine": cosine, "topk_overlap": len(top_a & top_b) / k}
