"""Jupyter: the rich HTML displays of a database and its results, and the example notebook run end to end."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import saliencydb
from saliencydb.query import html

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
THUMB = 'src="data:image/png;base64,'
CNN = "python:saliencydb.data.zoo:small_cnn"


def _rows(doc: str) -> int:
    return len(re.findall(r"<tbody>.*?</tbody>", doc, re.S)[0].split("<tr>")) - 1


def test_database_repr(digits_db):
    with saliencydb.open(digits_db) as db:
        doc = db._repr_html_()
        summary = db.split_summary()
    assert html.esc(str(digits_db)) in doc and "small_cnn" in doc
    for split in ("val", "train"):
        assert f"<td>{split}</td><td>{summary[split]['samples']}</td>" in doc
        assert f"<td>{summary[split]['mistakes']}</td>" in doc


def test_neighbors_repr(digits_db):
    with saliencydb.open(digits_db) as db:
        mistake = db.sql("SELECT sample_id FROM samples WHERE NOT correct ORDER BY sample_id LIMIT 1")["sample_id"][0].as_py()
        result = db.neighbors(mistake, k=5)
    doc = result._repr_html_()
    assert _rows(doc) == 6  # the query and its 5 neighbours
    assert doc.count(THUMB) == 6
    assert html.png_data_uri(html.placeholder(html.THUMB)) not in doc  # every image was found
    for n in result.neighbors:
        assert f"<td>{html.esc(n['label_name'])}</td><td>{html.esc(n['pred_name'])}</td>" in doc
    wrong = 1 + sum(not n["correct"] for n in result.neighbors)  # the query is a mistake
    assert doc.count('class="bad">wrong<') == wrong and doc.count('class="ok">correct<') == 6 - wrong
    assert "images" not in result.to_dict()  # the images' whereabouts stay out of the JSON


def test_clusters_repr(digits_db):
    with saliencydb.open(digits_db) as db:
        result = db.clusters(3, write=False)
    doc = result._repr_html_()
    assert doc.count('class="sdb-card"') == len(result.clusters) == 3
    assert doc.count(THUMB) == sum(len(g.exemplars) for g in result.clusters)
    assert html.png_data_uri(html.placeholder(html.THUMB)) not in doc
    for g in result.clusters:
        assert html.esc(g.top_confusions[0].pair) in doc
        assert f"{html.esc(g.top_units[0].layer)}[{g.top_units[0].channel}]" in doc
    assert "images" not in result.to_dict() and "images" not in json.dumps(result.to_dict())


def test_explanation_repr(digits_db):
    from saliencydb.explain import Explainer, explain_sample

    with saliencydb.open(digits_db) as db:
        mistake = db.sql("SELECT sample_id FROM samples WHERE NOT correct ORDER BY sample_id LIMIT 1")["sample_id"][0].as_py()
        result = explain_sample(Explainer(db), mistake, None, top_k=4)
    doc = result._repr_html_()
    assert doc.count(THUMB) == 3  # the image, the input-space map and GradCAM
    assert "input-space map" in doc and "GradCAM" in doc
    assert html.esc(result.sample.label_name) in doc and html.esc(result.sample.pred_name) in doc
    assert _rows(doc) == 4
    assert set(result.to_dict()) == {"sample", "confidences", "top_units", "boosted_units", "map", "gradcam", "out"}


def test_missing_image_renders_placeholder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("3", "7"):  # small_cnn's classes are the digits
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").save(tmp_path / "imgs" / c / f"{i}.png")
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--random-weights", "--transform", "mnist",
            "--data", f"imagefolder:{tmp_path / 'imgs'}", "--workers", 0, "--quiet")
    (tmp_path / "imgs" / "7" / "2.png").unlink()
    with saliencydb.open(db) as d:
        rows = d.sql("SELECT sample_id, key FROM samples ORDER BY sample_id").to_pylist()
        gone = next(r["sample_id"] for r in rows if r["key"].replace("\\", "/").endswith("7/2.png"))
        query = next(r["sample_id"] for r in rows if r["sample_id"] != gone)
        result = d.neighbors(query, k=5)
        clusters = d.clusters(2, errors_only=False, write=False)
    doc = result._repr_html_()
    grey = html.png_data_uri(html.placeholder(html.THUMB))
    assert _rows(doc) == 6 and doc.count(THUMB) == 6
    assert doc.count(grey) == 1  # the deleted image only; the other five are read
    assert clusters._repr_html_().count('class="sdb-card"') == len(clusters.clusters)


def test_unreadable_sources_never_raise():
    lookup = html.ImageLookup({"val": "imagefolder:/no/such/dir", "odd": "nonsense:spec"})
    grey = html.png_data_uri(html.placeholder(html.THUMB))
    assert lookup.thumbnail("val", "x.png") == grey
    assert lookup.thumbnail("odd", "x.png") == grey
    assert lookup.thumbnail("unknown-split", "x.png") == grey
    assert lookup.thumbnail(None, "/no/such/image.png") == grey
    assert html.array_uri(None).startswith("data:image/png;base64,")


def test_labels_are_escaped():
    row = html.sample_row(1, html.png_data_uri(html.placeholder()),
                          {"sample_id": 3, "split": "val", "key": 'a"b<i>.png', "label_name": "<script>alert(1)</script>",
                           "pred_name": "<b>x", "correct": False}, 0.5)
    assert "<script>" not in row and "&lt;script&gt;alert(1)&lt;/script&gt;" in row
    assert "<b>x" not in row and "&lt;b&gt;x" in row
    assert 'a"b<i>' not in row and "a&quot;b&lt;i&gt;.png" in row
    assert row.count("<td") == len(html.SAMPLE_HEADER)


# -- the example notebook ------------------------------------------------------------------------


@pytest.fixture
def python3_kernel(tmp_path, monkeypatch):
    """A "python3" kernelspec that runs this test's interpreter (the venv's), found first through JUPYTER_PATH."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (saliencydb tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def test_tour_notebook_runs(tmp_path, monkeypatch, trained_weights, python3_kernel):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    db = tmp_path / "demo-db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", trained_weights, "--data", "builtin:mnist5k:val",
            "--limit", 300, "--workers", 0, "--quiet")
    run_cli("mistakes", "--db", db, "--bootstrap", 20)
    run_cli("clusters", "--db", db, "--n-clusters", 3)
    monkeypatch.setenv("SALIENCYDB_DEMO_DB", str(db))
    nb = nbformat.read(ROOT / "examples" / "tour.ipynb", as_version=4)
    assert nb.cells[0].cell_type == "code" and "SALIENCYDB_DEMO_DB" in nb.cells[0].source
    nbclient.NotebookClient(nb, timeout=300, kernel_name=python3_kernel,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    rich = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(rich) >= 4  # the database, the neighbours, the error groups and the explanation
    assert all('class="sdb"' in h for h in rich)
    assert sum(h.count(THUMB) for h in rich) >= 6 + 3
