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
@click.option("--db", default="demo-db", show_default=True, type=click.Path(file_okay=False), help="Where to build the demo database (replaced if it is one).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where the trained demo model is cached (default ~/.cache/saliencydb).")
@click.option("--n-clusters", default=8, show_default=True, type=int)
@click.option("--no-report", is_flag=True, help="Skip the HTML report.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_handle_errors
def demo(db, cache_dir, n_clusters, no_report, quiet):
    """Train a small CNN on built-in real digits, index 2,000 held-out digits, and show what the database finds."""
    from pathlib import Path

    from .demo import run_demo, story
    from .progress import NullProgress, RichProgress

    progress = NullProgress() if quiet else RichProgress()
    try:
        result = run_demo(db, cache_dir=Path(cache_dir) if cache_dir else None, n_clusters=n_clusters,
                          progress=progress, report=not no_report)
    finally:
        if not quiet:
            progress.close()
    click.echo(story(result))


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


@cli.command()
@db_option
@click.option("--id", "sample_id", type=int, help="Id of a stored sample.")
@click.option("--image", type=click.Path(dir_okay=False), help="A new image file (profiled with the stored model, not stored).")
@click.option("--label", help="True label of --image: a class index or name.")
@click.option("-k", default=10, show_default=True, type=int, help="Number of neighbours.")
@click.option("--space", type=click.Choice(["saliency", "feature"]), default="saliency", show_default=True)
@click.option("--where", help="SQL predicate over samples restricting the candidates before the search, e.g. \"NOT correct\".")
@click.option("--split", help="Only neighbours from this split.")
@format_option
@_handle_errors
def neighbors(db, sample_id, image, label, k, space, where, split, fmt):
    """Nearest neighbours of a sample by saliency profile (or feature), with their labels and predictions."""
    from .query import open as open_db

    with open_db(db) as d:
        result = d.neighbors(sample_id, k=k, space=space, where=where, split=split, image=image, label=label)
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
@click.option("--seed", default=0, show_default=True, type=int)
@format_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@_handle_errors
def mistakes(db, k, bootstrap, seed, fmt, quiet):
    """Do saliency neighbours share mistakes? Per split, saliency vs feature space; writes knn.parquet."""
    from .progress import NullProgress, RichProgress
    from .query import open as open_db
    from .query.knn import report_rows

    progress = NullProgress() if quiet or fmt != "table" else RichProgress()
    try:
        with open_db(db) as d:
            report = d.mistakes(k, n_boot=bootstrap, seed=seed, progress=progress)
    finally:
        if isinstance(progress, RichProgress):
            progress.close()
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
@click.option("--n-clusters", default=8, show_default=True, type=int)
@click.option("--errors-only/--all", default=True, show_default=True, help="Cluster misclassified samples only, or all.")
@click.option("--split", help="Only samples of this split.")
@click.option("--seed", default=0, show_default=True, type=int)
@format_option
@_handle_errors
def clusters(db, n_clusters, errors_only, split, seed, fmt):
    """Group mistakes by saliency profile (k-means); writes clusters.parquet and the blame table."""
    from .query import open as open_db

    with open_db(db) as d:
        result = d.clusters(n_clusters, errors_only=errors_only, split=split, seed=seed)
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


def main() -> None:
    cli(prog_name="saliencydb")


if __name__ == "__main__":
    main()
