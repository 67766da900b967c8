"""A fault-tolerant torch Dataset over a source (``SampleDataset``) and the batches it collates into."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saliencydb.data.base import Source, _one_line
from saliencydb.data.transforms import Transform
from saliencydb.errors import DataError


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
