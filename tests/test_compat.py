"""A database written before the refactor into one package per job opens and answers the same
read queries, byte for byte (``fixtures/make_format2_db.py`` wrote both the database and the
answers with that version)."""

import json
import shutil
from pathlib import Path

import pytest

import saliencydb
from helpers import run_cli

FIXTURES = Path(__file__).parent / "fixtures"
WRITTEN_AT = "<DB>"  # the database's path in the recorded answers
ANSWERS = json.loads((FIXTURES / "format2-answers.json").read_text())["answers"]


@pytest.fixture(scope="module")
def old_db(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("compat") / "format2-db"
    shutil.copytree(FIXTURES / "format2-db", dst)
    return dst


def _args(query: list[str], db: Path) -> list[str]:
    args = ["--id" if a == "--db-id" else a for a in query]
    return args[:1] + ["--db", str(db)] + args[1:]


def _without_baselines(doc: dict) -> dict:
    """A mistakes report as the old version printed it: the baselines and the normalisation came later."""
    assert doc.get("normalisation", "zscore") == "zscore"
    return {**{k: v for k, v in doc.items() if k != "normalisation"},
            "splits": {s: {k: v for k, v in e.items() if k != "baselines"} for s, e in doc["splits"].items()}}


@pytest.mark.parametrize("n", range(len(ANSWERS)), ids=[" ".join(a["args"][:2])[:40] for a in ANSWERS])
def test_old_database_gives_the_same_answers(old_db, n):
    """Every answer is the old one; the mistakes report may add its baselines (every old key and row
    stays the same, in the same order)."""
    query = ANSWERS[n]["args"]
    out = run_cli(*_args(query, old_db)).stdout.replace(str(old_db), WRITTEN_AT)
    if query[0] == "mistakes" and "json" in query:
        assert _without_baselines(json.loads(out)) == json.loads(ANSWERS[n]["output"])
    elif query[0] == "info" and "json" in query:  # the statistics name their normalisation since
        doc = json.loads(out)
        assert doc["statistics"].pop("normalisation") == "zscore" and doc["units"].pop("excluded") == []
        assert doc["statistics"].pop("source") is None
        assert json.dumps(doc, indent=2) + "\n" == ANSWERS[n]["output"]
    elif query[0] == "mistakes":
        assert [line for line in out.splitlines() if ",baseline:" not in line] == ANSWERS[n]["output"].splitlines()
    else:
        assert out == ANSWERS[n]["output"]


def test_old_database_through_the_python_api(old_db):
    want = json.loads(next(a["output"] for a in ANSWERS if a["args"][0] == "info"))
    with saliencydb.open(old_db) as db:
        assert db.commit == want["commit"] and db.manifest.rows() == want["samples"]
        assert db.info()["splits"] == want["splits"]
        mistakes = db.sql("SELECT count(*) AS n FROM samples WHERE NOT correct").column("n")[0].as_py()
    assert mistakes == sum(s["mistakes"] for s in want["splits"].values())


def test_manifests_round_trip_byte_for_byte():
    """The typed manifest reads and writes the format-2 JSON unchanged, including a format-1 style
    entry without the keys added later and a key this version does not know."""
    from saliencydb.schemas import Manifest

    files = sorted((FIXTURES / "format2-db").rglob("manifest*.json"))
    assert len(files) > 5
    for path in files:
        text = path.read_text()
        assert Manifest.from_dict(json.loads(text)).to_json() == text.rstrip("\n")
    doc = json.loads((FIXTURES / "format2-db" / "manifest.json").read_text())
    del doc["model"]["aggregate"], doc["indexes"]["saliency"]["built"], doc["indexes"]["saliency"]["next_id"]
    doc["indexes"]["saliency"]["added_by_a_later_version"] = [1, 2]
    m = Manifest.from_dict(doc)
    assert m.aggregate == "mean_abs" and m.indexes["saliency"].built_kind == m.indexes["saliency"].kind
    assert m.to_json() == json.dumps(doc, indent=1)


def _recorded(*args):
    return next(a["output"] for a in ANSWERS if a["args"][: len(args)] == list(args))


def test_typed_results_are_the_recorded_json_and_csv(old_db):
    """The Python API's typed results: ``to_dict()`` is the JSON the old version printed, ``rows()``
    its CSV rows, and ``result["key"]`` reads that JSON."""
    import csv
    import io

    with saliencydb.open(old_db) as db:
        info = db.info()
        mistakes = db.mistakes(5, n_boot=50, write=False)
        clusters = db.clusters(3, write=False)
        triage = db.triage("extra", write=False)
        near = db.neighbors(3, k=5)
    want_info = json.loads(_recorded("info"))
    got_info = info.to_dict()
    assert got_info["statistics"].pop("normalisation") == "zscore"  # named since
    assert got_info["units"].pop("excluded") == []  # listed since (linear layouts)
    assert got_info["statistics"].pop("source") is None  # named since (reference statistics)
    assert got_info == {**want_info, "path": str(old_db)}
    assert info.splits["val"].samples == want_info["splits"]["val"]["samples"] == info["splits"]["val"]["samples"]
    assert _without_baselines(mistakes.to_dict()) == json.loads(
        _recorded("mistakes", "-k", "5", "--bootstrap", "50", "--no-store", "--format", "json"))
    rows = list(csv.DictReader(io.StringIO(_recorded("mistakes", "-k", "5", "--bootstrap", "50", "--no-store", "--format", "csv"))))
    assert [{k: ("" if v is None else repr(v) if isinstance(v, float) else str(v)) for k, v in r.items()}
            for r in mistakes.rows() if not r["space"].startswith("baseline:")] == rows
    assert clusters.to_dict() == json.loads(_recorded("clusters", "--n-clusters", "3", "--no-store", "--format", "json"))
    assert [g.size for g in clusters.clusters] == [g["size"] for g in clusters["clusters"]]
    assert triage.to_dict() == json.loads(_recorded("triage"))
    assert near.to_dict() == json.loads(_recorded("neighbors", "--db-id", "3"))
    assert near.query.sample_id == 3 and near.summary.neighbors == 5 == len(near.rows())
