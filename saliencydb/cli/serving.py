"""The command that serves a database as a local web app: serve."""

from __future__ import annotations

import click

from .output import db_option, handle_errors

MIN_TOKEN = 16
TOKEN_ENV = "SALIENCYDB_TOKEN"


@click.command()
@db_option
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default serves this machine only (0.0.0.0 serves the network: a warning is printed).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests addressed to this host name (repeatable), e.g. the name of a tunnel or proxy. "
                   "Other names are refused with 403, so a web page cannot reach the app through DNS rebinding.")
@click.option("--token", default=None, metavar="TOKEN",
              help=f"The token every request must carry (at least {MIN_TOKEN} printable characters; also read from "
                   f"${TOKEN_ENV}). Default: a random one, printed in the URL to open.")
@click.option("--no-token", is_flag=True,
              help="No authentication: only with a loopback --host (any local user or process can then read the database).")
@click.option("--debug", is_flag=True, help="Log the traceback of a failed request (one line without it).")
@click.option("--query-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600), metavar="SECONDS",
              help="The longest any SQL statement of a request runs (the console's, a where= filter) before it is stopped.")
@click.option("--sql-workers", default=None, type=click.IntRange(1, 64), metavar="N",
              help="Console SQL statements run at once (default: one per two cores); 4 more wait, others get 503.")
@click.option("--sql-memory", default=1024, show_default=True, type=click.IntRange(64, 1 << 20), metavar="MIB",
              help="Memory one console statement may allocate (it runs in a process of its own; past it, one line).")
@handle_errors
def serve(db, port, host, allow_hosts, token, no_token, debug, query_timeout, sql_workers, sql_memory):
    """Browse mistakes, neighbours and error groups in a local web app (read-only; follows new commits)."""
    from ..errors import SpecError
    from ..serve import create_app
    from ..serve.hosts import is_loopback

    bad = [h for h in allow_hosts if not h.strip() or any(c in h for c in "/:@ \t")]
    if bad:
        raise SpecError(f"--allow-host {bad[0]!r}: give a bare host name such as my-box.example (no scheme, port or path)")
    token = _token_of(token, no_token, host)
    from ..serve.lanes import LaneLimits, default_limits

    sql = default_limits()["sql"]  # a queued statement may wait for one running to its time limit
    lanes = {"sql": LaneLimits(sql_workers or sql.workers, sql.queue, max(sql.wait_s, query_timeout + 5))}
    app = create_app(db, bind=host, allow_hosts=allow_hosts, token=token, debug=debug, lanes=lanes,
                     timeout_s=query_timeout, sql_memory_bytes=sql_memory << 20)  # one line now if not a database
    _check_free(host, port)
    if token is None:
        click.echo("warning: --no-token: no authentication; any user or process on this machine, and any web page that "
                   f"reaches {host}:{port} under a loopback name, can read the database", err=True)
    elif not is_loopback(host):
        click.echo(f"warning: serving on {host}: anyone who can reach this machine on port {port} and has the token can "
                   "read the database, and plain HTTP sends the token unencrypted; prefer SSH port forwarding "
                   f"(ssh -L {port}:127.0.0.1:{port} HOST) to a loopback serve", err=True)
    click.echo(f"saliencydb: serving {db} at {_url(host, port, token)} (Ctrl+C stops)")
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


def _token_of(token: str | None, no_token: bool, host: str) -> str | None:
    """The token to require: --token, else $SALIENCYDB_TOKEN, else a random one; None for --no-token (loopback only)."""
    import os
    import re
    import secrets

    from ..errors import SpecError
    from ..serve.hosts import is_loopback

    if no_token:
        if token is not None:
            raise SpecError("--token and --no-token contradict each other; give one")
        if not is_loopback(host):
            raise SpecError(f"--no-token is allowed only on a loopback --host (127.0.0.1), not {host}: anyone on the "
                            "network could read the database; keep the token, or serve 127.0.0.1 over SSH port forwarding")
        return None
    source = "--token"
    if token is None and TOKEN_ENV in os.environ:
        token, source = os.environ[TOKEN_ENV], f"${TOKEN_ENV}"
    if token is None:
        return secrets.token_urlsafe(32)
    if not token.strip():
        raise SpecError(f"{source} is empty; give at least {MIN_TOKEN} characters, or leave it out for a random token")
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        raise SpecError(f"{source}: use printable ASCII characters without spaces (it goes into URLs and headers)")
    if len(token) < MIN_TOKEN:
        raise SpecError(f"{source} is too short ({len(token)} characters); give at least {MIN_TOKEN}, "
                        "or leave it out for a random token")
    return token


def _url(host: str, port: int, token: str | None) -> str:
    """The URL to open: the bound address (127.0.0.1 for a wildcard bind), with the token."""
    from urllib.parse import quote

    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token is not None else "")


def _check_free(host: str, port: int) -> None:
    """One line, before the server starts, when the address cannot be bound (in use, or not this machine's)."""
    import socket

    from ..errors import SpecError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise SpecError(f"--host {host}: not an address of this machine ({e.strerror or e})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            import errno

            fix = ("give an address of this machine (127.0.0.1 serves only it)" if e.errno == errno.EADDRNOTAVAIL
                   else "choose another --port")
            raise SpecError(f"cannot listen on {host}:{port} ({e.strerror or e}); {fix}") from None


COMMANDS = [serve]
