"""Versions, pinned readers, vacuum, restore, verify, derived tables tied to their version,
stale indexes, and the cases issue 12 found, each reproduced with the real CLI in a subprocess."""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import saliencydb
from saliencydb.errors import StaleError
from saliencydb.storage import DatabaseWriter

from helpers import ROOT, run_cli_subprocess

TRAIN = ["--data", "builtin:mnist5k:train", "--quiet", "--workers", "0"]


def cli(*args, expect=0, **kw):
    r = run_cli_subprocess(*args, timeout=kw.pop("timeout", 300), **kw)
    if expect is not None:
        assert r.returncode == expect, (args, r.stdout, r.stderr)
    if r.returncode not in (0, 2) and args[0] != "verify":  # verify reports one line per damaged file
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r


def jcli(*args):
    return json.loads(cli(*args, "--format", "json").stdout)


def count(db, where="TRUE", *extra):
    return jcli("sql", "--db", db, f"SELECT count(*) AS n FROM samples WHERE {where}", *extra)[0]["n"]


def test_every_commit_is_kept_and_as_of_reads_it_after_restore(digits_copy):
    before = jcli("info", "--db", digits_copy)["commit"]
    cli("ingest", "--db", digits_copy, "--split", "more", "--limit", 100, *TRAIN)
    after = jcli("info", "--db", digits_copy)["commit"]
    assert after > before and count(digits_copy) == 900
    kept = jcli("versions", "--db", digits_copy)
    assert [v["commit"] for v in kept] == list(range(kept[0]["commit"], after + 1))
    assert kept[-1]["current"] and kept[-1]["command"] == "ingest more" and kept[-1]["splits"]["more"] == 100
    r = cli("restore", "--db", digits_copy, "--commit", before)
    assert f"restored commit {before} as commit {after + 1}" in r.stdout
    assert count(digits_copy) == 800 and count(digits_copy, "split = 'more'") == 0
    # time travel: the version with the new split is still readable, and the restore is a version too
    assert count(digits_copy, "split = 'more'", "--as-of", after) == 100
    assert jcli("info", "--db", digits_copy, "--as-of", after)["splits"]["more"]["samples"] == 100
    assert jcli("versions", "--db", digits_copy)[-1]["command"] == f"restore {before}"
    # ids are never reused: new samples after the restore get ids above the undone ones
    cli("ingest", "--db", digits_copy, "--split", "again", "--limit", 10, *TRAIN)
    assert jcli("sql", "--db", digits_copy, "SELECT min(sample_id) AS m FROM samples WHERE split = 'again'")[0]["m"] >= 900
    r = cli("restore", "--db", digits_copy, "--commit", 99999, expect=1)
    assert "is not kept" in r.stderr
    r = cli("sql", "--db", digits_copy, "SELECT 1", "--as-of", 99999, expect=1)
    assert "is not kept" in r.stderr


def test_vacuum_never_deletes_what_a_pinned_reader_reads(digits_copy):
    reader = saliencydb.open(digits_copy)
    pinned = reader.commit
    units_file = reader.manifest.stats["file"]
    want = reader.sql("SELECT sum(mean) AS s FROM units").column("s")[0].as_py()
    neighbours = [n["sample_id"] for n in reader.neighbors(5, k=4).neighbors]
    cli("restat", "--db", digits_copy, "--splits", "val,train", "--quiet")  # new statistics, new indexes
    r = json.loads(cli("vacuum", "--db", digits_copy, "--keep-versions", 1, "--format", "json").stdout)
    assert pinned in r["pinned"] and pinned not in r["removed_versions"]
    assert (digits_copy / units_file).exists()
    # the pinned reader still reads its own version, whole
    assert reader.sql("SELECT sum(mean) AS s FROM units").column("s")[0].as_py() == want
    assert [n["sample_id"] for n in reader.neighbors(5, k=4).neighbors] == neighbours
    assert pinned in [v["commit"] for v in jcli("versions", "--db", digits_copy) if v["pinned"]]
    reader.close()
    r = json.loads(cli("vacuum", "--db", digits_copy, "--keep-versions", 1, "--format", "json").stdout)
    assert pinned in r["removed_versions"] and units_file in r["removed_files"] and r["bytes_freed"] > 0
    assert not (digits_copy / units_file).exists()
    assert [v["commit"] for v in jcli("versions", "--db", digits_copy)] == [jcli("info", "--db", digits_copy)["commit"]]
    assert cli("verify", "--db", digits_copy).returncode == 0


def test_default_vacuum_keeps_the_last_hour(digits_copy):
    for _ in range(3):
        cli("restat", "--db", digits_copy, "--quiet")
    n = len(jcli("versions", "--db", digits_copy))
    r = json.loads(cli("vacuum", "--db", digits_copy, "--format", "json").stdout)
    assert r["removed_versions"] == [] and len(jcli("versions", "--db", digits_copy)) == n
    dry = json.loads(cli("vacuum", "--db", digits_copy, "--older-than", "0s", "--dry-run", "--format", "json").stdout)
    assert dry["dry_run"] and len(dry["removed_versions"]) == n - 1 and len(jcli("versions", "--db", digits_copy)) == n
    r = cli("vacuum", "--db", digits_copy, "--older-than", "soon", expect=1)
    assert "is not a duration" in r.stderr


def test_readers_never_fail_during_restat_replace_and_vacuum(digits_copy):
    """200 reader runs while a writer loops over restat, ingest --replace and vacuum."""
    db = digits_copy
    stop = threading.Event()
    writes = []

    def writer():
        steps = [("restat", "--db", db, "--quiet"),
                 ("ingest", "--db", db, "--split", "train", "--replace", "--limit", 120, *TRAIN),
                 ("vacuum", "--db", db, "--keep-versions", 1)]
        i = 0
        while not stop.is_set():
            r = run_cli_subprocess(*steps[i % 3], "--wait", timeout=300)
            writes.append((steps[i % 3][0], r.returncode, r.stderr))
            i += 1

    readers = [("neighbors", "--db", db, "--id", 5, "-k", 3, "--format", "json"),
               ("sql", "--db", db, "SELECT count(*) AS n, sum(mean) FROM samples, (SELECT avg(mean) AS mean FROM units)", "--format", "json"),
               ("info", "--db", db, "--format", "json"),
               ("neighbors", "--db", db, "--id", 7, "-k", 3, "--space", "feature", "--where", "split = 'val'", "--format", "json")]

    def read(i):
        r = run_cli_subprocess(*readers[i % len(readers)], timeout=300)
        return readers[i % len(readers)][0], r.returncode, r.stdout, r.stderr

    t = threading.Thread(target=writer)
    t.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(read, range(200)))
    finally:
        stop.set()
        t.join()
    failed = [(cmd, rc, err) for cmd, rc, _, err in results if rc != 0]
    assert failed == [], failed[:3]
    for cmd, _, out, _ in results:
        if cmd == "neighbors":
            assert len(json.loads(out)["neighbors"]) == 3
    assert len(writes) >= 3 and all(rc == 0 for _, rc, _ in writes), writes
    assert cli("verify", "--db", db).returncode == 0


def test_derived_tables_are_tied_to_their_version(digits_copy):
    db = saliencydb.open(digits_copy)  # pinned at the current version
    cli("ingest", "--db", digits_copy, "--split", "more", "--limit", 50, *TRAIN)
    # computed from the old version: refused, nothing stored
    with pytest.raises(StaleError, match="moved on"):
        db.mistakes(5, n_boot=10)
    db.close()
    assert jcli("info", "--db", digits_copy)["derived"] == {}
    cli("mistakes", "--db", digits_copy, "-k", 5, "--bootstrap", 10, "--quiet")
    info = jcli("info", "--db", digits_copy)
    assert info["derived"] == {"knn": {"base_commit": info["commit"] - 1, "stale": False}}
    assert count(digits_copy) == 850
    # an ingest after it: the knn table does not cover the new samples and readers are told
    cli("ingest", "--db", digits_copy, "--split", "later", "--limit", 30, *TRAIN)
    assert jcli("info", "--db", digits_copy)["derived"]["knn"]["stale"]
    r = cli("sql", "--db", digits_copy, "SELECT count(DISTINCT sample_id) AS n FROM knn")
    assert "note: the knn table was computed at commit" in r.stderr
    assert "note" not in cli("sql", "--db", digits_copy, "SELECT count(*) FROM samples").stderr
    # restat and --replace drop them, as before
    cli("restat", "--db", digits_copy, "--quiet")
    assert jcli("info", "--db", digits_copy)["derived"] == {}


def test_writers_of_derived_tables_fail_before_computing_when_locked(digits_copy):
    with DatabaseWriter(digits_copy):
        for cmd in (["mistakes", "--bootstrap", 10], ["clusters", "--n-clusters", 3], ["triage", "--split", "train"]):
            t0 = time.perf_counter()
            r = cli(cmd[0], "--db", digits_copy, *cmd[1:], expect=1)
            assert "being written by another process" in r.stderr and "--wait" in r.stderr
        # --no-store computes without the lock
        r = cli("clusters", "--db", digits_copy, "--n-clusters", 3, "--no-store")
        assert "nothing was stored" in r.stderr and "3 clusters" in r.stdout.replace("\n", " ")
    # --wait queues behind the writer
    proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", "clusters", "--db", str(digits_copy),
                             "--n-clusters", "3", "--wait"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    w = DatabaseWriter(digits_copy, wait=True)
    time.sleep(2)
    assert proc.poll() is None  # still waiting
    w.close()
    assert proc.wait(timeout=120) == 0
    assert "clusters" in jcli("info", "--db", digits_copy)["derived"]


def test_a_stale_index_is_searched_exactly_never_empty(digits_copy):
    args = ["ingest", "--db", digits_copy, "--split", "new", "--limit", 64, *TRAIN]
    r = run_cli_subprocess(*args, env={**os.environ, "SALIENCYDB_CRASH_AT": "index-written:1"}, timeout=300)
    assert r.returncode == -9
    info = jcli("info", "--db", digits_copy)
    assert info["indexes"]["saliency"]["stale"] and info["samples"] == 864
    new_id = jcli("sql", "--db", digits_copy, "SELECT min(sample_id) AS i FROM samples WHERE split = 'new'")[0]["i"]
    r = cli("neighbors", "--db", digits_copy, "--id", new_id, "-k", 4, "--split", "new", "--format", "json")
    out = json.loads(r.stdout)
    assert len(out["neighbors"]) == 4 and all(n["split"] == "new" for n in out["neighbors"])
    assert "searched exactly" in out["note"] and "searched exactly" in r.stderr
    # the exact scan answers as the rebuilt index will
    table = cli("neighbors", "--db", digits_copy, "--id", new_id, "-k", 4)
    assert "neighbours are misclassified" in table.stdout
    cli(*args)  # the rerun updates the index
    again = json.loads(cli("neighbors", "--db", digits_copy, "--id", new_id, "-k", 4, "--split", "new", "--format", "json").stdout)
    assert again["note"] is None
    assert [n["sample_id"] for n in again["neighbors"]] == [n["sample_id"] for n in out["neighbors"]]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_damage_is_named_and_fixable(digits_copy):
    m = json.loads((digits_copy / "manifest.json").read_text())
    part = m["parts"][0]["file"]
    data = (digits_copy / part).read_bytes()
    (digits_copy / part).write_bytes(data[: len(data) // 2])  # a truncated part
    for args in (["info"], ["sql", "SELECT count(*) FROM samples"], ["neighbors", "--id", 3, "-k", 2]):
        r = cli(args[0], "--db", digits_copy, *args[1:], expect=1)
        assert part in r.stderr and "saliencydb verify" in r.stderr
    r = cli("ingest", "--db", digits_copy, "--split", "more", "--limit", 10, *TRAIN, expect=1)
    assert part in r.stderr
    r = cli("verify", "--db", digits_copy, expect=1)
    assert part in r.stderr and "--replace" in r.stderr
    (digits_copy / part).write_bytes(data)
    assert cli("verify", "--db", digits_copy).returncode == 0
    # same size, other bytes: only the checksum sees it
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (digits_copy / part).write_bytes(bytes(flipped))
    assert "checksum" in cli("verify", "--db", digits_copy, expect=1).stderr
    (digits_copy / part).write_bytes(data)
    # a deleted units file: restat rebuilds it from the samples
    os.remove(digits_copy / m["stats"]["file"])
    r = cli("verify", "--db", digits_copy, expect=1)
    assert m["stats"]["file"] in r.stderr and "saliencydb restat" in r.stderr
    cli("restat", "--db", digits_copy, "--splits", ",".join(m["stats"]["splits"]), "--quiet")
    assert cli("verify", "--db", digits_copy).returncode == 0
    # a hand-broken manifest: one line, and restore makes the last kept version current
    current = json.loads((digits_copy / "manifest.json").read_text())
    broken = dict(current)
    del broken["parts"]
    (digits_copy / "manifest.json").write_text(json.dumps(broken))
    r = cli("info", "--db", digits_copy, expect=1)
    assert "corrupt" in r.stderr and f"restore --db {digits_copy} --commit {current['commit']}" in r.stderr
    assert "manifest.json" in cli("verify", "--db", digits_copy, expect=1).stderr
    cli("restore", "--db", digits_copy, "--commit", current["commit"])
    assert count(digits_copy) == 800 and cli("verify", "--db", digits_copy).returncode == 0


def test_writers_sweep_leftovers_in_every_table_directory(digits_copy):
    for rel in ("blame/part-999999-000.parquet", "triage/triage-x-999999-000.parquet", "knn/part-999999-000.parquet",
                "samples/val/part-999999-000.parquet.tmp"):
        (digits_copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (digits_copy / rel).write_bytes(b"leftover")
    (digits_copy / "versions" / "manifest-999999.json").write_text("{}")  # written, never published
    cli("vacuum", "--db", digits_copy)
    assert not list(digits_copy.rglob("*999999*"))
    assert cli("verify", "--db", digits_copy).returncode == 0


def test_demo_refuses_a_database_that_is_not_its_own(digits_copy, tmp_path):
    before = {p: _sha(p) for p in digits_copy.rglob("*") if p.is_file() and "pins" not in p.parts}
    r = cli("demo", "--db", digits_copy, "--cache-dir", tmp_path / "cache", "--quiet", expect=1)
    assert "made with other weights" in r.stderr  # the same model and data as the demo's, other weights
    assert {p: _sha(p) for p in digits_copy.rglob("*") if p.is_file() and "pins" not in p.parts} == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = cli("demo", "--db", tmp_path / "other", "--cache-dir", tmp_path / "cache", "--quiet", expect=1)
    assert "not a saliencydb database" in r.stderr and (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_format_1_databases_are_read_and_upgraded(digits_copy):
    import shutil

    m = json.loads((digits_copy / "manifest.json").read_text())
    for key in ("files", "derived", "operation"):
        m.pop(key)
    m["format_version"] = 1
    (digits_copy / "manifest.json").write_text(json.dumps(m))
    shutil.rmtree(digits_copy / "versions")
    assert count(digits_copy) == 800
    assert [v["commit"] for v in jcli("versions", "--db", digits_copy)] == [m["commit"]]
    cli("mistakes", "--db", digits_copy, "--bootstrap", 10, "--quiet")
    assert jcli("info", "--db", digits_copy)["format_version"] == 2
    assert [v["commit"] for v in jcli("versions", "--db", digits_copy)] == [m["commit"], m["commit"] + 1]
    assert count(digits_copy, "TRUE", "--as-of", m["commit"]) == 800
