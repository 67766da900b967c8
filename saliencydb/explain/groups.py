"""Average standardised profiles of groups of samples (correct vs incorrect, within a split or a cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import QueryError
from ..results import Result
from ..saliency import UnitLayout, standardize
from ..saliency.normalise import prescale


@dataclass
class LayerMean(Result):
    """Mean and maximum of a group's mean standardised profile over one layer's units."""

    layer: str
    mean_z: float
    max_z: float


@dataclass
class GroupProfile(Result):
    """The mean standardised profile of one group (``z``: None when the group is empty; kept out of the JSON)."""

    name: str  # correct or incorrect
    count: int
    z: np.ndarray | None
    layers: list[LayerMean] | None  # per layer, in the model's order; None when the group is empty

    internal = ("z",)


@dataclass
class GroupProfiles(Result):
    """A ``group_profiles`` result: the correct and the incorrect samples of a scope."""

    scope: str  # "split S", "cluster C" or "all samples"
    out: str | None = None  # the figure, set by the caller that draws one
    groups: list[GroupProfile] = field(default_factory=list)

    def rows(self) -> list[dict]:
        """One row per layer: each group's mean z over it (the table and CSV output)."""
        layers = next((g.layers for g in self.groups if g.layers), [])
        by_name = {g.name: {l.layer: l.mean_z for l in (g.layers or [])} for g in self.groups}
        return [{"layer": l.layer, **{f"mean z ({name})": per.get(l.layer) for name, per in by_name.items()}} for l in layers]


def mean_profile(db, ids: np.ndarray, chunk: int = 4096) -> np.ndarray | None:
    """Mean standardised profile of the samples ``ids`` (None when there are none), read in bounded chunks.

    Standardisation is affine in the prescaled profile, so this is the standardised mean prescaled
    profile (summed in float64)."""
    if len(ids) == 0:
        return None
    norm = db.normaliser
    total = np.zeros(db.manifest.n_units, dtype=np.float64)
    for i in range(0, len(ids), chunk):
        sel = ids[i : i + chunk]
        dlogit = db.dlogit_norms(sel) if norm.needs_dlogit else None
        total += prescale(db.rows("raw_profile", sel), norm.name, dlogit).sum(0)
    return standardize(total / len(ids), norm.mean, norm.std)


def group_profiles(db, *, split: str | None = None, cluster: int | None = None) -> GroupProfiles:
    """Mean standardised profile of the correct and of the incorrect samples of a split, a cluster, or all."""
    if split is not None and cluster is not None:
        raise QueryError("give --split or --cluster, not both")
    where, scope = None, f"split {split}" if split is not None else "all samples"
    if cluster is not None:
        clusters = [r[0] for r in db._execute("SELECT DISTINCT cluster FROM clusters ORDER BY 1").fetchall()]
        if not clusters:
            raise QueryError("the database has no clusters yet; run `saliencydb clusters` first")
        if cluster not in clusters:
            raise QueryError(f"no cluster {cluster}; the clusters are {clusters[0]}..{clusters[-1]}")
        where, scope = f"sample_id IN (SELECT sample_id FROM clusters WHERE cluster = {int(cluster)})", f"cluster {cluster}"
    both = f"({where}) AND " if where else ""
    correct = db.ids_where(both + "correct", split)
    wrong = db.ids_where(both + "NOT correct", split)
    layout = UnitLayout.from_dict(db.manifest.units)
    out = GroupProfiles(scope=scope)
    for name, ids in (("correct", correct), ("incorrect", wrong)):
        z = mean_profile(db, ids)
        per_layer = None if z is None else [
            LayerMean(layer=l.name, mean_z=float(z[l.offset : l.stop].mean()), max_z=float(z[l.offset : l.stop].max()))
            for l in layout.layers]
        out.groups.append(GroupProfile(name=name, count=int(len(ids)), z=z, layers=per_layer))
    if not len(correct) and not len(wrong):
        raise QueryError(f"{scope} holds no samples")
    return out


def profile_plot(db, out, *, split: str | None = None, cluster: int | None = None) -> GroupProfiles:
    """``saliencydb profile-plot``: the mean standardised profiles of correct and incorrect samples
    (of ``split`` or of error group ``cluster``), drawn layer by layer to ``out`` (a PNG)."""
    from .figures import group_profile_figure
    from .outputs import check_out_file

    check_out_file(out)
    result = group_profiles(db, split=split, cluster=cluster)
    try:
        group_profile_figure(out, groups=[(g.name, g.z, g.count) for g in result.groups],
                             layout=UnitLayout.from_dict(db.manifest.units),
                             title=f"mean standardised saliency profile: {result.scope}")
    except OSError as e:
        raise QueryError(f"cannot write --out {str(out)!r}: {e.strerror or e}") from None
    result.out = out
    return result
