"""The Database object: one pinned version of a database, its tables as DuckDB views.

User SQL runs in a DuckDB connection that can reach only the tables of that version: their
files are registered as lazily scanned Arrow datasets (read by pyarrow, not by DuckDB); the
connection is opened with external access off, no temporary directory (nothing spills to
disk, so no directory is reachable from SQL) and no Python replacement scans, its local file
system is then disabled and its configuration locked, so no statement of any kind can read or
write the file system or the network. Which statements run is decided by DuckDB's own parser
(``check_read_only``), and each user statement runs on a fresh cursor inside a transaction that
is rolled back, so nothing it might create outlives it (docs/reliability.md, "Trust").
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..errors import DamagedError, DatabaseError, QueryError, SpecError
from ..saliency import UnitLayout, l2_normalize
from ..saliency.normalise import Normaliser, check_normalisation, needs_dlogit, running_stats
from ..schemas import PROFILE_EXP, TABLE_SCHEMAS, UNITS_SCHEMA, Manifest, samples_schema, scan_schema
from ..storage import Snapshot, fixed_list_to_numpy, profile_columns, profiles_to_numpy
from ..storage.indexes import SPACES, build_index

# the per-sample prescale of each normalisation in SQL (saliency.normalise.prescale; a zero scale is 1)
_SCALE_SQL = {
    "zscore": "1.0::DOUBLE",
    "zscore-unitnorm": "coalesce(nullif(sqrt(list_inner_product(raw_profile::DOUBLE[], raw_profile::DOUBLE[])), 0), 1.0)",
    "zscore-dlogit": "CASE WHEN dlogit_norm > 0 THEN dlogit_norm::DOUBLE WHEN dlogit_norm = 0 THEN 1.0 END",
}
# a float16 database's stored raw_profile * 2**profile_exp (scanned as float32) -> the true float32 values, exactly,
# as the FLOAT[n_units] array a float32 database's view has
_DECODE_SQL = (f"* EXCLUDE ({PROFILE_EXP}) REPLACE (list_transform(raw_profile, lambda x: "
               f"(x * pow(2.0, -{PROFILE_EXP}))::FLOAT)::FLOAT[{{n}}] AS raw_profile)")
SALIENT_TOP_K = 10  # units per sample in the salient_units view (the top-k of the standardised profile)
# the connection's settings from its start, so every cursor of it has them too (python_enable_replacements is
# per connection when SET): no Python variable read by name, no extension installed or loaded, no file or network
# access, and temp_directory '' -- nothing spills to disk, so no temporary directory is reachable from SQL (DuckDB
# keeps its temp directory, by default <cwd>/.tmp, open even with external access off); a query needing more memory
# than DuckDB's memory limit fails instead of spilling
_CONFIG = {"python_enable_replacements": False, "autoinstall_known_extensions": False,
           "autoload_known_extensions": False, "allow_community_extensions": False, "allow_persistent_secrets": False,
           "enable_external_access": False, "temp_directory": ""}
# after the views exist (these cannot be given at start): DuckDB's local file system off, then no setting can change
_SEAL = ("SET disabled_filesystems = 'LocalFileSystem'", "SET lock_configuration = true")


class Database:
    """A read-only view of one version of a database: the current one when it was opened, or
    ``as_of`` a kept commit. The version is pinned until ``close()``.

    >>> db = saliencydb.open("./db")
    >>> db.sql("SELECT split, avg(correct::int) FROM samples GROUP BY split")

    ``normalisation`` (saliency.normalise) other than the database's own: the statistics of that
    normalisation are computed over the database's reference splits when it is opened, and every
    standardised profile (neighbours, groups, the ``zscores`` view, top units) uses them, with an
    exact flat index in place of the stored saliency index. Nothing is written under it.
    """

    def __init__(self, path: str | os.PathLike, *, as_of: int | None = None, normalisation: str | None = None,
                 threads: int | None = None):
        self.path = Path(path)
        self.snapshot = Snapshot(self.path, as_of)
        self.manifest: Manifest = self.snapshot.manifest
        self._indexes: dict = {}
        self._mapped: dict = {}  # space -> the stored index, its vectors memory-mapped (query_index)
        self.stale_indexes: dict[str, tuple[int, int]] = {}  # space -> (vectors in the index, committed rows)
        self._stats: tuple[np.ndarray, np.ndarray] | None = None
        # one view may answer several threads at once (the web app's requests): the shared connection's cursors
        # are made and its parser run under ``_con_lock``; the lazily loaded indexes and statistics under ``_lock``
        self._lock, self._con_lock = threading.RLock(), threading.Lock()
        self._local, self._thread_cursors = threading.local(), []  # ``_execute``'s cursor of each thread
        self._memo: dict = {}  # facts about this (immutable) version computed once (``memo``)
        # ``metadata`` from the samples' metadata columns loaded once per view (the web app: many small lookups)
        # instead of one SQL query each (a command's single lookup)
        self.keep_metadata = False
        try:
            self.normalisation = check_normalisation(normalisation or self.manifest.profile_normalisation)
        except SpecError as e:
            self.snapshot.close()
            raise QueryError(str(e)) from None
        self._sources: dict[str, object] = {}  # name -> the Arrow data a view reads (registered on every cursor)
        # seconds any statement run for a caller (SQL, a --where) may take before it is interrupted; None: no limit
        # (the CLI's default). The web app sets one, so no request runs unbounded.
        self.timeout_s: float | None = None
        # where ``ids_where`` runs a caller's predicate: None, here; the web app sets a function (where, split) -> ids
        # that runs it in a child process with a memory limit (serve.sqlproc)
        self.filter_runner = None
        try:
            self.con = duckdb.connect(":memory:", config=_CONFIG if threads is None else {**_CONFIG, "threads": int(threads)})
            self._create_views()
            for statement in _SEAL:
                self.con.execute(statement)
        except BaseException:
            self.snapshot.close()
            raise

    @property
    def commit(self) -> int:
        return self.manifest.commit

    # -- views --------------------------------------------------------------------------
    def _register(self, name: str, data) -> None:
        """Put Arrow data under a name the views read; a registration belongs to one connection, so ``_cursor``
        repeats it on each fresh cursor."""
        self._sources[name] = data
        self.con.register(name, data)

    def _view(self, name: str, rels: list[str], schema: pa.Schema, select: str = "*") -> None:
        data = self.snapshot.dataset(rels, schema) if rels else schema.empty_table()
        self._register(f"_{name}_data", data)
        self.con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT {select} FROM _{name}_data")

    def _create_views(self) -> None:
        m = self.manifest
        half = m.stored_profile_dtype == "float16"  # the view shows the true values, without profile_exp
        self._view("samples", m.part_files(), scan_schema(samples_schema(m.n_units, m.feature_dim, m.stored_profile_dtype)),
                   f"{_DECODE_SQL.format(n=m.n_units) if half else '*'}, label_name || ' -> ' || pred_name AS confusion")
        if self.overridden and m.stats is not None:
            mean, std = self.stats
            units = pa.table({**UnitLayout.from_dict(m.units).columns(), "mean": mean, "std": std}, schema=UNITS_SCHEMA)
            self._register("_units_data", units)
            self.con.execute("CREATE OR REPLACE VIEW units AS SELECT * FROM _units_data")
        else:
            self._view("units", [m.stats.file] if m.stats else [], UNITS_SCHEMA)
        for name, schema in TABLE_SCHEMAS.items():
            self._view(name, m.tables.get(name, []), schema)
        names = m.class_names
        self._register("_classes", pa.table({"class": pa.array(range(len(names)), pa.int32()), "name": names}))
        self.con.execute("CREATE OR REPLACE VIEW classes AS SELECT * FROM _classes")
        # every sample's standardised profile, one row per (sample, unit); evaluated lazily
        self.con.execute(
            f"""CREATE OR REPLACE VIEW zscores AS
               SELECT s.sample_id, u.unit_id, u.layer, u.layer_index, u.channel,
                      (s.raw_profile[u.unit_id + 1] / s._scale - u.mean) / u.std AS z
               FROM (SELECT sample_id, raw_profile, {_SCALE_SQL[self.normalisation]} AS _scale FROM samples) s
               CROSS JOIN units u"""
        )
        self.con.execute(
            f"""CREATE OR REPLACE VIEW salient_units AS
                SELECT sample_id, row_number() OVER (PARTITION BY sample_id ORDER BY z DESC, unit_id) AS rank,
                       unit_id, layer, layer_index, channel, z
                FROM zscores QUALIFY rank <= {SALIENT_TOP_K}"""
        )
        # the standardised profile of one sample, one row per unit; and its top-k units
        self.con.execute(
            f"""CREATE OR REPLACE MACRO profile(id) AS TABLE
               SELECT u.unit_id, u.layer, u.layer_index, u.channel, s.raw_profile[u.unit_id + 1] AS raw,
                      (s.raw_profile[u.unit_id + 1] / s._scale - u.mean) / u.std AS z
               FROM (SELECT sample_id, raw_profile, {_SCALE_SQL[self.normalisation]} AS _scale FROM samples) s, units u
               WHERE s.sample_id = id ORDER BY u.unit_id"""
        )
        self.con.execute(
            """CREATE OR REPLACE MACRO top_units(id, k) AS TABLE
               SELECT row_number() OVER (ORDER BY z DESC) AS rank, * FROM profile(id) ORDER BY z DESC LIMIT k"""
        )

    # -- SQL ----------------------------------------------------------------------------
    def sql(self, query: str, params: list | None = None, *, max_rows: int | None = None,
            timeout_s: float | None = None) -> pa.Table:
        """Run one read-only statement (SELECT / WITH / PIVOT / DESCRIBE / plain EXPLAIN ...) and return an Arrow table.

        ``max_rows``: at most that many rows plus one (so a caller can tell the result was cut); ``timeout_s``: the
        statement is interrupted after that many seconds (QueryError).

        The statement runs on a fresh cursor, in a transaction that is rolled back: it leaves no pending result and
        nothing it created behind. A column holding values Python cannot represent (a DATE or TIMESTAMP of
        +-infinity or past year 9999, also inside a list or struct) comes back as DuckDB's text of them (VARCHAR)."""
        with self._con_lock:
            text = check_read_only(self.con, query)
        timeout_s = timeout_s or self.timeout_s
        try:
            return self._run(text, params, max_rows=max_rows, timeout_s=timeout_s)
        except duckdb.InterruptException:
            raise QueryError(f"SQL error: the query ran longer than {timeout_s:g} s and was stopped; narrow it") from None
        except duckdb.Error as e:
            raise self._query_error("SQL error", e) from None
        except (ValueError, TypeError, OverflowError, pa.ArrowException) as e:  # a result DuckDB cannot hand to Arrow
            raise QueryError(f"SQL error: {_first_line(e)}") from None

    def _cursor(self):
        """A fresh connection (DuckDB cursor) to this version's views, their data registered on it: its results,
        its session state and its TEMP objects are its own, and go with it."""
        with self._con_lock:
            cur = self.con.cursor()
        try:
            for name, data in self._sources.items():
                cur.register(name, data)
        except BaseException:
            cur.close()
            raise
        return cur

    def _run(self, query: str, params: list | None = None, *, max_rows: int | None = None,
             timeout_s: float | None = None) -> pa.Table:
        """Run one statement, as given (``sql`` checks it first), on a fresh cursor inside a transaction that is
        rolled back and the cursor closed, whatever happens: nothing the statement creates is seen by another."""
        cur = self._cursor()
        timer = threading.Timer(timeout_s, _interrupt, [cur]) if timeout_s else None
        try:
            cur.begin()
            if timer is not None:
                timer.start()
            rel = cur.sql(query, params=params or None)
            table = pa.table({}) if rel is None else _arrow(rel if max_rows is None else rel.limit(max_rows + 1))
        finally:
            if timer is not None:
                timer.cancel()
            _discard(cur)
        return self._python_safe(table)

    def _python_safe(self, table: pa.Table) -> pa.Table:
        """``table`` with each column that Python cannot convert (``to_pylist`` fails: a date or timestamp out of
        Python's range) as DuckDB's own text of its values, read back from the Arrow data on a fresh cursor."""
        bad = [i for i, col in enumerate(table.columns) if _has_temporal(col.type) and not _converts(col)]
        if not bad:
            return table
        with self._con_lock:
            cur = self.con.cursor()
        try:
            cur.register("_unconvertible", pa.table({f"c{j}": table.column(i) for j, i in enumerate(bad)}))
            casts = ", ".join(f"CAST(c{j} AS VARCHAR) AS c{j}" for j in range(len(bad)))
            text = _arrow(cur.sql(f"SELECT {casts} FROM _unconvertible"))
        finally:
            cur.close()
        for j, i in enumerate(bad):
            table = table.set_column(i, table.schema.field(i).name, text.column(j))
        return table

    def _query_error(self, what: str, e: Exception) -> Exception:
        text = _first_line(e)
        refused = "Permission Error" in text or "disabled by configuration" in text
        if not refused and str(self.path) in text and ("Parquet" in text or "parquet" in text or "magic" in text):
            return DamagedError(f"a committed file of database '{self.path}' is damaged ({text}); "
                                f"run `saliencydb verify --db {self.path}` for the damage and the fix")
        return QueryError(f"{what}: {text}")

    def notices(self, query: str | None = None) -> list[str]:
        """Warnings a reader should see: derived tables (named in ``query``, or all) computed
        from other samples or statistics than this version's."""
        out = []
        for name, base in sorted(self.manifest.stale_derived().items()):
            if query is None or re.search(rf"\b{name}\b", query, re.I):
                rerun = {"knn": "mistakes", "clusters": "clusters", "blame": "clusters", "triage": "triage"}[name]
                out.append(f"note: the {name} table was computed at commit {base}; samples or statistics have changed "
                           f"since (this is commit {self.commit}). Rerun `saliencydb {rerun} --db {self.path}` to refresh it")
        return out

    # -- vectors ------------------------------------------------------------------------
    @property
    def overridden(self) -> bool:
        """Whether this view's normalisation is not the database's own (its statistics computed on opening)."""
        return self.normalisation != self.manifest.profile_normalisation

    def memo(self, key: str, compute):
        """``compute()`` once per view: a fact about this pinned version, which never changes under it."""
        with self._lock:
            if key not in self._memo:
                self._memo[key] = compute()
            return self._memo[key]

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Frozen (mean, std) per unit of this view's normalisation."""
        with self._lock:
            if self._stats is None:
                self._stats = self._override_stats() if self.overridden else self.snapshot.read_stats()
            return self._stats

    def _override_stats(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.manifest
        if m.stats is None:
            raise DatabaseError(f"database '{self.path}' has no standardisation statistics yet; finish indexing its first split")
        files = [p.file for p in m.parts if p.split in set(m.stats.splits)]
        if not files:
            raise QueryError(f"database '{self.path}' has statistics from {m.stats.source or 'no split'}: another "
                             f"normalisation needs statistics over its samples; run `saliencydb restat --db {self.path} "
                             f"--normalisation {self.normalisation}`")
        chunks = ((raw, dlogit) for _, raw, dlogit in self.snapshot.iter_raw_profiles(files=files))
        try:
            stats = running_stats(chunks, self.normalisation, m.n_units)
        except SpecError as e:
            raise QueryError(f"database '{self.path}' cannot use {self.normalisation}: {e}") from None
        return stats.mean, stats.std

    @property
    def normaliser(self) -> Normaliser:
        """Raw profiles -> standardised profiles, with this view's normalisation and statistics."""
        return Normaliser(self.normalisation, *self.stats)

    def z(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """Standardised profiles (float32) of the given sample ids, in that order."""
        return self.standardise(self.rows("raw_profile", ids), ids)

    def standardise(self, raw: np.ndarray, ids: np.ndarray | list[int] | None = None,
                    dlogit: np.ndarray | None = None) -> np.ndarray:
        """Raw profiles of the samples ``ids`` (or with their ``dlogit`` norms) standardised."""
        if dlogit is None and ids is not None and needs_dlogit(self.normalisation):
            dlogit = self.dlogit_norms(ids)
        try:
            return self.normaliser(raw, dlogit)
        except SpecError as e:
            raise QueryError(f"database '{self.path}' cannot use {self.normalisation}: {e}") from None

    def dlogit_norms(self, ids: np.ndarray | list[int]) -> np.ndarray:
        """The stored ||dL/dlogits|| of the given sample ids, in that order (NaN where not stored)."""
        ids = np.asarray(ids, dtype=np.int64)
        t = self._execute("SELECT sample_id, dlogit_norm FROM samples WHERE list_contains(?, sample_id)",
                          [sorted(set(ids.tolist()))]).fetchall()
        found = {int(i): np.nan if v is None else float(v) for i, v in t}
        return np.array([found.get(int(i), np.nan) for i in ids], dtype=np.float64)

    @property
    def spaces(self) -> tuple[str, ...]:
        """The vector spaces of this database: saliency, and feature when its samples carry a feature vector."""
        return SPACES if self.manifest.has_features else ("saliency",)

    def require_space(self, space: str) -> None:
        """Refuse, in one line, a space this database does not have (feature, when its model has no feature vector)."""
        check_space(space)
        if space not in self.spaces:
            raise QueryError(f"database '{self.path}' has no feature vectors ({self.manifest.no_features_reason}); "
                             "use --space saliency")

    def index(self, space: str):
        """The FAISS index of ``space`` (loaded once, on the CPU: single queries are cheap there, and
        filtered searches need ID selectors, which GPU indexes do not take; the batched
        neighbour graph uses the GPUs).

        An index that does not cover this version's samples (an ingest in progress, or one
        interrupted during the index update) is not used: an exact flat index over the
        version's committed profiles takes its place, and ``stale_indexes`` says so."""
        self.require_space(space)
        with self._lock:
            if space not in self._indexes:
                entry = self.manifest.indexes.get(space)
                if entry is None:
                    raise QueryError(f"database '{self.path}' has no {space} index; finish `saliencydb index` first")
                rows = self.manifest.rows()
                if space == "saliency" and self.overridden:
                    self._indexes[space] = self._exact_index(space)
                elif entry.ntotal != rows:
                    self.stale_indexes[space] = (entry.ntotal, rows)
                    self._indexes[space] = self._exact_index(space)
                else:
                    self._indexes[space] = self.snapshot.read_index(space)
            return self._indexes[space]

    def query_index(self, space: str):
        """(index, mapped) for one query of ``space``: the index already loaded by ``index()`` if any;
        else the stored index when it is current, read with its vectors memory-mapped (``mapped`` True:
        a flat one is then searched by ``storage.indexes.scan_flat``, block by block, in bounded memory);
        else ``index()`` (a stale or overridden index: the exact flat index built in memory)."""
        self.require_space(space)
        with self._lock:
            if space in self._indexes:
                return self._indexes[space], False
            entry = self.manifest.indexes.get(space)
            if entry is None or entry.ntotal != self.manifest.rows() or (space == "saliency" and self.overridden):
                return self.index(space), False
            if space not in self._mapped:
                self._mapped[space] = self.snapshot.read_index(space, mapped=True)
            return self._mapped[space], True

    def _exact_index(self, space: str):
        def chunks():
            if space == "saliency":
                for ids, raw, dlogit in self.snapshot.iter_raw_profiles():
                    yield ids, l2_normalize(self.standardise(raw, dlogit=dlogit))
                return
            for ids, rows in self.snapshot.iter_profiles("feature"):
                yield ids, l2_normalize(rows)

        return build_index(self.manifest.n_units if space == "saliency" else self.manifest.feature_dim, chunks, "flat")

    def vectors(self, space: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """Search vectors of the given sample ids, in that order: standardised + L2-normalised
        profiles (saliency) or L2-normalised features (feature)."""
        self.require_space(space)
        if space == "saliency":
            return l2_normalize(self.z(ids))
        return l2_normalize(self.rows("feature", ids))

    def rows(self, column: str, ids: np.ndarray | list[int]) -> np.ndarray:
        """Stored ``raw_profile`` or ``feature`` rows of the given sample ids, in that order, float32 (a float16
        database's raw profiles decoded to their true values).

        Only the parts whose id range holds a wanted id are read, with a row filter, so a few
        ids cost a few small row groups, not a scan of the whole table."""
        if column == "feature":
            self.require_space("feature")
        ids = np.asarray(ids, dtype=np.int64)
        width = self.manifest.n_units if column == "raw_profile" else self.manifest.feature_dim
        out = np.empty((len(ids), width), dtype=np.float32)
        found = np.zeros(len(ids), dtype=bool)
        for part in self.manifest.parts:
            hit = ids[(ids >= part.min_id) & (ids <= part.max_id)]
            if len(hit) == 0:
                continue
            columns = profile_columns(self.manifest) if column == "raw_profile" else [column]
            t = self.snapshot.read_table(part.file, columns=["sample_id", *columns],
                                         filters=[("sample_id", "in", sorted(set(hit.tolist())))])
            got = t.column("sample_id").to_numpy()
            vecs = profiles_to_numpy(t, width) if column == "raw_profile" else fixed_list_to_numpy(t.column(column), width)
            pos = {int(i): r for r, i in enumerate(got)}
            for j in np.flatnonzero((ids >= part.min_id) & (ids <= part.max_id)):
                r = pos.get(int(ids[j]))
                if r is not None:
                    out[j], found[j] = vecs[r], True
        if not found.all():
            missing = int(ids[~found][0])
            raise QueryError(f"no sample with id {missing} in '{self.path}' ({self.manifest.rows()} samples)")
        return out

    def search_vectors(self, space: str, rows: np.ndarray, dlogit: np.ndarray | None = None) -> np.ndarray:
        """Raw profiles (with their ``dlogit`` norms, for zscore-dlogit) or features turned into the
        vectors the index of ``space`` holds."""
        if space == "saliency":
            rows = self.standardise(rows, dlogit=dlogit)
        return l2_normalize(rows)

    @property
    def modality(self) -> str:
        """What the samples are: "image", or "text" (sentences, their ``text`` column filled; ``data.text``)."""
        return "text" if self.manifest.model.transform.get("kind") == "tokens" else "image"

    def sample(self, sample_id: int) -> dict:
        """The metadata of one sample (no vectors); a text sample's sentence as ``text``."""
        cols = META_COLUMNS + (["text"] if self.modality == "text" else [])
        rows = [tuple(r.values()) for r in self.metadata([int(sample_id)], cols).values()]
        if not rows:
            self.require_samples()
            lo, hi = self._execute("SELECT min(sample_id), max(sample_id) FROM samples").fetchone()
            raise QueryError(f"no sample with id {sample_id} in '{self.path}' (ids run {lo}..{hi}); find ids with `saliencydb sql`")
        return dict(zip(cols, rows[0]))

    def metadata(self, ids: list[int], columns: list[str]) -> dict[int, dict]:
        """Sample id -> {column: value} of the stored samples among ``ids`` (``columns`` of the samples view, the
        first ``sample_id``). With ``keep_metadata`` (the web app), read from this version's metadata columns
        loaded once (no profile, no feature: 50,000 samples take a few MB), else by one SQL query."""
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        if not self.keep_metadata:
            marks = ",".join("?" * len(ids))
            rows = self._execute(f"SELECT {', '.join(columns)} FROM samples WHERE sample_id IN ({marks})", ids).fetchall()
            return {r[0]: dict(zip(columns, r)) for r in rows}
        table, sorted_ids = self.memo("metadata", self._metadata_table)
        want = np.asarray(ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_ids, want), max(len(sorted_ids) - 1, 0))
        found = pos[sorted_ids[pos] == want] if len(sorted_ids) else pos[:0]
        return {r["sample_id"]: r for r in table.take(pa.array(found)).select(columns).to_pylist()}

    def _metadata_table(self) -> tuple[pa.Table, np.ndarray]:
        cols = META_COLUMNS + (["text"] if self.modality == "text" else [])
        cur = self._cursor()
        try:
            table = _arrow(cur.sql(f"SELECT {', '.join(cols)} FROM samples ORDER BY sample_id"))
        finally:
            cur.close()
        return table, table.column("sample_id").to_numpy()

    def require_samples(self) -> None:
        """Refuse, in one line, to answer about the samples of a version that holds none."""
        if self.manifest.rows() == 0:
            raise QueryError(f"database '{self.path}' holds no samples yet (commit {self.commit}: no indexing job has "
                             "committed any); run `saliencydb index` (its error, if it failed, says why)")

    def _execute(self, query: str, params: list | None = None):
        """Run the library's own SQL on this thread's cursor (made once per thread, its data registered once:
        a fresh cursor costs milliseconds), returned for its rows: fetch them before the next call on the same
        thread, which replaces them. Never on ``self.con``: a result left unread there, or a failure, would be
        pending for every other caller. A failed statement's cursor is dropped, so nothing of it is left for the
        next; a damaged file becomes one line."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self._cursor()
            with self._con_lock:
                self._thread_cursors.append(cur)
        try:
            return cur.execute(query, params or [])
        except duckdb.Error as e:
            self._local.cursor = None
            _discard(cur)
            raise self._query_error("SQL error", e) from None

    def ids_where(self, where: str | None = None, split: str | None = None) -> np.ndarray:
        """Sample ids matching an SQL predicate over the samples view and/or a split.

        The predicate must parse as one SQL expression on its own, so it cannot close the
        WHERE clause and append another query."""
        if split is not None and split not in self.manifest.splits:
            raise QueryError(f"unknown split '{split}'; the database has {', '.join(sorted(self.manifest.splits)) or 'no splits'}")
        if where is not None and self.filter_runner is not None:
            return self.filter_runner(where, split)
        clauses, params = [], []
        if where is not None:
            if not where.strip():
                raise QueryError("--where is empty; give an SQL predicate over samples such as \"NOT correct\"")
            try:
                duckdb.SQLExpression(where)
            except (duckdb.Error, ValueError, TypeError) as e:
                raise QueryError(f"--where {where!r} is not one SQL predicate over samples: {_first_line(e)}") from None
            clauses.append(f"({where})")
        if split is not None:
            clauses.append("split = ?")
            params.append(split)
        q = "SELECT sample_id FROM samples" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        try:  # a SELECT by construction (checked all the same), run like user SQL: fresh cursor, rolled back
            with self._con_lock:
                q = check_read_only(self.con, q)
            ids = self._run(q, params, timeout_s=self.timeout_s).column("sample_id")
            return ids.to_numpy().astype(np.int64)
        except duckdb.InterruptException:
            raise QueryError(f"--where {where!r} ran longer than {self.timeout_s:g} s and was stopped; "
                             "give a simpler predicate") from None
        except duckdb.Error as e:
            raise self._query_error(f"--where {where!r}", e) from None
        except (ValueError, TypeError, OverflowError) as e:
            raise QueryError(f"--where {where!r}: {_first_line(e)}") from None

    # -- queries --------------------------------------------------------------------------
    def neighbors(self, sample_id: int | None = None, *, k: int = 10, space: str = "saliency",
                  where: str | None = None, split: str | None = None, image: str | None = None,
                  label: str | int | None = None, text: str | None = None):
        """Nearest neighbours of a stored sample, or of a new image (or, in a text database, a new sentence)
        with its label (not stored)."""
        from .neighbors import neighbors

        return neighbors(self, sample_id, k=k, space=space, where=where, split=split, image=image, label=label, text=text)

    def mistakes(self, k: int = 10, *, n_boot: int = 1000, seed: int = 0, write: bool = True, progress=None,
                 wait: bool = False, store=None):
        """The shared-mistake report (appendix A.2) per split, saliency vs feature space; with
        ``write``, the neighbour graph is stored as the knn table (refused, with nothing stored,
        when the database moved on from this version meanwhile)."""
        from .knn import mistakes

        return mistakes(self, k=k, n_boot=n_boot, seed=seed, write=write, progress=progress, wait=wait, store=store)

    def clusters(self, n_clusters: int = 8, *, errors_only: bool = True, split: str | None = None,
                 seed: int = 0, write: bool = True, wait: bool = False, store=None):
        """k-means error groups over standardised profiles."""
        from .clusters import clusters

        return clusters(self, n_clusters=n_clusters, errors_only=errors_only, split=split, seed=seed, write=write,
                        wait=wait, store=store)

    def triage(self, split: str, *, write: bool = True, wait: bool = False, store=None):
        """New mistakes of ``split`` assigned to known error groups or marked new; layer drift."""
        from .triage import triage

        return triage(self, split, write=write, wait=wait, store=store)

    def reopen(self) -> "Database":
        """A fresh view at the latest commit."""
        self.close()
        return Database(self.path)

    # -- summary ------------------------------------------------------------------------
    def split_summary(self) -> dict[str, dict]:
        """Per split: its samples, accuracy (6 decimals) and mistakes (counted once per view: the version is fixed)."""
        rows = self.memo("split-summary", lambda: self._execute(
            "SELECT split, count(*), avg(correct::INT), sum((NOT correct)::INT) FROM samples GROUP BY split ORDER BY split"
        ).fetchall())
        return {s: {"samples": n, "accuracy": round(acc, 6), "mistakes": int(mis)} for s, n, acc, mis in rows}

    def info(self):
        """``saliencydb info``: this version summarised (a ``DatabaseInfo``)."""
        from .summary import database_info

        return database_info(self)

    def close(self) -> None:
        try:
            with self._con_lock:
                for cur in self._thread_cursors:
                    with contextlib.suppress(duckdb.Error):
                        cur.close()
                self._thread_cursors.clear()
            self.con.close()
        finally:
            self.snapshot.close()

    def _repr_html_(self) -> str:
        """Jupyter's rich display: path, commit, model, units and splits."""
        from .html import database_html

        return database_html(self)

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_read_only(con, query: str) -> str:
    """Refuse anything but one read-only statement; return the text to run (the second line of defence: the
    connection itself cannot touch files, and each statement runs in a transaction that is rolled back).

    Decided by DuckDB's own parser and tokenizer, never by a pattern over the text (a nested comment, a string
    or a quoted name reads to them as it reads to the engine): a SELECT (WITH, FROM, UNPIVOT, DESCRIBE,
    SUMMARIZE, SHOW ...) runs as given; a plain EXPLAIN of a SELECT runs as given; a MULTI statement (a PIVOT
    without an IN list is parsed into the creation of an ENUM type, the statement, and the type's removal) runs
    only as ``SELECT * FROM (<it>)``, which DuckDB must parse as one statement, so what runs is a SELECT whatever
    the text is; anything else is refused."""
    statement = _one_statement(con, query)
    kind = _kind(statement)
    if kind == "StatementType.SELECT":
        return query
    if kind == "StatementType.MULTI":
        return _as_subquery(con, query)
    if kind == "StatementType.EXPLAIN":
        _check_plain_explain(con, query)
        return query
    raise QueryError(
        f"only read-only queries are allowed (this is a {kind.split('.')[-1]} statement); "
        "the database is changed only by saliencydb commands"
    )


def _one_statement(con, query: str):
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {_first_line(e)}") from None
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement (got {len(statements)})")
    return statements[0]


def _kind(statement) -> str:
    try:
        return str(statement.type)
    except ValueError:  # a statement type this DuckDB's Python API cannot name (e.g. UPDATE EXTENSIONS)
        return "StatementType.UNKNOWN"


def _tokens(query: str) -> list[tuple[int, str]]:
    """DuckDB's tokens of ``query`` without its comments: (offset, text), keywords in capitals."""
    raw = duckdb.tokenize(query)
    out = []
    for n, (offset, kind) in enumerate(raw):
        if kind != duckdb.token_type.comment:
            end = raw[n + 1][0] if n + 1 < len(raw) else len(query)
            text = query[offset:end].strip()
            out.append((offset, text.upper() if kind == duckdb.token_type.keyword else text))
    return out


def _as_subquery(con, query: str) -> str:
    """A MULTI statement as ``SELECT * FROM (<it>)``, refused unless that parses as one statement (its trailing
    semicolons, found as DuckDB's tokens, dropped first)."""
    body = query
    for offset, text in reversed(_tokens(query)):
        if text != ";":
            break
        body = query[:offset]
    wrapped = f"SELECT * FROM (\n{body}\n)"
    try:
        statements = con.extract_statements(wrapped)
    except duckdb.Error:
        statements = []
    if len(statements) != 1 or _kind(statements[0]) not in ("StatementType.SELECT", "StatementType.MULTI"):
        raise QueryError("only read-only queries are allowed (this statement is not a query: PIVOT, SELECT, WITH or "
                         "FROM); the database is changed only by saliencydb commands")
    return wrapped


def _check_plain_explain(con, query: str) -> None:
    """Allow ``EXPLAIN <a SELECT>`` and ``EXPLAIN (FORMAT f) <a SELECT>`` only: EXPLAIN ANALYZE (in any spelling,
    or as an option in parentheses, quoted or not) runs the statement it explains."""
    tokens = _tokens(query)
    skip = 5 if [t.upper() for _, t in tokens[1:3]] == ["(", "FORMAT"] and len(tokens) > 5 and tokens[4][1] == ")" else 1
    first = tokens[skip] if len(tokens) > skip and tokens[0][1] == "EXPLAIN" else None
    if first is None or first[1] in ("(", "ANALYZE", "ANALYSE", "VERBOSE"):
        raise QueryError("EXPLAIN ANALYZE runs the statement it explains; use plain EXPLAIN (its one option: FORMAT)")
    try:
        explained = _kind(_one_statement(con, query[first[0]:]))
    except QueryError:
        explained = "StatementType.UNKNOWN"
    if explained != "StatementType.SELECT":
        raise QueryError("only read-only queries are allowed: EXPLAIN explains a query (SELECT, WITH, FROM ...) only")


def _discard(cur) -> None:
    """Roll back what a cursor's statement did (nothing, when it only read) and close the cursor."""
    try:
        cur.rollback()
    except duckdb.Error:
        pass  # no transaction open (it failed to start), or one already ended
    finally:
        cur.close()


def _interrupt(cur) -> None:
    try:
        cur.interrupt()
    except duckdb.Error:
        pass  # the statement ended (and its cursor closed) as the time ran out


def _has_temporal(t: pa.DataType) -> bool:
    return pa.types.is_temporal(t) or any(_has_temporal(t.field(i).type) for i in range(t.num_fields))


def _converts(col) -> bool:
    try:
        col.to_pylist()
        return True
    except (OverflowError, ValueError, pa.ArrowException):
        return False


META_COLUMNS = ["sample_id", "split", "key", "label", "label_name", "pred", "pred_name", "correct", "loss", "true_conf",
                "pred_conf"]  # a sample's metadata (``Database.sample``); a text sample's adds ``text``


def check_space(space: str) -> None:
    if space not in SPACES:
        raise QueryError(f"unknown space '{space}'; use one of {', '.join(SPACES)}")


def _arrow(result) -> pa.Table:
    """A relation as an Arrow table (``to_arrow_table`` in DuckDB >= 1.4, ``arrow`` before)."""
    fetch = getattr(result, "to_arrow_table", None) or result.arrow
    return fetch()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def open(path: str | os.PathLike, *, as_of: int | None = None, normalisation: str | None = None,  # noqa: A001 - mirrors sqlite3.connect
         threads: int | None = None) -> Database:
    """Open a database for reading: its current version, or ``as_of`` a kept commit; ``normalisation``:
    see every profile through another normalisation than the database's (``Database``); ``threads``: the
    most threads one SQL statement uses (DuckDB's default: every core)."""
    return Database(path, as_of=as_of, normalisation=normalisation, threads=threads)
