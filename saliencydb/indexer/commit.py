"""The commit step of an indexing job: profiled rows -> Parquet parts listed in the manifest,
then the standardisation statistics and the FAISS indexes, and the job's own records
(``failures``, ``ingests``). The single-process and the torchrun paths share ``PartWriter``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from ..data.sources import Source
from ..errors import DatabaseError, SaliencyDBError
from ..faults import crash_point
from ..progress import NullProgress, Progress
from ..saliency import RunningStats, UnitLayout, l2_normalize
from ..saliency.normalise import Normaliser, prescale
from ..saliency.reference_stats import reference_stats
from ..schemas import FAILURES_SCHEMA, INGESTS_SCHEMA, PROFILE_EXP, UNITS_SCHEMA, Manifest, encode_profiles, samples_schema
from ..schemas.manifest import IndexEntry, PartEntry, StatsEntry
from ..storage import DatabaseWriter, batch_rows_for, iter_profiles, iter_raw_profiles, read_index, read_stats, write_index
from ..storage.indexes import build_approximate, flat_file_layout, kind_of, resolve_kind, write_flat_index


@dataclass
class WrittenPart:
    """A part on disk, not listed yet: its manifest entry, its statistics (reference splits) and its correct count."""

    entry: PartEntry
    stats: RunningStats | None
    correct: int


class RowBuffer:
    """Profiled rows (dicts of column arrays) until there are enough for a part."""

    def __init__(self):
        self._chunks: list[dict[str, np.ndarray]] = []

    def add(self, rows: dict[str, np.ndarray] | None) -> None:
        if rows is not None:
            self._chunks.append(rows)

    def __len__(self) -> int:
        return sum(len(c["index"]) for c in self._chunks)

    def take(self) -> dict[str, np.ndarray]:
        cols = {k: np.concatenate([c[k] for c in self._chunks]) for k in self._chunks[0]}
        self._chunks.clear()
        return cols


class PartWriter:
    """Writes buffered rows of one split as a Parquet part of the samples table.

    ``write_file(table) -> rel`` creates the file: under the writer lock (single process) or as a
    rank's own uniquely named part (torchrun, listed later by rank 0)."""

    def __init__(self, m: Manifest, split: str, source: Source, write_file: Callable[[pa.Table], str],
                 with_stats: bool):
        self.split, self.source, self.write_file, self.with_stats = split, source, write_file, with_stats
        self.n_units, self.class_names, self.normalisation = m.n_units, m.class_names, m.profile_normalisation
        self.schema = samples_schema(m.n_units, m.feature_dim, m.stored_profile_dtype)

    def write(self, cols: dict[str, np.ndarray], ids: np.ndarray) -> WrittenPart:
        try:
            table = part_table(cols, ids, self.split, self.source, self.class_names, self.schema)
        except (pa.ArrowException, ValueError, TypeError) as e:  # rows that do not fit the schema: never "run verify"
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise DatabaseError(f"the profiled rows of split '{self.split}' do not fit the samples table "
                                f"({type(e).__name__}: {text}); nothing of them was stored and committed samples are kept. "
                                "This is a saliencydb bug: please report it with the command") from None
        rel = self.write_file(table)
        entry = PartEntry(file=rel, split=self.split, rows=len(ids), min_id=int(ids.min()), max_id=int(ids.max()))
        # the statistics of the float32 profiles, before a float16 database's rounding
        stats = (RunningStats(self.n_units).update(prescale(cols["raw"], self.normalisation, cols["dlogit_norm"]))
                 if self.with_stats else None)
        return WrittenPart(entry, stats, int((cols["label"] == cols["pred"]).sum()))


def list_part(m: Manifest, entry: PartEntry, pending: bool) -> None:
    """List a written part in the manifest (the caller commits): with the split's pending
    replacement, or as committed rows; the next sample id moves past its ids."""
    if pending:
        m.pending[entry.split].parts.append(entry)
    else:
        m.parts.append(entry)
        m.splits[entry.split].rows += entry.rows
    m.next_sample_id = max(m.next_sample_id, entry.max_id + 1)


def _text(source: Source, i: int) -> str | None:
    """The sentence of a text source's sample (null for images)."""
    return source.text(i) if source.modality == "text" else None


def _profile_columns(raw: np.ndarray, schema: pa.Schema) -> dict[str, pa.Array]:
    """The stored raw profiles: float32 as profiled, or (a float16 schema) ``raw * 2**e`` and ``e`` (schemas.profiles)."""
    width = schema.field("raw_profile").type.list_size
    if PROFILE_EXP not in schema.names:
        return {"raw_profile": pa.FixedSizeListArray.from_arrays(raw.reshape(-1), width)}
    scaled, exp = encode_profiles(raw)
    return {"raw_profile": pa.FixedSizeListArray.from_arrays(pa.array(scaled.reshape(-1), pa.float16()), width),
            PROFILE_EXP: pa.array(exp, pa.int16())}


def part_table(cols: dict[str, np.ndarray], ids: np.ndarray, split: str, source: Source, class_names: list[str],
               schema: pa.Schema) -> pa.Table:
    """One Parquet part of the samples table from a buffer of profiled rows."""
    n = len(ids)
    feature = ({"feature": pa.FixedSizeListArray.from_arrays(cols["feature"].reshape(-1), schema.field("feature").type.list_size)}
               if "feature" in schema.names else {})  # a model without a feature vector stores no feature column
    return pa.table(
        {
            "sample_id": ids,
            "split": pa.array([split] * n, pa.string()),
            "key": pa.array([source.key(int(i)) for i in cols["index"]], pa.string()),
            "label": cols["label"].astype(np.int32),
            "label_name": pa.array([class_names[i] for i in cols["label"]], pa.string()),
            "pred": cols["pred"].astype(np.int32),
            "pred_name": pa.array([class_names[i] for i in cols["pred"]], pa.string()),
            "correct": cols["label"] == cols["pred"],
            "loss": cols["loss"],
            "true_conf": cols["true_conf"],
            "pred_conf": cols["pred_conf"],
            **_profile_columns(cols["raw"], schema),
            **feature,
            "dlogit_norm": cols["dlogit_norm"].astype(np.float32),
            "text": pa.array([_text(source, int(i)) for i in cols["index"]], pa.string()),
        },
        schema=schema,
    )


def write_stats(writer: DatabaseWriter, stats: RunningStats, splits: list[str], frozen: bool = False) -> None:
    """Write the units table (layout and statistics) and name it in the manifest (the caller commits)."""
    m = writer.manifest
    layout = UnitLayout.from_dict(m.units)
    table = pa.table({**layout.columns(), "mean": stats.mean, "std": stats.std}, schema=UNITS_SCHEMA)
    rel = writer.write_parquet(writer.unique_name("units", "units", ".parquet"), table)
    crash_point("stats-written")
    m.stats = StatsEntry(file=rel, splits=splits, count=stats.count, frozen=frozen)


def write_reference_stats(writer: DatabaseWriter, name: str) -> None:
    """The shipped reference statistics ``name`` as the units table, frozen (the caller commits)."""
    m = writer.manifest
    layout = UnitLayout.from_dict(m.units)
    mean, std = reference_stats(name, layout)
    table = pa.table({**layout.columns(), "mean": mean, "std": std}, schema=UNITS_SCHEMA)
    rel = writer.write_parquet(writer.unique_name("units", "units", ".parquet"), table)
    m.stats = StatsEntry(file=rel, splits=[], count=0, frozen=True, source=f"reference:{name}")


def profile_stats(writer: DatabaseWriter, files: list[str], run_stats: dict[str, RunningStats] | None = None,
                  task=None) -> RunningStats:
    """Statistics of the prescaled profiles (the database's normalisation) of the parts ``files``:
    merged from ``run_stats`` (this run's parts), read back for the others."""
    m = writer.manifest
    stats = RunningStats(m.n_units)
    for rel in files:
        if run_stats is not None and rel in run_stats:
            stats.merge(run_stats[rel])
            continue
        for ids, raw, dlogit in iter_raw_profiles(writer.path, m, files=[rel]):
            stats.update(prescale(raw, m.profile_normalisation, dlogit))
            if task is not None:
                task.advance(len(ids))
    return stats


def split_stats(writer: DatabaseWriter, split: str, run_stats: dict[str, RunningStats]) -> RunningStats:
    """Statistics over every part of ``split``: merged from this run's parts, read back for the others."""
    return profile_stats(writer, writer.manifest.part_files(split), run_stats)


def finish(writer: DatabaseWriter, plan, run_stats: dict[str, RunningStats], rebuild: bool, settings) -> None:
    """Statistics (the reference split, unless frozen), then the indexes: rebuilt when the statistics
    or the set of samples changed, else extended with the new samples only. ``plan``: the job's
    ``Plan``; ``settings``: its ``JobSettings``."""
    if writer.manifest.rows() == 0:
        return
    try:
        if plan.is_reference:
            write_stats(writer, split_stats(writer, plan.split, run_stats), [plan.split])
            rebuild = True
        update_indexes(writer, settings.index_kind, settings.progress, rebuild=rebuild)
    except (SaliencyDBError, OSError, KeyboardInterrupt):
        raise  # one line already (a disk-full or read-only error names the commit the database is at)
    except Exception as e:  # FAISS, Arrow or memory: nothing of this step is listed, the last commit stands
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DatabaseError(
            f"building the statistics and indexes of '{writer.path}' failed ({type(e).__name__}: {text}); nothing of "
            f"that step was committed: the database stays at commit {writer.committed}, its last whole version, with the "
            "samples profiled so far; rerun the same command to resume and build them") from None


def update_indexes(writer: DatabaseWriter, kind: str | None = None, progress: Progress | None = None,
                   rebuild: bool = False, flat_max_bytes: int | None = None) -> None:
    """Bring both FAISS indexes up to the manifest's committed parts; list the new files in the
    manifest (the caller commits). The files they replace stay for older versions until ``vacuum``.

    ``kind``: as asked (None: each index's own, ``auto`` for a new one); ``auto`` builds flat while a
    flat index of the rows takes at most ``flat_max_bytes`` (storage.indexes.AUTO_FLAT_MAX_BYTES), else
    the approximate kind. Without ``rebuild``, an index already of the kind to build is extended with
    the parts it does not cover yet (those with ``min_id >= next_id``); the result is written as a new
    file, never in place. An approximate index's recall@10 is measured and stored with it.
    """
    m = writer.manifest
    if m.stats is None or m.rows() == 0:
        return
    normaliser = Normaliser(m.profile_normalisation, *read_stats(writer.path, m))
    for space in ("saliency", "feature") if m.has_features else ("saliency",):  # no feature vector: no feature index
        _update_index(writer, space, normaliser, kind, progress or NullProgress(), rebuild, flat_max_bytes)


def _update_index(writer: DatabaseWriter, space: str, normaliser: Normaliser, kind: str | None, progress: Progress,
                  rebuild: bool, flat_max_bytes: int | None = None) -> None:
    m = writer.manifest
    dim = m.n_units if space == "saliency" else m.feature_dim
    entry = m.indexes.get(space)
    asked = kind or (entry.kind if entry else "auto")
    target = resolve_kind(asked, m.rows(), dim, flat_max_bytes)
    # extend what was built as asked; an index that fell back to flat (too few rows to train
    # the asked kind), or that auto now builds as another kind, is rebuilt instead
    extend = entry is not None and not rebuild and entry.kind == asked and entry.built_kind == target
    files = [p.file for p in m.parts if p.min_id >= entry.next_id] if extend else m.part_files()
    if extend and not files:
        return
    n = sum(p.rows for p in m.parts if p.file in set(files))
    batch = batch_rows_for(dim)  # memory bounded by a batch, not the database

    def chunks(parts, task):
        if space == "saliency":
            for ids, raw, dlogit in iter_raw_profiles(writer.path, m, files=parts, batch_rows=batch):
                yield ids, l2_normalize(normaliser(raw, dlogit))
                task.advance(len(ids))
            return
        for ids, rows in iter_profiles(writer.path, m, column="feature", files=parts, batch_rows=batch):
            yield ids, l2_normalize(rows)
            task.advance(len(ids))

    rel = writer.unique_name("index", space, ".faiss")
    entry_out = None
    if target != "flat":
        entry_out = _write_approximate(writer, rel, space, dim, asked, target, entry if extend else None, chunks, progress)
    if entry_out is None:  # flat, or too few rows to train the approximate kind: exact, streamed
        base = writer.path / entry.file if extend and entry.built_kind == "flat" else None
        if base is not None and flat_file_layout(base) is None:  # an older flat index file FAISS wrote: rebuilt
            base, files, n = None, m.part_files(), m.rows()
        task = progress.task(f"{'extending' if base is not None else 'building'} {space} index", n)
        written = []
        writer.new_file(rel, lambda tmp: written.append(write_flat_index(tmp, dim, chunks(files, task), base)))
        task.close()
        entry_out = IndexEntry(file=rel, kind=asked, built="flat", ntotal=written[0])
    crash_point("index-written")
    entry_out.next_id = m.next_sample_id
    m.indexes[space] = entry_out


def _write_approximate(writer: DatabaseWriter, rel: str, space: str, dim: int, asked: str, target: str,
                       entry: IndexEntry | None, chunks, progress: Progress) -> IndexEntry | None:
    """Build (``entry`` None) or extend an IVF index of kind ``target`` over every committed row, measure its
    recall@10 (storage.indexes.build_approximate) and write it; None when there are too few rows to train it."""
    m = writer.manifest
    base = read_index(writer.path, entry.file) if entry is not None else None
    task = progress.task(f"{'extending' if base is not None else 'building'} {space} index ({target}), "
                         "measuring its recall", 2 * m.rows())
    index, recall = build_approximate(dim, target, m.rows(), lambda: chunks(m.part_files(), NullProgress().task("", 0)),
                                      base=base, new_from=entry.next_id if entry is not None else None,
                                      advance=task.advance)
    task.close()
    if index is None:
        return None
    writer.new_file(rel, lambda tmp: write_index(index, tmp))
    return IndexEntry(file=rel, kind=asked, built=kind_of(index), ntotal=int(index.ntotal),
                      recall_at_10=recall.recall_at_10, graph_recall_at_10=recall.graph_recall_at_10,
                      recall_queries=recall.queries, nprobe=recall.nprobe, rerank=recall.rerank)


def failures_table(job_id: str, split: str, failures: list[tuple[str, str]]) -> pa.Table:
    now = datetime.now(timezone.utc)
    return pa.table(
        {
            "job_id": [job_id] * len(failures),
            "split": [split] * len(failures),
            "key": [k for k, _ in failures],
            "reason": [r for _, r in failures],
            "time": [now] * len(failures),
        },
        schema=FAILURES_SCHEMA,
    )


def job_table(report, command: str, started: datetime, complete: bool) -> pa.Table:
    """The job's row of the ``ingests`` table (``report``: its ``JobReport``)."""
    return pa.table(
        {
            "job_id": [report.job_id],
            "command": [command],
            "split": [report.split],
            "source": [report.source],
            "start": [started],
            "end": [datetime.now(timezone.utc)],
            "added": [report.added],
            "skipped": [report.skipped],
            "failed": [report.failed],
            "status": [("complete" if complete else "partial") + ("_with_failures" if report.failed else "")],
        },
        schema=INGESTS_SCHEMA,
    )
