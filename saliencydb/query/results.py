"""The typed answers of the query layer (``saliencydb.results.Result``): ``to_dict()`` is the JSON
the CLI prints with ``--format json`` (docs/database-format.md documents it), ``rows()`` the
rows of its table and CSV output."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..results import Result, plain

SPACE_ORDER = ("saliency", "feature")


# -- info -----------------------------------------------------------------------------------------


@dataclass
class ModelInfo(Result):
    spec: str
    weights: str | None
    weights_sha256: str
    num_classes: int
    transform: dict
    transform_source: str | None = None  # where the transform comes from (the weights' own, a stated guess, ...)
    random_seed: int | None = None  # --random-weights: the seed its weights are drawn under

    optional = ("transform_source", "random_seed")  # absent from the JSON when None, as before they were recorded


@dataclass
class UnitsInfo(Result):
    kind: str
    count: int
    layers: int
    aggregate: str
    excluded: list[str] = field(default_factory=list)  # "param: why" of the weights that are not units (linear layouts)
    profile_dtype: str | None = None  # how raw profiles are stored: float16 (scaled per row); None: float32
    profile_bytes: int | None = None  # bytes of one sample's stored profile, before compression (float16 only)

    optional = ("profile_dtype", "profile_bytes")  # absent from the JSON of a float32 database, as before the option


@dataclass
class SplitInfo(Result):
    source: str
    complete: bool
    samples: int
    accuracy: float | None
    mistakes: int
    failures: int


@dataclass
class StatsInfo(Result):
    splits: list[str]
    count: int
    frozen: bool
    normalisation: str = "zscore"  # the profile normalisation they are the statistics of
    source: str | None = None  # reference:NAME when shipped with the package (None: computed over ``splits``)


@dataclass
class IndexInfo(Result):
    kind: str  # as built (a kind with too few samples to train falls back to flat)
    requested: str
    ntotal: int
    stale: bool  # it does not cover every committed sample
    approximate: bool | None = None  # True for an IVF kind (its answers are approximate); absent for an exact index
    recall_at_10: float | None = None  # an approximate index: single queries' recall@10 against exact search
    graph_recall_at_10: float | None = None  # its own top 10 (the neighbour graph of `mistakes`)
    recall_queries: int | None = None  # the stored samples both were measured on
    nprobe: int | None = None
    rerank: int | None = None  # candidates a single query re-ranks by the exact profiles
    description: str | None = None  # one line: the kind, exact or approximate with its recall

    optional = ("approximate", "recall_at_10", "graph_recall_at_10", "recall_queries", "nprobe", "rerank", "description")


@dataclass
class Approximation(Result):
    """An answer searched in an approximate index: which, and its recall@10 against exact search as measured
    when it was built (storage.indexes.RecallProbe)."""

    index: str  # the kind: ivf-sq8, ivf, ivfpq
    recall_at_10: float | None  # None: built before recall was measured
    recall_queries: int | None
    nprobe: int | None
    rerank: int | None = None  # candidates re-ranked by the exact profiles (single queries)


@dataclass
class DerivedInfo(Result):
    base_commit: int | None
    stale: bool


@dataclass
class DatabaseInfo(Result):
    """``saliencydb info``: one version of a database summarised."""

    path: str
    format_version: int
    commit: int
    latest_commit: int | None
    versions: int
    operation: str | None
    model: ModelInfo
    units: UnitsInfo
    feature_dim: int
    metric: str
    samples: int
    splits: dict[str, SplitInfo]
    statistics: StatsInfo | None
    indexes: dict[str, IndexInfo]
    derived: dict[str, DerivedInfo]

    def rows(self) -> list[dict]:
        return [{"split": name, **plain(s)} for name, s in self.splits.items()]


# -- neighbours -----------------------------------------------------------------------------------


@dataclass
class SampleMeta(Result):
    """A sample's stored metadata (a new image's: ``sample_id`` and ``split`` are None, ``key`` its path)."""

    sample_id: int | None
    split: str | None
    key: str
    label: int
    label_name: str
    pred: int
    pred_name: str
    correct: bool
    loss: float
    true_conf: float
    pred_conf: float
    text: str | None = None  # a text sample's sentence (absent from the JSON for images)

    optional = ("text",)


@dataclass
class NeighborSummary(Result):
    """Shares of the neighbours that are misclassified, share the query's prediction, its exact
    confusion (a misclassified query only; else None) and its label."""

    neighbors: int
    share_misclassified: float | None = None
    share_same_prediction: float | None = None
    share_same_confusion: float | None = None
    share_same_label: float | None = None

    def to_dict(self) -> dict:
        if self.neighbors == 0:
            return {"neighbors": 0}
        return {"neighbors": self.neighbors, "share_misclassified": self.share_misclassified,
                "share_same_prediction": self.share_same_prediction, "share_same_confusion": self.share_same_confusion,
                "share_same_label": self.share_same_label}


# -- mistakes -------------------------------------------------------------------------------------


@dataclass
class Estimate(Result):
    """A mean with its percentile-bootstrap 95% interval."""

    mean: float | None
    ci95: list  # [low, high]
    n: int


@dataclass
class SpaceShares(Result):
    correct_neighbors_of_correct: Estimate
    correct_neighbors_of_incorrect: Estimate
    same_confusion_of_incorrect: Estimate


@dataclass
class SplitShares(Result):
    samples: int
    correct: int
    incorrect: int
    spaces: dict[str, SpaceShares] = field(default_factory=dict)  # in JSON, each space is a key of its own
    baselines: dict[str, SpaceShares] = field(default_factory=dict)  # neighbours chosen without the profile

    def to_dict(self) -> dict:
        doc = {"samples": self.samples, "correct": self.correct, "incorrect": self.incorrect,
               **{space: plain(s) for space, s in self.spaces.items()}}
        if self.baselines:
            doc["baselines"] = {name: plain(s) for name, s in self.baselines.items()}
        return doc


@dataclass
class MistakesReport(Result):
    """``saliencydb mistakes``: per split and space, the share of correctly classified samples among
    each sample's k nearest neighbours, and of a mistake's neighbours with its exact confusion."""

    k: int
    bootstrap: int
    seed: int
    splits: dict[str, SplitShares] = field(default_factory=dict)
    base_commit: int | None = None
    stored: bool = False
    normalisation: str = "zscore"  # the profile normalisation of the saliency space
    note: str | None = None  # e.g. the feature space is absent (a model without a feature vector); absent from the JSON when None
    approximate: dict[str, Approximation] | None = None  # space -> how its graph was searched approximately (None: exact)
    reused: bool | None = None  # True: the stored graph was this version's, for this k: read, not searched again

    optional = ("note", "approximate", "reused")

    def rows(self) -> list[dict]:
        """One row per split, space and group (correctly or incorrectly classified)."""
        rows = []
        for split, entry in self.splits.items():
            chosen = [(space, entry.spaces.get(space)) for space in SPACE_ORDER]
            chosen += [(f"baseline:{name}", e) for name, e in entry.baselines.items()]
            for space, e in chosen:
                if e is None:
                    continue
                for group, stat in (("correct", e.correct_neighbors_of_correct), ("incorrect", e.correct_neighbors_of_incorrect)):
                    rows.append({
                        "split": split, "space": space, "group": group, "samples": stat.n,
                        "correct_neighbors": stat.mean, "ci95_low": stat.ci95[0], "ci95_high": stat.ci95[1],
                        "same_confusion": e.same_confusion_of_incorrect.mean if group == "incorrect" else None,
                    })
        return rows


# -- clusters -------------------------------------------------------------------------------------


@dataclass
class Confusion(Result):
    pair: str  # "label -> prediction"
    count: int
    purity: float  # share of the group


@dataclass
class LayerScore(Result):
    layer: str
    mean_z: float


@dataclass
class UnitScore(Result):
    unit_id: int
    layer: str
    channel: int
    mean_z: float


@dataclass
class Exemplar(Result):
    sample_id: int
    key: str
    similarity: float
    text: str | None = None  # a text sample's sentence (absent from the JSON for images)

    optional = ("text",)


@dataclass
class ErrorGroup(Result):
    cluster: int
    size: int
    top_confusions: list[Confusion]
    top_layers: list[LayerScore]
    top_units: list[UnitScore]
    exemplars: list[Exemplar]


@dataclass
class ClustersResult(Result):
    """``saliencydb clusters``: k-means error groups over standardised profiles."""

    run: str
    n_clusters: int
    samples: int
    clusters: list[ErrorGroup]
    base_commit: int | None = None
    stored: bool = False
    images: dict | None = field(default=None, repr=False, compare=False)  # where the images are (html.image_context)
    reused: bool | None = None  # True: the stored groups were this version's, of this run: read, not clustered again

    internal = ("images",)
    optional = ("reused",)

    def _repr_html_(self) -> str:
        from .html import ImageLookup, clusters_html

        images = self.images or {}
        return clusters_html(self, ImageLookup(images.get("sources")), images.get("splits") or {})

    def rows(self) -> list[dict]:
        return [{
            "cluster": g.cluster, "size": g.size,
            "top_confusions": ", ".join(f"{p.pair} ({p.purity:.0%})" for p in g.top_confusions),
            "top_layers": ", ".join(l.layer for l in g.top_layers),
            "top_units": ", ".join(f"{u.layer}[{u.channel}]" for u in g.top_units),
            "exemplars": ", ".join(str(e.sample_id) for e in g.exemplars),
        } for g in self.clusters]


# -- triage ---------------------------------------------------------------------------------------


@dataclass
class GroupCount(Result):
    cluster: int
    new_mistakes: int


@dataclass
class LayerDrift(Result):
    layer: str
    reference_mean_z: float
    new_mean_z: float
    change: float


@dataclass
class TriageResult(Result):
    """``saliencydb triage``: a new split's mistakes assigned to known error groups or marked new."""

    split: str
    run: str
    new_mistakes: int
    known_groups: list[GroupCount]
    new_failure_mode: int
    reference_splits: list[str]
    groups_built_on: list[str]
    layer_drift: list[LayerDrift]
    base_commit: int | None = None
    stored: bool = False

    def rows(self) -> list[dict]:
        return [*({"group": g.cluster, "new_mistakes": g.new_mistakes} for g in self.known_groups),
                {"group": "new failure mode", "new_mistakes": self.new_failure_mode}]
