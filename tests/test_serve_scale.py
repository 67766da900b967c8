"""saliencydb serve reads stored results only (issue 27): the overview's shared-mistake statistics are the
stored knn table's, a missing or stale derived table is a note naming the command that makes it (never a
computation on the request path), and stale error groups are shown with a note."""

import json
from pathlib import Path

import pytest

from helpers import run_cli

pytest.importorskip("starlette")
pytest.importorskip("httpx")


def _client(db: Path):
    from starlette.testclient import TestClient

    from saliencydb.serve.app import create_app

    return TestClient(create_app(db), base_url="http://localhost")


def _files(db: Path) -> dict[str, int]:
    """Every file of the database directory and its size (a write, a new table or version would show); a
    reader's pins (the served version's) and the writer lock's file are not the database's contents."""
    return {str(p.relative_to(db)): p.stat().st_size for p in db.rglob("*")
            if p.is_file() and p.name != ".lock" and p.relative_to(db).parts[0] != "pins"}


def _without_intervals(doc: dict) -> dict:
    """A mistakes document without what depends on the number of bootstrap resamples (the means and counts stay)."""
    if isinstance(doc, dict):
        return {k: _without_intervals(v) for k, v in doc.items() if k not in ("ci95", "bootstrap", "stored", "base_commit")}
    return doc


def _manifest(db: Path) -> dict:
    return json.loads((db / "manifest.json").read_text())


def test_overview_reads_the_stored_knn_table_and_never_computes_it(digits_copy):
    db = digits_copy
    assert "knn" not in _manifest(db)["tables"]
    before = _files(db)
    with _client(db) as client:
        page = client.get("/")
        doc = client.get("/api/overview").json()
    assert page.status_code == 200
    command = f"saliencydb mistakes --db {db}"
    assert command in page.text and 'id="shared-note"' in page.text and 'id="shared"' not in page.text
    assert "mistakes" not in doc and command in doc["notes"]["mistakes"]
    assert _files(db) == before  # nothing computed was stored, no version made
    assert "knn" not in _manifest(db)["tables"]

    cli = json.loads(run_cli("mistakes", "--db", db, "--format", "json", "-q").stdout)
    assert cli["stored"]
    with _client(db) as client:
        doc = client.get("/api/overview").json()
        page = client.get("/").text
    assert "mistakes" not in doc["notes"]
    assert _without_intervals(doc["mistakes"]) == _without_intervals(cli)  # the same shares as the CLI's run
    assert doc["mistakes"]["base_commit"] == _manifest(db)["derived"]["knn"]["base_commit"]
    assert 'id="shared"' in page and "shared-note" not in page
    for split, entry in cli["splits"].items():
        for space in ("saliency", "feature"):
            mean = entry[space]["correct_neighbors_of_incorrect"]["mean"]
            assert f"<td>{split}</td><td>{space}</td><td>{entry['incorrect']}</td><td>{100 * mean:.1f}%</td>" in page


def test_stale_knn_and_error_groups_are_notes(digits_copy):
    db = digits_copy
    run_cli("mistakes", "--db", db, "-q")
    run_cli("clusters", "--db", db, "--n-clusters", "3")
    computed_at = _manifest(db)["derived"]["clusters"]["base_commit"]
    run_cli("ingest", "--db", db, "--split", "later", "--limit", "30", "--data", "builtin:mnist5k:train", "--quiet",
            "--workers", "0")  # new samples: the stored knn and clusters tables are now stale
    before = _files(db)
    with _client(db) as client:
        doc = client.get("/api/overview").json()
        page = client.get("/").text
        group = doc["groups"][0]["cluster"]
        group_doc = client.get(f"/api/groups/{group}").json()
        group_page = client.get(f"/group/{group}").text
    assert _files(db) == before
    assert "mistakes" not in doc
    assert "the stored neighbour graph and its shared-mistake statistics were computed at commit" in doc["notes"]["mistakes"]
    assert f"run `saliencydb mistakes --db {db}` to refresh them" in doc["notes"]["mistakes"]
    groups_note = doc["notes"]["groups"]
    assert groups_note.startswith(f"the error groups were computed at commit {computed_at}, from other samples or statistics")
    assert f"run `saliencydb clusters --db {db}` to refresh them" in groups_note
    assert doc["groups"]  # still shown, with the note
    assert 'id="groups-note"' in page and 'id="shared-note"' in page and 'class="card"' in page
    assert group_doc["note"] == groups_note and 'id="group-note"' in group_page

    run_cli("clusters", "--db", db, "--n-clusters", "3")  # refreshed: the groups' note goes
    with _client(db) as client:
        doc = client.get("/api/overview").json()
    assert "groups" not in doc["notes"] and "mistakes" in doc["notes"]


def test_group_profile_plot_is_the_stored_blame_profile(digits_copy):
    """The group page's profile plot is drawn from the stored blame table (every unit's mean z over the group),
    which is the mean standardised profile of its members that `profile-plot --cluster` computes."""
    import numpy as np

    import saliencydb
    from saliencydb.explain.groups import group_profiles

    db = digits_copy
    run_cli("clusters", "--db", db, "--n-clusters", "3")  # error groups: every member is a mistake
    with saliencydb.open(db) as d:
        cluster = d.con.execute("SELECT min(cluster) FROM clusters").fetchone()[0]
        stored = d.con.execute("SELECT mean_z FROM blame WHERE cluster = ? ORDER BY unit_id", [cluster]).fetchnumpy()["mean_z"]
        computed = {g.name: g for g in group_profiles(d, cluster=cluster).groups}
    assert computed["correct"].count == 0
    np.testing.assert_allclose(stored, computed["incorrect"].z, rtol=1e-4, atol=1e-4)
    with _client(db) as client:
        png = client.get(f"/img/group/{cluster}/profile.png")
        missing = client.get("/img/group/99/profile.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert missing.status_code == 404 and "no error group 99" in missing.text


def test_stale_triage_is_a_note(digits_copy):
    db = digits_copy
    ingest = ["--data", "builtin:mnist5k:train", "--quiet", "--workers", "0"]
    run_cli("clusters", "--db", db, "--n-clusters", "3", "--split", "val")
    run_cli("ingest", "--db", db, "--split", "new", "--limit", "60", *ingest)
    run_cli("triage", "--db", db, "--split", "new")
    with _client(db) as client:
        fresh = client.get("/api/triage?split=new").json()
    assert fresh["split"] == "new" and "note" not in fresh
    run_cli("ingest", "--db", db, "--split", "later", "--limit", "30", *ingest)  # the triage table is now stale
    with _client(db) as client:
        doc = client.get("/api/triage?split=new").json()
        page = client.get("/triage?split=new").text
    assert doc["rows"] == fresh["rows"]  # still shown, with the note
    assert doc["note"].startswith("the stored triage answers were computed at commit")
    assert doc["note"].endswith(f"run `saliencydb triage --db {db} --split new` to refresh them")
    assert 'id="triage-note"' in page
