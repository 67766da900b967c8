"""Versions as an operator sees them: list (``history``), make an old one current
(``restore``), delete what no kept version lists (``vacuum``), and check every file of a
version (``verify``)."""

from __future__ import annotations

import copy
import fcntl
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatabaseError, SpecError
from ..results import Result
from ..schemas import MANIFEST, TABLE_SCHEMAS, UNITS_SCHEMA, Manifest, samples_schema
from .files import file_record, find_damage, is_link, linked_part, remove_quietly, shallow_problem, walk_files
from .versions import (PINS, VERSIONS, list_versions, missing_version, open_pin, pin_path, read_current, read_version,
                       version_rel)
from .writer import DATA_DIRS, DatabaseWriter

DEFAULT_KEEP_VERSIONS = 5
DEFAULT_OLDER_THAN = timedelta(hours=1)


@dataclass
class VersionInfo(Result):
    commit: int
    time: str
    operation: str
    samples: int
    splits: dict  # name -> rows
    current: bool
    pinned: bool



def history(db: str | os.PathLike) -> list[VersionInfo]:
    """The kept versions, oldest first."""
    db = Path(db)
    try:
        current = read_current(db).commit
    except DatabaseError:
        if not list_versions(db):
            raise
        current = None  # a broken manifest.json: the kept versions are still listed, for `restore`
    out = []
    for commit in list_versions(db):
        m = read_version(db, commit)
        if m is None:
            continue
        out.append(VersionInfo(commit=commit, time=m.updated, operation=m.operation or "-", samples=m.rows(),
                               splits={s: m.rows(s) for s in sorted(m.splits)}, current=commit == current,
                               pinned=_is_pinned(db, commit)))
    if not out:
        m = read_current(db)  # a format-1 database: only its current version
        out.append(VersionInfo(m.commit, m.updated, m.operation or "-", m.rows(), {s: m.rows(s) for s in sorted(m.splits)},
                               True, _is_pinned(db, m.commit)))
    return out


def _is_pinned(db: Path, commit: int) -> bool:
    """Whether a reader holds ``commit`` now (its pin file is locked; none is created here)."""
    fd = open_pin(db, commit, create=False)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@dataclass
class RestoreResult(Result):
    restored: int
    commit: int
    samples: int


def restore(db: str | os.PathLike, commit: int, *, wait: bool = False) -> RestoreResult:
    """Make the kept version ``commit`` current again, as a new commit (nothing is deleted)."""
    db = Path(db)
    with DatabaseWriter(db, wait=wait, operation=f"restore {commit}", recover=True) as w:
        target = read_version(db, commit)
        if target is None:
            raise missing_version(db, commit, w.manifest.commit)
        for rel, problem in find_damage(db, target)[:1]:
            raise DatabaseError(f"commit {commit} cannot be restored: its file '{rel}' is damaged ({problem}); "
                                "choose another commit")
        new = copy.deepcopy(target)
        new.commit = w.manifest.commit
        new.next_sample_id = max(w.manifest.next_sample_id, target.next_sample_id)  # ids are never reused
        new.created = w.manifest.created or target.created
        w.manifest = new
        w.commit()
        return RestoreResult(restored=commit, commit=new.commit, samples=new.rows())


DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$")
_UNIT = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    m = DURATION.match(text or "")
    if not m:
        raise SpecError(f"--older-than {text!r} is not a duration; use e.g. 30s, 15m, 2h, 7d or 1w")
    seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if seconds > 100 * 365 * 86400:
        raise SpecError(f"--older-than {text!r} is more than 100 years; every version is younger than that")
    return timedelta(seconds=seconds)


@dataclass
class VacuumResult(Result):
    removed_versions: list[int] = field(default_factory=list)
    kept_versions: list[int] = field(default_factory=list)
    pinned: list[int] = field(default_factory=list)  # would have gone, kept because a reader holds them
    removed_files: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    dry_run: bool = False

    def rows(self) -> list[dict]:
        return [{"removed_versions": len(self.removed_versions), "kept_versions": len(self.kept_versions),
                 "pinned": len(self.pinned), "removed_files": len(self.removed_files), "bytes_freed": self.bytes_freed,
                 "dry_run": self.dry_run}]


def vacuum(db: str | os.PathLike, *, keep_versions: int | None = None, older_than: timedelta | None = None,
           dry_run: bool = False, wait: bool = False) -> VacuumResult:
    """Delete the versions the policy lets go and every data file no remaining version lists.

    Kept: the current version, versions a reader has pinned, the last ``keep_versions`` and
    those newer than ``older_than``. Neither given: the last 5 and all of the last hour.
    """
    if keep_versions is not None and keep_versions < 1:
        raise SpecError(f"--keep-versions must be at least 1 (the current version), got {keep_versions}")
    if keep_versions is None and older_than is None:
        keep_versions, older_than = DEFAULT_KEEP_VERSIONS, DEFAULT_OLDER_THAN
    db = Path(db)
    result = VacuumResult(dry_run=dry_run)
    with DatabaseWriter(db, wait=wait, operation="vacuum") as w:
        versions = list_versions(db)
        keep = _policy(db, w.manifest.commit, versions, keep_versions, older_than)
        held: list[tuple[int, int]] = []
        try:
            # each version to drop is locked as a reader would pin it, and stays locked until its files are gone
            for v in versions:
                if v in keep:
                    continue
                fd = _lock_pin(db, v)
                if fd is None:
                    result.pinned.append(v)  # a reader holds it (or its pin cannot be taken here): kept
                else:
                    held.append((v, fd))
            _drop(db, w.manifest, versions, [v for v, _ in held], result)
        finally:
            for v, fd in held:
                if not dry_run and v in result.removed_versions:
                    remove_quietly(pin_path(db, v))  # a reader waiting on it finds it gone and its version too
                os.close(fd)
        if not dry_run:
            _remove_stale_pins(db, set(result.kept_versions) | {w.manifest.commit})
    return result


def _policy(db: Path, current: int, versions: list[int], keep_versions: int | None,
            older_than: timedelta | None) -> set[int]:
    """The versions the policy keeps: the current one, the last ``keep_versions``, those newer than ``older_than``."""
    keep = {current} | set(versions[-(keep_versions or 1):])
    if older_than is not None:
        cutoff = datetime.now(timezone.utc) - older_than
        for v in versions:
            m = read_version(db, v)
            if m is not None and _time(m.updated) > cutoff:
                keep.add(v)
    return keep


def _drop(db: Path, current: Manifest, versions: list[int], drop: list[int], result: VacuumResult) -> None:
    """Delete the locked versions ``drop`` (their manifests first), then every data file no kept version lists."""
    result.removed_versions = drop
    result.kept_versions = [v for v in versions if v not in set(drop)]
    if not result.dry_run:
        for v in drop:  # the version file goes first: a reader pinning it afterwards sees it gone
            remove_quietly(db / version_rel(v))
    _remove_unlisted(db, current, result)


def _remove_unlisted(db: Path, current: Manifest, result: VacuumResult) -> None:
    """Delete (or with ``dry_run`` only count) every data file that no kept version lists. A symbolic
    link is never followed nor deleted (the writer refused it on opening; one made since is foreign)."""
    listed = current.listed_files()
    for v in result.kept_versions:
        m = read_version(db, v)
        if m is not None:
            listed |= m.listed_files()
    for d in DATA_DIRS:
        for rel in walk_files(db, d, links="skip"):
            if rel not in listed:
                try:
                    size = os.lstat(db / rel).st_size
                except OSError:
                    continue
                result.removed_files.append(rel)
                result.bytes_freed += size
                if not result.dry_run:
                    remove_quietly(db / rel)


def _remove_stale_pins(db: Path, kept: set[int]) -> None:
    """Remove the pin files of versions that are not kept (left by readers of removed versions),
    each only while it is locked here, so a reader pinning it at the same moment re-pins."""
    for rel in walk_files(db, PINS, links="skip"):
        m = re.fullmatch(rf"{PINS}/commit-(\d+)", rel)
        if m is None or int(m.group(1)) in kept:
            continue
        fd = _lock_pin(db, int(m.group(1)), create=False)
        if fd is not None:
            remove_quietly(db / rel)
            os.close(fd)


def _lock_pin(db: Path, commit: int, *, create: bool = True) -> int | None:
    """An exclusive lock on a version's pin file, taken without waiting (its fd), or None when a reader
    holds it (or there is no pin file to lock: with ``create``, one is made, and ``pins/`` with it).
    A read-only descriptor suffices for flock, also on read-only media."""
    fd = open_pin(db, commit, create=create)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def _time(iso: str) -> datetime:
    try:
        t = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return datetime.now(timezone.utc)  # unknown age: treat as new (kept)
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass
class Damage(Result):
    file: str
    problem: str
    fix: str


@dataclass
class VerifyResult(Result):
    commit: int | None
    files_checked: int
    damage: list[Damage]

    @property
    def ok(self) -> bool:
        return not self.damage

    def to_dict(self) -> dict:
        return {"commit": self.commit, "files_checked": self.files_checked, "ok": self.ok,
                "damage": [d.to_dict() for d in self.damage]}

    def rows(self) -> list[dict]:
        return [d.to_dict() for d in self.damage]


def verify(db: str | os.PathLike, as_of: int | None = None) -> VerifyResult:
    """Check every file of the current version (or ``as_of``): present, size and checksum as
    recorded, readable, the schema and row count the manifest says; indexes hold ``ntotal`` rows."""
    db = Path(db)
    kept = list_versions(db)
    try:
        m = read_current(db) if as_of is None else read_version(db, as_of)
    except DatabaseError as e:
        if as_of is not None or not kept:
            raise
        newest = _restorable(db, kept, set())
        return VerifyResult(None, 1, [Damage(MANIFEST, str(e).split("; make")[0].split("; restore")[0],
                                             f"saliencydb restore --db {db} --commit {newest}" if newest is not None
                                             else "restore the database from a backup")])
    if m is None:
        raise missing_version(db, as_of, _current_commit(db))
    problems: list[tuple[str, str]] = []
    files = sorted(m.listed_files())
    for rel in files:
        problem = _check_file(db, m, rel)
        if problem:
            problems.append((rel, problem))
    if kept and m.commit not in kept:
        problems.append((version_rel(m.commit), "missing (the kept copy of this version)"))
    for name in (MANIFEST, VERSIONS, PINS):
        if is_link(db / name):
            problems.append((name, f"a symbolic link to '{os.path.realpath(db / name)}', not the database's own"))
    bad = {rel for rel, _ in problems}
    damage = [Damage(rel, problem, _fix(db, m, rel, kept, bad)) for rel, problem in problems]
    return VerifyResult(m.commit, len(files), damage)


def _current_commit(db: Path) -> int:
    try:
        return read_current(db).commit
    except DatabaseError:
        kept = list_versions(db)
        return kept[-1] if kept else 0


def _check_file(db: Path, m: Manifest, rel: str) -> str | None:
    record = m.files.get(rel)
    problem = shallow_problem(db, rel, record)
    if problem:
        return problem
    if record is not None and file_record(db / rel).sha256 != record.sha256:
        return "its checksum does not match the manifest's (the bytes changed)"
    if rel.endswith(".faiss"):
        return _check_index(db, m, rel)
    expected, rows = _expected_table(m, rel)
    try:
        pf = pq.ParquetFile(db / rel)
    except (OSError, pa.ArrowInvalid) as e:
        return f"not a readable Parquet file ({str(e).splitlines()[0]})"
    got = [(f.name, f.type) for f in pf.schema_arrow]
    want = None if expected is None else [(f.name, f.type) for f in expected]
    # samples parts written before dlogit_norm (then text) was stored lack those last columns, and are whole
    older = want is not None and want[-1][0] == "text" and got in (want[:-1], want[:-2])
    if want is not None and got != want and not older:
        return "its columns are not the table's schema"
    if rows is not None and pf.metadata.num_rows != rows:
        return f"{pf.metadata.num_rows} rows, the manifest says {rows}"
    return None


def _expected_table(m: Manifest, rel: str) -> tuple[pa.Schema | None, int | None]:
    for p in m.parts + [p for v in m.pending.values() for p in v.parts]:
        if p.file == rel:
            return samples_schema(m.n_units, m.feature_dim, m.stored_profile_dtype), p.rows
    if m.stats and m.stats.file == rel:
        return UNITS_SCHEMA, m.n_units
    for name, files in m.tables.items():
        if rel in files:
            return TABLE_SCHEMAS.get(name), None
    return None, None


def _check_index(db: Path, m: Manifest, rel: str) -> str | None:
    import faiss

    try:  # the vectors memory-mapped, never touched: the header and the id map are read, not the vectors
        index = faiss.read_index(str(db / rel), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as e:
        return f"not a readable FAISS index ({str(e).strip().splitlines()[0]})"
    for space, e in m.indexes.items():
        if e.file == rel:
            dim = m.n_units if space == "saliency" else m.feature_dim
            if index.ntotal != e.ntotal:
                return f"holds {index.ntotal} vectors, the manifest says {e.ntotal}"
            if index.d != dim:
                return f"holds {index.d}-dimensional vectors, the {space} space has {dim}"
    return None


def _restorable(db: Path, kept: list[int], bad: set[str], before: int | None = None, split: str | None = None) -> int | None:
    """The newest kept version (before ``before``) that lists none of ``bad``, whose files are all
    present, and that holds samples (of ``split``, when given)."""
    for v in reversed(kept):
        if before is not None and v >= before:
            continue
        m = read_version(db, v)
        if m is None or m.listed_files() & bad or m.rows(split) == 0:
            continue
        if not find_damage(db, m):
            return v
    return None


def _fix(db: Path, m: Manifest, rel: str, kept: list[int], bad: set[str]) -> str:
    link = linked_part(db, rel)
    if link is not None:
        kind = "file" if link == rel and not os.path.isdir(db / rel) else "folder"
        fix = "" if rel in (MANIFEST, VERSIONS, PINS) else f" (then, if it is still damaged: {_repair(db, m, rel, kept, bad)})"
        return f"replace the link '{link}' by a real {kind} holding what it points to, or remove it{fix}"
    return _repair(db, m, rel, kept, bad)


def _repair(db: Path, m: Manifest, rel: str, kept: list[int], bad: set[str]) -> str:
    if rel.startswith("versions/"):
        return "any command that writes (e.g. `saliencydb vacuum`) keeps the current version again"
    if m.stats and rel == m.stats.file or rel.startswith("index/"):
        splits = ",".join(m.stats.splits if m.stats else [])
        return f"saliencydb restat --db {db}" + (f" --splits {splits}" if splits else "") + " (rebuilds statistics and indexes from the samples)"
    split = next((p.split for p in m.parts if p.file == rel), None)
    older = _restorable(db, kept, bad, before=m.commit, split=split)
    restore = f"saliencydb restore --db {db} --commit {older}" if older is not None else None
    for p in m.parts:
        if p.file == rel:
            source = m.splits[p.split].source
            again = f"saliencydb ingest --db {db} --data {source} --split {p.split} --replace"
            return f"{restore} (or re-profile the split: {again})" if restore else again
    for name, files in m.tables.items():
        if rel in files:
            rerun = {"knn": "saliencydb mistakes", "clusters": "saliencydb clusters", "blame": "saliencydb clusters",
                     "triage": "saliencydb triage"}.get(name)
            if rerun:
                return f"{rerun} --db {db} (recomputes the {name} table)"
    return restore or "restore the database from a backup"
