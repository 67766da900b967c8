"""``hf:PATH_OR_NAME[:SPLIT][?image=COL&label=COL&text=COL]``: a Hugging Face ``datasets`` dataset (images, or
sentences for a text model)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

from PIL import Image

from saliencydb.data.base import Source, _one_line
from saliencydb.errors import DataError, SaliencyDBError, SpecError

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
