"""`saliencydb index` and `info` end to end: storage, exactness of what is stored, resume, errors."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from saliencydb.data import parse_data_spec
from saliencydb.models import load_model
from saliencydb.errors import LockedError
from saliencydb.indexer import Indexer
from saliencydb.storage import DatabaseWriter
from saliencydb.saliency import reference_profiles
from saliencydb.schemas import FORMAT_VERSION

from helpers import ROOT, make_image_folder, run_cli, run_cli_subprocess

CNN = "python:saliencydb.data.zoo:small_cnn"


def _plain(db: Path, query: str):
    return duckdb.sql(query.replace("DB", str(db))).fetchall()


def test_index_imagefolder_resnet18_stores_the_reference_profiles(tmp_path, resnet18_weights):
    images = make_image_folder(tmp_path / "images")
    db = tmp_path / "db"
    r = run_cli("index", "--db", db, "--model", "torchvision:resnet18", "--weights", resnet18_weights,
                "--data", f"imagefolder:{images}", "--batch-size", 5, "--quiet")
    assert "12 samples added" in r.output
    # plain duckdb, no saliencydb code
    rows = _plain(db, "SELECT key, label, raw_profile FROM read_parquet('DB/samples/**/*.parquet') ORDER BY sample_id")
    assert len(rows) == 12
    assert sorted(k for k, _, _ in rows) == sorted(f"{c}/img{i}.{e}" for c in ("cat", "dog", "eel")
                                                  for i, e in enumerate(["png", "jpg", "png", "jpg"]))
    # the stored profiles are the per-sample autograd reference (default ImageNet transform, 224 px)
    model = load_model("torchvision:resnet18", str(resnet18_weights))
    source = parse_data_spec(f"imagefolder:{images}")
    transform = model.default_transform
    assert transform.crop == 224
    by_key = {source.key(i): i for i in range(len(source))}
    x = torch.stack([transform(source.load(by_key[k])) for k, _, _ in rows])
    y = torch.tensor([label for _, label, _ in rows])
    want = reference_profiles(model.module, x, y).numpy()
    got = np.array([p for _, _, p in rows], dtype=np.float32)
    assert got.shape == (12, 4800)
    scale = np.abs(want).max(axis=1, keepdims=True)
    assert (np.abs(got - want) / scale).max() <= 1e-4
    # units table and statistics
    units = _plain(db, "SELECT count(*), min(unit_id), max(unit_id), count(DISTINCT layer) FROM read_parquet('DB/units/*.parquet')")
    assert units == [(4800, 0, 4799, 20)]
    mean = np.array(_plain(db, "SELECT mean FROM read_parquet('DB/units/*.parquet') ORDER BY unit_id"))[:, 0]
    np.testing.assert_allclose(mean, got.astype(np.float64).mean(0), rtol=1e-5, atol=1e-12)
    # no temporary file is left, and none ends in .parquet
    assert not [p for p in db.rglob("*") if p.name.endswith(".tmp")]


def test_info_json_summarises_the_database(tmp_path, cnn_weights):
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val",
            "--limit", 64, "--quiet")
    info = json.loads(run_cli("info", "--db", db, "--format", "json").output)
    assert info["format_version"] == FORMAT_VERSION
    assert info["model"]["spec"] == CNN
    assert info["units"] == {"kind": "conv-filter", "count": 16 + 32 + 64, "layers": 3, "aggregate": "mean_abs",
                             "excluded": []}
    assert info["samples"] == 64
    val = info["splits"]["val"]
    assert val["samples"] == 64 and val["complete"] is False and val["source"] == "builtin:mnist5k:val"
    assert 0 <= val["accuracy"] <= 1 and val["mistakes"] == round(64 * (1 - val["accuracy"]))
    assert info["indexes"]["saliency"]["ntotal"] == 64 and not info["indexes"]["saliency"]["stale"]
    assert info["statistics"]["count"] == 64
    table = run_cli("info", "--db", db).output
    assert "val" in table and "conv-filter" in table


def test_rerun_adds_nothing_and_limit_continues(tmp_path, cnn_weights):
    db = tmp_path / "db"
    args = ["index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val", "--quiet"]
    run_cli(*args, "--limit", 40)
    run_cli(*args, "--limit", 40)
    assert _plain(db, "SELECT count(*) FROM read_parquet('DB/samples/**/*.parquet')") == [(40,)]
    run_cli(*args, "--limit", 100)
    ids = _plain(db, "SELECT count(*), count(DISTINCT key), count(DISTINCT sample_id), max(sample_id) FROM read_parquet('DB/samples/**/*.parquet')")
    assert ids == [(100, 100, 100, 99)]


class _InterruptAfter:
    """A progress reporter that raises after n samples, like a Ctrl-C in the middle of a job."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def task(self, description, total, unit="samples"):
        outer = self

        class T:
            def advance(self, k=1):
                outer.seen += k
                if outer.seen >= outer.n and description.startswith("profiling"):
                    raise KeyboardInterrupt

            def close(self):
                pass

        return T()

    def log(self, message):
        pass


def test_resume_after_interruption_gives_the_uninterrupted_result(tmp_path, cnn_weights):
    kw = dict(model=CNN, weights=str(cnn_weights), batch_size=8, part_rows=16, workers=0)
    whole = tmp_path / "whole"
    Indexer(whole, **kw).run("builtin:mnist5k:val", limit=120)
    broken = tmp_path / "broken"
    with pytest.raises(KeyboardInterrupt):
        Indexer(broken, progress=_InterruptAfter(50), **kw).run("builtin:mnist5k:val", limit=120)
    committed = _plain(broken, "SELECT count(*) FROM read_parquet('DB/samples/**/*.parquet')")[0][0]
    assert committed in (32, 48)  # whole parts only
    Indexer(broken, **kw).run("builtin:mnist5k:val", limit=120)
    q = "SELECT key, sample_id, raw_profile FROM read_parquet('DB/samples/**/*.parquet') ORDER BY key"
    a, b = _plain(whole, q), _plain(broken, q)
    assert [k for k, _, _ in a] == [k for k, _, _ in b] and len(b) == 120
    assert len({i for _, i, _ in b}) == 120
    np.testing.assert_allclose(np.array([p for *_, p in a]), np.array([p for *_, p in b]), rtol=1e-5, atol=1e-9)
    assert json.loads((broken / "manifest.json").read_text())["splits"]["val"]["rows"] == 120


def test_sigkill_mid_job_then_rerun(tmp_path, resnet18_weights):
    images = make_image_folder(tmp_path / "images", per_class=12)
    db = tmp_path / "db"
    args = ["index", "--db", db, "--model", "torchvision:resnet18", "--weights", resnet18_weights,
            "--data", f"imagefolder:{images}", "--batch-size", 4, "--commit-every", 4, "--workers", 0, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "saliencydb.cli", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = db / "manifest.json"
        if m.exists() and len(json.loads(m.read_text())["parts"]) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = json.loads((db / "manifest.json").read_text())["parts"]
    assert 2 <= len(parts) < 9, "the kill should land in the middle of the job"
    listed = {p["file"] for p in parts}
    # readers see exactly the committed parts
    import saliencydb

    assert saliencydb.open(db).sql("SELECT count(*) AS n FROM samples").column("n")[0].as_py() == sum(p["rows"] for p in parts)
    r = run_cli_subprocess(*args)
    assert r.returncode == 0, r.stderr
    rows = _plain(db, "SELECT count(*), count(DISTINCT key), count(DISTINCT sample_id) FROM read_parquet('DB/samples/**/*.parquet')")
    assert rows == [(36, 36, 36)]
    assert listed <= {p["file"] for p in json.loads((db / "manifest.json").read_text())["parts"]}


def test_second_writer_fails_fast(tmp_path, cnn_weights):
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val", "--limit", 8, "--quiet")
    with DatabaseWriter(db):
        with pytest.raises(LockedError, match="being written by another process"):
            DatabaseWriter(db)
        r = run_cli("index", "--db", db, "--data", "builtin:mnist5k:val", "--limit", 16, "--quiet", expect=1)
        assert "another process" in r.output and "--wait" in r.output


def test_orphan_files_of_a_crashed_writer_are_removed(tmp_path, cnn_weights):
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val", "--limit", 8, "--quiet")
    orphan = db / "samples" / "val" / "part-999999-000.parquet"
    orphan.write_bytes(b"half written")
    (db / "manifest.json.tmp").write_text("{")
    with DatabaseWriter(db):
        pass
    assert not orphan.exists() and not (db / "manifest.json.tmp").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nosuch:thing"], "unknown kind"),
        (["--data", "imagefolder:/no/such/dir"], "/no/such/dir"),
        (["--data", "builtin:mnist5k:test"], "mnist5k"),
        (["--model", "torchvision:resnet1800"], "resnet1800"),
        (["--model", "python:no_such_module_xyz:f"], "no_such_module_xyz"),
        (["--model", "torchvision:resnet18", "--weights", "IMAGENET1K_V1"], "--weights"),
        (["--model", "torchvision:resnet18", "--weights", "/no/such/file.pt"], "/no/such/file.pt"),
        (["--split", "bad name!"], "split name"),
        (["--batch-size", "0"], "--batch-size"),
        (["--device", "cuda:0"], "--device"),
    ],
)
def test_bad_arguments_give_one_clear_line(tmp_path, args, message):
    base = {"--model": CNN, "--data": "builtin:mnist5k:val"}
    given = dict(zip(args[::2], args[1::2]))
    full = ["index", "--db", tmp_path / "db", "--quiet"]
    for k, v in {**base, **given}.items():
        full += [k, v]
    r = run_cli_subprocess(*full, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.stderr


def test_a_newer_format_is_refused(tmp_path, cnn_weights):
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val", "--limit", 8, "--quiet")
    m = json.loads((db / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (db / "manifest.json").write_text(json.dumps(m))
    r = run_cli("info", "--db", db, expect=1)
    assert "newer than this saliencydb reads" in r.output
    r = run_cli("info", "--db", tmp_path / "nothing", expect=1)
    assert "no database at" in r.output


def test_another_model_is_refused(tmp_path, cnn_weights):
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val", "--limit", 8, "--quiet")
    r = run_cli("index", "--db", db, "--model", CNN, "--data", "builtin:mnist5k:val", "--limit", 16, "--quiet", expect=1)
    assert "holds model" in r.output and CNN in r.output


def test_rms_database_stores_rms_profiles_and_keeps_them_on_ingest(tmp_path, cnn_weights):
    """`--aggregate rms` is recorded; index, ingest and new-image queries all use it; another
    aggregate on the same database is refused with one line."""
    import saliencydb
    from PIL import Image

    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--data", "builtin:mnist5k:val",
            "--limit", 40, "--aggregate", "rms", "--quiet")
    info = json.loads(run_cli("info", "--db", db, "--format", "json").output)
    assert info["units"]["aggregate"] == "rms"
    assert "(rms of dL/dw)" in run_cli("info", "--db", db).output
    run_cli("ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 24, "--quiet")
    d = saliencydb.open(db)
    rows = d.con.execute("SELECT sample_id, key, label FROM samples ORDER BY sample_id").fetchall()
    assert len(rows) == 64
    model = load_model(CNN, str(cnn_weights))
    source = parse_data_spec("builtin:mnist5k:all")
    x = torch.stack([source.default_transform(source.load(int(k.split("/")[1]))) for _, k, _ in rows])
    y = torch.tensor([label for _, _, label in rows])
    got = d.rows("raw_profile", [i for i, _, _ in rows])
    for aggregate, close in (("rms", True), ("mean_abs", False)):
        want = reference_profiles(model.module, x, y, aggregate=aggregate).numpy()
        err = (np.abs(got - want) / np.abs(want).max(axis=1, keepdims=True)).max()
        assert (err <= 1e-4) == close, (aggregate, err)
    # a new image is profiled with the database's aggregate: it finds its stored self
    sid, key, label = rows[3]
    source.load(int(key.split("/")[1])).save(tmp_path / "digit.png")
    found = d.neighbors(image=str(tmp_path / "digit.png"), label=str(label), k=1).neighbors[0]
    assert found["sample_id"] == sid and found["similarity"] > 0.9999
    d.close()
    r = run_cli("index", "--db", db, "--data", "builtin:mnist5k:val", "--aggregate", "mean_abs", "--quiet", expect=1)
    assert r.output == f"Error: database '{db}' stores rms profiles; omit --aggregate, or use another --db\n"


def test_indexer_takes_its_options_as_a_dataclass_or_keywords(tmp_path):
    """IndexOptions holds what an Indexer is told; the keyword form builds the same options; bad values are one line."""
    from dataclasses import FrozenInstanceError

    from saliencydb.errors import SpecError
    from saliencydb.indexer import IndexOptions, Indexer

    opts = IndexOptions(model="python:saliencydb.data.zoo:small_cnn", batch_size=50, workers=0)
    a = Indexer(tmp_path / "a", opts)
    b = Indexer(tmp_path / "b", model="python:saliencydb.data.zoo:small_cnn", batch_size=50, workers=0)
    assert a.options == b.options and a.settings.batch_size == 50 and a.choice.spec == b.choice.spec
    c = Indexer(tmp_path / "c", opts, batch_size=10)  # keywords replace fields of the given options
    assert c.options.batch_size == 10 and c.options.model == opts.model and opts.batch_size == 50
    with pytest.raises(FrozenInstanceError):
        opts.batch_size = 1
    for bad, message in ((dict(batch_size=0), "--batch-size must be at least 1"), (dict(seed=3), "--random-weights"),
                         (dict(index_kind="hnsw"), "--index 'hnsw' is unknown"), (dict(modle="x"), "fields of IndexOptions")):
        with pytest.raises(SpecError, match=message.replace("(", r"\(")):
            Indexer(tmp_path / "d", **bad)
    with pytest.raises(SpecError, match="takes IndexOptions"):
        Indexer(tmp_path / "d", {"model": "x"})
