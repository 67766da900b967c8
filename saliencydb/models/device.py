"""``--device``: auto, cpu, cuda or cuda:N, checked against what this machine has."""

from __future__ import annotations

import torch

from ..errors import SpecError


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device named by ``device``; ``auto`` is the first GPU when one is visible."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SpecError(f"--device {device}: no CUDA device is visible here; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise SpecError(f"--device '{device}' is not a device; use auto, cpu or cuda[:N]") from None
