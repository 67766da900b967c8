"""Labelled sources named by a spec string: ``parse_data_spec`` (the catalog of source kinds, each in its own
module: ``data.folder``, ``data.csvfile``, ``data.tvdatasets``, ``data.builtin``, ``data.hf``, ``data.text``),
``absolute_data_spec`` and ``SourceCatalog``; and the names other packages import from here."""

from __future__ import annotations

import os
from pathlib import Path

from saliencydb.data.base import IMAGE_EXTENSIONS, Source, open_image, printable_key
from saliencydb.data.batches import Batch, SampleDataset, collate_samples, pad_tokens
from saliencydb.data.builtin import _BUILTIN_SPLITS, _BUILTINS, Mnist5kSource, SklearnDigitsSource
from saliencydb.data.csvfile import CsvSource
from saliencydb.data.folder import ImageFolderSource
from saliencydb.data.hf import HFDatasetSource, hf_data_is_local, split_hf_spec, with_hf_columns
from saliencydb.data.text import TextSource, csv_has_text
from saliencydb.data.tvdatasets import TorchvisionSource
from saliencydb.errors import SpecError

__all__ = [
    "DATA_SPEC_HELP", "IMAGE_EXTENSIONS", "Batch", "CsvSource", "HFDatasetSource", "ImageFolderSource", "Mnist5kSource",
    "SampleDataset", "SklearnDigitsSource", "Source", "SourceCatalog", "TextSource", "TorchvisionSource",
    "absolute_data_spec", "collate_samples", "hf_data_is_local", "open_image", "pad_tokens", "parse_data_spec",
    "printable_key", "split_hf_spec", "with_hf_columns",
]

DATA_SPEC_HELP = ("use imagefolder:PATH, csv:PATH (path,label columns; text,label for sentences), jsonl:PATH (text and label), torchvision:NAME:ROOT[:train|test], builtin:mnist5k[:train|val|all], "
                  "builtin:sklearn-digits[:train|val|all] or hf:PATH[:SPLIT][?image=COL&label=COL] (a Hugging Face dataset)")


def parse_data_spec(spec: str) -> Source:
    """Open the source a data spec names (see ``DATA_SPEC_HELP``); SpecError when the spec is malformed."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise SpecError(f"data spec '{spec}': missing KIND:ARGUMENT; {DATA_SPEC_HELP}")
    if kind == "imagefolder":
        return ImageFolderSource(spec, Path(rest).expanduser())
    if kind == "csv":
        path = Path(rest).expanduser()
        return TextSource(spec, path, "csv") if csv_has_text(path) else CsvSource(spec, path)
    if kind == "jsonl":
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
