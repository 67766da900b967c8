"""Hugging Face `datasets` as a data source (`--data hf:PATH[:SPLIT][?image=COL&label=COL]`).

Everything is real: small datasets of MNIST digits built with `datasets`, written with
`save_to_disk` into a temporary folder, indexed with the demo CNN through the CLI.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image

import saliencydb
from saliencydb.data import parse_data_spec
from saliencydb.data.sources import HFDatasetSource, with_hf_columns
from saliencydb.errors import SpecError

from helpers import run_cli, run_cli_subprocess

CNN = "python:saliencydb.data.zoo:small_cnn"
DIGITS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def digits():
    """The first 60 validation digits of the built-in MNIST sample: (PIL images, labels)."""
    source = parse_data_spec("builtin:mnist5k:val")
    return [source.load(i) for i in range(60)], [source.label(i) for i in range(60)]


def _dataset(images, labels, image_column="img", **extra) -> Dataset:
    features = {image_column: Image(), "label": ClassLabel(names=DIGITS), **{k: f for k, (f, _) in extra.items()}}
    data = {image_column: images, "label": labels, **{k: v for k, (_, v) in extra.items()}}
    return Dataset.from_dict(data, features=Features(features))


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _index(db, weights, *args, expect=0):
    return run_cli("index", "--db", db, "--model", CNN, "--weights", weights, "--transform", "mnist", "--workers", 0,
                   "--quiet", *args, expect=expect)


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def saved(tmp_path, digits) -> Path:
    """A DatasetDict: 'validation' holds the first 40 digits, 'train' the next 20."""
    images, labels = digits
    path = tmp_path / "digits-dd"
    DatasetDict({"train": _dataset(images[40:], labels[40:]), "validation": _dataset(images[:40], labels[:40])}).save_to_disk(path)
    return path


def test_index_then_ingest_is_idempotent_and_another_dataset_goes_to_another_split(saved, tmp_path, digits, trained_weights):
    images, labels = digits
    db = tmp_path / "db"
    r = _index(db, trained_weights, "--data", f"hf:{saved}")  # the default split: validation
    assert "40 samples added, 0 already there, 0 failed" in r.output
    h = saliencydb.open(db)
    rows = h.sql("SELECT key, label, label_name FROM samples WHERE split = 'val'").to_pylist()
    by_row = {int(r["key"].rsplit("/", 1)[1]): r for r in rows}
    assert sorted(by_row) == list(range(40))
    assert [by_row[i]["label"] for i in range(40)] == labels[:40]
    assert [by_row[i]["label_name"] for i in range(40)] == [str(y) for y in labels[:40]]
    assert all(r["key"].startswith("hf:") and "/validation/" in r["key"] for r in rows)
    manifest = json.loads((db / "manifest.json").read_text())
    assert manifest["model"]["class_names"] == DIGITS
    # the same spec again adds nothing: the keys are stable across runs
    r = run_cli("ingest", "--db", db, "--data", f"hf:{saved}", "--split", "val", "--quiet", "--workers", 0)
    assert "0 samples added, 40 already there" in r.output
    # a second saved dataset with two ClassLabel columns: the label column is named in the spec
    other = tmp_path / "other"
    shuffled = [(y + 3) % 10 for y in labels[40:]]
    _dataset(images[40:], shuffled, digit=(ClassLabel(names=DIGITS), labels[40:])).save_to_disk(other)
    r = run_cli("ingest", "--db", db, "--data", f"hf:{other}", "--split", "extra", "--quiet", expect=1)
    line = _one_error_line(r)
    assert "several ClassLabel columns (label, digit)" in line and "--label-column" in line
    r = run_cli("ingest", "--db", db, "--data", f"hf:{other}", "--label-column", "digit", "--split", "extra", "--quiet",
                "--workers", 0)
    assert "20 samples added, 0 already there, 0 failed" in r.output
    h = saliencydb.open(db)
    rows = h.sql("SELECT key, label FROM samples WHERE split = 'extra'").to_pylist()
    assert sorted((int(r["key"].rsplit("/", 1)[1]), r["label"]) for r in rows) == list(enumerate(labels[40:]))
    assert json.loads((db / "manifest.json").read_text())["splits"]["extra"]["source"] == f"hf:{other}?label=digit"
    r = run_cli("ingest", "--db", db, "--data", f"hf:{other}?label=digit", "--split", "extra", "--quiet", "--workers", 0)
    assert "0 samples added, 20 already there" in r.output


def test_a_corrupt_image_row_is_a_failure_and_the_others_are_indexed(tmp_path, digits, trained_weights):
    images, labels = digits
    cells = [{"bytes": _png(img), "path": None} for img in images[:12]]
    cells[5] = {"bytes": b"not an image", "path": None}
    path = tmp_path / "corrupt"
    _dataset(cells, labels[:12]).save_to_disk(path)
    db = tmp_path / "db"
    r = _index(db, trained_weights, "--data", f"hf:{path}", expect=2)
    assert "11 samples added, 0 already there, 1 failed" in r.output
    r = run_cli("sql", "--db", db, "SELECT key, reason FROM failures", "--format", "json")
    failures = json.loads(r.output)  # a list of rows
    assert len(failures) == 1
    assert failures[0]["key"].endswith("/all/5") and failures[0]["key"].startswith("hf:")
    assert "cannot decode the image of row 5" in failures[0]["reason"]
    keys = saliencydb.open(db).sql("SELECT key FROM samples").column("key").to_pylist()
    assert sorted(int(k.rsplit("/", 1)[1]) for k in keys) == [i for i in range(12) if i != 5]


def test_a_missing_column_an_unknown_split_and_a_bad_option_are_one_line(saved, tmp_path, trained_weights):
    db = tmp_path / "db"
    line = _one_error_line(_index(db, trained_weights, "--data", f"hf:{saved}?image=nope", expect=1))
    assert "no column 'nope'" in line and "img (Image), label (ClassLabel)" in line
    line = _one_error_line(_index(db, trained_weights, "--data", f"hf:{saved}:nope", expect=1))
    assert "no split 'nope'" in line and "train, validation" in line
    line = _one_error_line(_index(db, trained_weights, "--data", f"hf:{saved}?colour=img", expect=1))
    assert "unknown option 'colour'" in line
    line = _one_error_line(_index(db, trained_weights, "--data", "builtin:mnist5k:val", "--image-column", "img", expect=1))
    assert "apply to hf: data specs only" in line
    line = _one_error_line(_index(db, trained_weights, "--data", f"hf:{saved}:train", "--label-column", "img", expect=1))
    assert "column 'img' (Image) cannot be the label column" in line


def test_an_unknown_name_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # nothing is written to the user's cache
    r = run_cli_subprocess("index", "--db", tmp_path / "db", "--model", CNN, "--random-weights", "--quiet",
                           "--data", "hf:no-such-user/no-such-dataset", timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "cannot load no-such-user/no-such-dataset" in lines[0] and "Traceback" not in r.stderr


def test_the_source_keys_splits_and_refusals(saved, tmp_path, digits, monkeypatch):
    images, labels = digits
    a, b = parse_data_spec(f"hf:{saved}"), parse_data_spec(f"hf:{saved}:train")
    assert (len(a), len(b)) == (40, 20) and a.class_names == DIGITS and a.labels_are_names
    assert [a.label(i) for i in range(40)] == labels[:40] and [b.label(i) for i in range(20)] == labels[40:]
    assert [a.key(i) for i in range(40)] == [parse_data_spec(f"hf:{saved}").key(i) for i in range(40)]
    assert a.key(7).endswith("/validation/7") and len({a.key(i) for i in range(40)}) == 40
    img = a.load(3)
    assert img.size == (28, 28) and np.array_equal(np.asarray(img), np.asarray(images[3]))
    # the only split of a one-split dict is the default; a dict without validation/test asks for one
    only = tmp_path / "only"
    DatasetDict({"train": _dataset(images[:4], labels[:4])}).save_to_disk(only)
    assert len(parse_data_spec(f"hf:{only}")) == 4
    two = tmp_path / "two"
    DatasetDict({"a": _dataset(images[:4], labels[:4]), "b": _dataset(images[4:8], labels[4:8])}).save_to_disk(two)
    with pytest.raises(SpecError, match=r"has the splits a, b; name one"):
        parse_data_spec(f"hf:{two}")
    with pytest.raises(SpecError, match=r"no Image column; its columns are label \(ClassLabel\)"):
        HFDatasetSource("hf:x", Dataset.from_dict({"label": [1]}, features=Features({"label": ClassLabel(names=DIGITS)})))
    with pytest.raises(SpecError, match=r"streaming dataset .* save_to_disk"):
        HFDatasetSource("hf:x", _dataset(images[:4], labels[:4]).to_iterable_dataset())
    assert with_hf_columns("hf:d:train", "pic", "y") == "hf:d:train?image=pic&label=y"
    assert with_hf_columns("hf:d?label=y", None, "y") == "hf:d?label=y"
    with pytest.raises(SpecError, match=r"already names the label column 'y'"):
        with_hf_columns("hf:d?label=y", None, "z")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the package were not installed
    with pytest.raises(SpecError, match=r"pip install 'saliencydb\[datasets\]'"):
        parse_data_spec(f"hf:{saved}")
