"""The command that serves a database as a local web app: serve."""

from __future__ import annotations

import click

from .output import db_option, handle_errors


@click.command()
@db_option
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default serves this machine only (0.0.0.0 serves the network: a warning is printed).")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Also answer requests addressed to this host name (repeatable), e.g. the name of a tunnel or proxy. "
                   "Other names are refused with 403, so a web page cannot reach the app through DNS rebinding.")
@handle_errors
def serve(db, port, host, allow_hosts):
    """Browse mistakes, neighbours and error groups in a local web app (read-only; follows new commits)."""
    from ..serve import create_app

    bad = [h for h in allow_hosts if not h.strip() or any(c in h for c in "/:@ \t")]
    if bad:
        from ..errors import SpecError

        raise SpecError(f"--allow-host {bad[0]!r}: give a bare host name such as my-box.example (no scheme, port or path)")
    app = create_app(db, bind=host, allow_hosts=allow_hosts)  # one line now if it is not a database
    _check_free(host, port)
    from ..serve.hosts import is_loopback

    if not is_loopback(host):
        click.echo(f"warning: serving on {host}: anyone who can reach this machine on port {port} can read the database "
                   "(its samples, images and SQL); the app has no authentication", err=True)
    click.echo(f"saliencydb: serving {db} at http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ (Ctrl+C stops)")
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


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
