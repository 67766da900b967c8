"""The names of a model's classes, from the model itself: a checkpoint's stored names, timm's ImageNet
label names, a module's ``class_names`` attribute; and the ImageNet synsets (WordNet ids such as
``n01440764``, in class-index order) by which ImageNet folders name the 1,000 classes."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from torch import nn

from ..errors import ModelError

# keys under which training scripts store the class names next to a state dict
NAME_KEYS = ("class_names", "classes", "categories", "idx_to_class", "class_to_idx")
IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in class-index order (sorted; the order torchvision's and timm's
    ImageNet classifiers use). Shipped with the package (``models/imagenet_synsets.txt``, from timm)."""
    text = (resources.files("saliencydb") / "models" / "imagenet_synsets.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def checkpoint_names(obj: Any, path: str) -> list[str] | None:
    """The class names a checkpoint stores beside its state dict (``class_names``, ``classes``,
    ``categories``: a list in class order; ``idx_to_class``: index -> name; ``class_to_idx``: name ->
    index), or None. Names that are not distinct strings covering 0..n-1 are refused in one line."""
    if not isinstance(obj, Mapping):
        return None
    key = next((k for k in NAME_KEYS if k in obj), None)
    if key is None:
        return None
    value = obj[key]
    try:
        if key == "class_to_idx":
            value = {int(i): n for n, i in dict(value).items()}
        if isinstance(value, Mapping):
            value = [value[i] for i in range(len(value))] if set(map(int, value)) == set(range(len(value))) else None
    except (TypeError, ValueError, KeyError):
        value = None
    if (not isinstance(value, (list, tuple)) or not value or not all(isinstance(n, str) and n for n in value)
            or len(set(value)) != len(value)):
        raise ModelError(f"weights file {path}: its '{key}' entry is not a list of distinct class names in class order "
                         "(or a name -> index map covering 0..n-1); fix it, or remove it and pass --classes")
    return [str(n) for n in value]


def module_names(module: nn.Module) -> list[str] | None:
    """A module's own ``class_names`` attribute (a list of distinct strings), else None."""
    names = getattr(module, "class_names", None)
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
        return [str(n) for n in names]
    return None


def timm_names(module: nn.Module) -> list[str] | None:
    """The label descriptions (first lemma, e.g. ``tench``) of a timm model with published ImageNet weights,
    from the label files timm ships (no download); None for another label set."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != int(getattr(module, "num_classes", -1)):
        return None
    names = [d.split(",")[0].strip() for d in info.label_descriptions()]
    if len(set(names)) != len(names):  # a lemma shared by two synsets (e.g. crane): keep those distinct
        names = [f"{n} ({s})" if names.count(n) > 1 else n for n, s in zip(names, info.label_names())]
    return names


def check_count(names: list[str] | None, n: int, what: str) -> list[str] | None:
    """``names`` when there is one per class; a one-line ModelError otherwise."""
    if names is not None and len(names) != n:
        raise ModelError(f"{what} names {len(names)} classes, but the model has {n} outputs; fix the names, or pass --classes")
    return names
