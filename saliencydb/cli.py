"""The `saliencydb` command line: parse arguments, call the library, format the answer."""

from __future__ import annotations

import csv
import io
import json
import sys
from functools import wraps

import click

from .errors import SaliencyDBError

FORMATS = ("table", "json", "csv")
TINY_PER_GROUP = 3  # fewer samples than this per cluster (or per neighbour asked for): a warning, not a silent answer


def _handle_errors(fn):
    """Library errors become one line on stderr and exit code 1; no traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaliencyDBError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; committed work is kept and a rerun resumes") from None
        except OSError as e:  # a file outside the database (an --out path, an image, the weights), or the disk
            from .storage.files import is_disk_full

            where = f" ({e.filename})" if getattr(e, "filename", None) else ""
            if is_disk_full(e):
                raise click.ClickException(f"no space left on the device{where}; free some space and rerun") from None
            raise click.ClickException(f"{e.strerror or e}{where}") from None
        except Exception as e:  # DuckDB / Arrow errors that name a file: never a traceback for a damaged file
            module = type(e).__module__ or ""
            if module.startswith(("duckdb", "_duckdb", "pyarrow")):
                text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise click.ClickException(f"{text}; if it names a database file, run `saliencydb verify --db DB`") from None
            raise

    return wrapper


def format_option(fn):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format.")(fn)


def db_option(fn):
    return click.option("--db", required=True, type=click.Path(file_okay=False), help="Database directory.")(fn)


def as_of_option(fn):
    return click.option("--as-of", "as_of", type=click.IntRange(min=0), metavar="COMMIT",
                        help="Read a kept earlier version (its commit number, from `saliencydb versions`).")(fn)


def wait_option(fn):
    return click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")(fn)


def _notes(lines) -> None:
    for line in lines:
        click.echo(line, err=True)


def _derived(db: str, as_of: int | None, no_store: bool, wait: bool, operation: str, compute):
    """Run a command that computes a derived table: ``compute(d, writer)``. The writer lock is
    taken before the version is read (so the result is stored on the version it was computed
    from, and a busy database is refused before any work); on a read-only database, with
    --no-store or --as-of, the result is computed and printed and nothing is stored."""
    from .errors import ReadOnlyError
    from .query import open as open_db
    from .storage import DatabaseWriter

    if no_store or as_of is not None:
        with open_db(db, as_of=as_of) as d:
            return compute(d, None), "nothing was stored (" + ("--no-store" if no_store else f"--as-of {as_of}") + ")"
    try:
        writer = DatabaseWriter(db, wait=wait, operation=operation)
    except ReadOnlyError:
        with open_db(db) as d:
            return compute(d, None), f"database '{db}' is read-only: the results are printed, nothing was stored"
    with writer:
        with open_db(db) as d:
            return compute(d, writer), None


def emit_rows(rows: list[dict], fmt: str, title: str | None = None) -> None:
    """Print a list of flat dicts as a table, JSON (a list of objects) or CSV."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=_json_default))
        return
    columns = list(rows[0]) if rows else []
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(v, digits=None) for k, v in r.items()})
        click.echo(buf.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_cell(r[c]) for c in columns])
    Console(width=_terminal_width()).print(table)


def _pylist(table) -> list[dict]:
    """Rows of an Arrow table; float32 values as the shortest decimal that is that float32
    (``round(x, 2)`` gives 3.92, not 3.9200000762939453)."""
    import numpy as np
    import pyarrow as pa

    columns = {}
    for name, col in zip(table.column_names, table.columns):
        if pa.types.is_float32(col.type):
            columns[name] = [None if v is None else float(str(np.float32(v))) for v in col.to_pylist()]
        else:
            columns[name] = col.to_pylist()
    return [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []


def _terminal_width() -> int:
    """The terminal's width; written to a file or a pipe, a wide page (no terminal to fit)."""
    import shutil

    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((120, 20)).columns)
    return max(100, min(200, shutil.get_terminal_size((120, 20)).columns))


def _cell(v, digits: int | None = 6) -> str:
    """A value as text: floats with ``digits`` significant digits (enough for similarities such
    as 0.999989 and 0.999984 to differ), or all of them (CSV); -0 as 0."""
    if isinstance(v, float):
        if v == 0:
            v = 0.0
        return repr(v) if digits is None else f"{v:.{digits}g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=_json_default)
    return "" if v is None else str(v)


def _json_default(v):
    import datetime

    import numpy as np

    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    import decimal

    if isinstance(v, decimal.Decimal):  # DuckDB's sum() of integers: a number, not a string
        return int(v) if v == v.to_integral_value() else float(v)
    return str(v)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="saliencydb")
def cli():
    """saliencydb: a database of parameter-space saliency profiles.

    Index a dataset once, then ask which samples break the same filters of your
    model, and whether they make the same mistakes.
    """
    from .memory import keep_freed_memory

    keep_freed_memory()  # reuse freed activation buffers instead of paging them in again each batch


@cli.command()
@db_option
@click.option("--model", "model_spec", help="Model spec: torchvision:NAME, torchscript:PATH (or a bare TorchScript file path), python:MODULE:FACTORY or python:FILE.py:FACTORY. Needed to create a database.")
@click.option("--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a local state-dict file.")
@click.option("--num-classes", type=int, help="Number of classes, when it cannot be read off the weights.")
@click.option("--transform", help="Input transform: imagenet, mnist, cifar or key=value list (mode=RGB,resize=256,crop=224,mean=a/b/c,std=a/b/c).")
@click.option("--data", "data_spec", required=True, help="Data spec: imagefolder:PATH, csv:PATH, torchvision:NAME:ROOT[:train|test], builtin:mnist5k[:train|val|all].")
@click.option("--split", default="val", show_default=True, help="Name of the split the samples go into.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Samples per batched forward/backward pass.")
@click.option("--limit", type=int, help="Profile at most this many samples of the split (a later run without it continues).")
@click.option("--workers", type=int, help="Image-decoding worker processes (default: none on 2 cores or fewer, else cores - 1, at most 8).")
@click.option("--index", "index_kind", type=click.Choice(["flat", "ivf", "ivfpq"]), default="flat", show_default=True,
              help="FAISS index kind: exact flat; IVF for large databases; IVF-PQ (compressed codes, approximate "
                   "similarities) for millions of samples. Too few samples to train one: flat.")
@click.option("--commit-every", "part_rows", default=1024, show_default=True, type=int, help="Samples per committed Parquet part (the unit of resumption).")
@click.option("--aggregate", type=click.Choice(["mean_abs", "rms"]),
              help="Profile value per filter, chosen when the database is created: mean_abs, the paper's mean |dL/dw| "
                   "(default), or rms, an approximation that is faster at small feature maps (its measured agreement "
                   "and speed: README, 'Approximate profiles').")
@click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--random-weights", is_flag=True,
              help="Profile a model whose weights are random (no --weights) on purpose; refused otherwise.")
@click.option("--classes", "classes", type=click.Path(dir_okay=False),
              help="A text file naming the model's classes, one per line in its class order; labels given as names "
                   "(folders, CSV) are matched to them.")
@_handle_errors
def index(db, model_spec, weights, num_classes, transform, data_spec, split, device, batch_size, limit, workers, index_kind, part_rows,
          aggregate, wait, quiet, random_weights, classes):
    """Profile every sample of a dataset into a database (creates it; resumes an interrupted run)."""
    from .indexer import Indexer
    from .progress import NullProgress, RichProgress

    rank = _rank()
    progress = NullProgress() if quiet or rank > 0 else RichProgress()
    try:
        report = Indexer(db, model=model_spec, weights=weights, transform=transform, num_classes=num_classes,
                         device=device, batch_size=batch_size, workers=workers, index_kind=index_kind, part_rows=part_rows,
                         aggregate=aggregate, progress=progress, wait=wait,
                         random_weights=random_weights, classes=classes).run(data_spec, split=split, limit=limit)
    finally:
        if not quiet:
            progress.close()
        _leave_job()
    _job_summary(report)


@cli.command()
@db_option
@click.option("--data", "data_spec", required=True, help="Data spec of the new samples (as for `index`).")
@click.option("--split", required=True, help="Split the new samples go into (a new name, or an existing one to add to).")
@click.option("--replace", is_flag=True, help="Re-profile an existing split on purpose: the new profiles replace the old ones in one commit.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Samples per batched forward/backward pass.")
@click.option("--limit", type=int, help="Ingest at most this many samples of the source (a later run continues).")
@click.option("--workers", type=int, help="Image-decoding worker processes (default: none on 2 cores or fewer, else cores - 1, at most 8).")
@click.option("--commit-every", "part_rows", default=1024, show_default=True, type=int, help="Samples per committed Parquet part.")
@click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_handle_errors
def ingest(db, data_spec, split, replace, device, batch_size, limit, workers, part_rows, wait, quiet):
    """Add a new set to an existing database with its model and frozen statistics (idempotent, resumable)."""
    from .indexer import Indexer
    from .progress import NullProgress, RichProgress

    rank = _rank()
    progress = NullProgress() if quiet or rank > 0 else RichProgress()
    try:
        report = Indexer(db, device=device, batch_size=batch_size, workers=workers, part_rows=part_rows,
                         progress=progress, wait=wait).run(data_spec, split=split, limit=limit, command="ingest",
                                                           replace=replace, require_existing=True)
    finally:
        if not quiet:
            progress.close()
        _leave_job()
    _job_summary(report)


def _rank() -> int:
    """Under torchrun (WORLD_SIZE > 1), join the job's process group (gloo carries the few
    messages between ranks; profiling stays on each rank's device) and return this rank."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank()


def _leave_job() -> None:
    """Leave a torchrun job's process group (its threads must not outlive the interpreter)."""
    dist = sys.modules.get("torch.distributed")  # only a job that imported it can have joined one
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _job_summary(report) -> None:
    if report is None:  # a torchrun rank other than 0: rank 0 reports for the job
        return
    acc = (f", split accuracy {report.split_accuracy:.2%} over its {report.split_samples} samples"
           if report.split_accuracy is not None else "")
    click.echo(f"{report.split}: {report.added} samples added, {report.skipped} already there, {report.failed} failed{acc} "
               f"({report.seconds:.1f}s)")
    for key, reason in report.failures[:20]:
        click.echo(f"  failed: {key}: {reason}", err=True)
    if len(report.failures) > 20:
        click.echo(f"  ... and {len(report.failures) - 20} more: saliencydb sql --db DB \"SELECT * FROM failures\"", err=True)
    if report.failed:
        sys.exit(2)


@cli.command()
@db_option
@click.option("--split", required=True, help="The newly ingested split to triage.")
@click.option("--no-store", is_flag=True, help="Print the triage without storing it in the triage table.")
@as_of_option
@wait_option
@format_option
@_handle_errors
def triage(db, split, no_store, as_of, wait, fmt):
    """Assign a new split's mistakes to known error groups (or mark them new) and show which layers moved."""
    result, note = _derived(db, as_of, no_store, wait, f"triage {split}",
                            lambda d, w: d.triage(split, write=w is not None, writer=w))
    if note:
        _notes([f"note: {note}"])
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    rows = [{"group": g["cluster"], "new_mistakes": g["new_mistakes"]} for g in result["known_groups"]]
    rows.append({"group": "new failure mode", "new_mistakes": result["new_failure_mode"]})
    if fmt == "csv":
        emit_rows(rows, "csv")
        return
    click.echo(f"{result['new_mistakes']} new mistakes in '{split}' against the error groups of {result['run']} "
               f"(built on {', '.join(result['groups_built_on'])})")
    emit_rows(rows, "table")
    if result["layer_drift"]:
        click.echo(f"layers whose mean standardised saliency moved most (vs {', '.join(result['reference_splits'])}):")
        emit_rows(result["layer_drift"], "table")


@cli.command()
@db_option
@click.option("--splits", help="Comma-separated splits to compute the statistics over (default: all).")
@click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_handle_errors
def restat(db, splits, wait, quiet):
    """Recompute the standardisation statistics and rebuild the indexes, atomically."""
    from .indexer import restat as do_restat
    from .progress import NullProgress, RichProgress

    progress = NullProgress() if quiet else RichProgress()
    try:
        result = do_restat(db, splits.split(",") if splits else None, progress=progress, wait=wait)
    finally:
        if not quiet:
            progress.close()
    click.echo(f"statistics over {', '.join(result['splits'])} ({result['count']} samples), frozen; indexes rebuilt "
               f"({', '.join(f'{k}: {v}' for k, v in result['indexes'].items())}); knn, clusters and triage tables dropped")


@cli.command()
@db_option
@as_of_option
@format_option
@_handle_errors
def info(db, as_of, fmt):
    """Summarise a database: model, units, splits, accuracy, index state, versions."""
    from .query import open as open_db

    with open_db(db, as_of=as_of) as d:
        summary = d.info()
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=_json_default))
        return
    rows = [{"split": name, **{k: v for k, v in s.items()}} for name, s in summary["splits"].items()]
    if fmt == "csv":
        emit_rows(rows, fmt)
        return
    for r in rows:  # a percentage, as `index` and `ingest` print it (JSON and CSV keep the fraction)
        r["accuracy"] = None if r["accuracy"] is None else f"{r['accuracy']:.2%}"
    behind = (f"; the latest is {summary['latest_commit']}" if summary["latest_commit"] not in (None, summary["commit"]) else "")
    click.echo(f"database   {summary['path']} (format {summary['format_version']}, commit {summary['commit']}{behind}, "
               f"{summary['versions']} versions kept)")
    click.echo(f"model      {summary['model']['spec']}  weights {summary['model']['weights'] or '-'}  "
               f"sha256 {summary['model']['weights_sha256'][:12]}  classes {summary['model']['num_classes']}")
    click.echo(f"units      {summary['units']['count']} {summary['units']['kind']} units in {summary['units']['layers']} layers "
               f"({summary['units']['aggregate']} of dL/dw); features {summary['feature_dim']}")
    st = summary["statistics"]
    click.echo("statistics " + ("none yet" if st is None else f"over {', '.join(st['splits'])} ({st['count']} samples)"
                                + (", frozen" if st["frozen"] else "")))
    idx = ", ".join(f"{k}: {v['kind']} {v['ntotal']}" + (" (stale)" if v["stale"] else "") for k, v in summary["indexes"].items())
    click.echo(f"indexes    {idx or 'none'}")
    derived = ", ".join(f"{k} (commit {v['base_commit']}" + (", stale" if v["stale"] else "") + ")"
                        for k, v in summary["derived"].items())
    click.echo(f"derived    {derived or 'none'}")
    emit_rows(rows, "table")
    stale = [k for k, v in summary["derived"].items() if v["stale"]]
    if stale:
        _notes([f"note: {', '.join(stale)} were computed from other samples or statistics than this version's; "
                "rerun `saliencydb mistakes` / `clusters` / `triage` to refresh them"])


# -- versions (README "Database layout") ----------------------------------------------------


@cli.command()
@db_option
@format_option
@_handle_errors
def versions(db, fmt):
    """List the kept versions of a database: commit, time, command, splits and row counts."""
    from .storage import history

    kept = history(db)
    rows = [{"commit": v.commit, "time": v.time, "command": v.operation, "samples": v.samples,
             "splits": v.splits if fmt == "json" else ", ".join(f"{k} {n}" for k, n in v.splits.items()),
             "current": v.current, "pinned": v.pinned} for v in kept]
    if fmt == "table":
        for r in rows:
            r["current"] = "*" if r["current"] else ""
            r["pinned"] = "yes" if r["pinned"] else ""
    emit_rows(rows, fmt, title=f"{len(rows)} kept versions of {db} (* current; pinned: a reader holds it)" if fmt == "table" else None)


@cli.command()
@db_option
@click.option("--commit", "commit", required=True, type=click.IntRange(min=0), help="The kept commit to make current again.")
@wait_option
@_handle_errors
def restore(db, commit, wait):
    """Make a kept earlier version current again, as a new commit (nothing is deleted)."""
    from .storage import restore as do_restore

    r = do_restore(db, commit, wait=wait)
    click.echo(f"restored commit {r.restored} as commit {r.commit} ({r.samples} samples); "
               f"the versions in between are kept (`saliencydb versions --db {db}`)")


@cli.command()
@db_option
@click.option("--keep-versions", type=click.IntRange(min=1), help="Keep the last N versions (the current one counts).")
@click.option("--older-than", help="Delete versions older than this (30s, 15m, 2h, 7d, 1w).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@wait_option
@format_option
@_handle_errors
def vacuum(db, keep_versions, older_than, dry_run, wait, fmt):
    """Delete old versions and every file no kept version lists (default: keep the last 5 and the last hour)."""
    from .storage import parse_duration, vacuum as do_vacuum

    r = do_vacuum(db, keep_versions=keep_versions, older_than=parse_duration(older_than) if older_than else None,
                  dry_run=dry_run, wait=wait)
    if fmt == "json":
        click.echo(json.dumps(r.to_dict(), indent=2))
        return
    if fmt == "csv":
        emit_rows([{"removed_versions": len(r.removed_versions), "kept_versions": len(r.kept_versions), "pinned": len(r.pinned),
                    "removed_files": len(r.removed_files), "bytes_freed": r.bytes_freed, "dry_run": r.dry_run}], "csv")
        return
    verb = "would remove" if dry_run else "removed"
    kept = f"{len(r.kept_versions)} versions kept" + (f" (commits {r.kept_versions[0]}..{r.kept_versions[-1]})" if r.kept_versions else "")
    click.echo(f"{verb} {len(r.removed_versions)} versions and {len(r.removed_files)} files "
               f"({r.bytes_freed / 1e6:.1f} MB); {kept}")
    if r.pinned:
        click.echo(f"kept {len(r.pinned)} older versions that readers still hold: {', '.join(map(str, r.pinned))}")


@cli.command()
@db_option
@as_of_option
@format_option
@_handle_errors
def verify(db, as_of, fmt):
    """Check every file of the current version (or --as-of): present, checksum, readable, schema, row counts."""
    from .storage import verify as do_verify

    r = do_verify(db, as_of)
    if fmt == "json":
        click.echo(json.dumps(r.to_dict(), indent=2))
    elif fmt == "csv":
        emit_rows([d.to_dict() for d in r.damage], "csv")
    elif r.ok:
        click.echo(f"commit {r.commit}: {r.files_checked} files checked, no damage")
    else:
        click.echo(f"commit {r.commit}: {len(r.damage)} of {r.files_checked} files damaged", err=True)
        for d in r.damage:
            click.echo(f"  {d.file}: {d.problem}; fix: {d.fix}", err=True)
    if not r.ok:
        sys.exit(1)


@cli.command()
@click.option("--db", default="demo-db", show_default=True, type=click.Path(file_okay=False), help="Where to build the demo database (an existing demo database is brought up to date; any other is refused).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where the trained demo model is cached (default ~/.cache/saliencydb).")
@click.option("--n-clusters", default=8, show_default=True, type=int, help="Number of error groups (k-means clusters).")
@click.option("--no-report", is_flag=True, help="Skip the HTML report.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@wait_option
@_handle_errors
def demo(db, cache_dir, n_clusters, no_report, quiet, wait):
    """Train a small CNN on built-in real digits, index 2,000 held-out digits, and show what the database finds."""
    from pathlib import Path

    from .demo import run_demo, story
    from .progress import NullProgress, RichProgress

    progress = NullProgress() if quiet else RichProgress()
    try:
        result = run_demo(db, cache_dir=Path(cache_dir) if cache_dir else None, n_clusters=n_clusters,
                          progress=progress, report=not no_report, wait=wait)
    finally:
        if not quiet:
            progress.close()
    click.echo(story(result))


@cli.command()
@db_option
@click.argument("query")
@as_of_option
@format_option
@_handle_errors
def sql(db, query, as_of, fmt):
    """Run one read-only SQL query (DuckDB) over the database.

    \b
    Tables: samples, units, knn, clusters, blame, triage, failures, ingests, interventions.
    Views: classes, zscores, salient_units.
    Macros: profile(id), top_units(id, k).
    Columns: README "Database layout". The query cannot write or read files."""
    from .query import open as open_db

    with open_db(db, as_of=as_of) as d:
        table = d.sql(query)
        _notes(d.notices(query))
    rows = _pylist(table)
    emit_rows(rows, fmt)


@cli.command()
@db_option
@click.option("--id", "sample_id", type=int, help="Id of a stored sample.")
@click.option("--image", type=click.Path(dir_okay=False), help="A new image file (profiled with the stored model, not stored).")
@click.option("--label", help="True label of --image: a class index or name.")
@click.option("-k", default=10, show_default=True, type=int, help="Number of neighbours.")
@click.option("--space", type=click.Choice(["saliency", "feature"]), default="saliency", show_default=True,
              help="Search by saliency profile, or by the penultimate-layer features (the baseline).")
@click.option("--where", help="SQL predicate over samples restricting the candidates before the search, e.g. \"NOT correct\".")
@click.option("--split", help="Only neighbours from this split.")
@as_of_option
@format_option
@_handle_errors
def neighbors(db, sample_id, image, label, k, space, where, split, as_of, fmt):
    """Nearest neighbours of a sample by saliency profile (or feature), with their labels and predictions."""
    from .query import open as open_db

    with open_db(db, as_of=as_of) as d:
        result = d.neighbors(sample_id, k=k, space=space, where=where, split=split, image=image, label=label)
    if result.note:
        _notes([f"note: {result.note}"])
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, default=_json_default))
        return
    if fmt == "csv":
        emit_rows(result.neighbors, "csv")
        return
    q = result.query
    who = f"sample {q['sample_id']}" if q["sample_id"] is not None else f"image {q['key']}"
    click.echo(f"{who}: label {q['label_name']}, predicted {q['pred_name']} "
               f"({'correct' if q['correct'] else 'wrong'}, confidence {q['pred_conf']:.2f}); {space} space")
    emit_rows(result.neighbors, "table")
    s = result.summary
    line = (f"{s['share_misclassified']:.0%} of the {s['neighbors']} neighbours are misclassified, "
            f"{s['share_same_prediction']:.0%} share the prediction '{q['pred_name']}'")
    if s["share_same_confusion"] is not None:
        line += f", {s['share_same_confusion']:.0%} make the same mistake ({q['label_name']} -> {q['pred_name']})"
    click.echo(line)


@cli.command()
@db_option
@click.option("-k", default=10, show_default=True, type=int, help="Neighbours per sample.")
@click.option("--bootstrap", default=1000, show_default=True, type=int, help="Bootstrap resamples for the 95% intervals.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@click.option("--no-store", is_flag=True, help="Print the report without storing the neighbour graph (knn table).")
@as_of_option
@wait_option
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_handle_errors
def mistakes(db, k, bootstrap, seed, no_store, as_of, wait, fmt, quiet):
    """Do saliency neighbours share mistakes? Per split, saliency vs feature space; stores the knn table."""
    from .progress import NullProgress, RichProgress
    from .query.knn import report_rows

    progress = NullProgress() if quiet or fmt != "table" else RichProgress()
    try:
        report, note = _derived(db, as_of, no_store, wait, f"mistakes -k {k}",
                                lambda d, w: d.mistakes(k, n_boot=bootstrap, seed=seed, progress=progress,
                                                        write=w is not None, writer=w))
    finally:
        if isinstance(progress, RichProgress):
            progress.close()
    if note:
        _notes([f"note: {note}"])
    for name, e in report["splits"].items():
        if e["samples"] < TINY_PER_GROUP * k:
            _notes([f"warning: split '{name}' has {e['samples']} samples for k={k} neighbours each; "
                    "the neighbourhoods cover much of the split and the shares say little (lower -k)"])
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
        return
    rows = report_rows(report)
    if fmt == "csv":
        emit_rows(rows, "csv")
        return
    for r in rows:
        for c in ("correct_neighbors", "ci95_low", "ci95_high", "same_confusion"):
            r[c] = None if r[c] is None else f"{r[c]:.1%}"
    emit_rows(rows, "table", title=f"share of correctly classified samples among the {k} nearest neighbours")
    for split, e in report["splits"].items():
        if "feature" in e and e["incorrect"]:
            sal = 1 - e["saliency"]["correct_neighbors_of_incorrect"]["mean"]
            feat = 1 - e["feature"]["correct_neighbors_of_incorrect"]["mean"]
            ratio = f"{sal / feat:.1f}x" if feat > 0 else "infinitely"
            click.echo(f"{split}: neighbours of a mistake are mistakes {sal:.0%} of the time in saliency space, "
                       f"{feat:.0%} in feature space ({ratio} as often)")


@cli.command()
@db_option
@click.option("--n-clusters", default=8, show_default=True, type=int, help="Number of error groups (k-means clusters).")
@click.option("--errors-only/--all", default=True, show_default=True, help="Cluster misclassified samples only, or all.")
@click.option("--split", help="Only samples of this split.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@click.option("--no-store", is_flag=True, help="Print the groups without storing the clusters and blame tables.")
@as_of_option
@wait_option
@format_option
@_handle_errors
def clusters(db, n_clusters, errors_only, split, seed, no_store, as_of, wait, fmt):
    """Group mistakes by saliency profile (k-means); stores the clusters and blame tables."""
    result, note = _derived(db, as_of, no_store, wait, f"clusters -n {n_clusters}",
                            lambda d, w: d.clusters(n_clusters, errors_only=errors_only, split=split, seed=seed,
                                                    write=w is not None, writer=w))
    if note:
        _notes([f"note: {note}"])
    if result["samples"] < TINY_PER_GROUP * n_clusters:
        _notes([f"warning: {result['samples']} samples in {n_clusters} clusters is fewer than {TINY_PER_GROUP} per group; "
                "the groups say little (lower --n-clusters)"])
    if fmt == "json":
        click.echo(json.dumps(result, indent=2))
        return
    rows = [{
        "cluster": g["cluster"], "size": g["size"],
        "top_confusions": ", ".join(f"{p['pair']} ({p['purity']:.0%})" for p in g["top_confusions"]),
        "top_layers": ", ".join(l["layer"] for l in g["top_layers"]),
        "top_units": ", ".join(f"{u['layer']}[{u['channel']}]" for u in g["top_units"]),
        "exemplars": ", ".join(str(e["sample_id"]) for e in g["exemplars"]),
    } for g in result["clusters"]]
    emit_rows(rows, fmt, title=f"{result['samples']} samples in {result['n_clusters']} clusters ({result['run']})")


# -- explanations (issue 6) ----------------------------------------------------------------

def text_format_option(fn):
    """--format for commands that write a file: csv prints their main table's rows."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format (csv: the rows of the main table).")(fn)


def _progress(fmt: str, quiet: bool):
    from .progress import NullProgress, RichProgress

    return NullProgress() if quiet or fmt != "table" else RichProgress()


def _close(progress) -> None:
    if hasattr(progress, "close"):
        progress.close()


@cli.command()
@db_option
@click.option("--id", "sample_id", type=int, help="Id of the stored sample to explain (writes one figure).")
@click.option("--out", required=True, type=click.Path(), help="FILE.png for --id; a directory for the --errors gallery (DIR/index.html).")
@click.option("--top-k", default=10, show_default=True, type=int, help="Salient units to boost (the sample's top-k).")
@click.option("--units", help="Boost these units instead of the top-k: LAYER:CHANNEL,... (layer name such as features.3, or layer index).")
@click.option("--errors", is_flag=True, help="Gallery: the most confident mistakes with their maps and saliency neighbours.")
@click.option("--split", help="Gallery: only mistakes of this split.")
@click.option("--limit", default=12, show_default=True, type=int, help="Gallery: number of mistakes.")
@click.option("--neighbors", "n_neighbors", default=5, show_default=True, type=int, help="Gallery: neighbours per mistake.")
@text_format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@_handle_errors
def explain(db, sample_id, out, top_k, units, errors, split, limit, n_neighbors, fmt, quiet, as_of):
    """Input-space saliency of a sample's salient filters, GradCAM and its profile in one figure; or (--errors) an HTML gallery."""
    from .errors import QueryError
    from .explain import Explainer, check_out_file, explain_sample, gallery
    from .explain.gallery import check_out_dir
    from .query import open as open_db

    if errors == (sample_id is not None):
        raise QueryError("give --id ID for one sample's figure, or --errors [--split S] for a gallery of mistakes")
    if not errors and split is not None:
        raise QueryError("--split selects the gallery's mistakes; add --errors (or drop --split)")
    with open_db(db, as_of=as_of) as d:
        if errors:
            check_out_dir(out)
            progress = _progress(fmt, quiet)
            try:
                result = gallery(Explainer(d), out, split=split, limit=limit, n_neighbors=n_neighbors, top_k=top_k,
                                 progress=progress)
            finally:
                _close(progress)
            if fmt == "json":
                click.echo(json.dumps(result, indent=2, default=_json_default))
            elif fmt == "csv":
                emit_rows(result["mistakes"], "csv")
            else:
                click.echo(f"wrote {result['out']} ({len(result['mistakes'])} mistakes)")
            return
        check_out_file(out)
        d.sample(sample_id)  # an unknown id fails before the model is loaded
        ex = Explainer(d)
        result = explain_sample(ex, sample_id, out, top_k=top_k, units=ex.parse_units(units) if units else None).to_dict()
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=_json_default))
        return
    if fmt == "csv":  # the boosted units, one row each
        emit_rows(result["boosted_units"], "csv")
        return
    s, c, m = result["sample"], result["confidences"], result["map"]
    click.echo(f"sample {s['sample_id']} ({s['split']}, {s['key']}): label {s['label_name']}, predicted {s['pred_name']} "
               f"({'correct' if s['correct'] else 'wrong'}); p(true) {c['true_conf']:.3f}, p(pred) {c['pred_conf']:.3f}")
    emit_rows(result["boosted_units"], "table", title="boosted units (standardised saliency z)")
    corr = "" if m["spearman_vs_gradcam"] is None else f"; Spearman with GradCAM {m['spearman_vs_gradcam']:.2f}"
    click.echo(f"input-space map: the top 5% of pixels hold {m['top5pct_mass']:.0%} of the saliency{corr}")
    click.echo(f"wrote {result['out']}")


@cli.command("profile-plot")
@db_option
@click.option("--split", help="Only samples of this split.")
@click.option("--cluster", type=int, help="Only samples of this cluster (from `saliencydb clusters`).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="FILE.png to write.")
@text_format_option
@as_of_option
@_handle_errors
def profile_plot(db, split, cluster, out, fmt, as_of):
    """Mean standardised profile of correct vs incorrect samples, layer by layer (each layer sorted)."""
    from .explain import check_out_file, group_profiles
    from .explain.figures import group_profile_figure
    from .errors import QueryError
    from .query import open as open_db
    from .saliency import UnitLayout

    check_out_file(out)
    with open_db(db, as_of=as_of) as d:
        result = group_profiles(d, split=split, cluster=cluster)
        layout = UnitLayout.from_dict(d.manifest.units)
    try:
        group_profile_figure(out, groups=[(g["name"], g["z"], g["count"]) for g in result["groups"]], layout=layout,
                             title=f"mean standardised saliency profile: {result['scope']}")
    except OSError as e:
        raise QueryError(f"cannot write --out {out!r}: {e.strerror or e}") from None
    summary = {"scope": result["scope"], "out": out,
               "groups": [{k: v for k, v in g.items() if k != "z"} for g in result["groups"]]}
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=_json_default))
        return
    by_name = {g["name"]: {l["layer"]: l["mean_z"] for l in (g["layers"] or [])} for g in summary["groups"]}
    counts = ", ".join(f"{g['count']} {g['name']}" for g in summary["groups"])
    rows = [{"layer": l.name, **{f"mean z ({name})": per.get(l.name) for name, per in by_name.items()}} for l in layout.layers]
    if fmt == "csv":
        emit_rows(rows, "csv")
        return
    emit_rows(rows, "table", title=f"mean standardised saliency per layer, {result['scope']} ({counts})")
    click.echo(f"wrote {out}")


@cli.command()
@db_option
@click.option("--what", required=True, type=click.Choice(["masking", "smoothgrad", "randomization"]), help="Which check.")
@click.option("--id", "sample_id", type=int, help="Id of the stored sample to check.")
@click.option("--top-k", default=10, show_default=True, type=int, help="Salient units boosted by the input-space map.")
@click.option("--top-p", default=5.0, show_default=True, type=float, help="masking: percentage of pixels masked.")
@click.option("--fill", type=click.Choice(["mean", "black"]), default="mean", show_default=True,
              help="masking: masked pixels become the transform's zero (its mean colour, 0 after normalisation) or black.")
@click.option("--split", help="masking --find-corrections: the split whose mistakes are searched.")
@click.option("--find-corrections", is_flag=True, help="masking: list the mistakes of --split whose true-class confidence rises by --min-rise.")
@click.option("--min-rise", default=0.25, show_default=True, type=float, help="masking --find-corrections: minimum rise of the true-class confidence.")
@click.option("--limit", type=int, help="masking --find-corrections: check at most this many mistakes.")
@click.option("--levels", default="0.01,0.05,0.1,0.5", show_default=True, help="smoothgrad: noise levels (fractions of the input's range).")
@click.option("--n-noise", default=32, show_default=True, type=int, help="smoothgrad: noisy copies per level.")
@click.option("--stats-samples", default=256, show_default=True, type=int,
              help="randomization: samples used to re-standardise each randomised model (0: the database's statistics).")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@text_format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@_handle_errors
def check(db, what, sample_id, top_k, top_p, fill, split, find_corrections, min_rise, limit, levels, n_noise,
          stats_samples, seed, fmt, quiet, as_of):
    """Check an explanation with numbers: masking salient pixels (A.9), SmoothGrad agreement (A.1), model randomisation (A.11)."""
    from . import explain as E
    from .errors import QueryError
    from .query import open as open_db

    if find_corrections:
        if what != "masking" or split is None or sample_id is not None:
            raise QueryError("--find-corrections goes with --what masking --split S (and no --id)")
    elif sample_id is None:
        raise QueryError(f"--what {what} needs --id ID" + (" (or --split S --find-corrections)" if what == "masking" else ""))
    elif split is not None:
        raise QueryError("--split is only used with --find-corrections")
    try:
        level_list = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise QueryError(f"--levels {levels!r} is not a comma-separated list of numbers such as 0.01,0.05") from None
    progress = _progress(fmt, quiet)
    try:
        with open_db(db, as_of=as_of) as d:
            if sample_id is not None:
                d.sample(sample_id)  # an unknown id fails before the model is loaded
            else:
                d.ids_where(split=split)  # an unknown split too
            ex = E.Explainer(d)
            if find_corrections:
                result = E.find_corrections(ex, split, top_p=top_p, fill=fill, top_k=top_k, min_rise=min_rise, seed=seed,
                                            limit=limit, progress=progress)
            elif what == "masking":
                result = E.masking(ex, sample_id, top_p=top_p, fill=fill, top_k=top_k, seed=seed)
            elif what == "smoothgrad":
                result = E.smoothgrad(ex, sample_id, levels=level_list, n=n_noise, k=top_k, seed=seed)
            else:
                result = E.randomization(ex, sample_id, top_k=top_k, stats_samples=stats_samples, seed=seed,
                                         progress=progress)
    finally:
        _close(progress)
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=_json_default))
        return
    if fmt == "csv":  # the rows of the check's table, unformatted
        key = "samples" if find_corrections else {"masking": "results", "smoothgrad": "levels", "randomization": "steps"}[what]
        emit_rows(result[key], "csv")
        return
    if find_corrections:
        emit_rows(result["samples"], "table", title=f"mistakes of {split} whose true-class confidence rises by "
                                                    f">= {min_rise:.0%} when the top {top_p:g}% salient pixels are masked")
        click.echo(f"{result['found']} of {result['mistakes']} mistakes ({result['corrected']} corrected); controls: "
                   f"{result['found_with_random_units']} with the maps of {top_k} random units, "
                   f"{result['found_with_random_pixels']} masking random pixels")
        return
    s = result["sample"]
    click.echo(f"sample {s['sample_id']} ({s['key']}): label {s['label_name']}, predicted {s['pred_name']}")
    if what == "masking":
        rows = [{"masked by": r["masked_by"], "pixels (changed)": f"{r['pixels']} ({r['pixels_changed']})",
                 "p(true) before": r["true_conf_before"], "p(true) after": r["true_conf_after"],
                 "p(pred) before": r["pred_conf_before"], "p(pred) after": r["pred_conf_after"],
                 "prediction after": r["pred_name_after"]} for r in result["results"]]
        emit_rows(rows, "table", title=f"masking the top {top_p:g}% pixels of each map (fill: {fill}); "
                                       f"pred = the original prediction {s['pred_name']}")
    elif what == "smoothgrad":
        emit_rows(result["levels"], "table", title=f"SmoothGrad parameter saliency ({n_noise} noisy copies) vs the plain profile")
    else:
        emit_rows(result["steps"], "table", title="cascading randomisation: Spearman correlation with the original map")


# -- interventions (issue 7) ---------------------------------------------------------------


def _bench(d, device: str):
    from .models.device import resolve_device
    from .interventions import Bench

    return Bench(d, device=resolve_device(device))


def _ci(stat: dict, pct: bool = False) -> str | None:
    """'mean [low, high]' of a bootstrap summary."""
    if stat["mean"] is None:
        return None
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:+.3f}")
    return f"{f(stat['mean'])} [{f(stat['low'])}, {f(stat['high'])}]"


def _units_cell(layout, ids, limit: int = 6) -> str:
    from .interventions import describe_units

    names = describe_units(layout, ids)
    if not names:
        return "all parameters"
    return " ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "")


def _record(d, records: list[dict], no_record: bool, wait: bool = False) -> str | None:
    from .interventions import write_attempts

    return None if no_record else write_attempts(d.path, records, wait=wait)


def _check_recordable(db: str, no_record: bool) -> None:
    """Before any work: a read-only database cannot take the attempts (unless --no-record)."""
    import os

    if not no_record and os.path.isdir(db) and not os.access(db, os.W_OK):
        from .errors import ReadOnlyError

        raise ReadOnlyError(f"database '{db}' is read-only and cannot record the attempts; pass --no-record")


def _method_option(choices):
    return click.option("--method", required=True, type=click.Choice(choices), help="Which intervention.")


def _device_option(fn):
    return click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")(fn)


@cli.command()
@db_option
@click.option("--id", "sample_id", required=True, type=int, help="Id of the stored sample.")
@_method_option(("prune", "perturb", "finetune"))
@click.option("--top-k", default=10, show_default=True, type=int, help="Number of filters edited (the sample's top-k salient ones, and as many in each control).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="finetune: step size (the model's last learning rate).")
@click.option("--sigma", default=1e-3, show_default=True, type=float, help="perturb: standard deviation of the Gaussian noise added to each weight.")
@click.option("--neighbors", "n_neighbors", default=10, show_default=True, type=int, help="finetune: saliency neighbours scored under each step.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random control (and of the noise).")
@_device_option
@click.option("--no-record", is_flag=True, help="Do not append the attempts to the interventions table.")
@format_option
@wait_option
@_handle_errors
def intervene(db, sample_id, method, top_k, lr, sigma, n_neighbors, seed, device, no_record, fmt, wait):
    """Prune, perturb or fine-tune a sample's salient filters (on a copy of the model) against random and least-salient filters."""
    from .interventions import check_k, intervene as run, new_run_id, sample_records
    from .query import open as open_db

    _check_recordable(db, no_record)
    with open_db(db) as d:
        d.sample(sample_id)  # an unknown id or a bad k fails before the model is loaded
        check_k(top_k, d.manifest.n_units)
        bench = _bench(d, device)
        result = run(bench, sample_id, method, top_k=top_k, lr=lr, sigma=sigma, seed=seed, n_neighbors=n_neighbors)
        run_id = new_run_id()
        result["run_id"] = run_id
        result["recorded"] = _record(d, sample_records(result, run_id=run_id, weights_sha256=bench.weights_sha256), no_record, wait)
        layout = bench.layout
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=_json_default))
        return
    rows = []
    for a in result["attempts"]:
        if fmt == "csv":
            row = {k_: a[k_] for k_ in ("filters", "k", "unit_ids", "delta_true_conf", "delta_pred_conf", "true_conf_after",
                                        "pred_conf_after", "pred_name_after", "correct_after", "grad_scale")}
            if method == "finetune":
                row.update({k_: a[k_] for k_ in ("nb_wrong_before", "nb_corrected", "nb_corrected_share", "nb_broken",
                                                 "nb_delta_true_conf")})
        else:
            row = {"filters": a["filters"], "k": a["k"], "units": _units_cell(layout, a["unit_ids"], 2),
                   "d_true": a["delta_true_conf"], "d_pred": a["delta_pred_conf"], "p_true_after": a["true_conf_after"],
                   "pred_after": a["pred_name_after"], "correct_after": a["correct_after"]}
            if method == "finetune":
                row.update({"scale": a["grad_scale"], "nb_fixed": f"{a['nb_corrected']}/{a['nb_wrong_before']}",
                            "nb_broken": a["nb_broken"], "nb_d_true": a["nb_delta_true_conf"]})
        rows.append(row)
    if fmt == "csv":
        emit_rows(rows, "csv")
        return
    s = result["sample"]
    what = {"prune": "weights zeroed, biases kept", "perturb": f"Gaussian noise, sigma {sigma:g}",
            "finetune": f"one SGD step of size {lr:g} on the sample's loss; controls rescaled to the salient gradient norm"}[method]
    click.echo(f"sample {s['sample_id']} ({s['split']}, {s['key']}): label {s['label_name']}, predicted {s['pred_name']} "
               f"({'correct' if s['baseline_correct'] else 'wrong'}); p(true) {s['true_conf']:.3f}, p(pred) {s['pred_conf']:.3f}")
    emit_rows(rows, "table", title=f"{method} of {result['k']} filters ({what})")
    legend = "d_true / d_pred: change in the confidence of the true class / of the original prediction"
    if method == "finetune":
        legend += (f"; scale: gradient rescaling factor; nb_*: its {len(result['neighbors'])} nearest saliency neighbours "
                   "(nb_fixed: misclassified ones now correct, nb_broken: correct ones now wrong)")
    click.echo(legend)
    tail = f"recorded {len(result['attempts'])} attempts in the interventions table (run {run_id})" if result["recorded"] else "not recorded"
    click.echo(f"edits made on a copy of the model, restored after each attempt; the weights file is unchanged; {tail}")


@cli.command()
@db_option
@click.option("--split", required=True, help="The split whose samples are intervened on.")
@_method_option(("prune", "perturb", "finetune"))
@click.option("--ks", help="Comma-separated numbers of filters to edit (default: those of 1,5,10,25,50 that fit the model).")
@click.option("--limit", type=int, help="A seeded random subset of this many samples (default: all).")
@click.option("--correct", is_flag=True, help="Correctly classified samples instead of mistakes (appendix A.2).")
@click.option("--bootstrap", default=1000, show_default=True, type=int, help="Bootstrap resamples for the 95% intervals.")
@click.option("--out", type=click.Path(dir_okay=False), help="FILE.png: the figure (each metric against k, per filter choice).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="finetune: step size.")
@click.option("--sigma", default=1e-3, show_default=True, type=float, help="perturb: noise standard deviation.")
@click.option("--neighbors", "n_neighbors", default=10, show_default=True, type=int, help="finetune: saliency neighbours scored per sample.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@_device_option
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@_handle_errors
def validate(db, split, method, ks, limit, correct, bootstrap, out, lr, sigma, n_neighbors, seed, device, fmt, quiet, as_of):
    """Do the salient filters matter? An intervention on every mistake of a split over a range of k, vs random and least-salient filters."""
    from .explain import check_out_file
    from .interventions import flat_rows, parse_ks, validate as run, validate_figure
    from .query import open as open_db

    if out is not None:
        check_out_file(out)
    progress = _progress(fmt, quiet)
    try:
        with open_db(db, as_of=as_of) as d:
            k_list = parse_ks(ks, d.manifest.n_units)
            d.ids_where(split=split)  # an unknown split fails before the model is loaded
            result = run(_bench(d, device), split, method, k_list, correct=correct, limit=limit, n_boot=bootstrap, seed=seed,
                         lr=lr, sigma=sigma, n_neighbors=n_neighbors, progress=progress)
    finally:
        _close(progress)
    if out is not None:
        result["out"] = str(validate_figure(result, out))
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=_json_default))
        return
    if fmt == "csv":
        emit_rows(flat_rows(result), "csv")
        return
    rows = []
    for r in result["rows"]:
        row = {"k": "all" if r["k"] is None else r["k"], "filters": r["filters"], "n": r["delta_true_conf"]["n"],
               "d_true_conf [95% CI]": _ci(r["delta_true_conf"]),
               ("corrected" if result["which"] == "misclassified" else "still correct") + " [95% CI]": _ci(r["correct_after"], pct=True),
               "d_pred_conf [95% CI]": _ci(r["delta_pred_conf"])}
        if method == "finetune":
            row["nb corrected [95% CI]"] = _ci(r["nb_corrected_share"], pct=True)
            row["nb d_true_conf [95% CI]"] = _ci(r["nb_delta_true_conf"])
        rows.append(row)
    extra = {"finetune": f", step {lr:g}", "perturb": f", sigma {sigma:g}"}.get(method, "")
    emit_rows(rows, "table", title=f"{method} on {result['samples']} {result['which']} samples of {split}{extra}; "
                                   f"{bootstrap} bootstrap resamples")
    for p in result["paired_delta_true_conf"]:
        click.echo(f"k={p['k']}: d_true_conf salient - random {_ci(p['salient_minus_random'])}, "
                   f"salient - least salient {_ci(p['salient_minus_least_salient'])} (paired)")
    if result["baseline_mismatches"]:
        click.echo(f"note: {result['baseline_mismatches']} samples are classified differently by the reloaded model than stored")
    if out is not None:
        click.echo(f"wrote {result['out']}")


@cli.command()
@db_option
@click.option("--split", help="Only samples of this split (default: all).")
@click.option("--limit", default=100, show_default=True, type=int, help="A seeded random subset of this many samples.")
@click.option("--eps", default="0.001,0.01,0.1", show_default=True, help="Comma-separated radii of the L2 ball around the conv weights.")
@click.option("--steps", default=10, show_default=True, type=int, help="Projected gradient steps.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (bootstrap, k-means, sample subsets, noise).")
@_device_option
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@as_of_option
@_handle_errors
def adversarial(db, split, limit, eps, steps, seed, device, fmt, quiet, as_of):
    """Adversarial parameter saliency (A.7): |theta* - theta0| per filter after a max/min-loss attack in an L2 ball, vs the plain profile."""
    from .errors import QueryError
    from .interventions import adversarial_agreement
    from .query import open as open_db

    try:
        eps_list = [float(v) for v in eps.split(",") if v.strip()]
    except ValueError:
        raise QueryError(f"--eps {eps!r} is not a comma-separated list of numbers such as 0.001,0.01,0.1") from None
    if not eps_list or any(not (e > 0 and e != float("inf")) for e in eps_list):
        raise QueryError(f"--eps {eps!r}: give positive numbers such as 0.001,0.01,0.1")
    progress = _progress(fmt, quiet)
    try:
        with open_db(db, as_of=as_of) as d:
            if split is not None:
                d.ids_where(split=split)
            result = adversarial_agreement(_bench(d, device), split=split, limit=limit, eps=eps_list, steps=steps,
                                           seed=seed, progress=progress)
    finally:
        _close(progress)
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=_json_default))
        return
    emit_rows(result["rows"], fmt, title=(
        f"adversarial vs plain parameter saliency, {result['samples']} samples, {steps} projected gradient steps. "
        "*_raw: |theta*-theta0| per filter vs the stored raw profile; *_std: both standardised with the database's "
        "statistics (the adversarial profile first scaled by |grad L|/eps)") if fmt == "table" else None)


@cli.command("fix-group")
@db_option
@click.option("--cluster", required=True, type=int, help="Error group (from `saliencydb clusters`).")
@_method_option(("prune", "finetune"))
@click.option("--top-k", default=10, show_default=True, type=int, help="Number of the group's most blamed filters edited.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="finetune: step size (on the summed loss of the group).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random control.")
@_device_option
@click.option("--no-record", is_flag=True, help="Do not append the attempts to the interventions table.")
@format_option
@wait_option
@_handle_errors
def fix_group(db, cluster, method, top_k, lr, seed, device, no_record, fmt, wait):
    """Edit an error group's most blamed filters (and controls), re-score every cluster and the split: corrected, broken, net accuracy."""
    from .interventions import check_k, fix_group as run, group_records, new_run_id
    from .interventions.groups import group_members
    from .query import open as open_db

    _check_recordable(db, no_record)
    with open_db(db) as d:
        group_members(d, cluster)  # an unknown cluster or a bad k fails before the model is loaded
        check_k(top_k, d.manifest.n_units)
        bench = _bench(d, device)
        result = run(bench, cluster, method, top_k=top_k, lr=lr, seed=seed)
        run_id = new_run_id()
        result["run_id"] = run_id
        result["recorded"] = _record(d, group_records(result, run_id=run_id, weights_sha256=bench.weights_sha256), no_record, wait)
        layout = bench.layout
    if fmt == "json":
        click.echo(json.dumps(result, indent=2, default=_json_default))
        return
    rows = [{"filters": a["filters"], "k": a["k"],
             "units": a["unit_ids"] if fmt == "csv" else _units_cell(layout, a["unit_ids"], 4),
             "corrected_in_group": f"{a['corrected']}/{a['group_wrong_before']}" if fmt == "table" else a["corrected"],
             "broken_elsewhere": a["broken"], "fixed_elsewhere": a["fixed_elsewhere"],
             "accuracy_before": a["accuracy_before"], "accuracy_after": a["accuracy_after"],
             "net_accuracy_change": a["net_accuracy_change"], "d_true_conf_group": a["delta_true_conf"]}
            for a in result["attempts"]]
    if fmt == "csv":
        emit_rows(rows, "csv")
        return
    what = {"prune": "weights zeroed, biases kept",
            "finetune": f"one SGD step of size {lr:g} on the group's summed loss; controls rescaled to its gradient norm"}[method]
    emit_rows(rows, "table", title=f"fixing cluster {cluster} ({len(result['members'])} samples) by {method} of {result['k']} filters "
                                   f"({what}); scored on {result['scored']} samples of {', '.join(result['splits'])}")
    per_cluster = [{"cluster": c["cluster"], "target": "*" if c["target"] else "", "size": c["size"], "wrong before": c["wrong_before"],
                    **{f"wrong after {a['filters']}": c[f"wrong_after_{a['filters']}"] for a in result["attempts"]}}
                   for c in result["clusters"]]
    emit_rows(per_cluster, "table", title="mistakes per cluster before and after each attempt (* the target)")
    tail = f"recorded {len(result['attempts'])} attempts in the interventions table (run {run_id})" if result["recorded"] else "not recorded"
    click.echo(f"edits made on a copy of the model, restored after each attempt; the weights file is unchanged; {tail}")


def main() -> None:
    cli(prog_name="saliencydb")


if __name__ == "__main__":
    main()
