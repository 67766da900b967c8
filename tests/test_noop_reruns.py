"""Commands that only read do not create commits: `mistakes` or `clusters` run again with the same inputs and options
on an unchanged version read the stored answer (the same output), say so, and add no version; anything that
changes the question or the data computes and stores again."""

import json

from click.testing import CliRunner

from saliencydb.cli import cli
from saliencydb.storage import list_versions


def _run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def _versions(db):
    return len(list_versions(db))


def test_mistakes_again_is_a_no_op(digits_copy):
    db = digits_copy
    first = _run("mistakes", "--db", db, "-k", 5, "--format", "json", "-q")
    n = _versions(db)
    again = _run("mistakes", "--db", db, "-k", 5, "--format", "json", "-q")
    assert _versions(db) == n  # no new version
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert b.pop("reused") is True and "reused" not in a
    assert a == b  # the same report, read from the stored graph
    assert "read, not searched again; nothing was stored" in again.stderr
    text = _run("mistakes", "--db", db, "-k", 5, "-q")
    assert "read, not searched again" in text.stderr and _versions(db) == n
    _run("mistakes", "--db", db, "-k", 6, "-q")  # another k: searched and stored
    assert _versions(db) == n + 1
    other_seed = json.loads(_run("mistakes", "--db", db, "-k", 6, "--seed", 3, "--format", "json", "-q").stdout)
    assert other_seed["reused"] is True and other_seed["seed"] == 3 and _versions(db) == n + 1  # the graph has no seed
    _run("ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "more", "--limit", 30, "-q")
    n = _versions(db)
    fresh = json.loads(_run("mistakes", "--db", db, "-k", 6, "--format", "json", "-q").stdout)
    assert "reused" not in fresh and _versions(db) == n + 1  # new samples: the graph is searched again


def test_clusters_again_is_a_no_op(digits_copy):
    db = digits_copy
    first = json.loads(_run("clusters", "--db", db, "--n-clusters", 4, "--format", "json").stdout)
    n = _versions(db)
    again = _run("clusters", "--db", db, "--n-clusters", 4, "--format", "json")
    doc = json.loads(again.stdout)
    assert doc.pop("reused") is True and _versions(db) == n
    assert "read, not clustered again; nothing was stored" in again.stderr
    assert [(g["cluster"], g["size"], g["top_confusions"], g["top_units"]) for g in doc["clusters"]] == \
           [(g["cluster"], g["size"], g["top_confusions"], g["top_units"]) for g in first["clusters"]]
    assert [[e["sample_id"] for e in g["exemplars"]] for g in doc["clusters"]] == \
           [[e["sample_id"] for e in g["exemplars"]] for g in first["clusters"]]
    _run("clusters", "--db", db, "--n-clusters", 4, "--seed", 1)  # another run: clustered and stored
    assert _versions(db) == n + 1
    _run("clusters", "--db", db, "--n-clusters", 4, "--seed", 1)
    assert _versions(db) == n + 1
