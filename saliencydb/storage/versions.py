"""Versions: every commit's manifest kept as an immutable file, the current pointer, and pins.

``manifest.json`` is the current version. Each commit first writes its manifest to
``versions/manifest-<commit>.json`` (never changed afterwards), then replaces
``manifest.json`` atomically. A reader pins the version it opened with a shared ``flock``
on ``pins/commit-<commit>``, then checks that the version is still kept; ``vacuum`` creates
and locks that same file exclusively (never waiting) before it deletes anything of the
version, so pinning and deleting cannot interleave: nothing a reader still reads is ever
deleted, and a reader that arrives late is told its version was removed
(docs/database-format.md).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
from pathlib import Path

from ..errors import DatabaseError
from ..schemas import FORMAT_VERSION, MANIFEST, Manifest, manifest_problem, now_iso
from .files import is_link, link_error, write_atomic

VERSIONS = "versions"
PINS = "pins"
_VERSION_FILE = re.compile(r"^manifest-(\d{6,})\.json$")


def pin_path(db: Path, commit: int) -> Path:
    return Path(db) / PINS / f"commit-{commit:06d}"


def version_rel(commit: int) -> str:
    return f"{VERSIONS}/manifest-{commit:06d}.json"


def parse_manifest(db: Path, text: bytes | str, where: str) -> Manifest:
    """A manifest from its text, with one clear error for every way it can be wrong."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise DatabaseError(f"'{where}' is unreadable ({e}); {_restore_hint(db)}") from None
    version = d.get("format_version") if isinstance(d, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise DatabaseError(f"'{where}' has no format_version; it was not written by saliencydb ({_restore_hint(db)})")
    if version > FORMAT_VERSION:
        raise DatabaseError(
            f"'{db}' was written in database format {version}, newer than this saliencydb reads "
            f"(format {FORMAT_VERSION}); upgrade saliencydb"
        )
    problem = manifest_problem(d)
    if problem:
        raise DatabaseError(f"'{where}' is corrupt: {problem}; {_restore_hint(db)}")
    return Manifest.from_dict(d)


def _restore_hint(db: Path) -> str:
    kept = list_versions(db)
    if kept:
        return (f"make a kept version current with `saliencydb restore --db {db} --commit {kept[-1]}` "
                f"(`saliencydb versions --db {db}` lists them)")
    return "restore it from a backup"


def is_database(db: Path) -> bool:
    """Whether ``db`` holds a current manifest (a database, possibly damaged)."""
    return (Path(db) / MANIFEST).exists()


def read_current(db: Path) -> Manifest:
    """The current manifest (``manifest.json``)."""
    db = Path(db)
    path = db / MANIFEST
    if not db.exists():
        raise DatabaseError(f"no database at '{db}': create one with `saliencydb index --db {db} ...`")
    if not path.is_file():
        raise DatabaseError(f"'{db}' is not a saliencydb database (no {MANIFEST}); point --db at a database directory")
    try:
        text = path.read_bytes()
    except OSError as e:
        raise DatabaseError(f"'{path}' is unreadable ({e.strerror}); check its permissions") from None
    return parse_manifest(db, text, str(path))


def read_version(db: Path, commit: int) -> Manifest | None:
    """The kept manifest of ``commit``, or None when it is not kept."""
    path = Path(db) / version_rel(commit)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DatabaseError(f"'{path}' is unreadable ({e.strerror})") from None
    m = parse_manifest(Path(db), text, str(path))
    if m.commit != commit:
        raise DatabaseError(f"'{path}' holds commit {m.commit}, not {commit}; the versions directory was edited by hand")
    return m


def list_versions(db: Path) -> list[int]:
    """Commits whose manifests are kept, oldest first."""
    try:
        names = os.listdir(Path(db) / VERSIONS)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(_VERSION_FILE.match, names) if m)


def write_commit(db: Path, manifest: Manifest) -> None:
    """Publish ``manifest`` (its commit number already set): the immutable version file, then the
    current pointer. A crash between the two leaves the previous commit current; the next
    writer deletes the version file that never became current."""
    manifest.updated = now_iso()
    manifest.format_version = FORMAT_VERSION
    data = manifest.to_json().encode()
    (Path(db) / VERSIONS).mkdir(exist_ok=True)
    write_atomic(Path(db) / version_rel(manifest.commit), data)
    write_atomic(Path(db) / MANIFEST, data)


class Pin:
    """A shared lock on one version: while held, ``vacuum`` keeps that version and its files.

    The lock is taken on the pin file that is in ``pins/`` when it is granted (``vacuum`` may
    remove the file of a version it dropped while a reader waited on it; the reader then locks
    the new one). On a medium the reader cannot write (a read-only mount), no pin can be taken
    and none is needed: no writer can delete anything there either."""

    def __init__(self, db: Path, commit: int):
        self.commit = commit
        self._fd: int | None = None
        if is_link(Path(db) / PINS):
            raise link_error(db, PINS)
        path = pin_path(db, commit)
        for _ in range(100):
            fd = open_pin(db, commit)
            if fd is None:
                return  # read-only and never pinned: nothing can be vacuumed here
            fcntl.flock(fd, fcntl.LOCK_SH)
            if same_file(fd, path):
                self._fd = fd
                return
            os.close(fd)
        raise DatabaseError(f"could not pin commit {commit} of '{db}' (its pin file keeps changing); retry")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def open_pin(db: Path, commit: int, *, create: bool = True) -> int | None:
    """A descriptor of the pin file of ``commit`` (created, with ``pins/``, when missing and
    ``create``), read-only where the medium allows nothing else; None when there is none to open.
    A pin file that is a symbolic link is refused, never followed."""
    path = pin_path(db, commit)
    if create:
        try:
            path.parent.mkdir(exist_ok=True)
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise link_error(db, f"{PINS}/{path.name}") from None
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise link_error(db, f"{PINS}/{path.name}") from None
        return None


def same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (not one removed meanwhile)."""
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def missing_version(db: Path, commit: int, current: int) -> DatabaseError:
    """The one-line answer for a version that is not kept: removed by ``vacuum`` (an earlier commit
    than the current one), or never made (a later one)."""
    kept = list_versions(db)
    if 0 <= commit < current:
        oldest = kept[0] if kept else current
        return DatabaseError(f"commit {commit} of database '{db}' was removed by vacuum; the oldest kept version "
                             f"is commit {oldest} (saliencydb versions --db {db})")
    span = f"{kept[0]}..{kept[-1]}" if kept else "none"
    return DatabaseError(f"commit {commit} of '{db}' is not kept (kept commits: {span}); "
                         f"`saliencydb versions --db {db}` lists them")


def removed_since(db: Path, commit: int) -> DatabaseError | None:
    """The ``missing_version`` answer when ``commit`` (not the current one) is no longer kept, else None:
    a version's files found missing because it was vacuumed are reported as that, not as damage."""
    try:
        if read_version(db, commit) is not None:
            return None
        current = read_current(db).commit
    except DatabaseError:
        return None
    return None if current == commit else missing_version(db, commit, current)


def pin_version(db: Path, as_of: int | None = None) -> tuple[Manifest, Pin]:
    """The current version (or ``as_of``), pinned. The version's kept manifest is read back only
    once the pin is held, so a version that ``vacuum`` dropped before it could be pinned is
    noticed (its file is gone): the current one is taken again, or an ``as_of`` reader is told
    it was removed."""
    db = Path(db)
    for _ in range(100):
        current = read_current(db)
        commit = current.commit if as_of is None else as_of
        if not 0 <= commit <= current.commit:
            raise missing_version(db, commit, current.commit)  # never made: no pin file is left for it
        pin = Pin(db, commit)
        kept = read_version(db, commit)
        if kept is not None:
            # the current pointer is the authority for the current commit; the kept copy says it was not vacuumed
            return (current if as_of is None or as_of == current.commit else kept), pin
        now = read_current(db)
        if now.commit == commit:
            return now, pin  # a format-1 database, not yet written by this version: no kept versions yet
        pin.release()
        if as_of is not None:
            raise missing_version(db, as_of, now.commit)
        # the current version moved on and this one was vacuumed: take the new one
    raise DatabaseError(f"could not pin a version of '{db}' (it changes faster than it can be read); retry")
