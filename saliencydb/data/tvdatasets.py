"""``torchvision:NAME:ROOT[:train|test]``: a torchvision dataset already on disk."""

from __future__ import annotations

import inspect
from typing import Any

import torchvision.datasets
from PIL import Image

from saliencydb.data.base import Source, _one_line
from saliencydb.data.transforms import Transform
from saliencydb.errors import DataError, SpecError

_MNIST_LIKE = ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST")
_CIFAR = ("CIFAR10", "CIFAR100")


class TorchvisionSource(Source):
    """``torchvision:NAME:ROOT[:train|test]``: a torchvision dataset already on disk (never downloads)."""

    decodes_files = False  # the torchvision datasets supported here hold their images in memory

    def __init__(self, spec: str, name: str, root: str, split: str) -> None:
        names = [n for n in torchvision.datasets.__all__ if inspect.isclass(getattr(torchvision.datasets, n))]
        if name not in names:
            raise SpecError(f"data spec '{spec}': torchvision has no dataset {name!r}; use one of MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100, ...")
        cls = getattr(torchvision.datasets, name)
        params = inspect.signature(cls).parameters
        if "train" in params:
            kwargs: dict[str, Any] = {"train": split == "train"}
        elif "split" in params:
            kwargs = {"split": split}
        else:
            raise SpecError(f"data spec '{spec}': torchvision dataset {name} has no train/test split; use imagefolder: or csv: instead")
        try:
            self._ds = cls(root, download=False, **kwargs)
        except TypeError as e:
            raise SpecError(f"data spec '{spec}': torchvision dataset {name} needs arguments this spec cannot give ({_one_line(e)}); use imagefolder: or csv:") from None
        except (RuntimeError, OSError, ValueError) as e:
            raise DataError(
                f"data spec '{spec}': {name} files are not under {root} ({_one_line(e)}); fetch them on a machine with "
                f"internet with torchvision.datasets.{name}('{root}', download=True) and copy the folder here"
            ) from None
        targets = getattr(self._ds, "targets", getattr(self._ds, "labels", None))
        self._targets = None if targets is None else [int(t) for t in targets]
        self._prefix = f"{name}/{split}/"
        classes = getattr(self._ds, "classes", None)
        default = Transform.preset("mnist") if name in _MNIST_LIKE else Transform.preset("cifar") if name in _CIFAR else None
        super().__init__(spec, [str(c) for c in classes] if classes else None, default)

    def __len__(self) -> int:
        return len(self._ds)

    def key(self, i: int) -> str:
        return f"{self._prefix}{i}"

    def label(self, i: int) -> int:
        return self._targets[i] if self._targets is not None else int(self._ds[i][1])

    def load(self, i: int) -> Image.Image:
        try:
            img = self._ds[i][0]
        except (OSError, ValueError, IndexError) as e:
            raise DataError(f"sample '{self.key(i)}': cannot read it ({_one_line(e)}); check the dataset files") from None
        if not isinstance(img, Image.Image):
            raise DataError(f"sample '{self.key(i)}': the dataset returned {type(img).__name__}, not a PIL image; use imagefolder: or csv:")
        return img
