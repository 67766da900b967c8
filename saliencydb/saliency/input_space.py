"""Input-space saliency: which pixels drive the sample's salient filters (docs/architecture.md, "The method").

For one sample the standardised profile ``s(x)`` is computed with a differentiable
graph: the per-sample weight gradients of the convolutions are formed with
``create_graph=True``, reduced to ``mean |g|`` per output filter (in the
``UnitLayout`` order) and standardised with the frozen ``mean``/``std``. The target
``b`` is ``s`` detached with the chosen units (its top-k by default) multiplied by
``boost``. With ``g = d cos(s(x), b) / dx`` the map is ``max over channels |g|`` (``max-abs``,
the default), or ``|max over channels g|`` (``abs-max``, the authors' published code), see
``reduce_channels``.

This needs a second-order backward pass per sample, so it loops over the batch; it
is an explanation tool for a handful of samples, not an indexing path.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .aggregates import DEFAULT_AGGREGATE, aggregate_rows
from .layout import UnitLayout
from .normalise import DEFAULT_NORMALISATION, Normaliser, check_normalisation
from ..models.modes import evaluating

#: how a pixel's colour channels become one map value (``reduce_channels``); the first is the default
CHANNEL_REDUCTIONS = ("max-abs", "abs-max")
DEFAULT_CHANNEL_REDUCE = CHANNEL_REDUCTIONS[0]


def check_channel_reduce(how: str) -> str:
    if how not in CHANNEL_REDUCTIONS:
        raise ModelError(f"unknown channel reduction {how!r}; use {' or '.join(CHANNEL_REDUCTIONS)}")
    return how


def reduce_channels(g: torch.Tensor, how: str = DEFAULT_CHANNEL_REDUCE) -> torch.Tensor:
    """Signed input gradients (B, C, H, W) -> maps (B, H, W), one value per pixel.

    ``max-abs``: ``max_c |g|``, the largest magnitude of any channel. ``abs-max``: ``|max_c g|``, the
    absolute value of the channel-wise maximum of the signed gradient, as the authors' code computes
    it: a pixel whose strongest channel is negative counts only its largest (signed) channel, so
    channels (-3, 1, 2) give 3 and 2. With one channel both are ``|g|``.
    """
    if check_channel_reduce(how) == "max-abs":
        return g.abs().amax(dim=1)
    return g.amax(dim=1).abs()


def random_units(n_units: int, k: int, seed: int | Sequence[int] = 0) -> np.ndarray:
    """``k`` distinct unit ids drawn uniformly from ``range(n_units)`` (sorted, int64): the control set.

    ``seed`` is anything ``numpy.random.default_rng`` accepts (e.g. ``[seed, sample_id]`` for one set per sample)."""
    if not 1 <= k <= n_units:
        raise ModelError(f"cannot draw {k} random units out of {n_units}; use 1 <= k <= {n_units}")
    return np.sort(np.random.default_rng(seed).choice(n_units, size=k, replace=False)).astype(np.int64)


def conv_weights(model: nn.Module, layout: UnitLayout) -> list[torch.Tensor]:
    """The 4-D weights of the layout, in its order."""
    params = dict(model.named_parameters())
    return [params[layer.param_name] for layer in layout.layers]


def differentiable_profile(model: nn.Module, x1: torch.Tensor, y1: torch.Tensor, layout: UnitLayout,
                           weights: Sequence[torch.Tensor], aggregate: str = DEFAULT_AGGREGATE,
                           return_dlogit: bool = False):
    """The raw profile (U,) of ONE sample ``x1`` (1, C, H, W), as a function of ``x1`` (graph kept);
    with ``return_dlogit``, also ||dL/dlogits|| (0-d, differentiable too).

    The caller sets eval mode and ``requires_grad`` on ``weights`` (see ``input_saliency``).
    """
    logits = model(x1)
    if not isinstance(logits, torch.Tensor):
        logits = logits[0]
    loss = F.cross_entropy(logits, y1)
    grads = torch.autograd.grad(loss, list(weights), create_graph=True, allow_unused=True)
    parts = []
    for layer, g in zip(layout.layers, grads):
        if g is None:  # a layer that does not reach the loss: zero saliency, no dependence on x
            parts.append(torch.zeros(layer.out_channels, dtype=x1.dtype, device=x1.device))
        else:
            rows = g.t() if layer.kind == "linear-in" else g.flatten(1)
            parts.append(aggregate_rows(rows, aggregate, differentiable=True))
    if return_dlogit:
        residual = logits.softmax(dim=1) - F.one_hot(y1, logits.shape[1]).to(logits.dtype)
        return torch.cat(parts), residual.norm()
    return torch.cat(parts)


def _check_units(units, n_units: int) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(units, dtype=np.int64).ravel())
    if idx.numel() == 0:
        raise ModelError("units to boost is empty; give at least one unit id")
    if int(idx.min()) < 0 or int(idx.max()) >= n_units:
        raise ModelError(f"unit ids must lie in 0..{n_units - 1}; got {idx.tolist()}")
    return torch.unique(idx)


def input_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, *, top_k: int = 10,
                   boost: float = 100.0, units=None, aggregate: str = DEFAULT_AGGREGATE,
                   normalisation: str = DEFAULT_NORMALISATION, layout: UnitLayout | None = None,
                   channel_reduce: str = DEFAULT_CHANNEL_REDUCE) -> torch.Tensor:
    """Input-space saliency maps, shaped (B, H, W), for the batch ``x`` (B, C, H, W) with labels ``y`` (B,).

    ``mean``/``std``: the per-unit standardisation statistics (U,) of the profile ``normalisation``
    (saliency.normalise; its prescale is applied to the differentiable profile). ``units``: unit ids to boost for
    every sample instead of each sample's own top ``top_k``. ``aggregate``: the database's profile
    aggregate (``mean_abs`` or ``rms``). ``channel_reduce``: ``max-abs`` or ``abs-max`` (``reduce_channels``).
    The model is evaluated in eval mode; its
    training and ``requires_grad`` flags are restored, no hook is registered, ``x`` and ``y`` are not
    modified and no ``.grad`` is written.
    """
    if x.dim() != 4:
        raise ModelError(f"expected a batch of images shaped (B, C, H, W), got shape {tuple(x.shape)}")
    check_channel_reduce(channel_reduce)
    y = torch.as_tensor(y).to(device=x.device, dtype=torch.long).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ModelError(f"{x.shape[0]} images but {y.shape[0]} labels")
    layout = layout or UnitLayout.from_module(model)
    if not layout.layers:
        raise ModelError("the model has no convolution weights (4-D parameters): no input-space saliency")
    U = layout.n_units
    mean_t = torch.tensor(np.array(mean, dtype=np.float64), device=x.device).to(x.dtype).reshape(-1)
    std_t = torch.tensor(np.array(std, dtype=np.float64), device=x.device).to(x.dtype).reshape(-1)
    if mean_t.numel() != U or std_t.numel() != U:
        raise ModelError(f"mean/std have {mean_t.numel()}/{std_t.numel()} entries but the model has {U} units")
    if units is not None:
        chosen = _check_units(units, U).to(x.device)
    elif not 1 <= top_k <= U:
        raise ModelError(f"top-k must lie in 1..{U}, got {top_k}")
    weights = conv_weights(model, layout)
    norm = Normaliser(check_normalisation(normalisation), mean_t.double().cpu().numpy(), std_t.double().cpu().numpy())
    maps = []
    # a second-order backward pass: attention through the math kernel (the fused CPU/GPU kernels have no double backward)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with evaluating(model, grad_params=weights), sdpa_kernel([SDPBackend.MATH]):
        for i in range(x.shape[0]):
            xi = x[i : i + 1].detach().clone().requires_grad_(True)
            g = _boosted_gradient(model, xi, y[i : i + 1], layout, weights, aggregate, norm,
                                  chosen if units is not None else None, top_k, boost)
            maps.append(reduce_channels(g, channel_reduce)[0])
    return torch.stack(maps)


def _boosted_gradient(model, xi, yi, layout, weights, aggregate, norm, chosen, top_k: int, boost: float) -> torch.Tensor:
    """d cos(s(x), b) / dx for one sample: ``b`` is its standardised profile with the ``chosen`` units
    (else its top ``top_k``) multiplied by ``boost``."""
    raw, dlogit = differentiable_profile(model, xi, yi, layout, weights, aggregate, return_dlogit=True)
    s = norm.torch(raw, dlogit)
    target = s.detach().clone()
    idx = chosen if chosen is not None else torch.topk(target, top_k).indices
    target[idx] = target[idx] * boost
    (g,) = torch.autograd.grad(F.cosine_similarity(s, target, dim=0), xi)
    return g.detach()


class _FromEmbeddings(nn.Module):
    """A text model (``models.text``) run on given word embeddings of one token tensor ``x``."""

    def __init__(self, model: nn.Module, x: torch.Tensor):
        super().__init__()
        self.model, self.x = model, x

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.model(self.x, inputs_embeds=embeds)


def token_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, *, top_k: int = 10,
                   boost: float = 100.0, units=None, aggregate: str = DEFAULT_AGGREGATE,
                   normalisation: str = DEFAULT_NORMALISATION, layout: UnitLayout | None = None) -> torch.Tensor:
    """Token-level input saliency of ONE sentence ``x`` (1, 2, L) of a text model: the boosted-unit
    objective of ``input_saliency`` differentiated with respect to the word embeddings, one score per
    token, the L2 norm of that gradient over the embedding dimension; (L,) for the sentence's tokens
    (padding dropped). Same arguments and guarantees as ``input_saliency``."""
    if x.dim() != 3 or x.shape[0] != 1 or x.is_floating_point() or not hasattr(model, "embeddings"):
        raise ModelError("token saliency takes one sentence's token tensor (1, 2, L) of a text model")
    layout = layout or UnitLayout.from_module(model)
    U = layout.n_units
    mean_np, std_np = np.array(mean, dtype=np.float64).reshape(-1), np.array(std, dtype=np.float64).reshape(-1)
    if mean_np.size != U or std_np.size != U:
        raise ModelError(f"mean/std have {mean_np.size}/{std_np.size} entries but the model has {U} units")
    chosen = _check_units(units, U) if units is not None else None
    if chosen is None and not 1 <= top_k <= U:
        raise ModelError(f"top-k must lie in 1..{U}, got {top_k}")
    weights = conv_weights(model, layout)
    norm = Normaliser(check_normalisation(normalisation), mean_np, std_np)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    n = int(x[0, 1].sum())
    with evaluating(model, grad_params=weights), sdpa_kernel([SDPBackend.MATH]):
        e = model.embeddings(x).detach().clone().requires_grad_(True)
        g = _boosted_gradient(_FromEmbeddings(model, x), e, torch.as_tensor(y).reshape(1).long(), layout, weights,
                              aggregate, norm, chosen, top_k, boost)
    return g[0, :n].norm(dim=-1)
