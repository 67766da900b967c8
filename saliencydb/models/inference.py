"""One forward pass with what every command reads off it: the prediction and the softmax
confidences of the true class, the predicted class and any other asked-for class."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .modes import evaluating


def logits_of(out) -> torch.Tensor:
    """The class scores of a model's output (models that return a tuple put them first)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def outputs_from_logits(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss, prediction and confidences per sample, from logits."""
    logits = logits.detach()
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    prob = logits.float().softmax(dim=1)
    pred_conf, pred = prob.max(dim=1)
    true_conf = prob.gather(1, y[:, None])[:, 0]
    return {"loss": loss, "pred": pred, "true_conf": true_conf, "pred_conf": pred_conf}


@dataclass
class Predictions:
    """Per row of a batch, on the CPU: the softmax probabilities (float32), the predicted class,
    its confidence, the true class's confidence, and the confidence of each row's ``classes``."""

    prob: torch.Tensor  # (B, K)
    pred: torch.Tensor  # (B,) int64
    pred_conf: torch.Tensor  # (B,)
    true_conf: torch.Tensor  # (B,)
    class_conf: torch.Tensor | None = None  # (B,) when classes were given


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor | None = None) -> Predictions:
    """Run ``model`` on ``x`` in eval mode (its modes restored after) and read the confidences."""
    with evaluating(model, grad=False):
        prob = F.softmax(logits_of(model(x)).float(), dim=1).cpu()
    conf, pred = prob.max(dim=1)
    pick = lambda c: prob.gather(1, torch.as_tensor(c).view(-1, 1).long())[:, 0]  # noqa: E731
    return Predictions(prob=prob, pred=pred, pred_conf=conf, true_conf=pick(labels),
                       class_conf=None if classes is None else pick(classes))
