"""An indexing job: plan (what is still to do) -> profile (batches -> rows) -> commit (parts,
statistics, indexes), on one process or on every rank of a torchrun job.

A job profiles the samples of one split that are not committed yet (so a rerun after an
interruption resumes where the last commit left off, without duplicates), commits a part every
``part_rows`` samples, then (re)computes the standardisation statistics when the split is the
reference split and rebuilds the indexes (docs/architecture.md).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ..data import parse_data_spec
from ..data.sources import absolute_data_spec
from ..data.transforms import Transform
from ..errors import SaliencyDBError, SpecError
from ..faults import crash_point
from ..models.device import resolve_device
from ..models.loading import LoadedModel
from ..progress import NullProgress, Progress
from ..results import Result
from ..saliency import RunningStats
from ..schemas import PROFILE_DTYPES
from ..schemas.manifest import SplitEntry
from ..saliency.aggregates import check_aggregate
from ..saliency.layout import LINEAR_AXES, UNIT_CHOICES
from ..saliency.normalise import check_normalisation
from ..saliency.reference_stats import check_stats_spec
from ..storage import DatabaseWriter, iter_part_batches, read_current
from ..storage.indexes import ASKED_KINDS
from .commit import (PartWriter, RowBuffer, WrittenPart, failures_table, finish, job_table, list_part,
                     write_reference_stats)
from .plan import JobSettings, ModelChoice, Plan, check_split_name, label_mapping, open_database, plan_job, read_class_names
from .profile import Profiler, loader, pad_rows
from .sharded import PlanChannel, ShardedProfiling, follow, world


@dataclass
class JobReport(Result):
    """What a job did: its counts, its failures (key, reason) and the split's accuracy after it."""

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
    notes: list[str] = field(default_factory=list)  # said once, when the job created the database (plan.Opened)
    index_notes: list[str] = field(default_factory=list)  # each approximate index after the job: its kind and recall@10

    @property
    def accuracy(self) -> float | None:
        """Accuracy over the samples this run added."""
        return self.correct / self.added if self.added else None

    @property
    def split_accuracy(self) -> float | None:
        """Accuracy over every committed sample of the split: what `info` reports."""
        return self.split_correct / self.split_samples if self.split_samples else None


@dataclass
class RunArgs:
    """One call of ``Indexer.run``."""

    data: str
    split: str
    limit: int | None
    command: str
    replace: bool
    freeze: bool  # ingest: the statistics stay as they are


class JobSink:
    """Rank 0's side of the commit step: lists written parts, keeps their statistics and counts."""

    def __init__(self, writer: DatabaseWriter, plan: Plan, report: JobReport):
        self.writer, self.plan, self.report = writer, plan, report
        self.run_stats: dict[str, RunningStats] = {}

    def take(self, part: WrittenPart) -> None:
        if part.stats is not None:
            self.run_stats[part.entry.file] = part.stats
        self.report.added += part.entry.rows
        self.report.correct += part.correct

    def commit(self) -> None:
        self.writer.commit()


@dataclass(frozen=True)
class IndexOptions:
    """Everything an ``Indexer`` is told, checked when made (one line for a bad value).

    The model (``index``; all None for ``ingest``, which uses the database's own): ``model`` (a spec),
    ``task``, ``weights``, ``transform``, ``num_classes``, ``classes`` (a file of class names), ``aggregate``,
    ``normalisation``, ``units``, ``linear_units``, ``stats`` (shipped statistics), ``random_weights`` and
    ``seed``, ``profile_dtype``. How the job runs: ``device``, ``batch_size``, ``workers``, ``part_rows``,
    ``index_kind`` (None: the database's own, auto for a new one), ``progress``, ``wait``."""

    model: str | None = None
    task: str | None = None
    weights: str | None = None
    transform: str | None = None
    num_classes: int | None = None
    classes: str | os.PathLike | None = None
    aggregate: str | None = None
    normalisation: str | None = None
    units: str | None = None
    linear_units: str | None = None
    stats: str | None = None
    random_weights: bool = False
    seed: int | None = None
    profile_dtype: str | None = None
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    part_rows: int = 1024
    index_kind: str | None = None
    progress: Progress | None = None
    wait: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise SpecError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.seed is not None and not self.random_weights:
            raise SpecError("--seed draws random weights: pass it with --random-weights (or drop it)")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise SpecError(f"--seed {self.seed} is out of range; give a whole number from 0 to 2**63 - 1")
        if self.profile_dtype is not None and self.profile_dtype not in PROFILE_DTYPES:
            raise SpecError(f"--profile-dtype '{self.profile_dtype}' is unknown; use one of {', '.join(PROFILE_DTYPES)}")
        if self.index_kind is not None and self.index_kind not in ASKED_KINDS:
            raise SpecError(f"--index '{self.index_kind}' is unknown; use one of {', '.join(ASKED_KINDS)}")

    def job_settings(self) -> JobSettings:
        return JobSettings(device=_job_device(self.device), batch_size=self.batch_size, workers=_workers(self.workers),
                           part_rows=max(self.part_rows, 1), index_kind=self.index_kind,
                           progress=self.progress or NullProgress(), wait=self.wait)

    def model_choice(self) -> ModelChoice:
        return ModelChoice(spec=self.model, weights=self.weights, transform=self.transform, num_classes=self.num_classes,
                           classes=read_class_names(self.classes) if self.classes is not None else None,
                           aggregate=None if self.aggregate is None else check_aggregate(self.aggregate),
                           normalisation=None if self.normalisation is None else check_normalisation(self.normalisation),
                           units=_choice(self.units, UNIT_CHOICES, "--units"),
                           linear_units=_choice(self.linear_units, LINEAR_AXES, "--linear-units"),
                           stats=check_stats_spec(self.stats), random_weights=self.random_weights, seed=self.seed,
                           task=self.task, profile_dtype=self.profile_dtype)


class Indexer:
    """Profiles a split of a data source into a database (creating it if needed).

    >>> Indexer("db", IndexOptions(model="timm:resnet18", batch_size=32)).run("folder:val/", split="val")

    or, the same, with the options as keywords: ``Indexer("db", model="timm:resnet18", batch_size=32)``."""

    def __init__(self, db: str | os.PathLike, options: IndexOptions | None = None, /, **fields):
        if options is not None and not isinstance(options, IndexOptions):
            raise SpecError(f"Indexer takes IndexOptions (or the options as keywords), not {type(options).__name__}")
        try:
            options = replace(options, **fields) if options is not None else IndexOptions(**fields)
        except TypeError as e:  # an unknown keyword
            raise SpecError(f"Indexer: {e}; the options are the fields of IndexOptions") from None
        self.db, self.options = Path(db), options
        self.settings = options.job_settings()
        self.choice = options.model_choice()

    def run(self, data: str, split: str = "val", limit: int | None = None, command: str = "index",
            replace: bool = False, require_existing: bool = False) -> JobReport | None:
        """Profile the not-yet-committed samples of ``data`` into ``split``; returns the job's counts
        (None on a torchrun rank other than 0: rank 0 reports for the job).

        ``replace`` re-profiles an existing split: the new parts stay pending (invisible to
        readers) until the whole split is done, then one commit swaps them in. With
        ``require_existing`` (ingest) the database must exist and its statistics are frozen.
        """
        check_split_name(split)
        if limit is not None and limit < 1:
            raise SpecError(f"--limit must be at least 1, got {limit}")
        if require_existing:
            read_current(self.db)  # clear error when there is no database
        data = absolute_data_spec(data)  # recorded so: it names the same data from any working directory
        source = parse_data_spec(data)
        rank, size = world()
        if rank != 0:
            return follow(self.db, source, split, self.settings)
        channel = PlanChannel()
        args = RunArgs(data, split, limit, command, replace, freeze=require_existing)
        try:
            operation = f"{command} {split}" + (" --replace" if replace else "")
            opened = open_database(self.db, self.choice, source, operation, self.settings.wait)
            with opened.writer:
                report = self._run(opened.writer, opened.model, opened.transform, source, args, channel if size > 1 else None)
                report.notes = opened.notes
                return report
        except SaliencyDBError as e:
            if size > 1 and not channel.sent:  # the other ranks wait for the plan: tell them
                channel.exchange({"error": str(e)})
            raise

    def _run(self, writer: DatabaseWriter, model: LoadedModel, transform: Transform, source, args: RunArgs,
             channel: PlanChannel | None) -> JobReport:
        m = writer.manifest
        report = JobReport(job_id=uuid.uuid4().hex[:12], split=args.split, source=args.data)
        started, t0 = datetime.now(timezone.utc), time.perf_counter()
        if args.freeze and m.stats is not None and not m.stats.frozen:
            m.stats.frozen = True
        if self.choice.stats is not None and m.stats is None:
            write_reference_stats(writer, self.choice.stats)
        _adopt_relative_record(m, args.split, args.data, args.replace)
        plan = plan_job(writer, source, args.data, args.split, args.limit, args.replace)
        report.skipped = plan.skipped
        profiler = Profiler(model, m, source, self.settings.device, label_mapping(source, m, transform),
                            pad_rows(self.settings.batch_size, len(plan.todo)))
        sink = JobSink(writer, plan, report)
        if channel is not None:  # a torchrun job: this rank profiles its share, rank 0 lists every part
            channel.send_plan(m, plan)
            failures = ShardedProfiling(self.db, m, plan, transform, self.settings).run(profiler, sink)
        else:
            failures = self._profile(writer, plan, transform, profiler, sink)
        self._close(writer, plan, args, sink, failures)
        report.seconds = time.perf_counter() - t0
        writer.write_parquet_table("ingests", job_table(report, args.command, started, self._complete(plan, args)))
        writer.commit()
        return report

    def _profile(self, writer: DatabaseWriter, plan: Plan, transform: Transform, profiler: Profiler,
                 sink: JobSink) -> list[tuple[str, str]]:
        """The profile step on one process: a part is written and committed every ``part_rows`` samples."""
        m, settings = writer.manifest, self.settings
        name = lambda table: writer.write_parquet(writer.unique_name(f"samples/{plan.split}", "part", ".parquet"), table)  # noqa: E731
        parts = PartWriter(m, plan.split, plan.source, name, plan.is_reference)
        buffer, failures = RowBuffer(), []
        task = settings.progress.task(f"profiling {plan.split}", len(plan.todo))

        def flush():
            if not len(buffer):
                return
            cols = buffer.take()
            part = parts.write(cols, np.arange(m.next_sample_id, m.next_sample_id + len(cols["index"]), dtype=np.int64))
            crash_point("part-written")
            list_part(m, part.entry, plan.replace)
            sink.take(part)
            sink.commit()
            crash_point("part-committed")

        try:
            for batch in loader(plan.source, transform, plan.todo, batch_size=settings.batch_size,
                                workers=settings.workers, device=settings.device):
                buffer.add(profiler.rows(batch, failures))
                if len(buffer) >= settings.part_rows:
                    flush()
                task.advance(len(batch.indices) + len(batch.failed))
            flush()
        finally:
            task.close()
        return failures

    @staticmethod
    def _complete(plan: Plan, args: RunArgs) -> bool:
        """Whether the whole source is in the split."""
        return args.limit is None or plan.done + len(plan.todo) >= len(plan.source)

    def _close(self, writer: DatabaseWriter, plan: Plan, args: RunArgs, sink: JobSink,
               failures: list[tuple[str, str]]) -> None:
        """The commit step's end: failures, the split's state (a finished --replace swaps its parts in),
        statistics and indexes, and the split's accuracy after the job."""
        m, report, n_source = writer.manifest, sink.report, len(plan.source)
        report.failed, report.failures = len(failures), failures
        complete = self._complete(plan, args)
        job_done = plan.done + len(plan.todo) >= min(n_source, args.limit or n_source)  # this job's selection is in
        if failures:
            writer.write_parquet_table("failures", failures_table(report.job_id, plan.split, failures))
        rebuild = False
        if plan.replace and job_done:
            pending = m.pending.pop(plan.split)
            m.parts = [p for p in m.parts if p.split != plan.split] + pending.parts
            m.splits[plan.split] = SplitEntry(source=args.data, rows=sum(p.rows for p in pending.parts), complete=complete)
            writer.drop_derived()  # they name replaced sample ids
            rebuild = True
        elif not plan.replace:
            m.splits[plan.split].complete = complete
        finish(writer, plan, sink.run_stats, rebuild, self.settings)
        report.index_notes = [f"{space}: {entry.describe()}" for space, entry in m.indexes.items() if entry.approximate]
        files = [p.file for p in m.pending[plan.split].parts] if plan.split in m.pending else m.part_files(plan.split)
        for batch in iter_part_batches(writer.path, files, ["correct"], 65536):
            report.split_samples += len(batch)
            report.split_correct += int(batch.column(0).to_numpy(zero_copy_only=False).sum())


def _adopt_relative_record(m, split: str, data: str, replace: bool) -> None:
    """A split (or its unfinished replacement) recorded before data specs were stored absolute may hold a relative
    spec, which can only be read from the working directory of that job. When it names, from here, the data of
    ``data`` (absolute), it is recorded as ``data`` from now on; when it names other data, the job is refused
    with both named (``plan_job`` compares the records with ``data`` as they are)."""
    rec = m.pending.get(split) if replace else m.splits.get(split)
    if rec is None or rec.source == data or split in m.pending and not replace:
        return
    here = absolute_data_spec(rec.source)
    if here == data:
        rec.source = data
    elif here != rec.source and not replace:
        raise SpecError(f"split '{split}' already holds {rec.source}, a path relative to the folder it was indexed from, "
                        f"which is {here} from here, not {data}; run from that folder to add to it, choose another "
                        "--split name, or pass --replace")


def _job_device(device: str) -> torch.device:
    """The job's device; under torchrun, ``cuda`` is this rank's own GPU."""
    resolved = resolve_device(device)
    rank, size = world()
    if size > 1 and resolved.type == "cuda" and resolved.index is None:  # torchrun: one GPU per rank
        resolved = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    return resolved


def _workers(workers: int | None) -> int:
    """Decoding workers pay off when cores are left over from the profiling itself."""
    cores = os.cpu_count() or 1
    return (0 if cores <= 2 else min(8, cores - 1)) if workers is None else workers


def _choice(value: str | None, choices: tuple[str, ...], option: str) -> str | None:
    if value is not None and value not in choices:
        raise SpecError(f"{option} {value!r} is unknown; use one of {', '.join(choices)}")
    return value
