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

    return wrapper


def format_option(fn):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format.")(fn)


def db_option(fn):
    return click.option("--db", required=True, type=click.Path(file_okay=False), help="Database directory.")(fn)


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
            w.writerow({k: _cell(v) for k, v in r.items()})
        click.echo(buf.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*[_cell(r[c]) for c in columns])
    Console(width=max(100, min(200, _terminal_width()))).print(table)


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 20)).columns


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
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
    return str(v)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="saliencydb")
def cli():
    """saliencydb: a database of parameter-space saliency profiles.

    Index a dataset once, then ask which samples break the same filters of your
    model, and whether they make the same mistakes.
    """


@cli.command()
@db_option
@click.option("--model", "model_spec", help="Model spec: torchvision:NAME, torchscript:PATH or python:MODULE:FACTORY. Needed to create a database.")
@click.option("--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...) or a local state-dict file.")
@click.option("--num-classes", type=int, help="Number of classes, when it cannot be read off the weights.")
@click.option("--transform", help="Input transform: imagenet, mnist, cifar or key=value list (mode=RGB,resize=256,crop=224,mean=a/b/c,std=a/b/c).")
@click.option("--data", "data_spec", required=True, help="Data spec: imagefolder:PATH, csv:PATH, torchvision:NAME:ROOT[:train|test], builtin:mnist5k[:train|val].")
@click.option("--split", default="val", show_default=True, help="Name of the split the samples go into.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Samples per batched forward/backward pass.")
@click.option("--limit", type=int, help="Profile at most this many samples of the split (a later run without it continues).")
@click.option("--workers", type=int, help="DataLoader worker processes (default: up to 4).")
@click.option("--index", "index_kind", type=click.Choice(["flat", "ivf"]), default="flat", show_default=True, help="FAISS index kind: exact flat, or IVF for large databases.")
@click.option("--commit-every", "part_rows", default=1024, show_default=True, type=int, help="Samples per committed Parquet part (the unit of resumption).")
@click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_handle_errors
def index(db, model_spec, weights, num_classes, transform, data_spec, split, device, batch_size, limit, workers, index_kind, part_rows, wait, quiet):
    """Profile every sample of a dataset into a database (creates it; resumes an interrupted run)."""
    from .indexer import Indexer
    from .progress import NullProgress, RichProgress

    progress = NullProgress() if quiet else RichProgress()
    try:
        report = Indexer(db, model=model_spec, weights=weights, transform=transform, num_classes=num_classes,
                         device=device, batch_size=batch_size, workers=workers, index_kind=index_kind, part_rows=part_rows,
                         progress=progress, wait=wait).run(data_spec, split=split, limit=limit)
    finally:
        if not quiet:
            progress.close()
    acc = f", accuracy {report.accuracy:.2%}" if report.accuracy is not None else ""
    click.echo(f"{split}: {report.added} samples added, {report.skipped} already there, {report.failed} failed{acc} "
               f"({report.seconds:.1f}s)")
    for key, reason in report.failures[:10]:
        click.echo(f"  failed: {key}: {reason}", err=True)
    if report.failed:
        sys.exit(2)


@cli.command()
@db_option
@format_option
@_handle_errors
def info(db, fmt):
    """Summarise a database: model, units, splits, accuracy, index state."""
    from .query import open as open_db

    with open_db(db) as d:
        summary = d.info()
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=_json_default))
        return
    rows = [{"split": name, **{k: v for k, v in s.items()}} for name, s in summary["splits"].items()]
    if fmt == "csv":
        emit_rows(rows, fmt)
        return
    click.echo(f"database   {summary['path']} (format {summary['format_version']}, commit {summary['commit']})")
    click.echo(f"model      {summary['model']['spec']}  weights {summary['model']['weights'] or '-'}  "
               f"sha256 {summary['model']['weights_sha256'][:12]}  classes {summary['model']['num_classes']}")
    click.echo(f"units      {summary['units']['count']} {summary['units']['kind']} units in {summary['units']['layers']} layers; "
               f"features {summary['feature_dim']}")
    st = summary["statistics"]
    click.echo("statistics " + ("none yet" if st is None else f"over {', '.join(st['splits'])} ({st['count']} samples)"
                                + (", frozen" if st["frozen"] else "")))
    idx = ", ".join(f"{k}: {v['kind']} {v['ntotal']}" + (" (stale)" if v["stale"] else "") for k, v in summary["indexes"].items())
    click.echo(f"indexes    {idx or 'none'}")
    emit_rows(rows, "table")


@cli.command()
@db_option
@click.argument("query")
@format_option
@_handle_errors
def sql(db, query, fmt):
    """Run a read-only SQL query over the database's views (samples, units, knn, clusters, ingests, failures)."""
    from .query import open as open_db

    with open_db(db) as d:
        table = d.sql(query)
    rows = table.to_pylist()
    emit_rows(rows, fmt)


def main() -> None:
    cli(prog_name="saliencydb")


if __name__ == "__main__":
    main()
