"""The selected units as a boolean mask per weight tensor, for methods that edit only the weights a
saliency score selects (e.g. SalUn): ``saliencydb mask``.

The units are the top-k of a standardised profile: a sample's stored one (``sample_id``) or an error
group's mean (``cluster``: the ``blame`` table of a clusters run). The file (safetensors) holds, for
EVERY layer of the database's unit layout, keyed by its parameter name (``layer.param_name``), a
``torch.bool`` tensor of exactly that weight's shape: True on the weights of the selected units (the
whole filter ``W[o]`` of a conv weight, the row ``W[o, :]`` of a ``linear-out`` weight, the column
``W[:, j]`` of a ``linear-in`` weight), False elsewhere. A layer with no selected unit is still in the
file, all False, so every unit weight of the model has a mask. Biases and weights that are not units
are never in the file. ``weight * mask`` keeps the selected units; ``weight * ~mask`` prunes them.

The file is written under a temporary name in its own directory and renamed, so a reader sees no
half-written mask; it is never written inside the database directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QueryError
from ..results import Result
from ..saliency import UnitLayout
from .filters import salient_filters

MASK_SUFFIX = ".safetensors"


@dataclass
class MaskUnit(Result):
    """One selected unit: its rank in the selection, id, layer, channel (filter, row or column), z, and
    the parameter (the mask file's key) its weights lie in."""

    rank: int
    unit_id: int
    layer: str
    channel: int
    z: float
    parameter: str


@dataclass
class MaskedParameter(Result):
    """One tensor of the mask file: the weight's name and shape, its selected units and True weights."""

    name: str
    kind: str  # conv, linear-out or linear-in
    shape: list[int]
    units: int
    true: int
    size: int


@dataclass
class MaskResult(Result):
    """A ``write_mask`` result: what was selected and what the mask file holds."""

    database: str
    commit: int
    selection: str  # 'id=N' or 'cluster=C run=RUN'
    sample_id: int | None
    cluster: int | None
    run: str | None
    k: int
    unit_kind: str
    n_units: int
    units: list[MaskUnit]
    parameters: list[MaskedParameter]
    masked_weights: int
    total_weights: int
    out: str

    @property
    def masked_tensors(self) -> int:
        return sum(p.true > 0 for p in self.parameters)

    def rows(self) -> list[dict]:
        """One row per selected unit (the CSV output)."""
        return [u.to_dict() for u in self.units]


def check_top_k(k: int, n_units: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_units:
        raise QueryError(f"--top-k must lie in 1..{n_units} (the database's units), got {k}")
    return int(k)


def check_mask_out(out, db) -> Path:
    """The mask file's path, refused before any work: a .safetensors name in an existing directory,
    outside the database directory."""
    path = Path(out)
    if path.suffix.lower() != MASK_SUFFIX:
        raise QueryError(f"--out {str(path)!r} must end with {MASK_SUFFIX}")
    if path.is_dir():
        raise QueryError(f"--out {str(path)!r} is a directory; give a file name such as {path / 'mask.safetensors'}")
    if not path.parent.is_dir():
        raise QueryError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist; create it first")
    if path.resolve().is_relative_to(Path(db).resolve()):
        raise QueryError(f"--out {str(path)!r} lies inside the database directory {str(db)!r}; write the mask elsewhere")
    return path


def check_selection(sample_id, cluster, run) -> None:
    if (sample_id is None) == (cluster is None):
        raise QueryError("give exactly one of --id (a sample's top-k units) or --cluster (an error group's top-k units)")
    if run is not None and cluster is None:
        raise QueryError("--run names a clusters run; use it with --cluster")


def cluster_profile(db, cluster: int, run: str | None, n_units: int) -> tuple[str, np.ndarray]:
    """The run and the mean standardised profile (indexed by unit id) of ``cluster``, from the ``blame``
    table of ``run`` (default: the clusters run the database holds)."""
    runs = [r[0] for r in db._execute("SELECT DISTINCT run FROM blame ORDER BY run").fetchall()]
    if not runs:
        raise QueryError("the database has no clusters table yet; run `saliencydb clusters --db DB` first")
    if run is None:
        if len(runs) > 1:
            raise QueryError(f"the blame table holds {len(runs)} clusters runs; choose one with --run: {', '.join(runs)}")
        run = runs[0]
    elif run not in runs:
        raise QueryError(f"no clusters run {run!r}; the database holds {', '.join(runs)}")
    known = [r[0] for r in db._execute("SELECT DISTINCT cluster FROM blame WHERE run = ? ORDER BY 1", [run]).fetchall()]
    if cluster not in known:
        raise QueryError(f"no cluster {cluster} in run {run}; the clusters are {', '.join(map(str, known))}")
    got = db._execute("SELECT unit_id, mean_z FROM blame WHERE run = ? AND cluster = ?", [run, int(cluster)]).fetchnumpy()
    if len(got["unit_id"]) != n_units or len(np.unique(got["unit_id"])) != n_units:
        raise QueryError(f"the blame table holds {len(got['unit_id'])} of the {n_units} units for cluster {cluster}; "
                         "rerun `saliencydb clusters --db DB`")
    z = np.empty(n_units, dtype=np.float64)
    z[got["unit_id"].astype(np.int64)] = got["mean_z"]
    return run, z


def weight_shapes(manifest, layout: UnitLayout) -> dict[str, tuple[int, ...]]:
    """The real shape of each unit weight, read from the stored model and checked against the layout."""
    from ..models.stored import load_stored_model

    params = dict(load_stored_model(manifest).module.named_parameters())
    shapes = {}
    for layer in layout.layers:
        p = params.get(layer.param_name)
        if p is None:
            raise QueryError(f"the model has no parameter {layer.param_name!r} of the database's unit layout; "
                             "was the database made with another model?")
        count = p.shape[1] if layer.kind == "linear-in" else p.shape[0]
        if count != layer.out_channels or p.numel() != layer.out_channels * layer.n_params:
            raise QueryError(f"parameter {layer.param_name!r} has shape {tuple(p.shape)}, not that of the database's "
                             f"{layer.out_channels} {layer.kind} units of {layer.n_params} weights")
        shapes[layer.param_name] = tuple(int(s) for s in p.shape)
    return shapes


def build_masks(layout: UnitLayout, shapes: dict[str, tuple[int, ...]], unit_ids) -> dict:
    """{parameter name: bool tensor of its shape}, True on the weights of ``unit_ids``; one per layer."""
    import torch

    ids = np.asarray(unit_ids, dtype=np.int64)
    layer_of = layout.layer_of(ids)
    masks = {}
    for li, layer in enumerate(layout.layers):
        mask = torch.zeros(shapes[layer.param_name], dtype=torch.bool)
        view = mask.t() if layer.kind == "linear-in" else mask  # a column W[:, j] is a row of the transpose
        channels = ids[layer_of == li] - layer.offset
        view[torch.as_tensor(channels, dtype=torch.long)] = True
        masks[layer.param_name] = mask
    return masks


def save_masks(masks: dict, metadata: dict[str, str], out: Path) -> None:
    """The safetensors file, written whole under a temporary name beside ``out`` and renamed."""
    from safetensors.torch import save

    from ..storage.files import write_atomic

    write_atomic(out, save(masks, metadata=metadata))


def write_mask(db, *, sample_id: int | None = None, cluster: int | None = None, run: str | None = None,
               top_k: int, out) -> MaskResult:
    """Write the boolean mask of the top-``top_k`` units of sample ``sample_id``'s standardised profile, or
    of ``cluster``'s mean one, to ``out`` (a .safetensors file; see the module's docstring for its layout:
    every unit layer of the database is in it, all False when none of its units is selected)."""
    check_selection(sample_id, cluster, run)
    path = check_mask_out(out, db.path)
    layout = UnitLayout.from_dict(db.manifest.units)
    k = check_top_k(top_k, layout.n_units)
    if sample_id is not None:
        db.sample(sample_id)  # an unknown id is one line
        z, selection = db.z([int(sample_id)])[0].astype(np.float64), f"id={int(sample_id)}"
    else:
        run, z = cluster_profile(db, int(cluster), run, layout.n_units)
        selection = f"cluster={int(cluster)} run={run}"
    top = salient_filters(z, k)
    masks = build_masks(layout, weight_shapes(db.manifest, layout), top)
    database = str(Path(db.path).resolve())
    metadata = {"database": database, "commit": str(db.commit), "selection": selection, "k": str(k),
                "unit_kind": layout.kind}
    save_masks(masks, metadata, path)
    return MaskResult(
        database=database, commit=int(db.commit), selection=selection, sample_id=None if sample_id is None else int(sample_id),
        cluster=None if cluster is None else int(cluster), run=run, k=k, unit_kind=layout.kind, n_units=layout.n_units,
        units=_units(layout, top, z), parameters=_parameters(layout, masks, top),
        masked_weights=int(sum(int(m.sum()) for m in masks.values())),
        total_weights=int(sum(m.numel() for m in masks.values())), out=str(path),
    )


def _units(layout: UnitLayout, top: np.ndarray, z: np.ndarray) -> list[MaskUnit]:
    layers = layout.layers
    return [MaskUnit(rank, int(u), layers[int(li)].name, int(u) - layers[int(li)].offset, float(z[u]), layers[int(li)].param_name)
            for rank, (u, li) in enumerate(zip(top, layout.layer_of(top)), start=1)]


def _parameters(layout: UnitLayout, masks: dict, top: np.ndarray) -> list[MaskedParameter]:
    counts = np.bincount(layout.layer_of(top), minlength=len(layout.layers))
    return [MaskedParameter(l.param_name, l.kind, list(masks[l.param_name].shape), int(counts[l.index]),
                            int(masks[l.param_name].sum()), int(masks[l.param_name].numel())) for l in layout.layers]
