"""Nearest neighbours of one sample (stored, or a new image) in saliency or feature space."""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

from ..errors import QueryError
from ..results import Result
from .html import image_context
from .results import Approximation, NeighborSummary, SampleMeta
from ..storage.indexes import flat_part, kind_of, rerank_candidates, scan_flat


@dataclass
class NeighborResult(Result):
    query: SampleMeta  # the query sample's metadata (sample_id None for a new image)
    space: str
    k: int
    neighbors: list[dict]  # rows: rank, sample_id, split, key, label, pred, correct, similarity, ...
    summary: NeighborSummary  # shares of misclassified / same prediction / same confusion pair
    commit: int | None = None  # the version searched
    note: str | None = None  # e.g. a stale index was replaced by an exact scan, or the answer is approximate
    images: dict | None = field(default=None, repr=False, compare=False)  # where the images are (html.image_context)
    approximate: Approximation | None = None  # searched in an approximate index (absent from an exact answer's JSON)

    internal = ("images",)
    optional = ("approximate",)

    def rows(self) -> list[dict]:
        return list(self.neighbors)

    def _repr_html_(self) -> str:
        from .html import ImageLookup, neighbors_html

        return neighbors_html(self, ImageLookup((self.images or {}).get("sources")))


def search(index, vectors: np.ndarray, k: int, candidates: np.ndarray | None = None,
           mapped: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of ``vectors`` among ``candidates`` (all ids when None); -1 ids pad short rows.
    ``mapped``: the index's vectors are memory-mapped; a flat one is scanned block by block (the same
    answer, in bounded memory)."""
    if mapped and flat_part(index) is not None:
        return scan_flat(index, vectors, k, candidates, release=True)
    params = selector = None
    if candidates is not None:
        # the selector must outlive the search: the parameters hold only a raw pointer to it
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(candidates, dtype=np.int64))
        ivf = faiss.try_extract_index_ivf(index)
        params = (faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe) if ivf is not None
                  else faiss.SearchParameters(sel=selector))
    result = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)
    del selector
    return result


def neighbors(db, sample_id=None, *, k=10, space="saliency", where=None, split=None, image=None, label=None,
              text=None) -> NeighborResult:
    if sum(v is not None for v in (sample_id, image, text)) != 1:
        raise QueryError("give either a sample id (--id), a new image (--image PATH --label L) or, for a text database, "
                         "a new sentence (--text SENTENCE --label L)")
    if k < 1:
        raise QueryError(f"-k must be at least 1, got {k}")
    db.require_space(space)  # before anything is profiled or read: a database without feature vectors refuses that space
    if image is not None and db.modality == "text":
        raise QueryError(f"'{db.path}' is a text database: --image does not apply; give a sample id (--id) or a sentence (--text)")
    if text is not None and db.modality != "text":
        raise QueryError(f"'{db.path}' is an image database: --text does not apply; give a sample id (--id) or an image (--image)")
    if image is not None or text is not None:
        query, vector = _new_query(db, image, text, label, space)
    else:
        query = SampleMeta(**db.sample(sample_id))
        vector = db.vectors(space, [sample_id])
    index, mapped = db.query_index(space)
    candidates = db.ids_where(where, split) if (where is not None or split is not None) else None
    exclude = sample_id
    if candidates is not None and sample_id is not None:
        candidates, exclude = candidates[candidates != sample_id], None
    n = (len(candidates) if candidates is not None else index.ntotal) - (exclude is not None)
    if k > n:
        raise QueryError(f"-k {k} is larger than the {n} candidate samples; lower -k or widen --where/--split")
    # without a filter, the sample itself is excluded by asking for one more and dropping it
    want = k + (exclude is not None)
    kind = kind_of(index)
    if rerank_candidates(kind, want) > want:  # compressed codes: take more candidates, rank them by their exact profiles
        sims, ids = _reranked(db, space, index, vector, rerank_candidates(kind, want), want, n + (exclude is not None),
                              candidates)
    else:
        sims, ids = search(index, vector, want, candidates, mapped)
    found = [(int(i), float(s)) for i, s in zip(ids[0], sims[0]) if i >= 0 and i != exclude][:k]
    if len(found) < min(k, n):  # never a short or empty answer with exit 0
        raise QueryError(f"the {space} index returned {len(found)} of the {min(k, n)} neighbours asked for; "
                         f"run `saliencydb verify --db {db.path}`")
    columns = _COLUMNS + (["text"] if db.modality == "text" else [])
    rows = db.metadata([i for i, _ in found], columns)
    out = []
    for rank, (i, sim) in enumerate(found, start=1):
        out.append({"rank": rank, "sample_id": i, **{c: rows[i][c] for c in columns[1:]}, "similarity": round(sim, 6)})
    note, approx = None, None
    if space in db.stale_indexes:
        covered, rows = db.stale_indexes[space]
        note = (f"the {space} index covers {covered} of the {rows} committed samples (an index or ingest job is running, "
                f"or stopped before updating it); all {rows} were searched exactly instead. Rerun that job to update the index")
    elif kind != "flat":
        note, approx = _approximate(db, space, kind)
    return NeighborResult(query=query, space=space, k=k, neighbors=out, summary=_summary(query, out), commit=db.commit,
                          note=note, images=image_context(db), approximate=approx)


def _reranked(db, space: str, index, vector: np.ndarray, take: int, want: int, n: int, candidates):
    """The ``want`` best of the index's ``take`` best candidates, ranked by their exact profiles (all of ``n``
    candidates when the probed lists held too few)."""
    sims, ids = search(index, vector, min(n, take), candidates)
    found = ids[0][ids[0] >= 0]
    if len(found) < min(want, n):  # the probed lists held too few candidates: scan them all
        found = candidates if candidates is not None else db.ids_where()
    found, vectors = _exact_vectors(db, space, np.asarray(found, dtype=np.int64))
    exact = vectors @ vector[0]
    order = np.lexsort((found, -exact))[:want]  # ties: the lower id first, whatever order the parts were read in
    return exact[order][None], found[order][None]


def _exact_vectors(db, space: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, their search vectors) read from the Parquet parts that hold them, the parts shared among a few threads
    (each candidate costs a row group read and decode; Arrow releases the GIL), so re-ranking takes a fraction of
    reading them one part after another. The ids come back grouped by thread."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from ..saliency import l2_normalize

    per_part = [ids[(ids >= p.min_id) & (ids <= p.max_id)] for p in db.manifest.parts]
    per_part = [h for h in per_part if len(h)]
    if sum(len(h) for h in per_part) != len(ids):  # an id in no part: the one reader that says which, in one line
        return ids, db.vectors(space, ids)
    workers = max(1, min(4, os.cpu_count() or 1, len(per_part)))
    groups = [np.concatenate(per_part[w::workers]) for w in range(workers)] if per_part else [ids]
    column = "raw_profile" if space == "saliency" else "feature"
    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(lambda g: db.rows(column, g), groups))
    ordered, rows = np.concatenate(groups), np.concatenate(rows)
    return ordered, l2_normalize(db.standardise(rows, ordered) if space == "saliency" else rows)


def _approximate(db, space: str, kind: str) -> tuple[str, Approximation]:
    """The note and record of an answer searched in an approximate index of ``kind``."""
    entry = db.manifest.indexes[space]
    approx = Approximation(index=kind, recall_at_10=entry.recall_at_10, recall_queries=entry.recall_queries,
                           nprobe=entry.nprobe, rerank=entry.rerank)
    recall = ("its recall@10 was not measured (built before saliencydb measured it; rebuild with `saliencydb restat`)"
              if entry.recall_at_10 is None else
              f"recall@10 {entry.recall_at_10:.3f} against exact search on {entry.recall_queries} stored samples")
    reranked = "; its candidates re-ranked by the exact profiles" if entry.rerank and entry.rerank > 10 else ""
    return (f"approximate: searched in the {kind} {space} index, {recall} (nprobe {entry.nprobe}){reranked}; "
            "similarities shown are exact" if reranked else
            f"approximate: searched in the {kind} {space} index, {recall} (nprobe {entry.nprobe})"), approx


_COLUMNS = ["sample_id", "split", "key", "label", "label_name", "pred", "pred_name", "correct"]



def _summary(query: SampleMeta, rows: list[dict]) -> NeighborSummary:
    n = len(rows)
    if n == 0:
        return NeighborSummary(neighbors=0)
    pair = (query.label, query.pred)
    return NeighborSummary(
        neighbors=n,
        share_misclassified=sum(not r["correct"] for r in rows) / n,
        share_same_prediction=sum(r["pred"] == query.pred for r in rows) / n,
        share_same_confusion=(sum((r["label"], r["pred"]) == pair for r in rows) / n) if not query.correct else None,
        share_same_label=sum(r["label"] == query.label for r in rows) / n,
    )


def _new_label(m, transform, label, what: str) -> int:
    """The class index of a new sample's ``--label``: a class name or index; a masked-LM's target word."""
    names = m.class_names
    if label is None:
        raise QueryError(f"a new {what} needs its true label: --label " + ("WORD (the target word)" if getattr(transform, "task", None) == "masked-lm"
                                                                           else "CLASS (a class index or name)"))
    label_s = str(label)
    if getattr(transform, "task", None) == "masked-lm":
        y, why = transform.resolve_label(label_s, {n: i for i, n in enumerate(names)})
        if y is None or not 0 <= y < len(names):
            raise QueryError(f"--label {label_s!r}: {why or 'not a token of the model'}; give one word of the vocabulary")
        return y
    if label_s in names:
        return names.index(label_s)
    if label_s.lstrip("-").isdigit() and 0 <= int(label_s) < len(names):
        return int(label_s)
    raise QueryError(f"--label {label!r} is not one of the model's {len(names)} classes (give an index 0..{len(names) - 1} or a class name)")


def _new_query(db, image, text, label, space: str) -> tuple[SampleMeta, np.ndarray]:
    """Profile a new image (a path) or a new sentence with the stored model and transform, without storing it."""
    from pathlib import Path

    import torch

    from ..data.sources import open_image
    from ..data.transforms import transform_from_dict
    from ..errors import DataError
    from ..models.stored import load_stored_model
    from ..saliency.normalise import dlogit_norms

    m = db.manifest
    names = m.class_names
    transform = transform_from_dict(m.model.transform)
    y = _new_label(m, transform, label, "image" if image is not None else "sentence")
    try:
        x = transform(text) if text is not None else transform(open_image(Path(image), str(image)))
    except DataError as e:
        raise QueryError(f"--text: {e}" if text is not None else str(e)) from None
    out = _profile_one(load_stored_model(m), m, x, torch.tensor([y]))
    pred = int(out["pred"][0])
    query = SampleMeta(sample_id=None, split=None, key=str(image) if image is not None else "(new sentence)", label=y,
                       label_name=names[y], pred=pred, pred_name=names[pred], correct=pred == y, loss=float(out["loss"][0]),
                       true_conf=float(out["true_conf"][0]), pred_conf=float(out["pred_conf"][0]), text=text)
    raw = out["raw"].numpy() if space == "saliency" else out["feature"].numpy()
    return query, db.search_vectors(space, raw, dlogit=dlogit_norms(out["logits"], torch.tensor([y])).numpy())


def _profile_one(model, m, x, y) -> dict:
    """The raw profile (and feature), logits, loss, prediction and confidences of one new input ``x`` with label ``y``,
    as indexing computes them: the batched engine, or for a TorchScript model (no hooks) the per-sample definition."""
    import torch

    from ..models.inference import outputs_from_logits
    from ..saliency import ProfileEngine, UnitLayout, reference_profiles

    layout = UnitLayout.from_dict(m.units)
    if model.scripted:
        raw = reference_profiles(model.module, x[None], y, layout, m.aggregate)
        with torch.no_grad():
            logits = model.module(x[None])
        return {"raw": raw, "logits": logits, **outputs_from_logits(logits, y)}
    out = ProfileEngine(model.module, aggregate=m.aggregate, layout=layout).profile(x[None], y)
    return {"raw": out.raw, "feature": out.feature, "logits": out.logits, "loss": out.loss, "pred": out.pred,
            "true_conf": out.true_conf, "pred_conf": out.pred_conf}
