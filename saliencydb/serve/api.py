"""The JSON documents the web app serves under ``/api/...`` and renders as pages. Each is the CLI's
``--format json`` document where the CLI has one (``info``, ``neighbors``, ``mistakes``, ``sql``, ``triage``'s
rows), read from the open database's stored tables: nothing here searches the whole database or builds an
index (a missing or stale derived table is a note naming the command that makes it); the per-sample
neighbour queries are one search each."""

from __future__ import annotations

import os
import shlex
import tempfile

import numpy as np

from ..errors import QueryError, SaliencyDBError
from ..results import plain

SQL_MAX_ROWS = 1000
SQL_TIMEOUT_S = 10.0
SQL_MAX_BYTES = 8 << 20  # the most of a result the console sends (its rows cut there, with a note)
NEIGHBORS = 10
MEMBERS_SHOWN = 60
UPLOAD_MAX_BYTES = 10 * 2**20
OVERVIEW_BOOTSTRAP = 200  # resamples of the overview's 95% intervals (the means are the stored graph's, whatever this is)


def info(db) -> dict:
    from ..query.summary import database_info

    return database_info(db).to_dict()


def _stored_groups(db) -> list[dict]:
    """The stored error groups (``saliencydb clusters``): size, mistakes, top confusions and blamed units."""
    rows = db._execute(
        """SELECT c.cluster, count(*) AS size, sum((NOT s.correct)::INT) AS mistakes
           FROM clusters c JOIN samples s USING (sample_id) GROUP BY c.cluster ORDER BY size DESC, c.cluster""").fetchall()
    groups = []
    for cluster, size, mistakes in rows:
        confusions = db._execute(
            """SELECT s.label_name || ' -> ' || s.pred_name AS pair, count(*) AS n FROM clusters c JOIN samples s
               USING (sample_id) WHERE c.cluster = ? AND NOT s.correct GROUP BY pair ORDER BY n DESC, pair LIMIT 3""",
            [cluster]).fetchall()
        units = db._execute("SELECT layer, channel, mean_z FROM blame WHERE cluster = ? ORDER BY rank LIMIT 5",
                               [cluster]).fetchall()
        members = [r[0] for r in db._execute(
            """SELECT c.sample_id FROM clusters c JOIN samples s USING (sample_id) WHERE c.cluster = ?
               ORDER BY s.correct, c.distance, c.sample_id LIMIT 6""", [cluster]).fetchall()]
        groups.append({"cluster": int(cluster), "size": int(size), "mistakes": int(mistakes),
                       "top_confusions": [{"pair": p, "count": int(n)} for p, n in confusions],
                       "top_units": [{"layer": l, "channel": int(c), "mean_z": round(float(z), 4)} for l, c, z in units],
                       "exemplars": members})
    return groups


def stale_note(db, table: str, what: str, command: str) -> str | None:
    """A note when the derived ``table`` was computed from other samples or statistics than the served version's."""
    stale = db.manifest.stale_derived()
    if table not in stale:
        return None
    return (f"{what} were computed at commit {stale[table]}, from other samples or statistics than this version's "
            f"(commit {db.commit}); run `{command}` to refresh them")


def _command(name: str, db) -> str:
    return f"saliencydb {name} --db {shlex.quote(str(db.path))}"


def _shares(db) -> dict:
    """The shared-mistake statistics read from the stored knn table (never searched here), or a note saying
    which command stores it."""
    from ..query.knn import stored_mistakes

    if "knn" not in db.manifest.tables:
        return {"note": f"no neighbour graph is stored yet: run `{_command('mistakes', db)}` for the shared-mistake statistics"}
    note = stale_note(db, "knn", "the stored neighbour graph and its shared-mistake statistics", _command("mistakes", db))
    if note:
        return {"note": note}
    try:
        return {"report": stored_mistakes(db, n_boot=OVERVIEW_BOOTSTRAP).to_dict()}
    except QueryError as e:
        return {"note": str(e)}


def overview(served, db) -> dict:
    """Splits and accuracy, the shared-mistake statistics in both spaces and the error groups, all read from
    stored tables: a derived table that is missing or stale is a note naming the command that makes it."""
    doc = {"info": info(db), "groups": served.cached(db, ("groups",), lambda: _stored_groups(db)), "modality": db.modality,
           "spaces": list(db.spaces), "notes": {}}
    if "feature" not in db.spaces:
        doc["absent"] = {"feature": f"no feature vectors: {db.manifest.no_features_reason}"}
    if db.manifest.rows() > 0:
        shares = served.cached(db, ("mistakes",), lambda: _shares(db))
        if "report" in shares:
            doc["mistakes"] = shares["report"]
        else:
            doc["notes"]["mistakes"] = shares["note"]
    note = groups_note(db)
    if note:
        doc["notes"]["groups"] = note
    return doc


def groups_note(db) -> str | None:
    """A note when the stored error groups (clusters, blame) are stale."""
    return (stale_note(db, "clusters", "the error groups", _command("clusters", db))
            or stale_note(db, "blame", "the error groups' blame tables", _command("clusters", db)))


def sample(served, db, sample_id: int, where: str | None = None, k: int = NEIGHBORS) -> dict:
    """One sample: its metadata, top units and its neighbours in both spaces (``where`` restricts them)."""
    meta = db.sample(sample_id)
    z = db.z([sample_id])[0]
    top = np.argsort(-z, kind="stable")[:10]
    units = db._execute("SELECT unit_id, layer, channel FROM units WHERE list_contains(?, unit_id)",
                           [[int(u) for u in top]]).fetchall()
    by_id = {u: (layer, ch) for u, layer, ch in units}
    top_units = [{"rank": r, "unit_id": int(u), "layer": by_id[int(u)][0], "channel": int(by_id[int(u)][1]),
                  "z": round(float(z[u]), 4)} for r, u in enumerate(top, start=1) if int(u) in by_id]
    n = db.manifest.rows() - 1
    k = max(1, min(k, n)) if n > 0 else 0
    spaces = {}
    for space in ("saliency", "feature"):
        if space not in db.spaces:  # a model without a feature vector (TorchScript): that space is absent, said so
            spaces[space] = {"neighbors": [], "absent": f"no feature vectors: {db.manifest.no_features_reason}"}
            continue
        if k == 0:
            spaces[space] = {"neighbors": []}
            continue
        try:
            spaces[space] = neighbors(db, sample_id, k=k, space=space, where=where).to_dict()
        except QueryError as e:  # e.g. a --where that leaves fewer than k candidates
            spaces[space] = {"neighbors": [], "error": str(e)}
    return {"sample": plain(meta), "top_units": top_units, "neighbors": spaces, "where": where}


def neighbors(db, sample_id: int, *, k: int = NEIGHBORS, space: str = "saliency", where: str | None = None,
              split: str | None = None):
    """A stored sample's neighbours: read from the stored neighbour graph when it holds exactly the answer a
    search would give (``query.stored``), else searched."""
    from ..query.stored import stored_neighbors

    stored = None if where is not None else stored_neighbors(db, sample_id, k=k, space=space, split=split)
    return stored if stored is not None else db.neighbors(sample_id, k=k, space=space, where=where, split=split)


def group(db, cluster: int) -> dict:
    """An error group: its members (mistakes first) and its blame table."""
    known = db.memo("groups", lambda: [r[0] for r in db._execute("SELECT DISTINCT cluster FROM clusters ORDER BY 1").fetchall()])
    if cluster not in known:
        raise QueryError(f"no error group {cluster}" + (f"; the groups are {', '.join(map(str, known))}" if known
                                                        else "; run `saliencydb clusters` first"))
    distance = dict(db._execute("SELECT sample_id, distance FROM clusters WHERE cluster = ?", [cluster]).fetchall())
    text = db.modality == "text"
    meta = db.metadata(list(distance), ["sample_id", "split", "label_name", "pred_name", "correct", "pred_conf"]
                       + (["text"] if text else []))
    members = sorted(({**m, "distance": distance[i], "text": m.get("text") if text else None} for i, m in meta.items()),
                     key=lambda m: (m["correct"], m["distance"], m["sample_id"]))
    doc = {"cluster": cluster, "size": len(members), "members": members, "blame": _blame_tops(db).get(cluster, [])}
    note = groups_note(db)
    if note:
        doc["note"] = note
    return doc


def _blame_tops(db) -> dict[int, list[dict]]:
    """Each error group's 20 most blamed units (the stored blame table's first ranks), read once per version."""
    def read():
        tops: dict[int, list[dict]] = {}
        for c, rank, unit, layer, channel, mean_z in db._execute(
                "SELECT cluster, rank, unit_id, layer, channel, mean_z FROM blame WHERE rank <= 20 ORDER BY cluster, rank"
        ).fetchall():
            tops.setdefault(c, []).append({"rank": rank, "unit_id": unit, "layer": layer, "channel": channel, "mean_z": mean_z})
        return tops

    return db.memo("blame-tops", read)


def sql(db, query: str, max_rows: int = SQL_MAX_ROWS, timeout_s: float = SQL_TIMEOUT_S) -> dict:
    """A read-only query's columns and rows (at most ``max_rows``; ``truncated`` says whether there were more),
    stopped after ``timeout_s``. The web app runs it in a child process (``serve.sqlproc``)."""
    if not query or not query.strip():
        raise QueryError("the query is empty; write one SELECT statement")
    table = db.sql(query, max_rows=max_rows, timeout_s=timeout_s)
    keep = _rows_within(table, min(max_rows, table.num_rows), SQL_MAX_BYTES)
    rows = table.slice(0, keep).to_pylist()
    doc = {"columns": table.column_names, "rows": plain(rows), "truncated": table.num_rows > keep,
           "max_rows": max_rows, "notes": db.notices(query)}
    if keep < min(max_rows, table.num_rows):
        doc["notes"] = doc["notes"] + [f"note: the result was cut after {keep} rows, at {SQL_MAX_BYTES >> 20} MiB; "
                                       "select fewer or narrower columns"]
    return doc


def _rows_within(table, rows: int, max_bytes: int) -> int:
    """How many of the first ``rows`` rows of ``table`` fit ``max_bytes`` (Arrow's buffer sizes, about the JSON's)."""
    if rows == 0 or table.slice(0, rows).nbytes <= max_bytes:
        return rows
    lo, hi = 0, rows  # the largest prefix within the budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if table.slice(0, mid).nbytes <= max_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def triage_view(db, split: str | None) -> dict:
    """For a split ingested later: which of its mistakes joined a known group and which are new failure modes."""
    splits = [r[0] for r in db._execute("SELECT DISTINCT split FROM triage ORDER BY 1").fetchall()]
    if split is None:
        return {"splits": splits, "split": None, "rows": []}
    if split not in splits:
        raise QueryError(f"split '{split}' has not been triaged" + (f"; triaged: {', '.join(splits)}" if splits else "")
                         + f"; run `saliencydb triage --db DB --split {split}`")
    rows = db._execute(
        """SELECT t.sample_id, s.label_name, s.pred_name, t.cluster, t.similarity, s.text FROM triage t JOIN samples s
           USING (sample_id) WHERE t.split = ? ORDER BY t.cluster = -1 DESC, t.similarity DESC, t.sample_id""", [split]).fetchall()
    cols = ["sample_id", "label_name", "pred_name", "cluster", "similarity", "text"]
    out = [dict(zip(cols, r)) for r in rows]
    doc = {"splits": splits, "split": split, "rows": plain(out),
           "new": sum(r["cluster"] == -1 for r in out), "known": sum(r["cluster"] != -1 for r in out)}
    note = stale_note(db, "triage", "the stored triage answers", f"{_command('triage', db)} --split {shlex.quote(split)}")
    if note:
        doc["note"] = note
    return doc


def search(db, data: bytes, label: str, suffix: str = ".png", k: int = NEIGHBORS) -> dict:
    """The saliency neighbours of an uploaded image with its label, profiled by the stored model; the image is
    kept only in a temporary file for the duration of the request."""
    if db.modality != "image":
        raise QueryError("search by upload takes an image; this is a text database")
    if not data:
        raise QueryError("no image was uploaded")
    if len(data) > UPLOAD_MAX_BYTES:
        raise QueryError(f"the upload is larger than {UPLOAD_MAX_BYTES // 2**20} MB")
    fd, path = tempfile.mkstemp(suffix=suffix if suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp") else ".img")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            result = db.neighbors(None, k=min(k, max(1, db.manifest.rows())), image=path, label=label).to_dict()
        except SaliencyDBError as e:  # the temporary file's name means nothing to the user
            raise QueryError(str(e).replace(f"sample '{path}': ", "").replace(path, "the uploaded image")) from None
    finally:
        os.unlink(path)
    result["query"]["key"] = "(uploaded image)"
    return result
