"""Storage never leaves the database, and vacuum cannot race a reader's pin.

A data folder (or a committed file) replaced by a symbolic link to a folder outside the database
is refused in one line by every writer, and nothing outside is ever deleted (the outside files are
hashed before and after). ``vacuum`` locks each version it drops exactly as a reader pins it,
so the two never interleave: the interleavings are run deterministically in-process."""

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from saliencydb.errors import DatabaseError
from saliencydb.storage import DatabaseWriter, Snapshot, maintenance, reader, versions
from saliencydb.storage.maintenance import VacuumResult, restore, vacuum
from saliencydb.storage.versions import list_versions, pin_version, read_current, read_version

from helpers import run_cli


def _hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _outside(root: Path, copy_from: Path | None = None) -> Path:
    """A folder outside the database: sentinel files (one named like an unlisted part, one in a subfolder),
    and a copy of ``copy_from``'s files when given."""
    if copy_from is not None and copy_from.is_dir():
        shutil.copytree(copy_from, root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sentinel.txt").write_text("outside the database; never delete me\n")
    (root / "part-000999-000.parquet").write_bytes(b"not listed by any version" * 10)
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "deep.bin").write_bytes(os.urandom(256))
    return root


def _link_folder(db: Path, name: str, outside: Path) -> None:
    """Replace the database folder ``name`` (absent or not) by a symbolic link to ``outside``."""
    target = db / name
    if target.exists() and not target.is_symlink():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, target, target_is_directory=True)


def _refused(r) -> str:
    """The command failed with exactly one `Error: ` line and no traceback; the line."""
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


WRITERS = [
    ("mistakes", "-k", 3, "--bootstrap", 10, "--quiet"),
    ("vacuum", "--keep-versions", 1),
    ("restat", "--quiet"),
]


@pytest.mark.parametrize("name", ["interventions", "knn", "index", "samples/val", "versions", "pins"])
def test_a_linked_folder_is_refused_by_every_writer_and_nothing_outside_is_deleted(digits_copy, tmp_path, name):
    db = digits_copy
    current = read_current(db).commit
    outside = _outside(tmp_path / "outside", copy_from=db / name)
    _link_folder(db, name, outside)
    before = _hashes(outside)
    for args in WRITERS + [("restore", "--commit", current)]:
        line = _refused(run_cli(args[0], "--db", db, *args[1:], expect=None))
        assert "symbolic link" in line and name in line and "replace the link by a real folder" in line, line
        assert _hashes(outside) == before, args
        assert (db / name).is_symlink()
    r = run_cli("verify", "--db", db, expect=None)  # reads only; what a version lists through the link is reported
    if name in ("index", "samples/val", "versions", "pins"):
        assert r.exit_code == 1 and "symbolic link" in r.output and "replace the link" in r.output, r.output
    assert _hashes(outside) == before


def test_a_database_whose_own_path_is_a_link_is_fine(digits_copy, tmp_path):
    link = tmp_path / "db-link"
    os.symlink(digits_copy, link, target_is_directory=True)
    run_cli("mistakes", "--db", link, "-k", 3, "--bootstrap", 10, "--quiet")
    run_cli("vacuum", "--db", link, "--keep-versions", 1)
    assert run_cli("verify", "--db", link).exit_code == 0
    assert json.loads(run_cli("info", "--db", link, "--format", "json").stdout)["commit"] == read_current(digits_copy).commit


def test_a_linked_committed_file_is_reported_by_verify_and_refused_by_writers(digits_copy, tmp_path):
    db = digits_copy
    part = read_current(db).parts[0].file
    outside = _outside(tmp_path / "outside")
    shutil.copy2(db / part, outside / "copy.parquet")
    os.remove(db / part)
    os.symlink(outside / "copy.parquet", db / part)
    before = _hashes(outside)
    r = run_cli("verify", "--db", db, expect=1)
    assert part in r.output and "symbolic link" in r.output and "replace the link" in r.output, r.output
    line = _refused(run_cli("vacuum", "--db", db, "--keep-versions", 1, expect=None))
    assert part in line and "symbolic link" in line
    line = _refused(run_cli("sql", "--db", db, "SELECT count(*) FROM samples", expect=None))
    assert part in line and "symbolic link" in line
    assert _hashes(outside) == before and (db / part).is_symlink()


def test_vacuum_leaves_a_link_that_appears_after_the_writer_opened_alone(digits_copy, tmp_path):
    """A link made after the writer's check is foreign to vacuum: neither followed nor deleted."""
    db = digits_copy
    outside = _outside(tmp_path / "outside")
    before = _hashes(outside)
    (db / "knn").mkdir(exist_ok=True)
    os.symlink(outside / "part-000999-000.parquet", db / "knn" / "part-000999-000.parquet")
    os.symlink(outside, db / "blame", target_is_directory=True)
    result = VacuumResult(kept_versions=list_versions(db))
    maintenance._remove_unlisted(db, read_current(db), result)
    assert not any(f.startswith(("knn/part-000999", "blame/")) for f in result.removed_files), result.removed_files
    assert (db / "knn" / "part-000999-000.parquet").is_symlink() and (db / "blame").is_symlink()
    assert _hashes(outside) == before
    with pytest.raises(DatabaseError, match="symbolic link"):
        DatabaseWriter(db, operation="test")  # the next writer refuses it
    assert _hashes(outside) == before


# -- vacuum against readers pinning ------------------------------------------------------------

def _old_version(db: Path) -> tuple[int, set[str]]:
    """A kept version that is not current and lists files the current one does not."""
    current = read_current(db)
    for v in list_versions(db):
        if v != current.commit:
            only = read_version(db, v).listed_files() - current.listed_files()
            if only:
                return v, only
    pytest.fail("the digits database has no older version with files of its own")


def test_a_reader_that_pinned_before_vacuum_reached_its_version_keeps_it(digits_copy, monkeypatch):
    db = digits_copy
    n, only = _old_version(db)
    readers = []
    lock_pin = maintenance._lock_pin

    def pin_first(db_, commit, **kw):  # a reader pins n just before vacuum tries to lock it
        if commit == n and not readers:
            readers.append(Snapshot(db, as_of=n))
        return lock_pin(db_, commit, **kw)

    monkeypatch.setattr(maintenance, "_lock_pin", pin_first)
    r = vacuum(db, keep_versions=1)
    assert n in r.pinned and n not in r.removed_versions
    assert all((db / f).exists() for f in only) and read_version(db, n) is not None
    snap = readers[0]
    assert snap.commit == n and snap.pinned
    for f in only:
        if f.endswith(".parquet"):
            snap.read_table(f)
        else:
            reader.read_index(db, f)
    snap.close()
    monkeypatch.setattr(maintenance, "_lock_pin", lock_pin)
    r = vacuum(db, keep_versions=1)
    assert n in r.removed_versions and not any((db / f).exists() for f in only)


def test_a_reader_arriving_while_vacuum_holds_its_version_is_told_it_was_removed(digits_copy, monkeypatch):
    db = digits_copy
    n, only = _old_version(db)
    out, threads = [], []
    lock_pin = maintenance._lock_pin

    def try_open():
        try:
            out.append(Snapshot(db, as_of=n))
        except DatabaseError as e:
            out.append(e)

    def reader_arrives(db_, commit, **kw):  # vacuum has locked n; a reader tries to pin it before the deletion
        fd = lock_pin(db_, commit, **kw)
        if commit == n and fd is not None and not threads:
            threads.append(threading.Thread(target=try_open))
            threads[0].start()
            time.sleep(0.5)
            assert threads[0].is_alive(), out  # it waits on vacuum's lock, it does not read
        return fd

    monkeypatch.setattr(maintenance, "_lock_pin", reader_arrives)
    r = vacuum(db, keep_versions=1)
    threads[0].join(30)
    assert n in r.removed_versions and not any((db / f).exists() for f in only)
    assert len(out) == 1 and isinstance(out[0], DatabaseError), out
    oldest = list_versions(db)[0]
    assert str(out[0]) == (f"commit {n} of database '{db}' was removed by vacuum; the oldest kept version is "
                           f"commit {oldest} (saliencydb versions --db {db})")
    monkeypatch.setattr(maintenance, "_lock_pin", lock_pin)
    vacuum(db, keep_versions=1)  # the pin file the late reader left is removed
    assert not versions.pin_path(db, n).exists()


def test_a_reader_that_chose_a_version_before_vacuum_and_pins_after_it(digits_copy, monkeypatch):
    """The interleaving that lost files before: the version is chosen, vacuum drops it, then the pin."""
    db = digits_copy
    n, _ = _old_version(db)
    Pin = versions.Pin
    runs = []

    class LatePin(Pin):
        def __init__(self, db_, commit):
            if not runs:
                runs.append(vacuum(db, keep_versions=1))
            super().__init__(db_, commit)

    monkeypatch.setattr(versions, "Pin", LatePin)
    with pytest.raises(DatabaseError, match=f"commit {n} of database .* was removed by vacuum; the oldest kept"):
        pin_version(db, as_of=n)
    assert n in runs[0].removed_versions
    # an open of the current version whose commit is vacuumed between choosing and pinning takes the new current one
    c = read_current(db).commit
    runs.clear()

    class MovedPin(Pin):
        def __init__(self, db_, commit):
            if not runs:
                restore(db, c)  # a new commit, c + 1
                runs.append(vacuum(db, keep_versions=1))
            super().__init__(db_, commit)

    monkeypatch.setattr(versions, "Pin", MovedPin)
    m, pin = pin_version(db)
    assert c in runs[0].removed_versions and m.commit == c + 1 and read_version(db, m.commit) is not None
    pin.release()


def test_a_version_found_vacuumed_after_its_manifest_was_read_is_not_called_damaged(digits_copy, monkeypatch):
    db = digits_copy
    n, _ = _old_version(db)
    old = read_version(db, n)
    vacuum(db, keep_versions=1)

    class NoPin:
        held = False

        def release(self):
            pass

    monkeypatch.setattr(reader, "pin_version", lambda path, as_of=None: (old, NoPin()))
    with pytest.raises(DatabaseError) as e:
        Snapshot(db, as_of=n)
    assert "was removed by vacuum" in str(e.value) and "damaged" not in str(e.value)


def test_as_of_a_vacuumed_version_and_a_deleted_pins_folder(digits_copy):
    db = digits_copy
    n, _ = _old_version(db)
    current = read_current(db).commit
    shutil.rmtree(db / "pins", ignore_errors=True)
    q = ("sql", "--db", db, "SELECT count(*) AS n FROM samples", "--format", "json")
    assert json.loads(run_cli(*q, "--as-of", n).stdout)[0]["n"] == read_version(db, n).rows()
    assert (db / "pins").is_dir()  # recreated by the reader
    shutil.rmtree(db / "pins")
    run_cli("vacuum", "--db", db, "--keep-versions", 1)
    shutil.rmtree(db / "pins", ignore_errors=True)
    want = (f"Error: commit {n} of database '{db}' was removed by vacuum; the oldest kept version is commit "
            f"{current} (saliencydb versions --db {db})")
    for args in (q + ("--as-of", n), ("info", "--db", db, "--as-of", n), ("verify", "--db", db, "--as-of", n),
                 ("restore", "--db", db, "--commit", n)):
        line = _refused(run_cli(*args, expect=None))
        assert line == want and "damaged" not in line, (args, line)
    # a commit that never existed is still "not kept"
    assert "is not kept" in _refused(run_cli(*q, "--as-of", 99999, expect=None))
    assert json.loads(run_cli(*q).stdout)[0]["n"] == 800
