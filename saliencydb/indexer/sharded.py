"""An indexing job under torchrun: every rank profiles its share of rank 0's plan and writes its
own parts; at each step rank 0 lists the parts all ranks finished (with their statistics) and
commits. Sample ids are the samples' positions in the plan after the manifest's next id, so no
rank waits for another to number its rows."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
import uuid
from pathlib import Path

import numpy as np

from ..data.transforms import Transform, transform_from_dict
from ..errors import DatabaseError
from ..models.stored import load_stored_model
from ..progress import NullProgress
from ..schemas import Manifest
from ..storage import write_parquet
from .commit import PartWriter, RowBuffer, WrittenPart, list_part
from .plan import JobSettings, Plan, label_mapping
from .profile import Profiler, loader, pad_rows


@contextmanager
def torchrun_job():
    """Under torchrun (WORLD_SIZE > 1), join the job's process group for the block (gloo carries the
    few messages between ranks; profiling stays on each rank's device) and yield this rank; alone,
    yield 0. The group is left on exit: its threads must not outlive the interpreter."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield 0
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    try:
        yield dist.get_rank()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed job this process belongs to; (0, 1) alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PlanChannel:
    """Rank 0 sends the job's plan (or the error that stopped it) once; the other ranks receive it."""

    def __init__(self):
        self.sent = False

    def exchange(self, plan: dict | None) -> dict:
        import torch.distributed as dist

        box = [plan]
        dist.broadcast_object_list(box, src=0)
        self.sent = True
        return box[0]

    def send_plan(self, m: Manifest, plan: Plan) -> None:
        self.exchange({"manifest": json.loads(m.to_json()), "todo": plan.todo, "is_reference": plan.is_reference,
                       "replace": plan.replace})


def follow(db: Path, source, split: str, settings: JobSettings) -> None:
    """A rank other than 0: profile this rank's share of rank 0's plan into unlisted parts."""
    plan = PlanChannel().exchange(None)
    if "error" in plan:
        raise DatabaseError(f"rank 0 stopped the job: {plan['error']}")
    m = Manifest.from_dict(plan["manifest"])
    transform = transform_from_dict(m.model.transform)
    profiler = Profiler(load_stored_model(m), m, source, settings.device, label_mapping(source, m, transform),
                        pad_rows(settings.batch_size, len(plan["todo"])))
    work = Plan(split=split, data="", source=source, todo=plan["todo"], done=0, skipped=0,
                is_reference=plan["is_reference"], replace=plan["replace"])
    ShardedProfiling(db, m, work, transform, settings).run(profiler, None)


class ShardedProfiling:
    """Profile ``plan.todo[rank::world]`` on this rank; rank 0 lists and commits every rank's parts."""

    def __init__(self, db: Path, m: Manifest, plan: Plan, transform: Transform, settings: JobSettings):
        self.db, self.m, self.plan, self.transform, self.settings = db, m, plan, transform, settings
        self.rank, self.world = world()
        self.written: list[WrittenPart] = []

    def run(self, profiler: Profiler, sink) -> list[tuple[str, str]]:
        """Profile this rank's share; ``sink`` (rank 0: the ``JobSink``) takes every rank's parts.
        Returns the job's failures on rank 0 (this rank's elsewhere)."""
        import torch.distributed as dist

        plan, settings = self.plan, self.settings
        share = plan.todo[self.rank :: self.world]
        base = self.m.next_sample_id
        position = {idx: j for j, idx in enumerate(plan.todo)}
        parts = PartWriter(self.m, plan.split, plan.source, self._write_file, plan.is_reference)
        steps = math.ceil(math.ceil(len(plan.todo) / self.world) / settings.batch_size)  # batches of the largest share
        batches = iter(loader(plan.source, self.transform, share, batch_size=settings.batch_size,
                              workers=settings.workers, device=settings.device))
        buffer, failures = RowBuffer(), []
        progress = settings.progress if self.rank == 0 else NullProgress()
        task = progress.task(f"profiling {plan.split} ({self.world} ranks)", len(plan.todo))
        try:
            for step in range(steps + 1):  # every rank takes the same number of steps; the last one flushes
                batch = next(batches, None) if step < steps else None
                seen = 0
                if batch is not None:
                    buffer.add(profiler.rows(batch, failures))
                    seen = len(batch.indices) + len(batch.failed)
                if len(buffer) and (step == steps or len(buffer) >= settings.part_rows):
                    cols = buffer.take()
                    ids = base + np.array([position[int(i)] for i in cols["index"]], dtype=np.int64)
                    self.written.append(parts.write(cols, ids))
                self._gather_step(seen, task, sink)
        finally:
            task.close()
        everyone = [None] * self.world if self.rank == 0 else None
        dist.gather_object(failures, everyone, dst=0)
        return [f for fs in everyone for f in fs] if self.rank == 0 else failures

    def _write_file(self, table) -> str:
        rel = f"samples/{self.plan.split}/part-r{self.rank:03d}-{uuid.uuid4().hex[:12]}.parquet"
        return write_parquet(self.db, rel, table)

    def _gather_step(self, seen: int, task, sink) -> None:
        """Every rank sends the parts it finished; rank 0 lists them and commits."""
        import torch.distributed as dist

        gathered = [None] * self.world if self.rank == 0 else None
        dist.gather_object((self.written, seen), gathered, dst=0)
        self.written = []
        if self.rank != 0:
            return
        task.advance(sum(n for _, n in gathered))
        new = [w for ws, _ in gathered for w in ws]
        for part in new:
            list_part(self.m, part.entry, self.plan.replace)
            sink.take(part)
        if new:
            sink.commit()
