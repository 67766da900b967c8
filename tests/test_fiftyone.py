"""saliencydb export fiftyone against a real FiftyOne (its bundled MongoDB started in a temporary directory):
the dataset's samples, fields, embeddings and tags against the database, and FiftyOne's similarity sort
against `saliencydb neighbors`. Each FiftyOne session runs in a subprocess, so no database or config is
shared with the test process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, run_cli

CHECK = r"""
import json, sys
from saliencydb.export.fiftyone import import_fiftyone
fo, _ = import_fiftyone()  # as a user's script would: the database found and started
ds = fo.load_dataset(sys.argv[1])
mistake = int(sys.argv[2])
by_id = {s.saliencydb_id: s for s in ds}
query = by_id[mistake]
view = ds.sort_by_similarity(query.id, k=6, brain_key="saliency_sim")
print(json.dumps({
    "count": len(ds),
    "fields": sorted(ds.get_field_schema()),
    "ids": sorted(by_id),
    "labels": {str(i): [s.ground_truth.label, s.prediction.label, s.prediction.confidence, s.correct] for i, s in by_id.items()},
    "saliency": {str(i): s.saliency for i, s in list(by_id.items())[:20]},
    "groups": {str(i): s.error_group for i, s in by_id.items() if s.has_field("error_group") and s.error_group is not None},
    "tags": ds.count_sample_tags(),
    "similar": [s.saliencydb_id for s in view],
    "brain": sorted(ds.list_brain_runs()),
    "files_exist": all(__import__("os").path.isfile(s.filepath) for s in ds),
}))
"""


@pytest.fixture
def fo_env(tmp_path):
    env = dict(os.environ, FIFTYONE_DATABASE_DIR=str(tmp_path / "fo-db"), FIFTYONE_DO_NOT_TRACK="true")
    return env


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "saliencydb.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def test_export_matches_the_database(digits_copy, tmp_path, fo_env):
    db = digits_copy
    run_cli("clusters", "--db", db, "--n-clusters", 4, "--split", "val")
    out = _cli(fo_env, "export", "fiftyone", "--db", db, "--name", "digits", "--media-dir", tmp_path / "media", "--format", "json")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["samples"] == 800 and doc["splits"] == ["train", "val"] and doc["similarity_key"] == "saliency_sim"
    rows = json.loads(run_cli("sql", "--db", db, "--format", "json", "SELECT sample_id, label_name, pred_name, pred_conf, correct "
                              "FROM samples ORDER BY sample_id").stdout)
    mistake = next(r["sample_id"] for r in rows if not r["correct"] and r["sample_id"] < 600)
    check = subprocess.run([sys.executable, "-c", CHECK, "digits", str(mistake)], capture_output=True, text=True,
                           env=fo_env, timeout=600, cwd=ROOT)
    assert check.returncode == 0, check.stderr[-2000:]
    got = json.loads(check.stdout.strip().splitlines()[-1])
    assert got["count"] == 800 and got["ids"] == [r["sample_id"] for r in rows] and got["files_exist"]
    for field in ("ground_truth", "prediction", "saliency", "feature", "error_group", "split", "key", "loss", "correct"):
        assert field in got["fields"], field
    for r in rows:
        label, pred, conf, correct = got["labels"][str(r["sample_id"])]
        assert (label, pred, correct) == (r["label_name"], r["pred_name"], r["correct"]) and abs(conf - r["pred_conf"]) < 1e-6
    import saliencydb

    with saliencydb.open(db) as d:
        ids = [int(i) for i in got["saliency"]]
        assert np.allclose(np.array([got["saliency"][str(i)] for i in ids]), d.z(ids), atol=1e-6)  # the standardised profile
    groups = json.loads(run_cli("sql", "--db", db, "--format", "json", "SELECT sample_id, cluster FROM clusters").stdout)
    assert {str(g["sample_id"]): g["cluster"] for g in groups} == got["groups"]
    assert got["tags"]["mistake"] == sum(not r["correct"] for r in rows) and got["tags"]["val"] == 600
    assert sum(n for t, n in got["tags"].items() if t.startswith("group:")) == len(groups)
    # FiftyOne's "sort by similarity" on the saliency embedding is saliencydb's saliency neighbours
    nb = json.loads(run_cli("neighbors", "--db", db, "--id", mistake, "-k", 5, "--format", "json").stdout)
    assert got["similar"][0] == mistake and got["similar"][1:] == [n["sample_id"] for n in nb["neighbors"]]
    assert {"saliency_sim", "saliency_viz"} <= set(got["brain"])


def test_export_refusals(digits_db, tmp_path, fo_env):
    out = _cli(fo_env, "export", "fiftyone", "--db", digits_db, "--name", "x")
    assert out.returncode != 0 and "--media-dir" in out.stderr and "Traceback" not in out.stderr
    ok = _cli(fo_env, "export", "fiftyone", "--db", digits_db, "--name", "y", "--split", "train", "--media-dir", tmp_path / "m",
              "--no-similarity", "--no-visualization")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "200 samples of train" in ok.stdout and "brain runs: none" in ok.stdout
    again = _cli(fo_env, "export", "fiftyone", "--db", digits_db, "--name", "y", "--split", "train", "--media-dir", tmp_path / "m")
    assert again.returncode != 0 and "already has a dataset named 'y'" in again.stderr and "Traceback" not in again.stderr
    bad = _cli(fo_env, "export", "fiftyone", "--db", digits_db, "--name", "z", "--split", "nope", "--media-dir", tmp_path / "m")
    assert bad.returncode != 0 and "unknown split 'nope'" in bad.stderr


def test_export_of_a_database_without_feature_vectors(tmp_path, fo_env, cnn_weights):
    """A TorchScript model takes no hooks, so its database has no feature vectors: the export carries the saliency
    embedding only and says the feature one is absent."""
    import torch

    from saliencydb.data.zoo import small_cnn

    model = small_cnn()
    model.load_state_dict(torch.load(cnn_weights))
    torch.jit.script(model.eval()).save(str(tmp_path / "cnn-ts.pt"))
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", tmp_path / "cnn-ts.pt", "--transform", "mnist", "--data", "builtin:mnist5k:val",
            "--limit", 12, "--quiet")
    out = _cli(fo_env, "export", "fiftyone", "--db", db, "--name", "scripted", "--media-dir", tmp_path / "m",
               "--no-visualization", "--format", "json")
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    assert doc["samples"] == 12 and "saliency" in doc["fields"] and "feature" not in doc["fields"]
    assert doc["absent"] == {"feature": "its model, a TorchScript file, takes no hooks"}
    table = _cli(fo_env, "export", "fiftyone", "--db", db, "--name", "scripted", "--media-dir", tmp_path / "m",
                 "--no-visualization", "--no-similarity", "--overwrite")
    assert table.returncode == 0 and "no feature embedding: the database has no feature vectors (its model, a TorchScript" in table.stdout
