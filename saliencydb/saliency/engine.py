"""The batched per-sample profile engine.

For a batch ``(x, y)`` it computes, for every sample ``i`` and every unit ``u`` (an output
filter of a convolution), ``mean_w |dL_i/dw|`` over the weights of the unit (or, with the
``rms`` aggregate, their root mean square), with ``L_i = cross_entropy(f(x_i), y_i)`` and the
model in eval mode.

How: one batched forward pass and one backward pass of ``sum_i L_i`` through the activations
only (no weight gradient is ever formed by autograd; the pass stops at the convolutions that
read the input when nothing else does). Forward hooks keep each convolution's input; a
pre-hook on the convolution's autograd node receives the gradient of its output. Because the
model is in eval mode, samples do not interact, so row ``i`` of that gradient is exactly
``dL_i/d out_i`` and the per-sample weight gradient of the layer is a batched product of the
unfolded input with it. It is formed a block at a time in one reused workspace, reduced to one
number per filter and dropped, layer by layer: at no time are the per-sample gradients of more
than one block held. Each layer's way of forming them (strategy and block) follows a fixed rule on
its shape, dtype and device (``choose_reduction``), never a timing: the same model, inputs and
options give the same bytes on every run.
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .aggregates import DEFAULT_AGGREGATE, aggregate_rows, check_aggregate
from .layout import Layer, UnitLayout
from .linear import (FunctionalLinears, as_tokens, check_attention, mha_forward, per_sample_linear_grad, reduce_linear,
                     windowed_attentions)
from ..models.inference import outputs_from_logits
from ..models.modes import evaluating

_DEFAULT_BLOCK_BYTES = 8 * 2**20  # bound on each temporary (patches of a sample block; one gradient block)


@dataclass
class Profiles:
    """Per-sample results of one batch. All tensors have the batch as first dim."""

    raw: torch.Tensor  # (B, U) float32: mean |dL/dw| per unit
    logits: torch.Tensor  # (B, K)
    loss: torch.Tensor  # (B,)
    pred: torch.Tensor  # (B,) int64
    true_conf: torch.Tensor  # (B,) softmax probability of the true label
    pred_conf: torch.Tensor  # (B,) softmax probability of the predicted label
    feature: torch.Tensor  # (B, F) input of the last linear layer



def _explicit_padding(module: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as the convolution kernel sees it, and the padding still to apply (symmetric)."""
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), (0, 0)
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return x, (0, 0)
        # 'same': total padding dilation*(k-1), the extra pixel (if any) on the right/bottom
        pads = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads), (0, 0)
    return x, tuple(module.padding)


def _columns(module: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int], Ho: int, Wo: int) -> torch.Tensor:
    """The input patches each output position sees, (B, C_in * kh * kw, Ho * Wo), channel-major."""
    kh, kw = module.kernel_size
    if (kh, kw) == (1, 1) and padding == (0, 0):  # 1x1: a strided view, no unfold
        sh, sw = module.stride
        return x[:, :, ::sh, ::sw][:, :, :Ho, :Wo].reshape(x.shape[0], x.shape[1], Ho * Wo)
    return F.unfold(x, (kh, kw), dilation=module.dilation, padding=padding, stride=module.stride)


def per_sample_weight_grad(module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample gradient of a Conv2d weight, shaped (B, O, C_in/groups * kh * kw).

    ``x`` is the module's input (B, C, H, W) and ``g`` the gradient of its output (B, O, Ho, Wo).
    """
    x, padding = _explicit_padding(module, x)
    B, O, Ho, Wo = g.shape
    G = module.groups
    cols = _columns(module, x, padding, Ho, Wo).reshape(B, G, -1, Ho * Wo)
    return torch.matmul(g.reshape(B, G, O // G, Ho * Wo), cols.transpose(-1, -2)).reshape(B, O, -1)


class _Workspace:
    """One reusable buffer for the per-sample gradient blocks of a pass.

    Writing each block into fresh memory costs more than the product itself on a CPU
    (every new large allocation is paged in again); reusing one buffer keeps it resident.
    """

    def __init__(self):
        self._buf: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self._buf is None else self._buf.numel() * self._buf.element_size()

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buf
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buf = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def _scale(t: torch.Tensor) -> torch.Tensor:
    """Per-sample largest magnitude of ``t`` (B, ...), shaped to broadcast; 1 where it is 0."""
    top = t.detach().abs().amax(dim=tuple(range(1, t.dim())), keepdim=True)
    return torch.where(top > 0, top, torch.ones_like(top))


def _power_(grad: torch.Tensor, p: int) -> torch.Tensor:
    return grad.abs_() if p == 1 else grad.square_()


# Each reducer returns, per sample and filter, the sum over the filter's weights of
# |per-sample gradient| ** p (p = 1 for mean_abs, 2 for rms), shaped (B, O).

def _sample_blocks(module, x, g, padding, block):
    """Per block of ``block`` samples: (rows, patches (n*G, K, P), output gradient (n*G, O/G, P))."""
    B, O, Ho, Wo = g.shape
    G, P = module.groups, Ho * Wo
    K = module.weight[0].numel()
    for i in range(0, B, block):
        n = min(block, B - i)
        cols = _columns(module, x[i : i + n], padding, Ho, Wo).reshape(n * G, K, P)
        yield slice(i, i + n), cols, g[i : i + n].reshape(n * G, O // G, P)


def _reduce_bmm(module, x, g, padding, block, ws, p) -> torch.Tensor:
    """Batched products over blocks of ``block`` samples (all groups at once), into the workspace."""
    out = torch.empty(g.shape[:2], dtype=g.dtype, device=g.device)
    for rows, cols, gi in _sample_blocks(module, x, g, padding, block):
        grad = ws.get((*gi.shape[:2], cols.shape[1]), g)
        torch.bmm(gi, cols.transpose(1, 2), out=grad)
        torch.sum(_power_(grad, p), dim=-1, out=out[rows].view(gi.shape[:2]))
    return out


def _reduce_mm(module, x, g, padding, block, ws, p) -> torch.Tensor:
    """One matrix product per sample and chunk of ``block`` filters (groups == 1), into the workspace."""
    B, O, Ho, Wo = g.shape
    P = Ho * Wo
    K = module.weight[0].numel()
    out = torch.empty(B, O, dtype=g.dtype, device=g.device)
    g = g.reshape(B, O, P)
    for i in range(B):
        cols_t = _columns(module, x[i : i + 1], padding, Ho, Wo)[0].t()  # (P, K)
        for o in range(0, O, block):
            n = min(block, O - o)
            grad = ws.get((n, K), g)
            torch.mm(g[i, o : o + n], cols_t, out=grad)
            torch.sum(_power_(grad, p), dim=-1, out=out[i, o : o + n])
    return out


def _reduce_conv(module, x, g, padding, block, ws, p) -> torch.Tensor:
    """The convolution weight-gradient kernel over blocks of ``block`` samples folded into groups (groups == 1)."""
    B, O, Ho, Wo = g.shape
    C = x.shape[1]
    K = module.weight[0].numel()
    out = torch.empty(B, O, dtype=g.dtype, device=g.device)
    for i in range(0, B, block):
        n = min(block, B - i)
        grad = torch.nn.grad.conv2d_weight(
            x[i : i + n].reshape(1, n * C, *x.shape[2:]), (n * O, C, *module.kernel_size),
            g[i : i + n].reshape(1, n * O, Ho, Wo), stride=module.stride, padding=padding,
            dilation=module.dilation, groups=n)
        torch.sum(_power_(grad.reshape(n, O, K), p), dim=-1, out=out[i : i + n])
    return out


@functools.lru_cache(maxsize=256)
def _offset_groups(kernel, dilation, padding, stride, H: int, W: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Kernel offsets grouped by the output positions at which they read inside the image
    (not the zero padding): ((positions, offsets), ...)."""
    mask = F.unfold(torch.ones(1, 1, H, W), kernel, dilation=dilation, padding=padding, stride=stride)[0] > 0
    groups: dict[tuple[int, ...], list[int]] = {}
    for d in range(mask.shape[0]):
        positions = tuple(mask[d].nonzero().flatten().tolist())
        if positions:
            groups.setdefault(positions, []).append(d)
    return tuple((pos, tuple(offs)) for pos, offs in groups.items())


def _reduce_offsets(module, x, g, padding, block, ws, p) -> torch.Tensor:
    """For small zero-padded maps (groups == 1): the gradient block of the kernel offsets that read
    the image at the same output positions only, one block per such set. An offset that reads
    at a single position gives an outer product, whose sum of |.|**p factorises; the others
    are formed over those positions alone. Exact, and far less to write than the full product."""
    B, O, Ho, Wo = g.shape
    C, H, W = x.shape[1:]
    kk = module.kernel_size[0] * module.kernel_size[1]
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
    cols = cols.reshape(B, C, kk, Ho * Wo)
    g = g.reshape(B, O, Ho * Wo)
    out = torch.zeros(B, O, dtype=g.dtype, device=g.device)
    for positions, offsets in _offset_groups(module.kernel_size, module.dilation, padding, module.stride, H, W):
        pos = torch.tensor(positions, device=g.device)
        xs = cols[:, :, list(offsets)].index_select(3, pos).reshape(B, C * len(offsets), len(positions))
        gs = g.index_select(2, pos)  # (B, O, s)
        if len(positions) == 1:
            out += _power_(gs[:, :, 0].clone(), p) * _power_(xs[:, :, 0].clone(), p).sum(1, keepdim=True)
            continue
        for i in range(0, B, block):
            n = min(block, B - i)
            grad = ws.get((n, O, xs.shape[1]), g)
            torch.bmm(gs[i : i + n], xs[i : i + n].transpose(1, 2), out=grad)
            out[i : i + n] += _power_(grad, p).sum(-1)
    return out


def _reduce_gram(module, x, g, padding, block, ws, p) -> torch.Tensor:
    """Sums of squares without per-sample gradients (p == 2 only): ||g_o C^T||^2 = g_o (C^T C) g_o^T,
    with C the (K, P) input patches of a sample and group; costs P*P*(K + O) instead of O*K*P."""
    assert p == 2
    out = torch.empty(g.shape[:2], dtype=g.dtype, device=g.device)
    for rows, cols, gi in _sample_blocks(module, x, g, padding, block):
        gram = torch.bmm(cols.transpose(1, 2), cols)  # (n*G, P, P)
        torch.sum(torch.bmm(gi, gram).mul_(gi), dim=-1, out=out[rows].view(gi.shape[:2]))
    return out.clamp_min_(0)  # rounding can leave a hair below zero


_REDUCERS = {"bmm": _reduce_bmm, "mm": _reduce_mm, "conv": _reduce_conv, "offsets": _reduce_offsets, "gram": _reduce_gram}
STRATEGIES = ("bmm", "mm", "conv", "offsets")  # exact for every aggregate; "gram" is added for rms

# The rule that picks a layer's reduction (``choose_reduction``). Its constants come from timing
# every (strategy, block) on the layer shapes of ResNet-18/50, MobileNet-v3, DenseNet-121, ConvNeXt-atto
# and the demo CNN on a 2-core AMD EPYC (torch 2.14, oneDNN 3.12); they steer speed only, never the value.
OFFSETS_MAX_POSITIONS = 64  # the offsets form is considered on output maps this small or smaller
OFFSETS_MAX_SHARE = 0.5  # ... and used when it forms at most this share of the direct product
MAX_SAMPLE_BLOCK = 16  # samples per block of products (bmm, gram)
MAX_OFFSETS_BLOCK = 4  # samples per block of the offsets form
MAX_CONV_BLOCK = 32  # samples folded into the groups of one weight-gradient kernel call
MIN_CONV_BLOCK, CONV_BLOCK_FLOPS = 4, 64e6  # ... at least 4, else as many as make about this much work
CONV_FEW_CHANNELS, CONV_FEW_CHANNELS_FLOPS = 4, 8e6  # an input layer (<= 4 channels) this large: one sample a call
MM_FILTER_BLOCKS = (256, 64)  # filters per product when one sample's gradient exceeds ``block_bytes``


@dataclass(frozen=True)
class LayerShape:
    """What the choice of a layer's reduction may depend on: shapes, dtype, device, never the batch size."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]  # still to apply (zeros); other padding modes are applied to ``x`` already
    groups: int
    x: tuple[int, int, int]  # (C, H, W) of the (padded) input
    g: tuple[int, int, int]  # (O, Ho, Wo) of the output gradient
    itemsize: int
    device: str

    @classmethod
    def of(cls, module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, padding) -> "LayerShape":
        return cls(tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation), tuple(padding), module.groups,
                   tuple(x.shape[1:]), tuple(g.shape[1:]), x.element_size(), x.device.type)

    @property
    def positions(self) -> int:
        return self.g[1] * self.g[2]

    @property
    def patch(self) -> int:
        """Weights per filter, K."""
        return self.x[0] // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def gradient_bytes(self) -> int:
        """One sample's weight gradient, (O, K)."""
        return self.g[0] * self.patch * self.itemsize


def _pow2_block(each: int, budget: int, cap: int) -> int:
    """The largest power of two n <= cap with n * each <= budget; 1 when not even one fits."""
    n = 1
    while n * 2 <= cap and n * 2 * each <= budget:
        n *= 2
    return n


def _offsets_form(s: LayerShape) -> tuple[float, int]:
    """The share of the direct product the offsets form still forms (offsets that read at one position
    factorise), and its widest group of offsets (its block's size)."""
    groups = _offset_groups(s.kernel, s.dilation, s.padding, s.stride, s.x[1], s.x[2])
    formed = sum(len(pos) * len(offs) for pos, offs in groups if len(pos) > 1)
    widest = max([len(offs) for pos, offs in groups if len(pos) > 1], default=0)
    return formed / (s.kernel[0] * s.kernel[1] * s.positions), widest


def _block_for(name: str, s: LayerShape, block_bytes: int) -> int:
    """The block of ``name`` on a layer: samples (``bmm``, ``conv``, ``offsets``, ``gram``) or filters (``mm``),
    the largest (up to a cap) whose temporaries stay within ``block_bytes``; at least one."""
    O, K, P, G = s.g[0], s.patch, s.positions, s.groups
    if name == "mm":
        if s.gradient_bytes <= block_bytes:
            return O  # one product per sample
        fit = [ob for ob in MM_FILTER_BLOCKS if ob < O and ob * K * s.itemsize <= block_bytes]
        return fit[0] if fit else max(1, min(O, block_bytes // max(K * s.itemsize, 1)))
    if name == "conv":
        flops = 2 * O * K * P
        if s.x[0] // G <= CONV_FEW_CHANNELS and flops >= CONV_FEW_CHANNELS_FLOPS:
            return 1  # few channels per folded group run slowly: a large input layer goes one sample at a time
        n = max(MIN_CONV_BLOCK, _pow2_block(flops, CONV_BLOCK_FLOPS, MAX_CONV_BLOCK))
        return min(n, _pow2_block(s.gradient_bytes, block_bytes, MAX_CONV_BLOCK))
    if name == "offsets":
        return _pow2_block(O * s.x[0] * _offsets_form(s)[1] * s.itemsize, block_bytes, MAX_OFFSETS_BLOCK)
    if name == "gram":
        return _pow2_block(G * P * P * s.itemsize, block_bytes, MAX_SAMPLE_BLOCK)
    return _pow2_block(s.gradient_bytes + G * K * P * s.itemsize, block_bytes, MAX_SAMPLE_BLOCK)  # patches + gradient


def _rule(s: LayerShape, block_bytes: int, p: int) -> str:
    """The strategy for a layer shape (docs in ``choose_reduction``)."""
    O, K, P, G = s.g[0], s.patch, s.positions, s.groups
    cpu, zero_padded = s.device == "cpu", any(s.padding)
    if p == 2 and 2 * P * (K + O // G) <= (O // G) * K:
        return "gram"  # at least twice fewer products than the direct form
    if G > 1:
        return "bmm"
    if cpu and zero_padded and P <= OFFSETS_MAX_POSITIONS:
        share, widest = _offsets_form(s)
        if share <= OFFSETS_MAX_SHARE and O * s.x[0] * widest * s.itemsize <= block_bytes:
            return "offsets"
    if cpu and s.kernel != (1, 1) and 2 * P >= O and s.gradient_bytes <= block_bytes:
        return "conv"  # the patches would be at least half the gradient: the kernel never forms them
    if s.gradient_bytes > block_bytes:
        return "mm"
    return "bmm"


def choose_reduction(s: LayerShape, block_bytes: int, p: int, strategy: str | None = None) -> tuple[str, int]:
    """A layer's (strategy, block), by a fixed rule on its shape, dtype, device and ``block_bytes``:
    never by timing, nor by the batch size, so that the same inputs give the same bytes on every run.

    The strategies round differently (all are exact), so the choice is part of the arithmetic. The
    rule: ``gram`` (rms only) where it forms at most half the products of the direct form; grouped
    convolutions: ``bmm``; on a CPU, small zero-padded maps whose kernel offsets mostly read at one
    position: ``offsets``; on a CPU, kernels larger than 1x1 whose patches would be at least half as
    large as the gradient (2 * Ho * Wo >= O): the weight-gradient kernel (``conv``), which never
    forms the patches; one sample's gradient larger than a block: ``mm`` over blocks of filters;
    otherwise ``bmm``. Each block is the largest power of two whose temporaries fit (``_block_for``).
    ``strategy`` forces one (``bmm`` where it does not apply)."""
    if strategy is not None:
        name = strategy if s.groups == 1 or strategy in ("bmm", "gram") else "bmm"
    else:
        name = _rule(s, block_bytes, p)
    return name, _block_for(name, s, block_bytes)


@contextmanager
def cudnn_without_timing():
    """cuDNN's algorithms chosen by its fixed heuristics, not by timing them (``benchmark``), and only
    the deterministic ones, for the pass: its flags as they were afterwards."""
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved


def _units_by_module(model: nn.Module, layout: UnitLayout):
    """The convolutions, the linear modules and the attentions whose weights are units of ``layout``."""
    params = dict(model.named_parameters())
    owners: dict[int, nn.Module] = {}
    for module in model.modules():
        for attr in ("weight", "in_proj_weight"):
            w = getattr(module, attr, None)
            if isinstance(w, torch.Tensor):
                owners.setdefault(id(w), module)
    attention_of = {id(m.out_proj.weight): m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    windowed_types = windowed_attentions()
    windowed_of = {id(child): m for m in model.modules() if isinstance(m, windowed_types) for child in m.children()}
    convs, linears, attentions = [], [], {}
    for layer in layout.layers:
        w = params.get(layer.param_name)
        module = owners.get(id(w)) if w is not None else None
        if layer.kind == "conv":
            if not isinstance(module, nn.Conv2d):
                raise ModelError(
                    f"parameter '{layer.param_name}' is a 4-D weight but not the weight of an nn.Conv2d "
                    f"({type(module).__name__ if module is not None else 'no module'}); only Conv2d filters can be profiled"
                )
            convs.append((layer, module))
        elif isinstance(module, nn.MultiheadAttention) or id(w) in attention_of:
            attention = module if isinstance(module, nn.MultiheadAttention) else attention_of[id(w)]
            check_attention(attention)
            attentions[id(attention)] = attention
        elif isinstance(module, nn.Linear) and id(module) in windowed_of:
            attentions[id(windowed_of[id(module)])] = windowed_of[id(module)]
        elif isinstance(module, nn.Linear):
            linears.append((layer, module))
        else:
            raise ModelError(f"parameter '{layer.param_name}' is not the weight of an nn.Linear or an attention's "
                             "projection; it cannot be a linear unit")
    return convs, linears, list(attentions.values())


class ProfileEngine:
    """Computes raw filter-wise saliency profiles of a model, a batch at a time.

    >>> engine = ProfileEngine(model)
    >>> out = engine.profile(x, y)        # out.raw: (B, engine.layout.n_units)

    The caller's model is left as it was found: training flags and ``requires_grad``
    flags are restored and no hook stays registered, even when profiling fails.
    """

    def __init__(self, model: nn.Module, *, aggregate: str = DEFAULT_AGGREGATE, block_bytes: int = _DEFAULT_BLOCK_BYTES,
                 strategy: str | None = None, layout: UnitLayout | None = None):
        self.aggregate = check_aggregate(aggregate)
        self._p = 1 if aggregate == "mean_abs" else 2
        allowed = STRATEGIES + (("gram",) if self._p == 2 else ())
        if strategy is not None and strategy not in allowed:
            raise ModelError(f"unknown engine strategy '{strategy}' for the {aggregate} aggregate; use one of {', '.join(allowed)}")
        self.model = model
        self.strategy = strategy
        self._checked = False  # linear units: the first sample compared with the definition (``_self_check``)
        self.choices: dict[LayerShape, tuple[str, int]] = {}  # each layer shape's (strategy, block), by rule
        self._workspace = _Workspace()
        self.has_linear = any(isinstance(m, nn.Linear) for m in model.modules())
        self.layout = layout or UnitLayout.from_module(model)
        if not self.layout.layers:
            raise ModelError("the model has no convolution weights (4-D parameters) to profile; for a model of linear "
                             "layers (a ViT, an MLP) use --units linear or auto")
        self.block_bytes = block_bytes
        self._convs, self._linears, self._attentions = _units_by_module(model, self.layout)
        params = dict(model.named_parameters())
        self.linear_by_weight = {id(params[l.param_name]): l for l in self.layout.layers if l.kind != "conv"}

    # -- public -------------------------------------------------------------------------
    def profile(self, x: torch.Tensor, y: torch.Tensor) -> Profiles:
        """Raw profiles and outputs for the batch ``x`` (B, C, H, W) with labels ``y`` (B,)."""
        if x.dim() != 4 and (self._convs or x.dim() < 2):
            raise ModelError(f"expected a batch of images shaped (B, C, H, W), got shape {tuple(x.shape)}")
        y = y.to(device=x.device, dtype=torch.long)
        raw = torch.zeros(x.shape[0], self.layout.n_units, dtype=torch.float32, device=x.device)
        with evaluating(self.model, grad_params=[]), cudnn_without_timing():
            tokens = not x.is_floating_point()  # token ids (models.text): the pass starts at the embeddings
            x_in = x.detach() if tokens else x.detach().requires_grad_(True)
            state = _PassState(self, raw, x_in)
            handles = []
            try:
                if tokens:
                    handles += [m.register_forward_hook(state.embedding_hook) for m in self.model.modules()
                                if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
                for layer, module in self._convs:
                    handles.append(module.register_forward_hook(state.conv_hook(layer, module)))
                for layer, module in self._linears:
                    handles.append(module.register_forward_hook(state.linear_unit_hook(layer)))
                for module in self.model.modules():
                    if isinstance(module, nn.Linear):
                        handles.append(module.register_forward_hook(state.linear_hook))
                for module in self._attentions:  # their projections are routed through the pass (saliency.linear)
                    if isinstance(module, nn.MultiheadAttention):
                        module.forward = functools.partial(mha_forward, module, state.project)
                    else:
                        module.forward = functools.partial(state.windowed_forward, module)
                logits = self.model(x_in)
                if not isinstance(logits, torch.Tensor):  # e.g. inception's named tuple in train mode
                    logits = logits[0]
                loss = F.cross_entropy(logits, y, reduction="none")
                if not loss.requires_grad:
                    raise ModelError("the model's output does not depend on its input through autograd; cannot profile it")
                state.check_linear_calls()
                state.backward(loss.sum())
            finally:
                for h in handles:
                    h.remove()
                for module in self._attentions:
                    module.__dict__.pop("forward", None)
                state.entries.clear()  # they hold the graph, whose hooks hold the state: no cycle left
        if not self._checked and any(l.kind != "conv" for l in self.layout.layers):
            self._self_check(x[:1], y[:1], raw[0])
        outs = outputs_from_logits(logits, y)
        feature = state.feature if state.feature is not None else state.fallback_feature
        return Profiles(raw=raw, logits=logits.detach(), feature=feature.detach().float(), **outs)

    def _self_check(self, x1: torch.Tensor, y1: torch.Tensor, got: torch.Tensor) -> None:
        """Linear units: once per engine, the first sample's profile against the one-sample definition. A weight
        applied where the engine cannot see it (besides its module) would make them differ: refused, not stored."""
        from .reference import reference_profiles

        want = reference_profiles(self.model, x1, y1, self.layout, self.aggregate)[0]
        for layer in self.layout.layers:
            a, b = got[layer.offset : layer.stop].double(), want[layer.offset : layer.stop].double()
            scale = float(b.abs().max())
            if float((a - b).abs().max()) > 1e-3 * scale + 1e-30:
                raise ModelError(f"the profile of layer {layer.name} differs from its definition (per-sample autograd) on "
                                 "the first sample: the model applies that weight where the engine cannot see it; use "
                                 "--units conv, or call the layer through its module")
        self._checked = True

    @property
    def workspace_bytes(self) -> int:
        """Bytes held by the reusable per-sample gradient workspace (bounded by ``block_bytes``)."""
        return self._workspace.nbytes

    # -- internals ----------------------------------------------------------------------
    def reduce_layer(self, module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The aggregate of the per-sample weight gradient per filter, (B, O).

        The per-sample gradients are formed for a block of samples at a time (blocks bounded
        by ``block_bytes``), reduced and dropped: the full (B, O, K) gradient of a large batch
        never exists. When the output has a single position, the gradient is the outer
        product of the output gradient and the input, and the aggregate factorises exactly.
        Otherwise one of several exact strategies is used, chosen per layer shape by a fixed rule
        (``choose_reduction``: shapes, dtype, device and ``block_bytes``, never timing nor the batch
        size), so that the same model, inputs and options give the same bytes on every run;
        ``strategy`` forces one. For ``rms`` the Gram form avoids the per-sample gradient altogether.
        """
        x, padding = _explicit_padding(module, x)
        B, O, Ho, Wo = g.shape
        G, K = module.groups, module.weight[0].numel()
        if Ho * Wo == 1:
            cols = _columns(module, x, padding, Ho, Wo).reshape(B, G, -1)  # (B, G, K)
            per_group = aggregate_rows(cols, self.aggregate)  # (B, G)
            return g.reshape(B, G, O // G).abs().mul_(per_group[:, :, None]).reshape(B, O)
        shape = LayerShape.of(module, x, g, padding)
        choice = self.choices.get(shape)
        if choice is None:
            choice = self.choices[shape] = choose_reduction(shape, self.block_bytes, self._p, self.strategy)
        name, block = choice
        if self._p == 1:
            return _REDUCERS[name](module, x, g, padding, block, self._workspace, 1).div_(K)
        # squares of small float32 gradients underflow: work on each sample's input and output
        # gradient divided by their largest magnitude (the gradient is bilinear in the two)
        sx, sg = _scale(x), _scale(g)
        sums = _REDUCERS[name](module, x / sx, g / sg, padding, block, self._workspace, 2)
        return sums.div_(K).sqrt_().mul_((sx * sg).reshape(B, 1))


class _PassState:
    """What one forward/backward pass collects; lives only for that pass."""

    def __init__(self, engine: ProfileEngine, raw: torch.Tensor, x_in: torch.Tensor):
        self.engine = engine
        self.raw = raw
        self.x_in = x_in
        self.calls: dict[int, int] = {}  # layer index -> forward calls
        self.done: dict[int, int] = {}  # layer index -> backward calls received
        self.pending: dict[int, torch.Tensor] = {}  # per-sample grads of multi-call layers
        self.entries: list[tuple] = []  # convolutions applied to the input itself
        self.stop_at_entries = False
        self.feature: torch.Tensor | None = None
        self.fallback_feature: torch.Tensor | None = None
        self.leaves: list[torch.Tensor] = []  # embedding outputs: where the backward pass of token inputs ends

    def embedding_hook(self, module, inputs, output):
        """Token inputs carry no gradient: each embedding's output becomes a leaf that does."""
        if isinstance(output, torch.Tensor) and output.is_floating_point() and not output.requires_grad:
            output.requires_grad_(True)
            self.leaves.append(output)

    def linear_hook(self, module, inputs, output):
        self.feature = inputs[0].detach().flatten(1)

    def linear_unit_hook(self, layer: Layer):
        def hook(mod, inputs, output):
            self.record_linear(layer, inputs[0], output)

        return hook

    def project(self, weight: torch.Tensor, bias, x: torch.Tensor) -> torch.Tensor:
        """A projection of a rewritten attention (saliency.linear.mha_forward): applied, and recorded when
        its weight is a unit."""
        out = F.linear(x, weight, bias)
        layer = self.engine.linear_by_weight.get(id(weight))
        if layer is not None:
            self.record_linear(layer, x, out)
        return out

    def windowed_forward(self, module: nn.Module, *args, **kwargs):
        """A windowed attention's own forward, its functional projections recorded (saliency.linear)."""
        def record(weight, x, out):
            layer = self.engine.linear_by_weight.get(id(weight))
            if layer is not None:
                self.record_linear(layer, x, out, merged=True)

        with FunctionalLinears(record):
            return type(module).forward(module, *args, **kwargs)

    def record_linear(self, layer: Layer, a: torch.Tensor, out: torch.Tensor, merged: bool = False) -> None:
        """A linear unit layer was applied: keep its input, and receive its output's gradient."""
        B = self.raw.shape[0]
        a = as_tokens(a.detach(), B, f"the input of {layer.name}", merged)
        self.calls[layer.index] = self.calls.get(layer.index, 0) + 1
        node = out.grad_fn
        if node is None:
            return

        def prehook(grad_outputs):
            if grad_outputs[0] is not None:
                self.receive_linear(layer, a, as_tokens(grad_outputs[0].detach(), B, f"the output of {layer.name}", merged))
            return None

        node.register_prehook(prehook)

    def receive_linear(self, layer: Layer, a: torch.Tensor, g: torch.Tensor) -> None:
        i = layer.index
        self.done[i] = self.done.get(i, 0) + 1
        if self.calls[i] == 1:
            self.raw[:, layer.offset : layer.stop] = reduce_linear(layer.kind, a, g, self.engine.aggregate,
                                                                   self.engine.block_bytes)
            return
        contribution = per_sample_linear_grad(a, g)
        if layer.kind == "linear-in":
            contribution = contribution.transpose(1, 2)
        self.pending[i] = contribution if i not in self.pending else self.pending[i].add_(contribution)
        if self.done[i] == self.calls[i]:
            self.raw[:, layer.offset : layer.stop] = aggregate_rows(self.pending.pop(i), self.engine.aggregate)

    def check_linear_calls(self) -> None:
        """A linear unit whose weight the forward pass never applied through its module (nor a rewritten
        attention) may have been used functionally, out of the engine's sight: refused, never guessed."""
        for layer in self.engine.layout.layers:
            if layer.kind != "conv" and not self.calls.get(layer.index):
                raise ModelError(f"the weight of {layer.name} was not applied through its module in the forward pass "
                                 "(unused, or used functionally, e.g. F.linear(x, module.weight)); its linear units "
                                 "cannot be profiled exactly: use --units conv, or a model that calls the module")

    def conv_hook(self, layer: Layer, module: nn.Conv2d):
        def hook(mod, inputs, output):
            x = inputs[0].detach()
            self.calls[layer.index] = self.calls.get(layer.index, 0) + 1
            if not self.engine.has_linear:  # the feature then falls back to the last conv output, pooled
                self.fallback_feature = output.detach().mean(dim=(2, 3))
            node = output.grad_fn
            if node is None:
                return
            entry = inputs[0] is self.x_in
            if entry:
                self.entries.append((layer, module, x, output, node))
            node.register_prehook(self.grad_hook(layer, module, x, entry))

        return hook

    def grad_hook(self, layer: Layer, module: nn.Conv2d, x: torch.Tensor, entry: bool):
        def prehook(grad_outputs):
            if entry and self.stop_at_entries:
                return None  # its gradient is returned by autograd.grad and received there
            if grad_outputs[0] is not None:
                self.receive(layer, module, x, grad_outputs[0].detach())
            return None

        return prehook

    def receive(self, layer: Layer, module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> None:
        """The gradient of one call's output has arrived: reduce it (or add it up, for shared layers)."""
        i = layer.index
        self.done[i] = self.done.get(i, 0) + 1
        if self.calls[i] == 1:
            self.raw[:, layer.offset : layer.stop] = self.engine.reduce_layer(module, x, g)
        else:
            contribution = per_sample_weight_grad(module, x, g)
            self.pending[i] = contribution if i not in self.pending else self.pending[i].add_(contribution)
            if self.done[i] == self.calls[i]:
                self.raw[:, layer.offset : layer.stop] = aggregate_rows(self.pending.pop(i), self.engine.aggregate)

    def backward(self, loss: torch.Tensor) -> None:
        """Run the backward pass; every conv's output gradient reaches :meth:`receive`.

        The gradient of the input itself is never needed. When the input is consumed only by
        convolutions whose outputs were not modified in place, the pass stops at those outputs
        (their gradients are returned directly), which skips the first layer's input gradient.
        """
        self.stop_at_entries = self._input_only_feeds_entries(loss)
        if self.stop_at_entries:
            grads = torch.autograd.grad(loss, [e[3] for e in self.entries], allow_unused=True)
            for (layer, module, x, _, _), g in zip(self.entries, grads):
                if g is not None:
                    self.receive(layer, module, x, g.detach())
        elif self.leaves:
            torch.autograd.grad(loss, self.leaves, allow_unused=True)
        elif self.x_in.requires_grad:
            torch.autograd.grad(loss, self.x_in)
        else:
            raise ModelError("the model's output does not depend on its input through autograd (token ids that reach no "
                             "nn.Embedding); cannot profile it")
        self.check_complete()

    def _input_only_feeds_entries(self, loss: torch.Tensor) -> bool:
        if not self.entries or any(out.grad_fn is not node for *_, out, node in self.entries):
            return False  # none, or an entry's output was modified in place after the conv
        entry_nodes = {id(e[4]) for e in self.entries}
        seen, stack = set(), [loss.grad_fn]
        while stack:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            for nxt, _ in node.next_functions:
                if nxt is not None and getattr(nxt, "variable", None) is self.x_in and id(node) not in entry_nodes:
                    return False  # something other than an entry conv consumes the input
                if id(node) not in entry_nodes:
                    stack.append(nxt)
        return True

    def check_complete(self) -> None:
        # Layers whose output never reaches the loss keep a zero profile, as in the
        # one-sample reference (their gradient is zero). Multi-call layers that saw
        # only some of their backward calls are finished here.
        for i, grad in list(self.pending.items()):
            layer = self.engine.layout.layers[i]
            self.raw[:, layer.offset : layer.stop] = aggregate_rows(grad, self.engine.aggregate)
        self.pending.clear()
