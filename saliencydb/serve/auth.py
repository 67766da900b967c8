"""Who may use ``saliencydb serve``: its token (as Jupyter's), and the Origin check of requests that submit something.

**Token.** ``serve`` makes a random token and prints the URL with ``?token=...``. Opening that URL sets an
HttpOnly, SameSite=Strict cookie (its value derived from the token, never the token itself) and redirects to the
same URL without the token, so the token leaves the address bar and the browser history. Every other request
carries the cookie, or, from an API client, the header ``Authorization: Bearer TOKEN``; anything else gets a 401
with one line saying how to get in. Tokens and cookies are compared with ``hmac.compare_digest``. The cookie's
name holds the server's port, so two servers on one machine (cookies ignore ports) keep their own.

**Origin.** A request that is not GET or HEAD (an upload, an SQL console's form) is answered only when it comes
from the app's own pages: an ``Origin`` header naming another origin (a page of another site posting a form
to the app), or no ``Origin`` with ``Sec-Fetch-Site`` saying another site sent it, gets a 403 with one line.
Together with the Host check (``serve.hosts``) and SameSite=Strict, a web page the user visits can neither read
the app nor make it run a request (docs/web-app.md)."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import quote, unquote_plus

COOKIE_PREFIX = "saliencydb-token-"
SAFE_METHODS = ("GET", "HEAD")
HOW_TO_GET_IN = ("open the URL `saliencydb serve` printed (it ends in ?token=...), "
                 "or send the header 'Authorization: Bearer TOKEN'")


def cookie_value(token: str) -> str:
    """What the cookie holds: a keyed digest of the token (a stolen cookie does not reveal the token)."""
    return hmac.new(token.encode(), b"saliencydb serve cookie", hashlib.sha256).hexdigest()


def same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def _headers(scope) -> dict[bytes, str]:
    return {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}


async def refuse(scope, send, status: int, message: str, extra: tuple = ()) -> None:
    """A one-line answer, as JSON ``{"error": ...}`` under ``/api/``, plain text elsewhere; a websocket is closed."""
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008})
    api = scope.get("path", "").startswith("/api/")
    body = (json.dumps({"error": message}) if api else message).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json" if api else b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def _query_token(query: str) -> tuple[str | None, str]:
    """The ``token`` parameter of a raw query string (None when absent), and the query string without it."""
    token, kept = None, []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if unquote_plus(name) == "token":
            token = unquote_plus(value)
        else:
            kept.append(part)
    return token, "&".join(kept)


def _cookies(header: str) -> dict[str, str]:
    pairs = (c.strip().partition("=") for c in header.split(";"))
    return {name: value.strip().strip('"') for name, _, value in pairs if name}


class TokenCheck:
    """ASGI middleware: a request without this server's token (Bearer header, cookie, or ``?token=`` on a GET, which
    sets the cookie and redirects to the URL without it) gets a 401 with one line, and never reaches the app."""

    def __init__(self, app, token: str):
        if not isinstance(token, str) or not token:
            raise ValueError("the token must be a non-empty string (None: no authentication)")
        self.app, self.token, self.cookie = app, token, cookie_value(token)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        name = COOKIE_PREFIX + str((scope.get("server") or ("", ""))[1] or "")
        in_url, rest = _query_token(scope.get("query_string", b"").decode("latin-1"))
        if in_url is not None and scope["type"] == "http" and scope.get("method") in SAFE_METHODS:
            if not same(in_url, self.token):
                return await refuse(scope, send, 401, f"the token in this URL is not this server's (an earlier run's?): "
                                                      f"{HOW_TO_GET_IN}", ((b"www-authenticate", b"Bearer"),))
            return await self._redirect(scope, send, name, rest)
        scheme, _, given = headers.get(b"authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and same(given.strip(), self.token):
            return await self.app(scope, receive, send)
        if same(_cookies(headers.get(b"cookie", "")).get(name, ""), self.cookie):
            return await self.app(scope, receive, send)
        said = "wrong token" if scheme or name in _cookies(headers.get(b"cookie", "")) else "this server needs its token"
        await refuse(scope, send, 401, f"{said}: {HOW_TO_GET_IN}", ((b"www-authenticate", b"Bearer"),))

    async def _redirect(self, scope, send, name: str, rest: str) -> None:
        """303 to the same path without the token, setting the cookie."""
        location = scope.get("raw_path") or quote(scope.get("path") or "/").encode()
        location = b"/" + location.lstrip(b"/")  # a path, never '//host' (which a browser reads as another site)
        location += (b"?" + rest.encode("latin-1")) if rest else b""
        cookie = f"{name}={self.cookie}; HttpOnly; SameSite=Strict; Path=/".encode()
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location), (b"set-cookie", cookie), (b"cache-control", b"no-store"),
            (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def _authority(scheme: str, netloc: str) -> str:
    """``scheme://host:port`` in lower case, with the scheme's default port written out."""
    netloc = netloc.strip().lower().rstrip("/")
    host, port = netloc, {"http": "80", "https": "443"}.get(scheme, "")
    if netloc.startswith("["):
        end = netloc.find("]")
        host, port = netloc[:end + 1], (netloc[end + 2:] if netloc[end + 1:end + 2] == ":" else port)
    elif ":" in netloc:
        host, port = netloc.rsplit(":", 1)
    return f"{scheme}://{host.rstrip('.')}:{port}"


def own_origin(scope, headers: dict[bytes, str]) -> str:
    """The origin the request was addressed to: its scheme and its ``Host``."""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return _authority(scheme, headers.get(b"host", ""))


def foreign_origin(scope, headers: dict[bytes, str]) -> str | None:
    """Why a request that submits something came from another site ('' for none given), or None when it did not."""
    origin = headers.get(b"origin")
    if origin is not None:
        scheme, sep, netloc = origin.strip().partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            return origin.strip()[:80] or "null"
        return None if _authority(scheme.lower(), netloc) == own_origin(scope, headers) else origin.strip()[:80]
    site = headers.get(b"sec-fetch-site", "").strip().lower()
    return "" if site in ("cross-site", "same-site") else None


class OriginCheck:
    """ASGI middleware: a request other than GET or HEAD sent by another origin's page gets a 403 with one line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in SAFE_METHODS:
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        origin = foreign_origin(scope, headers)
        if origin is None:
            return await self.app(scope, receive, send)
        sender = f"origin '{origin}'" if origin else "another site (Sec-Fetch-Site)"
        scheme = "https" if scope.get("scheme") == "https" else "http"
        await refuse(scope, send, 403, f"a {scope.get('method')} from {sender} is refused: this server accepts forms and "
                                       f"uploads only from its own pages ({scheme}://{headers.get(b'host', '')})")
