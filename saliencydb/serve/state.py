"""The served database: one pinned read-only view of its latest version, reopened when a writer commits, and the
pictures drawn from it (thumbnails, input-space maps, GradCAM, profile plots), cached in memory per version.

The server never opens a ``DatabaseWriter`` and never writes into the database directory: every read goes
through ``query.open`` (a reader's pin, no lock). It reads stored results, never recomputes them: a group's
profile plot is its stored blame row, the overview's statistics the stored knn table (``serve.api``)."""

from __future__ import annotations

import contextlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import QueryError
from ..storage.versions import read_current
from .sqlproc import SQLProcesses

THUMB_SIDE = 96
QUERY_TIMEOUT_S = 10.0  # the longest any SQL statement of a request runs (the console's, a ?where=)
MAP_SIDE = 224


class LRU:
    """A bounded dict, least recently used first out, safe to share between threads."""

    def __init__(self, size: int):
        self.size, self._d, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
            return None

    def put(self, key, value):
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)
            return value


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _Opened:
    """One opened version and the number of requests reading it: a version the server moved past is closed
    when its last reader is done, never under a request still reading it."""

    def __init__(self, db):
        self.db, self.readers, self.retired, self.explainer = db, 0, False, None

    def release(self) -> None:
        if self.retired and self.readers == 0:
            self.db.close()


class ServedDatabase:
    """A database served read-only: ``reading()`` yields the open ``query.Database`` of its current version.

    Requests read at the same time (``query.Database`` is safe to share between threads: each statement runs
    on its own cursor); only the switch to a new version is serialised, and the model (explanations, maps,
    uploads) is used by one request at a time (``model_lock``)."""

    def __init__(self, path: str | Path, *, cache_items: int = 4096, threads: int | None = None):
        self.path = Path(path)
        read_current(self.path)  # one clear line now when it is not a database
        self.lock = threading.Lock()  # guards the switch between versions, never held while a request reads
        self.model_lock = threading.Lock()
        self.timeout_s = QUERY_TIMEOUT_S
        self.threads = threads  # DuckDB threads of the served view (None: DuckDB's default, every core)
        self._open: _Opened | None = None
        self.sql_processes = SQLProcesses()
        self._images = None  # query.html.ImageLookup over the splits' sources
        self.cache = LRU(cache_items)  # (commit, what, ...) -> bytes or computed answers

    @contextlib.contextmanager
    def reading(self):
        """The open database of the latest commit (reopened after an ``ingest``), shared with other requests."""
        with self.lock:
            commit = read_current(self.path).commit
            opened = self._open
            if opened is None or opened.db.commit != commit:
                if opened is not None:
                    opened.retired = True
                    opened.release()
                opened = self._open = _Opened(self._open_db())
            opened.readers += 1
        try:
            yield opened.db
        finally:
            with self.lock:
                opened.readers -= 1
                opened.release()

    def _open_db(self):
        from ..query import open as open_db

        db = open_db(self.path, threads=self.threads)
        db.timeout_s = self.timeout_s  # every statement of a request is bounded, a --where's too
        db.keep_metadata = True  # a page's many small lookups of sample metadata from memory, not SQL
        # a where= filter runs in a child process with a memory limit, as the console's statements do
        db.filter_runner = lambda where, split: self.sql_processes.ids_where(db, where, split, self.timeout_s)
        return db

    def explainer(self, db):
        """The explainer (model, statistics) of the open version, loaded once per version; use it holding
        ``model_lock`` (a model's hooks and gradients are not for two threads at once)."""
        from ..explain import Explainer

        opened = self._open
        if opened is None or opened.db is not db:  # a request still reading a version the server moved past
            return Explainer(db)
        if opened.explainer is None:
            opened.explainer = Explainer(db)
        return opened.explainer

    def close(self) -> None:
        with self.lock:
            if self._open is not None:
                self._open.retired = True
                self._open.release()
                self._open = None

    def sql(self, db, query: str, max_rows: int | None = None) -> dict:
        """The console's ``api.sql`` document of ``query`` over the version ``db`` reads, run in a child process
        with a memory limit and this server's time limit (``serve.sqlproc``)."""
        from .api import SQL_MAX_ROWS

        if not query or not query.strip():
            raise QueryError("the query is empty; write one SELECT statement")
        return self.sql_processes.sql(db, query, SQL_MAX_ROWS if max_rows is None else max_rows, self.timeout_s)

    def cached(self, db, key: tuple, compute):
        """``compute()`` once per (version, key)."""
        full = (db.commit,) + key
        hit = self.cache.get(full)
        return hit if hit is not None else self.cache.put(full, compute())

    # -- pictures --------------------------------------------------------------------------------
    def thumbnail(self, db, sample_id: int, side: int = THUMB_SIDE) -> bytes:
        """A stored sample's image as PNG, read through its split's data source by its stored key."""
        return self.cached(db, ("thumb", sample_id, side), lambda: self._thumbnail(db, sample_id, side))

    def _thumbnail(self, db, sample_id: int, side: int) -> bytes:
        from ..query.html import ImageLookup, fit, placeholder

        meta = db.sample(sample_id)  # QueryError for an unknown id
        if db.modality != "image":
            raise QueryError(f"sample {sample_id} is a sentence, not an image")
        sources = {name: rec.source for name, rec in db.manifest.splits.items()}
        with self.lock:  # each source opened and listed once
            if self._images is None or self._images.sources != sources:
                self._images = ImageLookup(sources)
            images = self._images
        img = images.image(meta["split"], meta["key"])
        return png_bytes(placeholder(side) if img is None else fit(img, side))

    def input_map(self, db, sample_id: int, kind: str, channel_reduce: str = "max-abs") -> bytes:
        """The sample's input-space saliency map (``map``, its channels reduced by ``channel_reduce``: max-abs or
        abs-max) or GradCAM (``gradcam``) over its image, as PNG."""
        return self.cached(db, (kind, sample_id, channel_reduce), lambda: self._locked(self._map, db, sample_id, kind,
                                                                                     channel_reduce))

    def _locked(self, compute, *args):
        with self.model_lock:
            return compute(*args)

    def _map(self, db, sample_id: int, kind: str, channel_reduce: str) -> bytes:
        import torch
        from PIL import Image

        from ..explain.maps import display_map, gradcam, overlay

        ex = self.explainer(db)
        ex.require_images("an input-space map" if kind == "map" else "GradCAM")
        s = ex.sample(sample_id)
        if kind == "map":
            m = ex.input_map(s.x, s.y, units=ex.top_units(s.z, 10), channel_reduce=channel_reduce)[0]
        else:
            if ex.scripted:
                raise QueryError("GradCAM needs module hooks, which a TorchScript model does not take")
            if not any(isinstance(mod, torch.nn.Conv2d) for mod in ex.model.modules()):
                raise QueryError("GradCAM needs a convolution; this model has none")
            m = gradcam(ex.model, s.x, torch.tensor([int(s.meta["pred"])]))[0]
        rgb = overlay(ex.display_image(s.x), display_map(np.asarray(m)))
        img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
        return png_bytes(img.resize((MAP_SIDE, MAP_SIDE * img.height // max(img.width, 1)), Image.NEAREST))

    def profile_plot(self, db, cluster: int) -> bytes:
        """The error group's mean standardised profile over its members, as PNG: read from the stored blame
        table (which holds it for every unit), never recomputed from the members' profiles."""
        return self.cached(db, ("profile", cluster), lambda: self._locked(self._profile_plot, db, cluster))

    def _profile_plot(self, db, cluster: int) -> bytes:
        import tempfile

        from ..explain.figures import group_profile_figure
        from ..saliency import UnitLayout

        t = db._execute("SELECT unit_id, mean_z FROM blame WHERE cluster = ? ORDER BY unit_id", [cluster]).fetchnumpy()
        n_units = db.manifest.n_units
        if len(t["unit_id"]) != n_units or not np.array_equal(t["unit_id"], np.arange(n_units)):
            raise QueryError(f"the stored blame table does not hold error group {cluster}'s profile over all {n_units} "
                             f"units; run `saliencydb clusters --db {db.path}`")
        size, mistakes = db._execute("SELECT count(*), sum((NOT s.correct)::INT) FROM clusters c JOIN samples s "
                                        "USING (sample_id) WHERE c.cluster = ?", [cluster]).fetchone()
        with tempfile.TemporaryDirectory() as tmp:  # the figure code writes files; outside the database
            out = Path(tmp) / "profile.png"
            group_profile_figure(out, groups=[(f"group {cluster}, {mistakes or 0} mistakes", np.asarray(t["mean_z"], np.float64),
                                               int(size))],
                                 layout=UnitLayout.from_dict(db.manifest.units),
                                 title=f"mean standardised saliency profile: error group {cluster}")
            return out.read_bytes()
