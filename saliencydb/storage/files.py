"""Files inside a database directory: atomic creation, checksums, and the one-line errors
for a full disk, a read-only medium and a damaged file (docs: docs/database-format.md).

Every file a database lists is created here: written under a temporary name (ending in
``.tmp``, never ``.parquet`` or ``.json``), flushed and fsynced, renamed to its final name,
and only then listed by a commit. A failed write removes its temporary file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DamagedError, DatabaseError, DiskFullError, ReadOnlyError
from ..schemas.manifest import FileRecord

TMP_SUFFIX = ".tmp"  # temporary files never end in .parquet or .json
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_disk_full(e: BaseException) -> bool:
    """True for an out-of-space error from the OS, pyarrow or FAISS (which report it differently)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left" in text or "[errno 28]" in text.lower() or "Disk quota exceeded" in text


def is_read_only(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in _READ_ONLY


def write_error(db: Path, e: BaseException, last_commit: int | None) -> Exception:
    """The one-line error for a failed write into ``db`` (disk full, read-only) or ``e`` itself."""
    kept = "nothing was committed" + (f" after commit {last_commit}" if last_commit is not None else "")
    if is_disk_full(e):
        return DiskFullError(f"no space left on the device holding '{db}'; {kept}. Free some space "
                             f"(`saliencydb vacuum --db {db}` deletes old versions) and rerun")
    if is_read_only(e):
        return ReadOnlyError(f"database '{db}' is read-only ({os.strerror(e.errno)}); {kept}. "
                             "Copy it to writable storage to change it")
    return e


def remove_quietly(path: Path) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def new_file(db: Path, rel: str, write: Callable[[Path], None]) -> str:
    """Create ``db/rel`` through ``write(tmp_path)``: written under a temporary name, fsynced,
    renamed. Unlisted until a commit lists it (a sharded job's ranks write parts this way, and
    the rank holding the lock lists them). A folder on the way that is a symbolic link is refused,
    never written through. On any failure the temporary file is removed."""
    final = Path(db) / rel
    link = linked_part(db, rel)
    if link is not None:  # never written through a link out of the database
        raise link_error(db, link)
    if final.exists():
        raise DatabaseError(f"refusing to overwrite committed file '{rel}'")
    tmp = final.with_name(final.name + TMP_SUFFIX)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        remove_quietly(tmp)
        raise
    return rel


def write_parquet(db: Path, rel: str, table: pa.Table) -> str:
    # row groups of about 8 MiB: a lookup of a few ids reads a few small groups
    row_bytes = max(1, table.nbytes // max(table.num_rows, 1))
    group = max(16, min(65536, (8 << 20) // row_bytes))
    return new_file(db, rel, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=group))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file, whole. The
    temporary file's name is this call's own, so two processes writing one path never share it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    fsync_dir(path.parent)


def file_record(path: Path) -> FileRecord:
    """The size and SHA-256 of a file: the manifest's record of it."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return FileRecord(bytes=size, sha256=h.hexdigest())


def link_error(db: Path, rel: str) -> DatabaseError:
    """The one-line refusal of a symbolic link inside a database (saliencydb never follows one out)."""
    return DatabaseError(f"'{Path(db) / rel}' is a symbolic link inside database '{db}'; saliencydb never follows a "
                         "link out of a database: replace the link by a real folder (or file), or remove it")


def is_link(path: Path) -> bool:
    """Whether ``path`` itself (not what it points to) is a symbolic link."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def linked_part(db: Path, rel: str) -> str | None:
    """The first of ``rel`` and the folders above it (inside ``db``; ``db`` itself may be a link)
    that is a symbolic link, or None."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        if is_link(Path(db) / sub):
            return sub
    return None


def refuse_link(db: Path, rel: str) -> None:
    """Refuse (``link_error``) when the entry ``rel`` of the database is a symbolic link."""
    if is_link(Path(db) / rel):
        raise link_error(db, rel)


def walk_files(db: Path, top: str, *, links: str = "refuse") -> Iterator[str]:
    """The regular files under the folder ``db/top``, relative to ``db``, never following a symbolic
    link: a link (to a folder or a file, ``top`` included) is refused with ``link_error``, or with
    ``links="skip"`` left alone (neither followed nor listed). A missing ``top`` has no files."""
    if is_link(Path(db) / top):
        if links == "refuse":
            raise link_error(db, top)
        return
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(Path(db) / folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in sorted(entries, key=lambda e: e.name):
            rel = f"{folder}/{e.name}"
            if e.is_symlink():
                if links == "refuse":
                    raise link_error(db, rel)
            elif e.is_dir(follow_symlinks=False):
                stack.append(rel)
            elif e.is_file(follow_symlinks=False):
                yield rel


def shallow_problem(db: Path, rel: str, record: dict | None) -> str | None:
    """What is wrong with a listed file at a glance (missing, wrong size, a symbolic link), or None."""
    link = linked_part(db, rel)
    if link is not None:
        where = "" if link == rel else f" (its folder '{link}' is one)"
        return (f"a symbolic link{where} to '{os.path.realpath(Path(db) / rel)}', not a file of the database; "
                "replace the link by a real file or folder")
    try:
        size = os.stat(Path(db) / rel).st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if record is not None and size != record.bytes:
        return f"{size} bytes, the manifest recorded {record.bytes} (truncated or overwritten)"
    return None


def find_damage(db: Path, manifest, files=None) -> list[tuple[str, str]]:
    """(file, problem) for the files of ``manifest`` (all it lists, or ``files``) that are missing
    or not the size it recorded, in file order."""
    out = []
    for rel in sorted(manifest.listed_files() if files is None else files):
        problem = shallow_problem(db, rel, manifest.files.get(rel))
        if problem:
            out.append((rel, problem))
    return out


def damaged(db: Path, rel: str, problem: str) -> DamagedError:
    return DamagedError(f"committed file '{rel}' of database '{db}' is damaged ({problem}); "
                        f"run `saliencydb verify --db {db}` for the damage and the fix")
