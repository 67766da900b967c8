"""Relative data paths (issue 26, finding 6): every local data spec is recorded absolute, so that a
database made in one folder is explained, browsed and added to from any other; an hf: local folder is
read from disk, never looked up on the Hub. Real digits written as PNG files, a CSV and a saved
Hugging Face dataset; the CLI in-process, run from different working directories."""

import json
import os
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, Features, Image as HFImage
from PIL import Image

from saliencydb.data import parse_data_spec
from saliencydb.data.sources import absolute_data_spec
from saliencydb.errors import SpecError
from saliencydb.query.html import fit
from saliencydb.serve.state import ServedDatabase, png_bytes
from saliencydb.storage import DatabaseWriter

from helpers import run_cli

CNN = "python:saliencydb.data.zoo:small_cnn"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder ``w`` holding ``my-digits/`` (2 real digits per class as PNG), ``list.csv`` (the same files by
    relative path) and ``hf-digits/`` (the next 20 digits, saved with ``save_to_disk``)."""
    w = tmp_path_factory.mktemp("relative").resolve() / "w"
    source = parse_data_spec("builtin:mnist5k:val")
    seen: dict[int, int] = {}
    lines = ["path,label"]
    for i in range(0, len(source), 7):
        label = source.label(i)
        if seen.get(label, 0) < 2:
            seen[label] = seen.get(label, 0) + 1
            (w / "my-digits" / str(label)).mkdir(parents=True, exist_ok=True)
            source.load(i).save(w / "my-digits" / str(label) / f"{i}.png")
            lines.append(f"my-digits/{label}/{i}.png,{label}")
    assert len(lines) == 21
    (w / "list.csv").write_text("\n".join(lines) + "\n")
    rows = range(3, len(source), 100)
    features = Features({"img": HFImage(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    Dataset.from_dict({"img": [source.load(i) for i in rows], "label": [source.label(i) for i in rows]},
                      features=features).save_to_disk(w / "hf-digits")
    return w


def _add(*args):
    return run_cli(*args, "--quiet", "--workers", 0)


def _explained(db: Path, sample_id: int, out: Path) -> str:
    r = run_cli("explain", "--db", db, "--id", sample_id, "--out", out)
    assert out.is_file() and r.output.endswith(f"wrote {out}\n"), r.output
    return r.output


def test_absolute_data_spec_of_every_kind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "saved").mkdir()
    here, home = str(tmp_path.resolve()), str(tmp_path / "home")
    cases = {
        "imagefolder:my-digits": f"imagefolder:{here}/my-digits",
        "imagefolder:./a/../b": f"imagefolder:{here}/b",
        "csv:list.csv": f"csv:{here}/list.csv",
        "jsonl:~/s.jsonl": f"jsonl:{home}/s.jsonl",
        "torchvision:MNIST:data:train": f"torchvision:MNIST:{here}/data:train",
        "torchvision:CIFAR10:/srv/cifar": "torchvision:CIFAR10:/srv/cifar",
        "hf:./x:validation?image=img&label=y": f"hf:{here}/x:validation?image=img&label=y",
        "hf:saved": f"hf:{here}/saved",  # not ./, but a folder here
        "hf:saved:test": f"hf:{here}/saved:test",
        "hf:~/hf": f"hf:{home}/hf",
        "hf:/abs/ds": "hf:/abs/ds",
        "hf:owner/name": "hf:owner/name",  # a dataset name: left to the Hugging Face cache
        "hf:mnist:test": "hf:mnist:test",
        "builtin:mnist5k:val": "builtin:mnist5k:val",
        "imagefolder:/abs/x": "imagefolder:/abs/x",
    }
    assert {spec: absolute_data_spec(spec) for spec in cases} == cases
    assert all(absolute_data_spec(got) == got for got in cases.values())  # idempotent


def test_a_torchvision_root_with_a_colon_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a:b").mkdir()
    monkeypatch.chdir(tmp_path / "a:b")
    with pytest.raises(SpecError) as excinfo:
        absolute_data_spec("torchvision:MNIST:data")
    assert "has ':' in its path" in str(excinfo.value) and str(tmp_path / "a:b" / "data") in str(excinfo.value)


def test_relative_specs_are_recorded_absolute_and_read_from_anywhere(work, tmp_path, monkeypatch, cnn_weights):
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(work)
    db = tmp_path / "my-db"
    _add("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--transform", "mnist", "--data", "imagefolder:my-digits")
    _add("ingest", "--db", db, "--data", "csv:list.csv", "--split", "bycsv")
    _add("ingest", "--db", db, "--data", "hf:./hf-digits", "--split", "byhf")
    m = json.loads((db / "manifest.json").read_text())
    assert {name: rec["source"] for name, rec in m["splits"].items()} == {
        "val": f"imagefolder:{work}/my-digits", "bycsv": f"csv:{work}/list.csv", "byhf": f"hf:{work}/hf-digits"}
    # the same relative specs, typed again from the same folder, resume the same splits
    for data, split in (("imagefolder:my-digits", "val"), ("csv:list.csv", "bycsv"), ("hf:./hf-digits", "byhf")):
        r = _add("ingest", "--db", db, "--data", data, "--split", split)
        assert "0 samples added, 20 already there, 0 failed" in r.output, r.output
    # from another folder: every split's samples are explained and shown from their files
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rows = json.loads(run_cli("sql", "--db", db, "SELECT min(sample_id) AS id, split FROM samples "
                                                 "GROUP BY split ORDER BY split", "--format", "json").output)
    assert [r["split"] for r in rows] == ["bycsv", "byhf", "val"]
    for r in rows:
        _explained(db, r["id"], elsewhere / f"{r['split']}.png")
    served = ServedDatabase(db)
    with served.reading() as d:
        for r in rows:
            meta = d.sample(r["id"])
            if r["split"] == "byhf":
                want = parse_data_spec(f"hf:{work}/hf-digits").load(int(meta["key"].rsplit("/", 1)[1]))
            elif r["split"] == "bycsv":
                want = Image.open(work / meta["key"])
            else:
                want = Image.open(work / "my-digits" / meta["key"])
            assert served.thumbnail(d, r["id"]) == png_bytes(fit(want, 96)), r  # the file itself, not the grey square
    served.close()


def test_a_database_recorded_with_a_relative_spec_still_resumes_from_its_folder(work, tmp_path, monkeypatch, cnn_weights):
    """A database made before specs were recorded absolute holds the spec as typed: the same spec typed from the
    same folder resumes it (and records it absolute from then on); from another folder it is refused in one line."""
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(work)
    db = tmp_path / "old-db"
    _add("index", "--db", db, "--model", CNN, "--weights", cnn_weights, "--transform", "mnist",
         "--data", "imagefolder:my-digits", "--limit", 12)
    with DatabaseWriter(db) as w:  # as an earlier version recorded it
        w.manifest.splits["val"].source = "imagefolder:my-digits"
        w.commit()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    r = run_cli("ingest", "--db", db, "--data", f"imagefolder:{work}/my-digits", "--split", "val", "--quiet", expect=1)
    assert r.output == (f"Error: split 'val' already holds imagefolder:my-digits, a path relative to the folder it was indexed "
                        f"from, which is imagefolder:{other}/my-digits from here, not imagefolder:{work}/my-digits; run "
                        "from that folder to add to it, choose another --split name, or pass --replace\n")
    monkeypatch.chdir(work)
    r = _add("ingest", "--db", db, "--data", "imagefolder:my-digits", "--split", "val")
    assert "8 samples added, 12 already there, 0 failed" in r.output
    assert json.loads((db / "manifest.json").read_text())["splits"]["val"]["source"] == f"imagefolder:{work}/my-digits"
    monkeypatch.chdir(other)
    _explained(db, 0, other / "x.png")


def test_hf_local_folders_are_read_from_disk_never_from_the_hub(work, tmp_path, monkeypatch):
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))
    keys = [parse_data_spec("hf:./hf-digits").key(i) for i in range(20)]
    for spec in ("hf:hf-digits", f"hf:{work}/hf-digits", "hf:~/hf-digits"):
        source = parse_data_spec(spec)
        assert [source.key(i) for i in range(len(source))] == keys, spec
    for spec in ("hf:./no-such-folder", "hf:~/no-such-folder", "hf:../no/such/folder"):
        with pytest.raises(SpecError) as excinfo:
            parse_data_spec(spec)
        message = str(excinfo.value)
        assert message == (f"data spec '{spec}': {Path(spec[3:]).expanduser()} does not exist; give a folder written by "
                           "save_to_disk, or local data files"), message
    r = run_cli("index", "--db", tmp_path / "db", "--model", CNN, "--data", "hf:./hf-digit", "--random-weights", expect=1)
    assert r.output == (f"Error: data spec 'hf:{work}/hf-digit': {work}/hf-digit does not exist; give a folder written by "
                        "save_to_disk, or local data files\n")
    assert not (tmp_path / "db").exists() and os.getcwd() == str(work)
