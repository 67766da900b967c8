"""The three interventions (docs/architecture.md, "The method"; paper sections 3.1, 3.3, A.5, A.6) as edits of a model copy.

- prune: the weights of the chosen filters become 0 (biases kept);
- perturb: i.i.d. Gaussian noise of standard deviation ``sigma`` (0.001) is added to their weights;
- finetune: one SGD step ``W -= lr * dL/dW`` on the chosen filters only, ``L`` the cross-entropy of the
  target sample(s) (summed over a group) at the original weights, in eval mode. The random and
  least-salient controls have their gradient rescaled to the L2 norm of the salient filters' gradient
  (appendix B.1), so they move the model as far as the salient step does; the whole-network step (every
  parameter, gradient not rescaled) is a further control.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from ..errors import QueryError
from .editor import FilterEditor
from .filters import CHOICES, SALIENT, WHOLE_NETWORK

METHODS = ("prune", "perturb", "finetune")
DEFAULT_LR = 1e-3
DEFAULT_SIGMA = 1e-3


def check_method(method: str, allowed=METHODS) -> str:
    if method not in allowed:
        raise QueryError(f"--method {method!r} is unknown; use one of {', '.join(allowed)}")
    return method


def check_params(lr: float, sigma: float) -> None:
    if not np.isfinite(lr) or lr <= 0:
        raise QueryError(f"--lr must be a positive number, got {lr}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise QueryError(f"--sigma must be a positive number, got {sigma}")


def noise_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from integers (seed, sample or cluster, k, choice): one reproducible draw each."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def grad_scales(editor: FilterEditor, choices: dict[str, np.ndarray], grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per filter choice, the factor that gives its gradient the salient filters' gradient norm (1 for the
    salient choice; 0 when a control's gradient is exactly zero, as for filters that do not reach the loss)."""
    target = editor.grad_norm(choices[SALIENT], grads)
    scales = {}
    for name, units in choices.items():
        if name == SALIENT:
            scales[name] = 1.0
            continue
        norm = editor.grad_norm(units, grads)
        scales[name] = target / norm if norm > 0 else 0.0
    return scales


@contextmanager
def edited(editor: FilterEditor, method: str, units: np.ndarray | None, *, grads=None, lr: float = DEFAULT_LR,
           scale: float = 1.0, sigma: float = DEFAULT_SIGMA, generator: torch.Generator | None = None):
    """The model with one intervention applied, for the duration of the block; restored exactly afterwards.
    ``units=None`` (finetune only) steps the whole network."""
    with editor.editing(units):
        if units is None:
            if method != "finetune":
                raise QueryError("only fine-tuning has a whole-network control")
            editor.step_all(grads, lr)
        elif method == "prune":
            editor.zero(units)
        elif method == "perturb":
            editor.add_noise(units, sigma, generator if generator is not None else torch.Generator().manual_seed(0))
        elif method == "finetune":
            editor.step(units, grads, lr, scale)
        else:
            check_method(method)
        yield editor


def attempts_of(method: str) -> tuple[str, ...]:
    """The filter choices an intervention is run with, controls included."""
    return CHOICES + ((WHOLE_NETWORK,) if method == "finetune" else ())
