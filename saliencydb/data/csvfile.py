"""``csv:PATH`` with ``path`` and ``label`` columns: image files listed in a CSV (a CSV with a ``text`` column
holds sentences instead: ``data.text``)."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from saliencydb.data.base import Source, _label_kind, open_image
from saliencydb.errors import DataError, SpecError


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
