"""Databases on awkward media, through the real CLI in subprocesses.

* A read-only bind mount: every reading command works and answers exactly as on the writable
  source; `mistakes` and `clusters` compute and print but note that nothing was stored; every
  writing command fails with one "read-only" line; not a byte of the source changes.
* A 20 MB tmpfs filled to the brim: `ingest`, `mistakes` and `restat` each fail with one
  "no space left ... nothing was committed" line and leave the database as it was (same
  commit, same samples, `verify` clean, no `*.tmp` left); once space is freed the ingest works.

These tests run as root and mount file systems; every mount is undone in a `finally`.
"""

import errno
import hashlib
import json
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from helpers import run_cli_subprocess

MiB = 1 << 20
INGEST = ("--data", "builtin:mnist5k:train", "--split", "more", "--quiet", "--workers", "0")


@contextmanager
def mounted(target: Path, *mount_commands: list[str]):
    """Run the mount commands (all mounting ``target``) and always unmount it afterwards."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        for cmd in mount_commands:
            subprocess.run(cmd, check=True, capture_output=True)
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def cli(*args, expect: int | None = 0) -> subprocess.CompletedProcess:
    r = run_cli_subprocess(*args)
    if expect is not None:
        assert r.returncode == expect, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r


def cli_json(*args):
    return json.loads(cli(*args, "--format", "json").stdout)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    """The failed command's stderr: exactly one line, starting 'Error:'; returned lower-cased."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    return lines[0].lower()


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def reading_answers(db: Path) -> dict:
    """What the reading commands say about ``db`` (minus the path it was opened under)."""
    info = cli_json("info", "--db", db)
    info.pop("path")
    return {
        "info": info,
        "sql": cli_json("sql", "--db", db, "SELECT split, count(*) AS n, sum(CAST(correct AS INT)) AS ok "
                                           "FROM samples GROUP BY split ORDER BY split"),
        "neighbors": cli_json("neighbors", "--db", db, "--id", 5, "-k", 3),
        "versions": cli_json("versions", "--db", db),
        "verify": cli("verify", "--db", db).stdout,
    }


def test_read_only_bind_mount(digits_db, tmp_path):
    src, ro = tmp_path / "src", tmp_path / "ro"
    shutil.copytree(digits_db, src)
    before = file_hashes(src)
    with mounted(ro, ["mount", "--bind", str(src), str(ro)], ["mount", "-o", "remount,ro,bind", str(ro)]):
        try:
            (ro / "probe").write_bytes(b"x")
            raise AssertionError("the bind mount is writable")
        except OSError as e:
            assert e.errno == errno.EROFS

        ro_answers = reading_answers(ro)
        assert ro_answers["info"]["samples"] == 800 and "no damage" in ro_answers["verify"]

        derived = {}
        for name, args in {"mistakes": ("mistakes", "--db", ro, "--bootstrap", 20, "--format", "json"),
                           "clusters": ("clusters", "--db", ro, "--n-clusters", 3)}.items():
            r = cli(*args)
            assert r.stdout.strip(), f"{name} printed no report"
            note = r.stderr.lower()
            assert "nothing was stored" in note and "read-only" in note, r.stderr
            derived[name] = r.stdout
        assert json.loads(derived["mistakes"])["splits"]["train"]["samples"] == 200

        for args in [("ingest", *INGEST, "--limit", 100), ("restat", "--quiet"), ("vacuum",),
                     ("restore", "--commit", 1)]:
            line = one_error_line(cli(args[0], "--db", ro, *args[1:], expect=None))
            assert "read-only" in line, (args, line)
    assert file_hashes(src) == before, "the read-only database changed"

    # The same answers from the writable source (after the check above: readers may pin there).
    assert reading_answers(src) == ro_answers
    assert cli("mistakes", "--db", src, "--bootstrap", 20, "--no-store", "--format", "json").stdout \
        == derived["mistakes"]
    assert cli("clusters", "--db", src, "--n-clusters", 3, "--no-store").stdout == derived["clusters"]


def fill(directory: Path) -> Path:
    """Write a filler file in 1 MiB, then 4 KiB chunks until the file system says ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (b"\0" * MiB, b"\0" * 4096):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    assert shutil.disk_usage(directory).free == 0
    return filler


def state(db: Path) -> tuple[int, int, dict]:
    """The current commit, sample count and per-split sample counts."""
    info = cli_json("info", "--db", db)
    return info["commit"], info["samples"], {k: v["samples"] for k, v in info["splits"].items()}


def data_files(db: Path) -> dict[str, str]:
    """The database's files, less reader pins (readers add them) and the writer lock (it holds a pid)."""
    return {k: v for k, v in file_hashes(db).items() if not k.startswith("pins") and k != ".lock"}


def test_full_tmpfs(digits_db, tmp_path):
    size = sum(p.stat().st_size for p in digits_db.rglob("*") if p.is_file())
    assert size < 5 * MiB, f"the digits database is {size} bytes: not well below the 20 MB tmpfs"
    small = tmp_path / "small"
    with mounted(small, ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)]):
        db = small / "db"
        shutil.copytree(digits_db, db)
        before = state(db)
        commit, samples, _ = before
        assert samples == 800
        files = data_files(db)
        filler = fill(small)

        for args in [("ingest", *INGEST, "--limit", 300), ("mistakes", "--bootstrap", 20, "--quiet"),
                     ("restat", "--quiet")]:
            line = one_error_line(cli(args[0], "--db", db, *args[1:], expect=None))
            assert "no space left" in line and "nothing was committed" in line, (args, line)
            assert state(db) == before, f"{args[0]} changed the database"
            assert "no damage" in cli("verify", "--db", db).stdout
            assert data_files(db) == files, f"{args[0]} left files behind"
            assert not list(db.rglob("*.tmp")), list(db.rglob("*.tmp"))

        filler.unlink()
        cli("ingest", "--db", db, *INGEST, "--limit", 300)
        new_commit, new_samples, splits = state(db)
        assert new_commit > commit and new_samples == samples + 300 and splits["more"] == 300
        assert "no damage" in cli("verify", "--db", db).stdout
        assert not list(db.rglob("*.tmp"))
