"""The command that serves a database as a local web app: serve."""

from __future__ import annotations

import ipaddress

import click

from .output import db_option, handle_errors


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@db_option
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default serves this machine only (0.0.0.0 serves the network: a warning is printed).")
@handle_errors
def serve(db, port, host):
    """Browse mistakes, neighbours and error groups in a local web app (read-only; follows new commits)."""
    from ..serve import create_app

    app = create_app(db)  # one line now if it is not a database
    if not _loopback(host):
        click.echo(f"warning: serving on {host}: anyone who can reach this machine on port {port} can read the database "
                   "(its samples, images and SQL); the app has no authentication", err=True)
    click.echo(f"saliencydb: serving {db} at http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ (Ctrl+C stops)")
    import uvicorn

    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    except OSError as e:
        from ..errors import SpecError

        raise SpecError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None


COMMANDS = [serve]
