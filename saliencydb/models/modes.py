"""Temporary model state for a computation: eval mode and chosen ``requires_grad`` flags,
restored on exit whatever happens, so callers' models are left as they were found."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch
from torch import nn


@contextmanager
def evaluating(model: nn.Module, grad_params: Iterable[torch.Tensor] | None = None, *, grad: bool = True):
    """Eval mode (batch-norm running statistics, no dropout) for the duration of the block.

    ``grad_params``: when given, exactly these parameters require grad inside the block (an
    empty list: none, so autograd forms no weight gradient); None leaves the flags alone.
    ``grad``: whether autograd is enabled inside the block.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        if grad_params is not None:
            wanted = {id(p) for p in grad_params}
            for p, _ in flags:
                p.requires_grad_(id(p) in wanted)
        with torch.set_grad_enabled(grad):
            yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)
