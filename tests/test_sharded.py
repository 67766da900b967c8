"""torchrun jobs (DESIGN §5): ranks profile shards and write their own parts, rank 0 lists them,
merges the statistics and builds the indexes. Run here with the gloo backend on CPU."""

import subprocess
import sys

import numpy as np

import saliencydb

from helpers import ROOT, run_cli

CNN = "python:saliencydb.data.zoo:small_cnn"


def torchrun(*args, ranks: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
           "-m", "saliencydb.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def _by_key(db):
    with saliencydb.open(db) as d:
        rows = d.con.execute("SELECT key, sample_id, pred, correct FROM samples ORDER BY key").fetchall()
        profiles = d.rows("raw_profile", [r[1] for r in rows])
        mean, std = d.stats
        info = d.info()
    return rows, profiles, mean, std, info


def test_a_two_rank_job_stores_what_one_process_stores_and_resumes(tmp_path, cnn_weights):
    common = ["--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val", "--batch-size", 16,
              "--commit-every", 32, "--workers", 0, "--quiet"]
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    first = torchrun("index", "--db", sharded, *common, "--limit", 90)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("samples added") == 1 and "val: 90 samples added" in first.stdout  # rank 0 reports
    second = torchrun("index", "--db", sharded, *common, "--limit", 200)  # resumes: the other 110
    assert second.returncode == 0, second.stderr[-3000:]
    assert "val: 110 samples added, 90 already there" in second.stdout
    run_cli("index", "--db", single, *common, "--limit", 200)

    rows_s, prof_s, mean_s, std_s, info_s = _by_key(sharded)
    rows_1, prof_1, mean_1, std_1, info_1 = _by_key(single)
    assert [r[0] for r in rows_s] == [r[0] for r in rows_1] and len(rows_s) == 200
    assert len({r[1] for r in rows_s}) == 200  # sample ids unique across ranks and runs
    assert [r[2:] for r in rows_s] == [r[2:] for r in rows_1]
    assert (np.abs(prof_s - prof_1).max(1) / np.abs(prof_1).max(1)).max() <= 1e-5
    np.testing.assert_allclose(mean_s, mean_1, rtol=1e-7)
    np.testing.assert_allclose(std_s, std_1, rtol=1e-7)
    assert info_s["indexes"]["saliency"]["ntotal"] == 200 and not info_s["indexes"]["saliency"]["stale"]
    assert info_s["splits"]["val"]["accuracy"] == info_1["splits"]["val"]["accuracy"]
    with saliencydb.open(sharded) as d:
        parts = {p["file"] for p in d.manifest.parts}
        assert any("part-r001-" in f for f in parts) and any("part-r000-" in f for f in parts)
        on_disk = {p.relative_to(sharded).as_posix() for p in (sharded / "samples").rglob("*.parquet")}
        assert on_disk == parts  # no unlisted part left behind
        jobs = d.sql("SELECT added, status FROM ingests ORDER BY start").to_pylist()
        assert [j["added"] for j in jobs] == [90, 110]

    # a sharded ingest into the database, with its frozen statistics
    ingest = torchrun("ingest", "--db", sharded, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 40,
                      "--batch-size", 8, "--workers", 0, "--quiet")
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    rows, _, mean, _, info = _by_key(sharded)
    assert info["splits"]["train"]["samples"] == 40 and np.array_equal(mean, mean_s)
    assert info["indexes"]["saliency"]["ntotal"] == 240


def test_an_error_on_rank_0_stops_every_rank(tmp_path, cnn_weights):
    """A bad argument seen by rank 0 reaches the other ranks, which stop instead of waiting."""
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val",
            "--limit", 20, "--quiet")
    r = torchrun("index", "--db", db, "--data", "builtin:mnist5k:val", "--aggregate", "rms", "--quiet")
    assert r.returncode != 0
    assert f"Error: database '{db}' stores mean_abs profiles; omit --aggregate, or use another --db" in r.stderr + r.stdout
    assert "rank 0 stopped the job" in r.stderr + r.stdout
    with saliencydb.open(db) as d:
        assert d.info()["samples"] == 20
