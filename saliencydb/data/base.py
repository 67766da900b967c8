"""What every data source is: ``Source`` (a finite, indexable set of labelled samples) and the helpers the
source kinds share (opening an image file, printable keys, the kind of a label, one-line errors)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from saliencydb.errors import DataError

if TYPE_CHECKING:  # annotations only: data.transforms imports data.text, whose sources derive from Source
    from saliencydb.data.transforms import Transform

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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
