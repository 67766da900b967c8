"""The indexing pipeline: a data source -> batched profiles -> Parquet parts -> statistics -> FAISS.

A job profiles the samples of one split that are not committed yet (so a rerun after
an interruption resumes where the last commit left off, without duplicates), commits
a part every ``part_rows`` samples, then (re)computes the standardisation statistics
when the split is the reference split and rebuilds the indexes.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..data import Transform, parse_data_spec
from ..data.sources import SampleDataset, Source, collate_samples
from ..errors import DatabaseError, DataError, ModelError, SaliencyDBError, SpecError
from ..faults import crash_point
from ..models.device import resolve_device
from ..models.inference import outputs_from_logits
from ..models.loading import LoadedModel, load_model
from ..models.stored import initialised_at_random, load_stored_model, model_record
from ..progress import NullProgress, Progress
from ..saliency import ProfileEngine, RunningStats, UnitLayout, l2_normalize, reference_profiles, standardize
from ..saliency.aggregates import DEFAULT_AGGREGATE, check_aggregate
from ..schemas import FAILURES_SCHEMA, INGESTS_SCHEMA, UNITS_SCHEMA, Manifest, samples_schema
from ..storage import (DatabaseWriter, committed_keys, is_database, iter_part_batches, iter_profiles, read_current, read_index,
                       read_stats, write_index, write_parquet)
from ..storage.indexes import INDEX_KINDS, build_index, kind_of

SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class JobReport:
    job_id: str
    split: str
    source: str
    added: int = 0
    skipped: int = 0
    failed: int = 0
    correct: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    split_samples: int = 0  # the split's committed samples after the job (this run's and earlier runs')
    split_correct: int = 0

    @property
    def accuracy(self) -> float | None:
        """Accuracy over the samples this run added."""
        return self.correct / self.added if self.added else None

    @property
    def split_accuracy(self) -> float | None:
        """Accuracy over every committed sample of the split: what `info` reports."""
        return self.split_correct / self.split_samples if self.split_samples else None


def _world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed job this process belongs to; (0, 1) alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_split_name(split: str) -> str:
    if not SPLIT_NAME.match(split):
        raise SpecError(f"split name '{split}' is invalid; use letters, digits, '_', '.', '-' (up to 64 characters)")
    return split


class Indexer:
    """Profiles a split of a data source into a database (creating it if needed)."""

    def __init__(
        self,
        db: str | os.PathLike,
        *,
        model: str | None = None,
        weights: str | None = None,
        transform: str | None = None,
        num_classes: int | None = None,
        device: str = "auto",
        batch_size: int = 64,
        workers: int | None = None,
        part_rows: int = 1024,
        index_kind: str = "flat",
        aggregate: str | None = None,
        progress: Progress | None = None,
        wait: bool = False,
        random_weights: bool = False,
        classes: str | os.PathLike | None = None,
    ):
        if batch_size < 1:
            raise SpecError(f"--batch-size must be at least 1, got {batch_size}")
        if index_kind not in INDEX_KINDS:
            raise SpecError(f"--index '{index_kind}' is unknown; use one of {', '.join(INDEX_KINDS)}")
        self.db = Path(db)
        self.device = resolve_device(device)
        rank, world = _world()
        if world > 1 and self.device.type == "cuda" and self.device.index is None:  # torchrun: one GPU per rank
            self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
        self.batch_size = batch_size
        # decoding workers pay off when cores are left over from the profiling itself
        cores = os.cpu_count() or 1
        self.workers = (0 if cores <= 2 else min(8, cores - 1)) if workers is None else workers
        self.part_rows = max(part_rows, 1)
        self.index_kind = index_kind
        self.aggregate = None if aggregate is None else check_aggregate(aggregate)
        self.progress = progress or NullProgress()
        self._model_args = (model, weights, transform, num_classes)
        self._wait = wait
        self._random_weights = random_weights
        self._classes = read_class_names(classes) if classes is not None else None

    # -- opening ---------------------------------------------------------------------------
    def _open(self, source: Source, operation: str) -> tuple[DatabaseWriter, LoadedModel, Transform]:
        model_spec, weights, transform_spec, num_classes = self._model_args
        existing = read_current(self.db) if is_database(self.db) else None
        # a database that never committed a sample (its first job was refused, or every sample
        # failed) is made again with the settings given now: nothing in it can be lost
        fresh = existing is not None and model_spec is not None and existing.rows() == 0 and not existing.pending
        if existing is not None and not fresh:
            manifest = existing
            if self._classes is not None and self._classes != manifest.class_names:
                raise SpecError(f"database '{self.db}' already names its classes ({', '.join(manifest.class_names[:5])}, ...); "
                                "omit --classes")
            stored = load_stored_model(manifest)
            if model_spec is not None:
                given = load_model(model_spec, weights, num_classes)
                if given.weights_sha256 != stored.weights_sha256:
                    raise ModelError(
                        f"database '{self.db}' holds model {manifest.model['spec']} "
                        f"(weights {manifest.model.get('weights') or 'default'}, sha256 {stored.weights_sha256[:12]}); "
                        f"the given model's weights differ (sha256 {given.weights_sha256[:12]}); use another --db"
                    )
            if self.aggregate is not None and self.aggregate != manifest.aggregate:
                raise SpecError(f"database '{self.db}' stores {manifest.aggregate} profiles; omit --aggregate, or use another --db")
            if transform_spec is not None and Transform.parse(transform_spec).to_dict() != manifest.model["transform"]:
                if manifest.rows() == 0 and not manifest.pending:
                    raise SpecError(f"database '{self.db}' has no samples yet: to start over with this transform, pass "
                                    "--model (and --weights) again and it is made anew")
                raise SpecError(f"database '{self.db}' was made with transform {manifest.model['transform']}; omit --transform")
            return DatabaseWriter(self.db, wait=self._wait, operation=operation), stored, Transform.from_dict(manifest.model["transform"])
        if model_spec is None:
            raise SpecError(f"no database at '{self.db}' yet: pass --model (and --weights) to create it")
        loaded = load_model(model_spec, weights, num_classes)
        if not self._random_weights and initialised_at_random(loaded, num_classes):
            raise SpecError(
                f"model {model_spec} would be profiled with random weights (no --weights given, and the model is "
                "initialised differently on every build); pass --weights FILE (a state dict) or a torchvision weights "
                "name such as DEFAULT, or --random-weights to profile an untrained model on purpose"
            )
        if transform_spec is not None:
            transform = Transform.parse(transform_spec)
        else:
            transform = loaded.default_transform or source.default_transform
        if transform is None:
            raise SpecError("no input transform is known for this model and data; pass --transform (e.g. imagenet, mnist or resize=256,crop=224,...)")
        probe(loaded, transform, source)  # before anything is written
        layout = UnitLayout.from_module(loaded.module)
        feature_dim = self._feature_dim(loaded, transform)
        manifest = Manifest(model=model_record(loaded, transform, num_classes, self.aggregate or DEFAULT_AGGREGATE),
                            units=layout.to_dict(), feature_dim=feature_dim)
        if self._classes is not None:
            if len(self._classes) != loaded.num_classes:
                raise SpecError(f"--classes names {len(self._classes)} classes, but the model has {loaded.num_classes}; "
                                "give one name per class, in the model's order")
            manifest.model["class_names"] = list(self._classes)
        elif manifest.model["class_names"] is None and source.class_names and len(source.class_names) == loaded.num_classes:
            manifest.model["class_names"] = list(source.class_names)
        elif (source.labels_are_names and len(source.class_names) == loaded.num_classes
              and not set(source.class_names) <= set(manifest.class_names)):
            # one folder (or CSV name) per class of a model with names of its own (ImageNet's wnid
            # folders for torchvision's categories): sorted names are the class indices, as
            # documented; kept so that later sources are matched by these names too
            manifest.model["label_names"] = list(source.class_names)
        if fresh:
            writer = DatabaseWriter(self.db, wait=self._wait, operation=operation)
            if writer.manifest.rows() or writer.manifest.pending:  # another job committed samples meanwhile
                writer.close()
                raise DatabaseError(f"database '{self.db}' received samples while this job started; rerun it")
            manifest.commit, manifest.created = writer.manifest.commit, writer.manifest.created
            manifest.next_sample_id = writer.manifest.next_sample_id
            writer.manifest = manifest
            return writer, loaded, transform
        return DatabaseWriter(self.db, manifest, wait=self._wait, operation=operation), loaded, transform

    @staticmethod
    def _feature_dim(model: LoadedModel, transform: Transform) -> int:
        if model.scripted:
            return 0  # compiled graphs take no hooks: no feature vector
        linears = [m for m in model.module.modules() if isinstance(m, torch.nn.Linear)]
        if linears:
            return linears[-1].in_features
        shape = transform.input_shape
        if shape is None:
            raise ModelError("the model has no nn.Linear layer and the transform has no fixed input size; cannot size the feature vector")
        with torch.no_grad():
            engine = ProfileEngine(model.module)
            out = engine.profile(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))
        return out.feature.shape[1]

    # -- the job ---------------------------------------------------------------------------
    def run(self, data: str, split: str = "val", limit: int | None = None, command: str = "index",
            replace: bool = False, require_existing: bool = False) -> JobReport:
        """Profile the not-yet-committed samples of ``data`` into ``split``; returns the job's counts.

        ``replace`` re-profiles an existing split: the new parts stay pending (invisible to
        readers) until the whole split is done, then one commit swaps them in. With
        ``require_existing`` (ingest) the database must exist and its statistics are frozen.
        """
        check_split_name(split)
        if limit is not None and limit < 1:
            raise SpecError(f"--limit must be at least 1, got {limit}")
        if require_existing:
            read_current(self.db)  # clear error when there is no database
        source = parse_data_spec(data)
        rank, world = _world()
        if rank != 0:
            return self._follow(source, split)
        self._plan_sent = False
        try:
            writer, model, transform = self._open(source, f"{command} {split}" + (" --replace" if replace else ""))
            with writer:
                return self._run(writer, model, transform, source, data, split, limit, command, replace, require_existing)
        except SaliencyDBError as e:
            if world > 1 and not self._plan_sent:  # the other ranks wait for the plan: tell them
                self._broadcast({"error": str(e)})
            raise

    def _run(self, writer, model, transform, source, data, split, limit, command, replace, freeze) -> JobReport:
        m = writer.manifest
        report = JobReport(job_id=uuid.uuid4().hex[:12], split=split, source=data)
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        known = m.splits.get(split)
        replaced = set(m.part_files(split)) if replace else set()
        # build on an intact version; the parts a --replace swaps out may be the damaged ones
        writer.require_intact(ignore=lambda rel: rel in replaced)
        if replace:
            if known is None:
                raise SpecError(f"--replace: the database has no split '{split}' (it has {', '.join(sorted(m.splits)) or 'none'}); drop --replace to add it")
            pending = m.pending.setdefault(split, {"source": data, "parts": []})
            if pending["source"] != data:
                raise SpecError(f"a replacement of '{split}' from {pending['source']} is unfinished; rerun it, or replace with that source first")
            done = committed_keys(self.db, m, files=[p["file"] for p in pending["parts"]])
        else:
            if split in m.pending:
                raise SpecError(f"split '{split}' is being replaced; finish with `--replace` first")
            if known is not None and known["source"] != data:
                raise SpecError(f"split '{split}' already holds {known['source']}; choose another --split name, or pass --replace")
            done = committed_keys(self.db, m, split) if known else set()
            m.splits.setdefault(split, {"source": data, "rows": 0, "complete": False})
        if freeze and m.stats is not None and not m.stats["frozen"]:
            m.stats["frozen"] = True
        todo = [i for i in range(len(source)) if source.key(i) not in done]
        report.skipped = len(source) - len(todo)
        if limit is not None:
            todo = todo[: max(0, limit - len(done))]

        module = model.module.to(self.device)
        engine = None if model.scripted else ProfileEngine(module, aggregate=m.aggregate)
        layout = UnitLayout.from_dict(m.units)
        class_names = m.class_names
        self._label_map = label_mapping(source, m)
        schema = samples_schema(m.n_units, m.feature_dim)
        is_reference = m.stats is None or (not m.stats["frozen"] and split in m.stats["splits"])
        run_stats: dict[str, RunningStats] = {}

        if _world()[1] > 1:  # a torchrun job: this rank profiles its share, rank 0 lists every part
            self._broadcast({"manifest": json.loads(m.to_json()), "todo": todo, "is_reference": is_reference,
                             "replace": replace})
            failures = self._profile_shards(writer, m, source, transform, todo, split, engine, module, layout,
                                            class_names, schema, is_reference, run_stats, report, replace)
        else:
            loader = self._loader(source, transform, todo)
            buffer: list[dict[str, np.ndarray]] = []
            failures: list[tuple[str, str]] = []
            task = self.progress.task(f"profiling {split}", len(todo))

            def flush():
                if not buffer:
                    return
                cols = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
                buffer.clear()
                n = len(cols["index"])
                ids = np.arange(m.next_sample_id, m.next_sample_id + n, dtype=np.int64)
                table = _part_table(cols, ids, split, source, class_names, schema)
                rel = writer.write_parquet(writer.unique_name(f"samples/{split}", "part", ".parquet"), table)
                crash_point("part-written")
                _list_part(m, {"file": rel, "split": split, "rows": n, "min_id": int(ids[0]), "max_id": int(ids[-1])}, replace)
                if is_reference:
                    run_stats[rel] = RunningStats(m.n_units).update(cols["raw"])
                writer.commit()
                crash_point("part-committed")
                report.added += n
                report.correct += int((cols["label"] == cols["pred"]).sum())

            try:
                for batch in loader:
                    rows = self._batch_rows(batch, engine, module, layout, m, source, failures)
                    if rows is not None:
                        buffer.append(rows)
                        if sum(len(b["index"]) for b in buffer) >= self.part_rows:
                            flush()
                    task.advance(len(batch.indices) + len(batch.failed))
                flush()
            finally:
                task.close()
        report.failed = len(failures)
        report.failures = failures
        complete = limit is None or len(done) + len(todo) >= len(source)  # the whole source is in
        job_done = len(done) + len(todo) >= min(len(source), limit or len(source))  # this job's selection is in
        if failures:
            writer.write_parquet_table("failures", _failures_table(report.job_id, split, failures))
        rebuild = False
        if replace and job_done:
            pending = m.pending.pop(split)
            m.parts = [p for p in m.parts if p["split"] != split] + pending["parts"]
            m.splits[split] = {"source": data, "rows": sum(p["rows"] for p in pending["parts"]), "complete": complete}
            writer.drop_derived()  # they name replaced sample ids
            rebuild = True
        elif not replace:
            m.splits[split]["complete"] = complete
        self._finish(writer, layout, split, run_stats, is_reference, rebuild)
        files = [p["file"] for p in m.pending[split]["parts"]] if split in m.pending else m.part_files(split)
        for batch in iter_part_batches(writer.path, files, ["correct"], 65536):
            report.split_samples += len(batch)
            report.split_correct += int(batch.column(0).to_numpy(zero_copy_only=False).sum())
        report.seconds = time.perf_counter() - t0
        writer.write_parquet_table("ingests", _job_table(report, command, started, complete))
        writer.commit()
        return report

    def _loader(self, source: Source, transform: Transform, indices: list[int]) -> torch.utils.data.DataLoader:
        # Worker processes decode files in parallel. They are spawned, not forked: a fork of a
        # process whose Arrow / OpenMP / FAISS thread pools are running can crash the child.
        workers = self.workers if source.decodes_files and len(indices) >= 4 * self.batch_size else 0
        return torch.utils.data.DataLoader(
            SampleDataset(source, transform, indices),
            batch_size=self.batch_size,
            num_workers=workers,
            multiprocessing_context="spawn" if workers else None,
            persistent_workers=False,
            collate_fn=collate_samples,
            pin_memory=self.device.type == "cuda",
        )

    # -- sharded jobs (torchrun) -------------------------------------------------------------
    def _broadcast(self, plan: dict | None) -> dict:
        """Rank 0 sends the job's plan (or an error); the other ranks receive it."""
        import torch.distributed as dist

        box = [plan]
        dist.broadcast_object_list(box, src=0)
        self._plan_sent = True
        return box[0]

    def _follow(self, source: Source, split: str) -> None:
        """A rank other than 0: profile this rank's share of rank 0's plan into unlisted parts."""
        plan = self._broadcast(None)
        if "error" in plan:
            raise DatabaseError(f"rank 0 stopped the job: {plan['error']}")
        m = Manifest.from_dict(plan["manifest"])
        model = load_stored_model(m)
        module = model.module.to(self.device)
        engine = None if model.scripted else ProfileEngine(module, aggregate=m.aggregate)
        class_names = m.class_names
        self._label_map = label_mapping(source, m)
        self._profile_shards(None, m, source, Transform.from_dict(m.model["transform"]), plan["todo"], split, engine, module,
                             UnitLayout.from_dict(m.units), class_names, samples_schema(m.n_units, m.feature_dim),
                             plan["is_reference"], {}, None, plan["replace"])
        return None

    def _profile_shards(self, writer, m: Manifest, source, transform, todo, split, engine, module, layout, class_names,
                        schema, is_reference, run_stats, report, replace) -> list[tuple[str, str]]:
        """Profile ``todo[rank::world]``; every rank writes its own parts, and at each step rank 0
        lists the parts all ranks finished (with their statistics) and commits. Sample ids are
        the samples' positions in ``todo`` after the manifest's next id, so no rank waits for
        another to number its rows. Returns the job's failures on rank 0 (this rank's elsewhere)."""
        import torch.distributed as dist

        rank, world = _world()
        share = todo[rank::world]
        base = m.next_sample_id
        position = {idx: j for j, idx in enumerate(todo)}
        steps = math.ceil(math.ceil(len(todo) / world) / self.batch_size)  # batches of the largest share
        loader = iter(self._loader(source, transform, share))
        buffer: list[dict[str, np.ndarray]] = []
        failures: list[tuple[str, str]] = []
        written: list[tuple[dict, RunningStats | None, int]] = []
        task = (self.progress if rank == 0 else NullProgress()).task(f"profiling {split} ({world} ranks)", len(todo))

        def flush():
            cols = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
            buffer.clear()
            ids = base + np.array([position[int(i)] for i in cols["index"]], dtype=np.int64)
            rel = write_parquet(self.db, f"samples/{split}/part-r{rank:03d}-{uuid.uuid4().hex[:12]}.parquet",
                                _part_table(cols, ids, split, source, class_names, schema))
            entry = {"file": rel, "split": split, "rows": len(ids), "min_id": int(ids.min()), "max_id": int(ids.max())}
            stats = RunningStats(m.n_units).update(cols["raw"]) if is_reference else None
            written.append((entry, stats, int((cols["label"] == cols["pred"]).sum())))

        try:
            for step in range(steps + 1):  # every rank takes the same number of steps; the last one flushes
                seen = 0
                batch = next(loader, None) if step < steps else None
                if batch is not None:
                    rows = self._batch_rows(batch, engine, module, layout, m, source, failures)
                    if rows is not None:
                        buffer.append(rows)
                    seen = len(batch.indices) + len(batch.failed)
                if buffer and (step == steps or sum(len(b["index"]) for b in buffer) >= self.part_rows):
                    flush()
                gathered = [None] * world if rank == 0 else None
                dist.gather_object((written, seen), gathered, dst=0)
                written = []
                if rank != 0:
                    continue
                task.advance(sum(n for _, n in gathered))
                new = [w for ws, _ in gathered for w in ws]
                for entry, stats, correct in new:
                    _list_part(m, entry, replace)
                    if stats is not None:
                        run_stats[entry["file"]] = stats
                    report.added += entry["rows"]
                    report.correct += correct
                if new:
                    writer.commit()
        finally:
            task.close()
        everyone = [None] * world if rank == 0 else None
        dist.gather_object(failures, everyone, dst=0)
        return [f for fs in everyone for f in fs] if rank == 0 else failures

    def _batch_rows(self, batch, engine, module, layout, m: Manifest, source: Source, failures: list) -> dict | None:
        """Profile one loaded batch; the rows to store (None if none), failures appended to ``failures``."""
        failures += [(source.key(i), reason) for i, reason in batch.failed]
        x, y, idx = batch.x, batch.y, batch.indices
        if self._label_map is not None:  # the source names its labels: the database's index of each name
            mapping, reasons = self._label_map
            local = y.numpy()
            y = torch.from_numpy(mapping[local])
            unknown = y < 0
            failures += [(source.key(i), reasons[l]) for i, l in zip(idx[unknown].tolist(), local[unknown.numpy()].tolist())]
            x, y, idx = x[~unknown], y[~unknown], idx[~unknown]
        bad_label = (y < 0) | (y >= m.model["num_classes"])
        for i, label in zip(idx[bad_label].tolist(), y[bad_label].tolist()):
            failures.append((source.key(i), f"label {label} is outside the model's {m.model['num_classes']} classes"))
        keep = ~bad_label
        x, y, idx = x[keep], y[keep], idx[keep]
        if not len(idx):
            return None
        try:
            rows = self._profile(engine, module, layout, x.to(self.device, non_blocking=True), y.to(self.device), m.aggregate)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:  # the model's own error on this input
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelError(f"profiling a batch of inputs of shape {tuple(x.shape)} failed ({type(e).__name__}: {text}); "
                             "committed samples are kept. Check the model and its --transform, or lower --batch-size "
                             "if memory ran out") from None
        finite = np.isfinite(rows["loss"]) & np.isfinite(rows["raw"]).all(1) & np.isfinite(rows["feature"]).all(1)
        for i in idx.numpy()[~finite].tolist():
            failures.append((source.key(i), "non-finite loss, profile or feature"))
        if not finite.any():
            return None
        rows = {k: v[finite] for k, v in rows.items()}
        rows["index"] = idx.numpy()[finite]
        rows["label"] = y.numpy()[finite]
        return rows

    def _profile(self, engine, module, layout, x, y, aggregate: str) -> dict[str, np.ndarray]:
        if engine is not None:
            out = engine.profile(x, y)
        else:  # TorchScript: no module hooks on compiled graphs; the per-sample definition
            raw = reference_profiles(module, x, y, layout, aggregate)
            with torch.no_grad():
                logits = module(x)
            outs = outputs_from_logits(logits, y)
            return {
                "raw": raw.cpu().numpy(), "feature": torch.zeros(len(x), 0).numpy(),
                **{k: v.cpu().numpy().astype(np.float32) if v.is_floating_point() else v.cpu().numpy() for k, v in outs.items()},
            }
        return {
            "raw": out.raw.cpu().numpy(),
            "feature": out.feature.cpu().numpy().astype(np.float32),
            "loss": out.loss.cpu().numpy().astype(np.float32),
            "pred": out.pred.cpu().numpy(),
            "true_conf": out.true_conf.cpu().numpy().astype(np.float32),
            "pred_conf": out.pred_conf.cpu().numpy().astype(np.float32),
        }

    def _finish(self, writer: DatabaseWriter, layout: UnitLayout, split: str, run_stats, is_reference: bool,
                rebuild: bool) -> None:
        """Statistics (reference split, unless frozen), then the indexes: rebuilt when the statistics
        or the set of samples changed, else extended with the new samples only."""
        m = writer.manifest
        if m.rows() == 0:
            return
        if is_reference:
            stats = RunningStats(m.n_units)
            for rel in m.part_files(split):
                if rel in run_stats:
                    stats.merge(run_stats[rel])
                else:
                    for _, rows in iter_profiles(self.db, m, files=[rel]):
                        stats.update(rows)
            self._write_stats(writer, layout, stats, [split])
            rebuild = True
        update_indexes(writer, self.index_kind, self.progress, rebuild=rebuild)

    @staticmethod
    def _write_stats(writer: DatabaseWriter, layout: UnitLayout, stats: RunningStats, splits: list[str], frozen: bool = False) -> None:
        m = writer.manifest
        table = pa.table({**layout.columns(), "mean": stats.mean, "std": stats.std}, schema=UNITS_SCHEMA)
        rel = writer.write_parquet(writer.unique_name("units", "units", ".parquet"), table)
        crash_point("stats-written")
        m.stats = {"file": rel, "splits": splits, "count": stats.count, "frozen": frozen}


def update_indexes(writer: DatabaseWriter, kind: str | None = None, progress: Progress | None = None,
                   rebuild: bool = False) -> None:
    """Bring both FAISS indexes up to the manifest's committed parts; list the new files in the
    manifest (the caller commits). The files they replace stay for older versions until ``vacuum``.

    Without ``rebuild``, an existing index is extended with the parts it does not cover yet
    (those with ``min_id >= next_id``); the result is written as a new file, never in place.
    """
    m = writer.manifest
    progress = progress or NullProgress()
    if m.stats is None or m.rows() == 0:
        return
    mean, std = read_stats(writer.path, m)
    for space, dim in (("saliency", m.n_units), ("feature", m.feature_dim)):
        if dim == 0:
            continue
        entry = m.indexes.get(space)
        space_kind = kind or (entry["kind"] if entry else "flat")
        # extend what was built as asked; an index that fell back to flat (too few rows to train
        # the asked kind) is rebuilt instead, so it becomes that kind once the rows are there
        if entry is not None and not rebuild and entry["kind"] == entry.get("built", entry["kind"]) == space_kind:
            files = [p["file"] for p in m.parts if p["min_id"] >= entry["next_id"]]
            if not files:
                continue
            base = read_index(writer.path, entry["file"])
        else:
            files, base = m.part_files(), None
        n = sum(p["rows"] for p in m.parts if p["file"] in set(files))
        task = progress.task(f"{'extending' if base is not None else 'building'} {space} index", n)

        def chunks(files=files, space=space, task=task):
            column = "raw_profile" if space == "saliency" else "feature"
            for ids, rows in iter_profiles(writer.path, m, column=column, files=files):
                yield ids, l2_normalize(standardize(rows, mean, std) if space == "saliency" else rows)
                task.advance(len(ids))

        index = build_index(dim, chunks, space_kind, m.rows(), base=base)
        task.close()
        rel = writer.unique_name("index", space, ".faiss")
        writer.new_file(rel, lambda tmp, index=index: write_index(index, tmp))
        crash_point("index-written")
        m.indexes[space] = {"file": rel, "kind": space_kind, "built": kind_of(index), "ntotal": int(index.ntotal),
                            "next_id": m.next_sample_id}


def read_class_names(path: str | os.PathLike) -> list[str]:
    """``--classes FILE``: one class name per line, in the model's class order (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"--classes {path}: cannot read it ({getattr(e, 'strerror', None) or e}); give a UTF-8 text file "
                        "with one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise SpecError(f"--classes {path} is empty; give one class name per line, in the model's class order")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise SpecError(f"--classes {path} names '{dup}' twice; class names must be distinct")
    return names


def probe(model: LoadedModel, transform: Transform, source: Source, tries: int = 8) -> None:
    """Run the model on the first readable sample, so that a model and data that cannot work
    together are refused in one line before a database is created."""
    x = None
    for i in range(min(tries, len(source))):
        try:
            x = transform(source.load(i))
            break
        except (DataError, SaliencyDBError, OSError, ValueError):
            continue
    if x is None:
        return  # the first samples are unreadable: they will be failures, with their reasons
    try:
        with torch.no_grad():
            logits = model.module(x[None])
    except Exception as e:  # the user's model may raise anything on the wrong input
        raise ModelError(
            f"the model fails on this data's first sample (input of shape {tuple(x.shape)} after the transform "
            f"{transform.to_dict()}): {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}; "
            "pass the --transform the model expects (its size and channels: e.g. mnist, imagenet, or mode=L,size=28,...)"
        ) from None
    if logits.ndim != 2 or logits.shape[1] != model.num_classes:
        raise ModelError(f"the model returns outputs of shape {tuple(logits.shape)} for one sample, not (1, {model.num_classes}) "
                         "class scores; pass --num-classes or a classifier")


def label_mapping(source: Source, m: Manifest) -> tuple[np.ndarray, dict[int, str]] | None:
    """For a source that names its labels: the database class index of each of its names (-1 for
    a name the database does not know) and the failure reason of each unknown name. Names are
    matched to the names the database was created with (``label_names``) or to its classes."""
    if not source.labels_are_names:
        return None
    names = list(source.class_names or [])
    lookup: dict[str, int] = {}
    for vocab in (m.class_names, m.model.get("label_names") or []):
        lookup.update({n: i for i, n in enumerate(vocab)})
    known = m.model.get("label_names") or m.class_names
    shown = ", ".join(known[:12]) + (f", ... ({len(known)} in all)" if len(known) > 12 else "")
    mapping = np.array([lookup.get(n, -1) for n in names], dtype=np.int64)
    reasons = {i: f"label '{n}' is not one of the database's classes ({shown})" for i, n in enumerate(names) if n not in lookup}
    return mapping, reasons


def _list_part(m: Manifest, entry: dict, pending: bool) -> None:
    """List a written part in the manifest (the caller commits): with the split's pending
    replacement, or as committed rows; the next sample id moves past its ids."""
    if pending:
        m.pending[entry["split"]]["parts"].append(entry)
    else:
        m.parts.append(entry)
        m.splits[entry["split"]]["rows"] += entry["rows"]
    m.next_sample_id = max(m.next_sample_id, entry["max_id"] + 1)


def _part_table(cols: dict[str, np.ndarray], ids: np.ndarray, split: str, source: Source, class_names: list[str],
                schema: pa.Schema) -> pa.Table:
    """One Parquet part of the samples table from a buffer of profiled rows."""
    n = len(ids)
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
            "raw_profile": pa.FixedSizeListArray.from_arrays(cols["raw"].reshape(-1), schema.field("raw_profile").type.list_size),
            "feature": pa.FixedSizeListArray.from_arrays(cols["feature"].reshape(-1), schema.field("feature").type.list_size),
        },
        schema=schema,
    )


def _failures_table(job_id: str, split: str, failures: list[tuple[str, str]]) -> pa.Table:
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


def _job_table(report: JobReport, command: str, started: datetime, complete: bool) -> pa.Table:
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


def restat(db: str | os.PathLike, splits: list[str] | None = None, *, progress: Progress | None = None,
           wait: bool = False) -> dict:
    """Recompute the standardisation statistics over ``splits`` (default: all) and rebuild the
    indexes, in one atomic commit; the new statistics are frozen."""
    progress = progress or NullProgress()
    with DatabaseWriter(db, wait=wait, operation="restat") as writer:
        # statistics and indexes are rebuilt from the samples: only the samples must be intact
        parts = set(writer.manifest.part_files())
        writer.require_intact(ignore=lambda rel: rel not in parts)
        m = writer.manifest
        chosen = sorted(m.splits) if not splits else list(dict.fromkeys(splits))
        unknown = [s for s in chosen if s not in m.splits]
        if unknown:
            raise SpecError(f"unknown split '{unknown[0]}'; the database has {', '.join(sorted(m.splits)) or 'no splits'}")
        files = [p["file"] for p in m.parts if p["split"] in set(chosen)]
        if not files:
            raise SpecError(f"splits {', '.join(chosen)} hold no samples; index some first")
        stats = RunningStats(m.n_units)
        task = progress.task("statistics", sum(p["rows"] for p in m.parts if p["file"] in set(files)))
        for ids, rows in iter_profiles(writer.path, m, files=files):
            stats.update(rows)
            task.advance(len(ids))
        task.close()
        Indexer._write_stats(writer, UnitLayout.from_dict(m.units), stats, chosen, frozen=True)
        update_indexes(writer, progress=progress, rebuild=True)
        writer.drop_derived()  # computed with the old statistics
        writer.commit()
        return {"splits": chosen, "count": stats.count, "indexes": {k: v["ntotal"] for k, v in m.indexes.items()}}
