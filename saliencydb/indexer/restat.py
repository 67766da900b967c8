"""``restat``: recompute the standardisation statistics over chosen splits and rebuild the
indexes, in one atomic commit."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import SpecError
from ..progress import NullProgress, Progress
from ..results import Result
from ..saliency.normalise import DEFAULT_NORMALISATION, check_normalisation
from ..storage import DatabaseWriter
from .commit import profile_stats, update_indexes, write_stats


@dataclass
class RestatResult(Result):
    splits: list[str]  # the splits the statistics are computed over
    count: int  # their samples
    indexes: dict[str, int]  # space -> vectors in the rebuilt index
    normalisation: str = "zscore"  # the profile normalisation the statistics are of


def restat(db: str | os.PathLike, splits: list[str] | str | None = None, *, normalisation: str | None = None,
           progress: Progress | None = None, wait: bool = False) -> RestatResult:
    """Recompute the standardisation statistics over ``splits`` (a list, or comma-separated names as
    ``--splits`` takes them; default: all) and rebuild the indexes, in one atomic commit; the new
    statistics are frozen. ``normalisation``: switch the database to that profile normalisation
    (saliency.normalise; None keeps its own). The derived tables, computed with the old
    statistics, are dropped. The statistics are of the stored profiles: in a float16 database
    (schemas.profiles) the rounded values, not the float32 profiles `index` computed them from."""
    progress = progress or NullProgress()
    if normalisation is not None:
        normalisation = check_normalisation(normalisation)
    if isinstance(splits, str):
        splits = splits.split(",")
    with DatabaseWriter(db, wait=wait, operation="restat") as writer:
        # statistics and indexes are rebuilt from the samples: only the samples must be intact
        parts = set(writer.manifest.part_files())
        writer.require_intact(ignore=lambda rel: rel not in parts)
        m = writer.manifest
        chosen = sorted(m.splits) if not splits else list(dict.fromkeys(splits))
        unknown = [s for s in chosen if s not in m.splits]
        if unknown:
            raise SpecError(f"unknown split '{unknown[0]}'; the database has {', '.join(sorted(m.splits)) or 'no splits'}")
        files = [p.file for p in m.parts if p.split in set(chosen)]
        if not files:
            raise SpecError(f"splits {', '.join(chosen)} hold no samples; index some first")
        if normalisation is not None:
            m.normalisation = None if normalisation == DEFAULT_NORMALISATION else normalisation
        task = progress.task("statistics", sum(p.rows for p in m.parts if p.file in set(files)))
        stats = profile_stats(writer, files, task=task)
        task.close()
        write_stats(writer, stats, chosen, frozen=True)
        update_indexes(writer, progress=progress, rebuild=True)
        writer.drop_derived()  # computed with the old statistics
        writer.commit()
        return RestatResult(splits=chosen, count=stats.count, indexes={k: v.ntotal for k, v in m.indexes.items()},
                            normalisation=m.profile_normalisation)
