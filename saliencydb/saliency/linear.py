"""Linear units in the batched engine (docs/architecture.md, "The method").

For a linear layer ``out = a W^T + b`` applied to a sample's input ``a`` of shape (T, in) (T = 1
for a plain vector, the tokens of a sequence otherwise), the sample's weight gradient is
``G = g^T a`` (out, in), with ``g`` the gradient of its output (T, out). ``linear-out`` units
aggregate ``G`` over each row, ``linear-in`` units over each column. With T = 1 the gradient is
an outer product and the aggregate factorises exactly: ``mean_j |g_o a_j| = |g_o| mean_j |a_j|``
(and likewise the root mean square). Otherwise ``G`` is formed a block at a time (samples, or
unit slices of one sample), bounded by ``block_bytes``, reduced and dropped.

``nn.MultiheadAttention`` does not call its projections through ``Linear.forward``: during a
profiling pass its forward is replaced by ``mha_forward``, the same attention written out with
its two projections routed through the engine, so their gradients are seen too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ModelError
from .aggregates import aggregate_rows


def as_tokens(t: torch.Tensor, batch: int, what: str, merged: bool = False) -> torch.Tensor:
    """``t`` (B, ..., features) as (B, T, features); ModelError when its first dimension is not the batch.
    ``merged``: the first dimension is the batch times windows, batch-major (a windowed attention's)."""
    if merged and t.dim() >= 2 and t.shape[0] % batch == 0:
        return t.reshape(batch, -1, t.shape[-1])
    if t.dim() < 2 or t.shape[0] != batch:
        raise ModelError(f"{what} has shape {tuple(t.shape)}, whose first dimension is not the batch of {batch}; "
                         "only linear layers applied batch-first can be profiled")
    return t.reshape(batch, -1, t.shape[-1])


def reduce_linear(kind: str, a: torch.Tensor, g: torch.Tensor, aggregate: str, block_bytes: int) -> torch.Tensor:
    """Per sample, the aggregate of its weight gradient per unit: (B, out) for ``linear-out``, (B, in) for
    ``linear-in``. ``a``: the layer's input (B, T, in); ``g``: its output gradient (B, T, out)."""
    B, T, n_in = a.shape
    n_out = g.shape[-1]
    if T == 1:
        a1, g1 = a[:, 0], g[:, 0]
        if kind == "linear-out":
            return g1.abs() * aggregate_rows(a1, aggregate)[:, None]
        return a1.abs() * aggregate_rows(g1, aggregate)[:, None]
    out = torch.empty(B, n_out if kind == "linear-out" else n_in, dtype=torch.float32, device=a.device)
    per_sample = n_out * n_in * a.element_size()
    if per_sample <= block_bytes:
        step = max(1, block_bytes // per_sample)
        for s in range(0, B, step):
            grad = torch.bmm(g[s : s + step].transpose(1, 2), a[s : s + step])  # (b, out, in)
            out[s : s + step] = aggregate_rows(grad if kind == "linear-out" else grad.transpose(1, 2), aggregate)
        return out
    # one sample's gradient is larger than a block: form it a slice of units at a time
    width = n_in if kind == "linear-out" else n_out
    step = max(1, block_bytes // (width * a.element_size()))
    units = out.shape[1]
    for i in range(B):
        for u in range(0, units, step):
            if kind == "linear-out":
                grad = g[i, :, u : u + step].transpose(0, 1) @ a[i]  # (units, in)
            else:
                grad = a[i, :, u : u + step].transpose(0, 1) @ g[i]  # (units, out)
            out[i, u : u + step] = aggregate_rows(grad, aggregate)
    return out


def per_sample_linear_grad(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The per-sample weight gradients (B, out, in) of one call (for layers called more than once)."""
    return torch.bmm(g.transpose(1, 2), a)


def check_attention(module: nn.MultiheadAttention) -> None:
    """The configurations ``mha_forward`` reproduces exactly; any other is refused in one line."""
    why = None
    if not module._qkv_same_embed_dim:
        why = "separate q/k/v projection weights (kdim/vdim)"
    elif module.bias_k is not None or module.add_zero_attn:
        why = "add_bias_kv / add_zero_attn"
    if why:
        raise ModelError(f"nn.MultiheadAttention with {why} is not supported for linear units yet; use --units conv")


def mha_forward(module: nn.MultiheadAttention, project, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
    """``nn.MultiheadAttention.forward`` in eval mode, written out; ``project(weight, bias, x)`` applies
    each projection (the engine's, which records it). Self-attention only, without masks (the text
    masks come with text models)."""
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        raise ModelError("attention masks are not supported for linear units yet; use --units conv")
    if not (query is key and key is value):
        raise ModelError("cross-attention (query, key and value differ) is not supported for linear units yet")
    x = query if module.batch_first else query.transpose(0, 1)  # (B, T, E)
    B, T, E = x.shape
    H = module.num_heads
    d = E // H
    qkv = project(module.in_proj_weight, module.in_proj_bias, x)
    q, k, v = (t.reshape(B, T, H, d).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(d), dim=-1)  # (B, H, T, T)
    attended = (weights @ v).transpose(1, 2).reshape(B, T, E)
    out = project(module.out_proj.weight, module.out_proj.bias, attended)
    if not module.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


def windowed_attentions() -> tuple[type, ...]:
    """Modules that apply their projections functionally to windows merged into the batch dimension,
    batch-major (torchvision's Swin: ``x.view(B, ...).permute(0, ...).reshape(B * windows, ...)``)."""
    from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

    return (ShiftedWindowAttention, ShiftedWindowAttentionV2)


class FunctionalLinears(TorchFunctionMode):
    """Within a windowed attention's forward: every ``F.linear`` whose weight is a unit is recorded by
    ``record(weight, x, out)``."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.linear or func is torch._C._nn.linear:
            self.record(args[1], args[0], out)
        return out

