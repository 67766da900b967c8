"""builtin:sklearn-digits: scikit-learn's 1,797 real 8x8 digits, checked against sklearn itself,
and a small CNN trained on its train split that the CLI indexes on its val split."""

import gzip
import json

import numpy as np
import pytest
import sklearn.datasets
import torch

from saliencydb.data import Transform, parse_data_spec
from saliencydb.data.sources import SklearnDigitsSource
from saliencydb.errors import DataError
from tests.helpers import run_cli

SPLITS = ("train", "val", "all")
CNN = "python:saliencydb.data.zoo:small_cnn"


@pytest.fixture(scope="module")
def sources():
    return {split: parse_data_spec(f"builtin:sklearn-digits:{split}") for split in SPLITS}


@pytest.fixture(scope="module")
def reference():
    return sklearn.datasets.load_digits()


def _keys(source) -> list[str]:
    return [source.key(i) for i in range(len(source))]


def test_split_sizes(sources, reference):
    sizes = {split: len(s) for split, s in sources.items()}
    assert sizes == {"train": 1078, "val": 719, "all": 1797}
    assert len(parse_data_spec("builtin:sklearn-digits")) == 719  # val by default
    keys = {split: _keys(s) for split, s in sources.items()}
    assert set(keys["train"]).isdisjoint(keys["val"]) and set(keys["train"]) | set(keys["val"]) == set(keys["all"])
    n = np.bincount(reference.target, minlength=10)
    for split, s in sources.items():
        counts = np.bincount([s.label(i) for i in range(len(s))], minlength=10)
        expected = {"train": [round(0.6 * k) for k in n], "val": [k - round(0.6 * k) for k in n], "all": n.tolist()}[split]
        assert counts.tolist() == expected, split
    # train is the first rows of each class in file order
    train_rows = [int(k.rsplit("/", 1)[1]) for k in keys["train"]]
    for c in range(10):
        rows = np.flatnonzero(reference.target == c)
        assert sorted(r for r in train_rows if reference.target[r] == c) == rows[: round(0.6 * len(rows))].tolist()


def test_pixels_and_labels_match_sklearn(sources, reference):
    s = sources["all"]
    expected = np.round(reference.images * 255 / 16).astype(np.uint8)
    images = [s.load(i) for i in range(len(s))]
    assert all(img.mode == "L" and img.size == (8, 8) for img in images)
    assert np.array_equal(np.stack([np.asarray(img) for img in images]), expected)
    assert [s.label(i) for i in range(len(s))] == reference.target.tolist()
    assert s.class_names == [str(d) for d in range(10)]
    assert expected.min() == 0 and expected.max() == 255  # 0..16 spans the whole 0..255 range
    for split in ("train", "val"):  # a split's sample is the file row its key names
        t = sources[split]
        for i in range(0, len(t), 97):
            row = int(t.key(i).rsplit("/", 1)[1])
            assert np.array_equal(np.asarray(t.load(i)), expected[row]) and t.label(i) == reference.target[row]


def test_keys_unique_and_stable(sources):
    for split, s in sources.items():
        keys = _keys(s)
        assert len(set(keys)) == len(keys), split
        assert keys == _keys(parse_data_spec(f"builtin:sklearn-digits:{split}"))
    assert _keys(sources["all"]) == [f"sklearn-digits/{r}" for r in range(1797)]


def test_default_transform_normalises(sources):
    s = sources["all"]
    t = s.default_transform
    assert t == Transform.parse("sklearn-digits") and t.input_shape == (1, 8, 8)
    x = torch.stack([t(s.load(i)) for i in range(len(s))])
    assert x.shape == (1797, 1, 8, 8)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_missing_or_corrupt_file_is_one_line_data_error(tmp_path, reference):
    cases = {"missing.csv.gz": None, "garbage.csv.gz": b"not gzip at all"}
    rows = np.column_stack([reference.data, reference.target]).astype(int)
    cases["narrow.csv.gz"] = gzip.compress(b"\n".join(b",".join(b"%d" % v for v in r[1:]) for r in rows[:5]))
    bad_pixel = rows[:5].copy()
    bad_pixel[2, 10] = 17
    cases["pixel.csv.gz"] = gzip.compress(b"\n".join(b",".join(b"%d" % v for v in r) for r in bad_pixel))
    bad_label = rows[:5].copy()
    bad_label[1, -1] = 10
    cases["label.csv.gz"] = gzip.compress(b"\n".join(b",".join(b"%d" % v for v in r) for r in bad_label))
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError) as excinfo:
            SklearnDigitsSource("builtin:sklearn-digits", "all", path)
        message = str(excinfo.value)
        assert "\n" not in message and "scikit-learn" in message, message
    good = tmp_path / "good.csv.gz"
    good.write_bytes(gzip.compress(b"\n".join(b",".join(b"%d" % v for v in r) for r in rows[:5])))
    assert len(SklearnDigitsSource("builtin:sklearn-digits", "all", good)) == 5


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("builtin:sklearn-digits:test", "unknown split 'test'; use builtin:sklearn-digits:train, :val or :all"),
        ("builtin:nope", "unknown builtin 'nope'; use builtin:mnist5k[:train|val|all] or builtin:sklearn-digits[:train|val|all]"),
    ],
)
def test_bad_specs_fail_in_one_line(tmp_path, spec, expected):
    db = tmp_path / "db"
    r = run_cli("index", "--db", db, "--model", CNN, "--random-weights", "--data", spec, "--quiet", "--workers", 0, expect=1)
    assert r.stderr == f"Error: data spec '{spec}': {expected}\n"
    assert "Traceback" not in r.output and not db.exists()


def test_trained_cnn_indexes_the_val_split(tmp_path):
    from saliencydb.demo import train_demo_model
    from saliencydb.query import open as open_db

    weights = train_demo_model(tmp_path, data="builtin:sklearn-digits:train", epochs=5)
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", CNN, "--weights", weights, "--data", "builtin:sklearn-digits:val",
            "--split", "val", "--batch-size", 100, "--workers", 0, "--quiet")
    row = json.loads(run_cli("sql", "--db", db, "--format", "json",
                             "SELECT count(*) AS n, avg(correct::INT) AS acc FROM samples").stdout)[0]
    assert row["n"] == len(parse_data_spec("builtin:sklearn-digits:val")) == 719
    assert row["acc"] > 0.8  # 0.947 with seed 0
    with open_db(db) as d:
        keys = d.sql("SELECT key FROM samples ORDER BY key").column("key").to_pylist()
    assert keys == sorted(_keys(parse_data_spec("builtin:sklearn-digits:val")))
