"""What the report shows, as plain data: ``gather`` fills it from a database, ``render`` turns it
into HTML. No I/O here, and nothing that reads a database or runs a model."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CLUSTER_THUMBS = 12  # members shown per error group, nearest the centre first
NEIGHBORS = 5  # neighbours shown per mistake and space
SPACES = ("saliency", "feature")


def space_order(space: str) -> int:
    """Sort key of a vector space: saliency, then feature, then any other."""
    return SPACES.index(space) if space in SPACES else len(SPACES)


@dataclass(frozen=True)
class Picture:
    """A PNG as a data URI, its size in pixels, and the side of the square frame it is shown in."""

    uri: str
    width: int
    height: int
    side: int
    text: str | None = None  # a text sample's sentence, shown instead of the (empty) picture


@dataclass
class Sample:
    """A stored sample as a picture shows it."""

    sample_id: int
    split: str
    key: str
    label_name: str
    pred_name: str
    correct: bool
    similarity: float | None = None  # cosine similarity to the query (a neighbour) or the group's centre (a member)
    picture: Picture | None = None  # its thumbnail


@dataclass
class About:
    """The header's facts about the database and the model."""

    db_path: str
    commit: int
    model_spec: str
    weights: str  # the weights file's name, or "built in"
    n_classes: int | None
    n_units: int
    n_layers: int
    generated: datetime  # when the report was gathered (UTC)


@dataclass
class SplitCounts:
    source: str  # the split's data source, "?" when the manifest has none
    samples: int
    accuracy: float
    mistakes: int


@dataclass
class Overview:
    splits: dict[str, SplitCounts]  # by split name
    samples: int
    mistakes: int
    accuracy: float | None  # None when there are no samples


@dataclass
class Share:
    """Share of misclassified samples among the knn neighbours of ``n`` queries, averaged over the queries."""

    n: int
    share: float
    same_confusion: float | None = None  # mistakes only: share of neighbours with the query's exact confusion


@dataclass
class SharedMistakes:
    k: int  # neighbours per sample in the knn table
    spaces: dict[str, dict[str, Share]]  # space -> {"incorrect" | "correct" (the queries): share}
    baselines: dict[str, dict[str, Share]] = field(default_factory=dict)  # neighbours chosen without the profile


@dataclass
class ErrorGroup:
    cluster: int
    size: int
    pairs: list[tuple[str, str, int]]  # (true, predicted, count): the most common confusions
    units: list[tuple[str, int, float]]  # (layer, channel, mean z): the most blamed filters
    members: list[Sample]  # nearest the centre first


@dataclass
class ErrorGroups:
    run: str | None  # the clustering run shown; None when there is none
    n_samples: int  # samples in that run
    groups: list[ErrorGroup] = field(default_factory=list)  # largest first


@dataclass
class Mistake:
    sample: Sample
    label: int
    pred_conf: float
    true_conf: float
    loss: float
    neighbors: dict[str, list[Sample]] = field(default_factory=dict)  # space -> nearest first; a space without any is absent
    searched: bool = False  # its neighbours were searched in an index, not read from the knn table
    input_map: Picture | None = None  # its input-space saliency map


@dataclass
class Mistakes:
    total: int  # mistakes in the database
    shown: list[Mistake]  # the most confident first
    spaces: list[str] = field(default_factory=list)  # the neighbour spaces, in display order
    knn_rows: bool = False  # the knn table holds rows
    maps_note: str | None = None  # why there are no input-space maps
    channel_reduce: str = "max-abs"  # how the input-space maps reduce a pixel's colour channels (max-abs or abs-max)


@dataclass
class GroupProfile:
    cluster: int
    size: int
    profile: np.ndarray  # mean standardised profile (U,)


@dataclass
class Profiles:
    layers: list  # the unit layout's layers (name, index, offset, stop)
    means: dict[bool, tuple[np.ndarray, int]] | None  # correct? -> (mean standardised profile, samples); None: not standardisable
    largest_group: GroupProfile | None = None


@dataclass
class ReportData:
    about: About
    overview: Overview
    shared: SharedMistakes | None  # None when the knn table is empty
    groups: ErrorGroups
    mistakes: Mistakes
    profiles: Profiles
    problems: dict[str, str]  # split -> why some of its pictures are grey squares
    absent: dict[str, str] = field(default_factory=dict)  # space -> why the database has no such space (no feature vectors)
