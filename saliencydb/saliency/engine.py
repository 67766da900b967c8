"""The batched per-sample profile engine.

For a batch ``(x, y)`` it computes, for every sample ``i`` and every unit ``u``
(an output filter of a convolution), ``mean_w |dL_i/dw|`` over the weights of
the unit, with ``L_i = cross_entropy(f(x_i), y_i)`` and the model in eval mode.

How: one batched forward pass and one backward pass of ``sum_i L_i`` with respect
to the *input* only (no weight gradient is ever formed by autograd). Forward hooks
keep each convolution's input; a pre-hook on the convolution's autograd node
receives the gradient of its output. Because the model is in eval mode, samples
do not interact, so row ``i`` of that gradient is exactly ``dL_i/d out_i`` and the
per-sample weight gradient of the layer is a batched product of the unfolded
input with it. It is reduced to one number per filter at once and dropped, layer
by layer: at no time are the per-sample gradients of more than one layer held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .layout import Layer, UnitLayout
from .modes import evaluating

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



def outputs_from_logits(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss, prediction and confidences per sample, from logits."""
    logits = logits.detach()
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    prob = logits.float().softmax(dim=1)
    pred_conf, pred = prob.max(dim=1)
    true_conf = prob.gather(1, y[:, None])[:, 0]
    return {"loss": loss, "pred": pred, "true_conf": true_conf, "pred_conf": pred_conf}


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


def _reduce_bmm(module, x, g, padding, block_bytes) -> torch.Tensor:
    """Batched products over (sample, group) blocks: (b, G, O/G, P) x (b, G, P, K)."""
    B, O, Ho, Wo = g.shape
    G, P = module.groups, Ho * Wo
    K = module.weight[0].numel()
    per_sample = (x.shape[1] * module.kernel_size[0] * module.kernel_size[1] * P + O * K) * x.element_size()
    bs = max(1, min(B, block_bytes // max(per_sample, 1)))
    out = torch.empty(B, O, dtype=g.dtype, device=g.device)
    for i in range(0, B, bs):
        cols = _columns(module, x[i : i + bs], padding, Ho, Wo).reshape(-1, G, K, P)
        grad = torch.matmul(g[i : i + bs].reshape(-1, G, O // G, P), cols.transpose(-1, -2))
        out[i : i + bs] = torch.linalg.vector_norm(grad, ord=1, dim=-1).div_(K).reshape(-1, O)
    return out


def _reduce_mm(module, x, g, padding, block_bytes) -> torch.Tensor:
    """One plain matrix product per sample (groups == 1), on standalone operands."""
    B, O, Ho, Wo = g.shape
    P = Ho * Wo
    K = module.weight[0].numel()
    bs = max(1, min(B, block_bytes // max(K * P * x.element_size(), 1)))
    out = torch.empty(B, O, dtype=g.dtype, device=g.device)
    for i in range(0, B, bs):
        cols = _columns(module, x[i : i + bs], padding, Ho, Wo)
        gi = g[i : i + bs].reshape(-1, O, P)
        for j in range(gi.shape[0]):
            # standalone copies: some BLAS paths are far slower on views of a larger tensor
            grad = torch.mm(gi[j].clone(), cols[j].clone().t())
            out[i + j] = torch.linalg.vector_norm(grad, ord=1, dim=-1).div_(K)
    return out


def _reduce_conv(module, x, g, padding, block_bytes) -> torch.Tensor:
    """The convolution weight-gradient kernel with the batch folded into groups (groups == 1)."""
    B, O, Ho, Wo = g.shape
    C = x.shape[1]
    K = module.weight[0].numel()
    bs = max(1, min(B, block_bytes // max(O * K * x.element_size(), 1)))
    out = torch.empty(B, O, dtype=g.dtype, device=g.device)
    for i in range(0, B, bs):
        b = min(bs, B - i)
        grad = torch.nn.grad.conv2d_weight(
            x[i : i + b].reshape(1, b * C, *x.shape[2:]), (b * O, C, *module.kernel_size),
            g[i : i + b].reshape(1, b * O, Ho, Wo), stride=module.stride, padding=padding,
            dilation=module.dilation, groups=b)
        out[i : i + b] = torch.linalg.vector_norm(grad.reshape(b, O, K), ord=1, dim=-1).div_(K)
    return out


_REDUCERS = {"bmm": _reduce_bmm, "mm": _reduce_mm, "conv": _reduce_conv}
STRATEGIES = tuple(_REDUCERS)


class ProfileEngine:
    """Computes raw filter-wise saliency profiles of a model, a batch at a time.

    >>> engine = ProfileEngine(model)
    >>> out = engine.profile(x, y)        # out.raw: (B, engine.layout.n_units)

    The caller's model is left as it was found: training flags and ``requires_grad``
    flags are restored and no hook stays registered, even when profiling fails.
    """

    def __init__(self, model: nn.Module, *, block_bytes: int = _DEFAULT_BLOCK_BYTES, strategy: str | None = None):
        if strategy is not None and strategy not in STRATEGIES:
            raise ModelError(f"unknown engine strategy '{strategy}'; use one of {', '.join(STRATEGIES)}")
        self.model = model
        self.strategy = strategy
        self._chosen: dict = {}  # layer shape -> fastest strategy measured here
        self.has_linear = any(isinstance(m, nn.Linear) for m in model.modules())
        self.layout = UnitLayout.from_module(model)
        if not self.layout.layers:
            raise ModelError("the model has no convolution weights (4-D parameters): nothing to profile")
        self.block_bytes = block_bytes
        params = dict(model.named_parameters())
        modules = {id(m.weight): (name, m) for name, m in model.named_modules() if isinstance(getattr(m, "weight", None), torch.Tensor)}
        self._convs: list[tuple[Layer, nn.Conv2d]] = []
        for layer in self.layout.layers:
            mod_name, module = modules.get(id(params[layer.param_name]), (None, None))
            if not isinstance(module, nn.Conv2d):
                raise ModelError(
                    f"parameter '{layer.param_name}' is a 4-D weight but not the weight of an nn.Conv2d "
                    f"({type(module).__name__ if module is not None else 'no module'}); only Conv2d filters can be profiled"
                )
            self._convs.append((layer, module))

    # -- public -------------------------------------------------------------------------
    def profile(self, x: torch.Tensor, y: torch.Tensor) -> Profiles:
        """Raw profiles and outputs for the batch ``x`` (B, C, H, W) with labels ``y`` (B,)."""
        if x.dim() != 4:
            raise ModelError(f"expected a batch of images shaped (B, C, H, W), got shape {tuple(x.shape)}")
        y = y.to(device=x.device, dtype=torch.long)
        B = x.shape[0]
        raw = torch.zeros(B, self.layout.n_units, dtype=torch.float32, device=x.device)
        with evaluating(self.model, grad_params=[]):
            state = _PassState(self, raw)
            handles = []
            try:
                for layer, module in self._convs:
                    handles.append(module.register_forward_hook(state.conv_hook(layer, module)))
                for module in self.model.modules():
                    if isinstance(module, nn.Linear):
                        handles.append(module.register_forward_hook(state.linear_hook))
                x_in = x.detach().requires_grad_(True)
                logits = self.model(x_in)
                if not isinstance(logits, torch.Tensor):  # e.g. inception's named tuple in train mode
                    logits = logits[0]
                loss = F.cross_entropy(logits, y, reduction="none")
                if not loss.requires_grad:
                    raise ModelError("the model's output does not depend on its input through autograd; cannot profile it")
                torch.autograd.grad(loss.sum(), x_in)
                state.check_complete()
            finally:
                for h in handles:
                    h.remove()
        outs = outputs_from_logits(logits, y)
        feature = state.feature if state.feature is not None else state.fallback_feature
        return Profiles(raw=raw, logits=logits.detach(), feature=feature.detach().float(), **outs)

    # -- internals ----------------------------------------------------------------------
    def reduce_layer(self, module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """mean |per-sample weight gradient| per filter, (B, O).

        The per-sample gradients are formed for a block of samples at a time (blocks bounded
        by ``block_bytes``), reduced and dropped: the full (B, O, K) gradient of a large batch
        never exists. When the output has a single position, the gradient is the outer
        product of the output gradient and the input, and the mean |.| factorises exactly.
        Otherwise one of several exact strategies is used per layer shape: the one that
        measured fastest on this machine the first time the shape was seen (``strategy``
        forces one).
        """
        x, padding = _explicit_padding(module, x)
        B, O, Ho, Wo = g.shape
        G = module.groups
        if Ho * Wo == 1:
            cols = _columns(module, x, padding, Ho, Wo).reshape(B, G, -1)  # (B, G, K)
            per_group = cols.abs().mean(-1)  # (B, G)
            return g.reshape(B, G, O // G).abs().mul_(per_group[:, :, None]).reshape(B, O)
        strategies = STRATEGIES if G == 1 else ("bmm",)
        if self.strategy is not None:
            name = self.strategy if self.strategy in strategies else "bmm"
        else:
            key = (type(module), module.kernel_size, module.stride, module.dilation, G, tuple(x.shape[1:]), tuple(g.shape[1:]), x.dtype, x.device.type)
            name = self._chosen.get(key)
            if name is None:
                name = self._chosen[key] = self._tune(strategies, module, x, g, padding)
        return _REDUCERS[name](module, x, g, padding, self.block_bytes)

    def _tune(self, strategies, module, x, g, padding) -> str:
        if len(strategies) == 1:
            return strategies[0]
        import time

        b = max(1, min(x.shape[0], 8))
        best, best_t = strategies[0], float("inf")
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # time the work, not the launch
        for name in strategies:
            _REDUCERS[name](module, x[:b], g[:b], padding, self.block_bytes)  # warm-up
            sync()
            t = time.perf_counter()
            _REDUCERS[name](module, x[:b], g[:b], padding, self.block_bytes)
            sync()
            t = time.perf_counter() - t
            if t < best_t:
                best, best_t = name, t
        return best


class _PassState:
    """What one forward/backward pass collects; lives only for that pass."""

    def __init__(self, engine: ProfileEngine, raw: torch.Tensor):
        self.engine = engine
        self.raw = raw
        self.calls: dict[int, int] = {}  # layer index -> forward calls
        self.done: dict[int, int] = {}  # layer index -> backward calls received
        self.pending: dict[int, torch.Tensor] = {}  # per-sample grads of multi-call layers
        self.feature: torch.Tensor | None = None
        self.fallback_feature: torch.Tensor | None = None

    def linear_hook(self, module, inputs, output):
        self.feature = inputs[0].detach().flatten(1)

    def conv_hook(self, layer: Layer, module: nn.Conv2d):
        def hook(mod, inputs, output):
            x = inputs[0].detach()
            self.calls[layer.index] = self.calls.get(layer.index, 0) + 1
            if not self.engine.has_linear:  # the feature then falls back to the last conv output, pooled
                self.fallback_feature = output.detach().mean(dim=(2, 3))
            node = output.grad_fn
            if node is None:
                return
            node.register_prehook(self.grad_hook(layer, module, x))

        return hook

    def grad_hook(self, layer: Layer, module: nn.Conv2d, x: torch.Tensor):
        def prehook(grad_outputs):
            g = grad_outputs[0]
            if g is None:
                return None
            g = g.detach()
            i = layer.index
            self.done[i] = self.done.get(i, 0) + 1
            if self.calls[i] == 1:
                self.raw[:, layer.offset : layer.stop] = self.engine.reduce_layer(module, x, g)
            else:
                contribution = per_sample_weight_grad(module, x, g)
                self.pending[i] = contribution if i not in self.pending else self.pending[i].add_(contribution)
                if self.done[i] == self.calls[i]:
                    self.raw[:, layer.offset : layer.stop] = self.pending.pop(i).abs_().mean(-1)
            return None

        return prehook

    def check_complete(self) -> None:
        # Layers whose output never reaches the loss keep a zero profile, as in the
        # one-sample reference (their gradient is zero). Multi-call layers that saw
        # only some of their backward calls are finished here.
        for i, grad in list(self.pending.items()):
            layer = self.engine.layout.layers[i]
            self.raw[:, layer.offset : layer.stop] = grad.abs_().mean(-1)
        self.pending.clear()
