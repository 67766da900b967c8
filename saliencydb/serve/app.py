"""``saliencydb serve``: a local, read-only web app over one database (Starlette, run by uvicorn).

Routes are thin: each reads through ``ServedDatabase.reading()`` (the latest committed version, reopened after
a writer commits) and answers with a ``serve.api`` document, as JSON under ``/api/...`` or rendered by
``serve.pages``. Images are served only for stored sample ids, never for a path taken from the URL. A bad
request gets a 4xx with a one-line message; an unexpected failure a 500 without a traceback."""

from __future__ import annotations

import csv
import datetime
import decimal
import io
import json
import logging
import math
import re
from pathlib import Path

from ..errors import QueryError, SaliencyDBError, SpecError
from . import api, pages
from .auth import OriginCheck, TokenCheck
from .hosts import HostCheck, HostPolicy
from .lanes import Lanes
from .state import ServedDatabase

log = logging.getLogger("saliencydb.serve")


def _http():
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

    return HTTPException, HTMLResponse, JSONResponse, PlainTextResponse, Response


class _Handlers:
    """The route handlers of one served database."""

    def __init__(self, db_path: str | Path, debug: bool = False):
        self.served, self.debug = ServedDatabase(db_path), debug
        self.label = str(Path(db_path))
        self.HTTPException, self.HTML, self.JSON, self.Text, self.Response = _http()

    # -- errors and parameters -----------------------------------------------------------------------
    def fail(self, request, status: int, message: str):
        if request.url.path.startswith("/api/"):
            return self.JSON({"error": message}, status_code=status)
        if request.url.path.startswith("/img/"):
            return self.Text(message, status_code=status)
        return self.HTML(pages.error_page(status, message), status_code=status)

    async def on_error(self, request, exc):
        if isinstance(exc, self.HTTPException):
            return self.fail(request, exc.status_code, exc.detail or "not found")
        if isinstance(exc, QueryError):
            status = 404 if str(exc).startswith(("no sample with id", "no error group")) else 400
            return self.fail(request, status, str(exc))
        if isinstance(exc, SaliencyDBError):
            return self.fail(request, 400, str(exc))
        log.error("request %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__,
                  " ".join(str(exc).split())[:500], exc_info=exc if self.debug else None)  # one line; --debug: traceback
        return self.fail(request, 500, f"internal error ({type(exc).__name__}); the server log has the details")

    def int_param(self, request, name: str) -> int:
        raw = request.path_params[name] if name in request.path_params else request.query_params.get(name)
        value = strict_int(raw)
        if value is None:
            raise self.HTTPException(400, f"{name} must be an integer, not {raw!r}")
        return value

    def channel_reduce_of(self, request) -> str:
        """The ``channel_reduce`` query parameter of an input-space map: max-abs (the default) or abs-max."""
        from ..saliency.input_space import CHANNEL_REDUCTIONS

        value = request.query_params.get("channel_reduce", CHANNEL_REDUCTIONS[0])
        if value not in CHANNEL_REDUCTIONS:
            raise self.HTTPException(400, f"channel_reduce must be {' or '.join(CHANNEL_REDUCTIONS)}, not {value!r}")
        return value

    @staticmethod
    def where_of(request) -> str | None:
        where = request.query_params.get("where")
        return where if where and where.strip() else None

    def png(self, data: bytes):
        return self.Response(data, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    # -- pages -------------------------------------------------------------------------------------
    def overview_page(self, request):
        with self.served.reading() as db:
            return self.HTML(pages.overview(api.overview(self.served, db), self.label))

    def group_page(self, request):
        with self.served.reading() as db:
            return self.HTML(pages.group(api.group(db, self.int_param(request, "cluster")), self.label, db.modality))

    def sample_page(self, request):
        with self.served.reading() as db:
            doc = api.sample(self.served, db, self.int_param(request, "sample_id"), self.where_of(request))
            return self.HTML(pages.sample(doc, self.label, db.modality, self.channel_reduce_of(request)))

    async def sql_page(self, request):
        """The console: its form (GET), or a query's result (POST, form field ``q``; or ``GET ?q=``, a link's)."""
        from starlette.concurrency import run_in_threadpool

        query = await self.sql_query(request) if request.method == "POST" else request.query_params.get("q")
        return await run_in_threadpool(self.sql_answer, query)

    def sql_answer(self, query: str | None):
        if query is None:
            return self.HTML(pages.sql(DEFAULT_SQL, None, None, self.label))
        with self.served.reading() as db:
            try:
                return self.HTML(pages.sql(query, self.served.sql(db, query), None, self.label))
            except QueryError as e:
                return self.HTML(pages.sql(query, None, str(e), self.label), status_code=400)

    async def sql_query(self, request) -> str:
        """The ``q`` of a POST: a form field (URL-encoded or multipart) or a JSON body ``{"q": ...}``, at most
        SQL_BODY_MAX_BYTES (413 beyond)."""
        from starlette.requests import Request

        body = await self.bounded_body(request, SQL_BODY_MAX_BYTES)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            try:
                doc = json.loads(body)
            except ValueError:
                raise self.HTTPException(400, 'the body is not JSON; send {"q": "SELECT ..."}') from None
            query = doc.get("q") if isinstance(doc, dict) else None
        else:
            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                query = (await Request(request.scope, replay).form(max_files=0, max_fields=8)).get("q")
            except Exception as e:  # a malformed form body
                raise self.HTTPException(400, f"cannot read the form ({' '.join(str(e).split())[:120]})") from None
        if not isinstance(query, str):
            raise self.HTTPException(400, 'give the query as the form field q, or as a JSON body {"q": "SELECT ..."}')
        return query

    async def bounded_body(self, request, limit: int) -> bytes:
        """The request's body, refused with a 413 past ``limit`` bytes (read and dropped up to DRAIN_MAX_BYTES first,
        so that the client gets the answer rather than a reset)."""
        declared = strict_int(request.headers.get("content-length") or "0") or 0
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_MAX_BYTES:
                break
            if size <= limit and declared <= limit:
                chunks.append(chunk)
        if size > limit or declared > limit:
            raise self.HTTPException(413, f"the request body is larger than {limit // 2**20} MiB")
        return b"".join(chunks)

    async def sql_csv(self, request):
        from starlette.concurrency import run_in_threadpool

        query = await self.sql_query(request) if request.method == "POST" else request.query_params.get("q") or ""
        doc = await run_in_threadpool(self.sql_doc, query)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(doc["columns"])
        writer.writerows([[r.get(c) for c in doc["columns"]] for r in doc["rows"]])
        return self.Response(buf.getvalue(), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="query.csv"'})

    def triage_page(self, request):
        split = request.query_params.get("split")
        with self.served.reading() as db:
            try:
                return self.HTML(pages.triage(api.triage_view(db, split), None, self.label))
            except QueryError as e:
                return self.HTML(pages.triage(api.triage_view(db, None), str(e), self.label), status_code=404)

    async def search_page(self, request):
        if request.method == "GET":
            return self.HTML(pages.search(None, None, self.label))
        data, name, label_value = await self.upload(request)
        with self.served.reading() as db:
            try:
                doc = api.search(db, data, label_value, Path(name).suffix)
            except QueryError as e:
                status = 413 if "larger than" in str(e) else 400
                return self.HTML(pages.search(None, str(e), self.label), status_code=status)
        return self.HTML(pages.search(doc, None, self.label))

    async def upload(self, request) -> tuple[bytes, str, str]:
        """The uploaded image (bounded), its file name and its label."""
        too_big = f"the upload is larger than {api.UPLOAD_MAX_BYTES // 2**20} MB"
        if int(request.headers.get("content-length") or 0) > api.UPLOAD_MAX_BYTES + 65536:
            drained = 0  # read (and drop) the body, bounded, so the client gets the answer rather than a reset
            async for chunk in request.stream():
                drained += len(chunk)
                if drained > DRAIN_MAX_BYTES:
                    break
            raise self.HTTPException(413, too_big)
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=api.UPLOAD_MAX_BYTES + 1)
        except Exception as e:  # a malformed or oversized multipart body
            raise self.HTTPException(400, f"cannot read the upload ({' '.join(str(e).split())[:120]})") from None
        upload, label_value = form.get("image"), form.get("label")
        if upload is None or not hasattr(upload, "read"):
            raise self.HTTPException(400, "no image was uploaded (form field 'image')")
        data = await upload.read(api.UPLOAD_MAX_BYTES + 1)
        if len(data) > api.UPLOAD_MAX_BYTES:
            raise self.HTTPException(413, too_big)
        if not label_value or not str(label_value).strip():
            raise self.HTTPException(400, "give the image's true label (a class index or name)")
        return data, upload.filename or "upload.png", str(label_value).strip()

    # -- pictures ----------------------------------------------------------------------------------
    def image(self, request):
        side = strict_int(request.query_params.get("side", "96"))
        if side is None or not 16 <= side <= 512:
            raise self.HTTPException(400, "side must be an integer from 16 to 512")
        with self.served.reading() as db:
            return self.png(self.served.thumbnail(db, self.int_param(request, "sample_id"), side))

    def input_map(self, request):
        kind = "map" if request.url.path.endswith("/map.png") else "gradcam"
        if kind == "gradcam" and "channel_reduce" in request.query_params:
            raise self.HTTPException(400, "channel_reduce applies to the input-space map (map.png), not to GradCAM")
        channel_reduce = self.channel_reduce_of(request)
        with self.served.reading() as db:
            sample_id = self.int_param(request, "sample_id")
            db.sample(sample_id)
            return self.png(self.served.input_map(db, sample_id, kind, channel_reduce))

    def profile(self, request):
        with self.served.reading() as db:
            cluster = self.int_param(request, "cluster")
            api.group(db, cluster)  # an unknown group: 404
            return self.png(self.served.profile_plot(db, cluster))

    # -- the JSON API ------------------------------------------------------------------------------
    def api_info(self, request):
        with self.served.reading() as db:
            return self.JSON(api.info(db))

    def api_overview(self, request):
        with self.served.reading() as db:
            return self.JSON(api.overview(self.served, db))

    def api_sample(self, request):
        with self.served.reading() as db:
            return self.JSON(api.sample(self.served, db, self.int_param(request, "sample_id"), self.where_of(request)))

    def api_neighbors(self, request):
        k = self.int_param(request, "k") if "k" in request.query_params else api.NEIGHBORS
        space = request.query_params.get("space", "saliency")
        if space not in ("saliency", "feature"):
            raise self.HTTPException(400, "space must be saliency or feature")
        with self.served.reading() as db:
            result = api.neighbors(db, self.int_param(request, "sample_id"), k=k, space=space,
                                   where=self.where_of(request), split=request.query_params.get("split"))
            return self.JSON(result.to_dict())

    def api_group(self, request):
        with self.served.reading() as db:
            return self.JSON(api.group(db, self.int_param(request, "cluster")))

    async def api_sql(self, request):
        """``GET ?q=`` or ``POST`` (form field ``q``, or JSON ``{"q": ...}``): the console's document."""
        from starlette.concurrency import run_in_threadpool

        query = await self.sql_query(request) if request.method == "POST" else request.query_params.get("q") or ""
        doc = await run_in_threadpool(self.sql_doc, query)
        return self.Response(sql_json(doc), media_type="application/json")

    def sql_doc(self, query: str) -> dict:
        with self.served.reading() as db:
            return self.served.sql(db, query)

    def api_triage(self, request):
        with self.served.reading() as db:
            return self.JSON(api.triage_view(db, request.query_params.get("split")))

    async def api_search(self, request):
        data, name, label_value = await self.upload(request)
        with self.served.reading() as db:
            return self.JSON(api.search(db, data, label_value, Path(name).suffix))

    def routes(self) -> list:
        from starlette.routing import Route

        return [
            Route("/", self.overview_page), Route("/group/{cluster}", self.group_page),
            Route("/sample/{sample_id}", self.sample_page), Route("/sql", self.sql_page, methods=["GET", "POST"]),
            Route("/sql.csv", self.sql_csv, methods=["GET", "POST"]),
            Route("/triage", self.triage_page), Route("/search", self.search_page, methods=["GET", "POST"]),
            Route("/img/{sample_id}.png", self.image), Route("/img/{sample_id}/map.png", self.input_map),
            Route("/img/{sample_id}/gradcam.png", self.input_map), Route("/img/group/{cluster}/profile.png", self.profile),
            Route("/api/info", self.api_info), Route("/api/overview", self.api_overview),
            Route("/api/samples/{sample_id}", self.api_sample), Route("/api/neighbors/{sample_id}", self.api_neighbors),
            Route("/api/groups/{cluster}", self.api_group), Route("/api/sql", self.api_sql, methods=["GET", "POST"]),
            Route("/api/triage", self.api_triage),
            Route("/api/search", self.api_search, methods=["POST"]),
        ]


def strict_int(raw) -> int | None:
    """An integer written in ASCII digits (an optional minus, at most 18 digits: a BIGINT), else None. ``int()``
    and ``str.isdigit`` also take other scripts' digits, superscripts, spaces and underscores."""
    if not isinstance(raw, str) or not re.fullmatch(r"-?[0-9]{1,18}", raw):
        return None
    return int(raw)


def sql_json(doc: dict) -> str:
    """The SQL console's document as JSON (as Starlette writes it), with every value a query can return: DECIMAL and
    HUGEINT as numbers, dates and times in ISO 8601, a NaN or infinite float as "nan", "inf" or "-inf" (JSON has
    no such number), anything else (BLOB, UUID, INTERVAL ...) as its text."""
    return json.dumps(_finite(doc), default=_json_value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _json_value(v):
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else _finite(float(v))
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    return str(v)


DRAIN_MAX_BYTES = 64 * 2**20  # an oversized upload is read up to this much before the 413
SQL_BODY_MAX_BYTES = 2**20  # a POSTed query: the form or JSON body
DEFAULT_SQL = ("SELECT sample_id, split, label_name, pred_name, pred_conf FROM samples "
               "WHERE NOT correct ORDER BY pred_conf DESC LIMIT 20")


class Contained:
    """ASGI middleware: an exception that escapes a route before its response started is answered here by the
    handlers' ``on_error`` (a 500 with one line, logged as one line; its traceback only under ``debug``) rather than
    re-raised to the server, which would log the traceback again."""

    def __init__(self, app, on_error):
        self.app, self.on_error = app, on_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            from starlette.requests import Request

            response = await self.on_error(Request(scope), exc)
            await response(scope, receive, send)


def create_app(db_path: str | Path, *, bind: str = "127.0.0.1", allow_hosts: tuple[str, ...] = (),
               token: str | None = None, debug: bool = False, lanes: dict | None = None,
               timeout_s: float | None = None, sql_memory_bytes: int | None = None):
    """The Starlette application serving ``db_path`` (refused in one line when it is not a database).

    It answers only requests whose ``Host`` names it (``serve.hosts``): loopback names for a loopback ``bind``, any
    IP address and this machine's names otherwise, and the ``allow_hosts`` names; a request other than GET or HEAD
    only from its own pages (``serve.auth.OriginCheck``). With a ``token``, every request must carry it (a Bearer
    header, or the cookie that opening ``/?token=TOKEN`` sets: ``serve.auth.TokenCheck``); ``token=None``, the
    default, means no authentication (what ``saliencydb serve --no-token`` runs). ``debug``: the log of a failed
    request has its traceback. ``lanes``: name -> ``serve.lanes.LaneLimits`` in place of the defaults (how many
    SQL, model and light requests work at once and wait; past that, 503 with Retry-After). ``timeout_s``: the
    longest any SQL statement of a request runs (default ``serve.state.QUERY_TIMEOUT_S``); ``sql_memory_bytes``:
    what one console statement may allocate in its child process (default ``serve.sqlproc.SQL_MEMORY_BYTES``)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise SpecError("the token must be a non-empty string (token=None: no authentication)")
    handlers = _Handlers(db_path, debug=debug)
    if timeout_s is not None:
        handlers.served.timeout_s = float(timeout_s)
    if sql_memory_bytes is not None:
        handlers.served.sql_processes.memory_bytes = int(sql_memory_bytes)
    middleware = [Middleware(Contained, on_error=handlers.on_error),
                  Middleware(HostCheck, policy=HostPolicy(bind, tuple(allow_hosts))), Middleware(OriginCheck)]
    if token is not None:
        middleware.append(Middleware(TokenCheck, token=token))
    middleware.append(Middleware(Lanes, limits=lanes))  # last: a refused request never takes a worker
    app = Starlette(routes=handlers.routes(),
                    exception_handlers={handlers.HTTPException: handlers.on_error, SaliencyDBError: handlers.on_error,
                                        Exception: handlers.on_error},
                    middleware=middleware)
    app.state.served = handlers.served
    return app


def serve(db_path: str | Path, host: str = "127.0.0.1", port: int = 8765, allow_hosts: tuple[str, ...] = (),
          token: str | None = None, debug: bool = False) -> None:
    """Run the app until interrupted. ``token=None`` (no authentication) is refused for an address beyond loopback."""
    import uvicorn

    from .hosts import is_loopback

    if token is None and not is_loopback(host):
        raise SpecError(f"serving {host} without a token: give token=..., or bind 127.0.0.1")
    app = create_app(db_path, bind=host, allow_hosts=allow_hosts, token=token, debug=debug)
    uvicorn.run(app, host=host, port=port, log_level="warning")
