"""Labelled sentences (``jsonl:PATH``, ``csv:PATH`` with a ``text`` column) and the tokenizer transform
that turns one into the token tensor a text model takes (docs/architecture.md, "A data source").

A text sample is a sentence and a label: a class (index or name) for sequence classification, or
the target word of the sentence's one mask token for masked-LM. The transform is the model's own
tokenizer; it yields a (2, L) int64 tensor, token ids over an attention mask of ones, which
``collate_samples`` pads to the batch's longest sentence (mask 0 where padded)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch

from saliencydb.data.base import Source, _label_kind, _one_line
from saliencydb.errors import DataError, SpecError

TEXT_TASKS = ("sequence-classification", "masked-lm")


def _rows_jsonl(spec: str, path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    """(line number, object) per non-blank line; a line that is not a JSON object stays as its error."""
    rows: list[tuple[int, dict[str, Any] | str]] = []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                rows.append((n, f"line {n} of {path.name} is not JSON ({e.msg}); fix or drop it"))
                continue
            rows.append((n, obj if isinstance(obj, dict) else f"line {n} of {path.name} is not a JSON object; "
                                                                'write {"text": ..., "label": ...}'))
    return rows


def _rows_csv(spec: str, path: Path) -> list[tuple[int, dict[str, Any] | str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        rows: list[tuple[int, dict[str, Any] | str]] = []
        for n, row in enumerate(reader, start=2):
            if any(cell.strip() for cell in row):
                rows.append((n, dict(zip(header, row))))
    return rows


def csv_has_text(path: Path) -> bool:
    """Whether a CSV's header names a ``text`` column (a text source, not one of image paths)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return "text" in [h.strip() for h in next(csv.reader(f), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


class TextSource(Source):
    """``jsonl:PATH`` (one ``{"text": ..., "label": ...}`` object per line) or ``csv:PATH`` with ``text``
    and ``label`` columns. An optional ``id`` field names a sample (else ``FILE#LINE``).

    Labels are names (a class name, or for masked-LM the target word) matched by the indexer to the
    database's classes, or whole class indices. A row without text or label is a per-sample failure.
    """

    decodes_files = False
    labels_are_names = True
    modality = "text"

    def __init__(self, spec: str, path: Path, kind: str) -> None:
        if not path.is_file():
            raise SpecError(f"data spec '{spec}': file {path} does not exist; give a {kind.upper()} file of text,label rows")
        try:
            rows = _rows_jsonl(spec, path) if kind == "jsonl" else _rows_csv(spec, path)
        except UnicodeDecodeError as e:
            raise SpecError(f"data spec '{spec}': {path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                            f"{e.start}); save it as UTF-8") from None
        except (OSError, csv.Error) as e:
            raise SpecError(f"data spec '{spec}': cannot read {path} ({_one_line(e)}); fix the file") from None
        if not rows:
            raise SpecError(f"data spec '{spec}': {path} has no rows; add one per sentence with text and label")
        if kind == "csv" and not any(isinstance(r, dict) and "label" in r for _, r in rows):
            raise SpecError(f"data spec '{spec}': {path} has no label column; its first line must name text,label")
        self._keys: list[str] = []
        self._texts: list[str | None] = []
        raw_labels: list[str] = []
        self._bad: dict[int, str] = {}
        seen: dict[str, int] = {}
        for line, row in rows:
            i = len(self._keys)
            given = row.get("id") if isinstance(row, dict) else None
            key = str(given).strip() if given is not None and str(given).strip() else f"{path.name}#{line}"
            if key in seen:
                raise SpecError(f"data spec '{spec}': line {line} of {path} repeats id '{key}' (line {seen[key]}); ids must be unique")
            seen[key] = line
            self._keys.append(key)
            text, label = (row.get("text"), row.get("label")) if isinstance(row, dict) else (None, None)
            text = text if isinstance(text, str) and text.strip() else None
            label = None if label is None or isinstance(label, (dict, list, bool)) else str(label).strip() or None
            self._texts.append(text)
            raw_labels.append(label or "")
            if isinstance(row, str):
                self._bad[i] = row
            elif text is None or label is None:
                self._bad[i] = f"line {line} of {path.name} lacks {'a text' if text is None else 'a label'}; fill both"
        good = [label for j, label in enumerate(raw_labels) if j not in self._bad]
        names = sorted(set(good))
        index = {name: k for k, name in enumerate(names)}  # a row without a label fails at load: its 0 is never used
        self._labels = [index.get(label, 0) for label in raw_labels]
        self.whole_numbers = bool(good) and all(_label_kind(label) == "index" for label in good)
        super().__init__(spec, names, None)

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> str:
        return self._keys[i]

    def label(self, i: int) -> int:
        return self._labels[i]

    def text(self, i: int) -> str | None:
        """The sentence of sample ``i`` (None for a row without one)."""
        return self._texts[i]

    def load(self, i: int) -> str:
        if i in self._bad:
            raise DataError(f"sample '{self._keys[i]}': {self._bad[i]}")
        return self._texts[i]


class TokenTransform:
    """A text model's tokenizer as a transform: a sentence -> (2, L) int64 (token ids; attention mask).

    For masked-LM the sentence must hold the tokenizer's mask token exactly once, within
    ``max_length`` tokens; otherwise the sample fails (DataError), it is never guessed."""

    modality = "text"
    input_shape = None

    def __init__(self, tokenizer_dir: str, task: str, max_length: int) -> None:
        if task not in TEXT_TASKS:
            raise SpecError(f"text task {task!r} is unknown; use one of {', '.join(TEXT_TASKS)}")
        self.tokenizer_dir, self.task, self.max_length = str(tokenizer_dir), task, int(max_length)
        self.tokenizer = _load_tokenizer(self.tokenizer_dir)
        self.mask_token = self.tokenizer.mask_token
        if task == "masked-lm" and self.tokenizer.mask_token_id is None:
            raise SpecError(f"the tokenizer in {tokenizer_dir} has no mask token; a masked-lm model needs one")

    def __call__(self, text: Any) -> torch.Tensor:
        if not isinstance(text, str):
            raise DataError(f"a text model's transform got {type(text).__name__}, not a sentence; give text data "
                            "(jsonl:PATH or csv:PATH with a text column)")
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        if self.task == "masked-lm":
            wanted = self.tokenizer.mask_token_id
            n = sum(1 for t in ids if t == wanted)
            if n != 1:
                full = sum(1 for t in self.tokenizer(text)["input_ids"] if t == wanted)
                if full == 1:
                    raise DataError(f"its {self.mask_token} lies beyond the first {self.max_length} tokens")
                raise DataError(f"the sentence has {'no' if full == 0 else full} {self.mask_token} token"
                                f"{'' if full == 0 else 's'}; a masked-lm sample has exactly one")
        return torch.stack([torch.tensor(ids, dtype=torch.long), torch.ones(len(ids), dtype=torch.long)])

    def resolve_label(self, name: str, vocab: dict[str, int]) -> tuple[int | None, str | None]:
        """Masked-LM: the token id of a target word, or why it has none (not exactly one token)."""
        # a word after a space first: byte-level BPE vocabularies (RoBERTa) mark it, WordPiece ignores it
        for form in (" " + name, name):
            ids = self.tokenizer(form, add_special_tokens=False)["input_ids"]
            if len(ids) == 1 and (ids[0] != self.tokenizer.unk_token_id or name == self.tokenizer.unk_token):
                return int(ids[0]), None
        if self.task == "masked-lm" and name in vocab:
            return vocab[name], None
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        if len(ids) == 1:
            return None, f"target word '{name}' is not in the vocabulary (it tokenizes to {pieces[0]})"
        return None, (f"target word '{name}' is {len(ids)} tokens ({' '.join(pieces)}), not one token of the vocabulary"
                      if ids else f"target word '{name}' has no token")

    def tokens(self, ids: torch.Tensor) -> list[str]:
        """The token strings of one sample's ids (its padding dropped)."""
        return self.tokenizer.convert_ids_to_tokens([int(t) for t in ids])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "tokens", "tokenizer": self.tokenizer_dir, "task": self.task, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenTransform:
        try:
            return cls(d["tokenizer"], d["task"], int(d["max_length"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"token transform {d!r} is malformed ({e}); it needs tokenizer, task and max_length") from None


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def _load_tokenizer(path: str) -> Any:
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in _TOKENIZER_FILES):
        # transformers would build an empty tokenizer from the config alone: every word [UNK], silently
        raise SpecError(f"{path} holds no tokenizer ({', '.join(_TOKENIZER_FILES[:3])}, ...); save it next to the "
                        "model with tokenizer.save_pretrained(DIR)")
    try:
        import transformers
    except ImportError:
        raise SpecError("text models need the transformers package; install it with pip install 'saliencydb[hf]'") from None
    try:
        return transformers.AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many types for a missing or broken tokenizer
        raise SpecError(f"cannot load the tokenizer saved in {path} ({type(e).__name__}: {_one_line(e)}); save it next "
                        "to the model with tokenizer.save_pretrained(DIR)") from None
