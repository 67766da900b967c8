"""Commands over a database's versions: versions, restore, vacuum, verify."""

from __future__ import annotations

import sys

import click

from .output import as_of_option, db_option, emit, emit_rows, format_option, handle_errors, plural, wait_option


@click.command()
@db_option
@format_option
@handle_errors
def versions(db, fmt):
    """List the kept versions of a database: commit, time, command, splits and row counts."""
    from ..storage import history

    kept = history(db)
    rows = [{"commit": v.commit, "time": v.time, "command": v.operation, "samples": v.samples,
             "splits": v.splits if fmt == "json" else ", ".join(f"{k} {n}" for k, n in v.splits.items()),
             "current": v.current, "pinned": v.pinned} for v in kept]
    if fmt == "table":
        for r in rows:
            r["current"] = "*" if r["current"] else ""
            r["pinned"] = "yes" if r["pinned"] else ""
    emit_rows(rows, fmt, title=f"{plural(len(rows), 'kept version')} of {db} (* current; pinned: a reader holds it)"
              if fmt == "table" else None)


@click.command()
@db_option
@click.option("--commit", "commit", required=True, type=click.IntRange(min=0), help="The kept commit to make current again.")
@wait_option
@handle_errors
def restore(db, commit, wait):
    """Make a kept earlier version current again, as a new commit (nothing is deleted)."""
    from ..storage import restore as do_restore

    r = do_restore(db, commit, wait=wait)
    click.echo(f"restored commit {r.restored} as commit {r.commit} ({r.samples} samples); "
               f"the versions in between are kept (`saliencydb versions --db {db}`)")


@click.command()
@db_option
@click.option("--keep-versions", type=click.IntRange(min=1), help="Keep the last N versions (the current one counts).")
@click.option("--older-than", help="Delete versions older than this (30s, 15m, 2h, 7d, 1w).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@wait_option
@format_option
@handle_errors
def vacuum(db, keep_versions, older_than, dry_run, wait, fmt):
    """Delete old versions and every file no kept version lists (default: keep the last 5 and the last hour)."""
    from ..storage import parse_duration, vacuum as do_vacuum

    r = do_vacuum(db, keep_versions=keep_versions, older_than=parse_duration(older_than) if older_than else None,
                  dry_run=dry_run, wait=wait)
    if fmt != "table":
        emit(r, fmt)
        return
    verb = "would remove" if dry_run else "removed"
    span = (f" (commits {r.kept_versions[0]}..{r.kept_versions[-1]})" if len(r.kept_versions) > 1
            else f" (commit {r.kept_versions[0]})" if r.kept_versions else "")
    click.echo(f"{verb} {plural(len(r.removed_versions), 'version')} and {plural(len(r.removed_files), 'file')} "
               f"({r.bytes_freed / 1e6:.1f} MB); {plural(len(r.kept_versions), 'version')} kept{span}")
    if r.pinned:
        held = "a reader still holds" if len(r.pinned) == 1 else "readers still hold"
        click.echo(f"kept {plural(len(r.pinned), 'older version')} that {held}: {', '.join(map(str, r.pinned))}")


@click.command()
@db_option
@as_of_option
@format_option
@handle_errors
def verify(db, as_of, fmt):
    """Check every file of the current version (or --as-of): present, checksum, readable, schema, row counts."""
    from ..storage import verify as do_verify

    r = do_verify(db, as_of)
    if fmt != "table":
        emit(r, fmt)
    elif r.ok:
        click.echo(f"commit {r.commit}: {plural(r.files_checked, 'file')} checked, no damage")
    else:
        click.echo(f"commit {r.commit}: {len(r.damage)} of {plural(r.files_checked, 'file')} damaged", err=True)
        for d in r.damage:
            click.echo(f"  {d.file}: {d.problem}; fix: {d.fix}", err=True)
    if not r.ok:
        sys.exit(1)


COMMANDS = [versions, restore, vacuum, verify]
