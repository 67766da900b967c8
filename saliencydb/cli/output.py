"""What every command shares: the options, one-line errors, output formats (table, JSON, CSV) and progress bars."""

from __future__ import annotations

import csv
import io
import json
import sys
from contextlib import contextmanager
from functools import wraps

import click

from ..errors import SaliencyDBError

FORMATS = ("table", "json", "csv")


def handle_errors(fn):
    """Library errors become one line on stderr and exit code 1; no traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaliencyDBError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; committed work is kept and a rerun resumes") from None
        except BrokenPipeError:
            quiet_broken_pipe()
        except OSError as e:  # a file outside the database (an --out path, an image, the weights), or the disk
            from ..storage.files import is_disk_full

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


def quiet_broken_pipe() -> None:
    """The reader of our output went away (``saliencydb info | head``): end quietly, as ``cat`` does, with no
    "Broken pipe" line and no error when Python flushes stdout at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor (a test's captured output): nothing is flushed to it at exit
    sys.exit(0)


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 version', '2 versions', '0 versions' (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def format_option(fn):
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format.")(fn)


def db_option(fn):
    return click.option("--db", required=True, type=click.Path(file_okay=False), help="Database directory.")(fn)


def as_of_option(fn):
    return click.option("--as-of", "as_of", type=click.IntRange(min=0), metavar="COMMIT",
                        help="Read a kept earlier version (its commit number, from `saliencydb versions`).")(fn)


def normalisation_option(fn):
    return click.option("--normalisation", type=click.Choice(["zscore", "zscore-unitnorm", "zscore-dlogit"]),
                        help="See the profiles through this normalisation instead of the database's own: its statistics "
                             "are computed over the reference splits on the fly, neighbours use an exact flat search, "
                             "and nothing is stored (docs/method.md, 'What the numbers mean').")(fn)


def wait_option(fn):
    return click.option("--wait", is_flag=True, help="Wait for another writer to finish instead of failing.")(fn)


def notes(lines) -> None:
    for line in lines:
        click.echo(line, err=True)


def emit(result, fmt: str) -> None:
    """A typed result (``saliencydb.results.Result``) as its JSON document or its rows as CSV."""
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2, default=json_default))
    else:
        emit_rows(result.rows(), fmt)


@contextmanager
def progress_bars(enabled: bool):
    """The one way commands show progress: bars on the terminal when ``enabled``, nothing otherwise;
    the bars are closed however the command ends."""
    from ..progress import NullProgress, RichProgress

    progress = RichProgress() if enabled else NullProgress()
    try:
        yield progress
    finally:
        if enabled:
            progress.close()


def emit_rows(rows: list[dict], fmt: str, title: str | None = None) -> None:
    """Print a list of flat dicts as a table, JSON (a list of objects) or CSV."""
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=json_default))
        return
    columns = list(rows[0]) if rows else []
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: cell(v, digits=None) for k, v in r.items()})
        click.echo(buf.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    texts = [[cell(r[c]) for c in columns] for r in rows]
    table = Table(title=title, show_lines=False)
    for i, c in enumerate(columns):
        numbers = [t[i] for t in texts if t[i] != ""]
        if numbers and all(_is_number(t) for t in numbers):  # a number is never split across lines: -0.8406 / 94
            table.add_column(Text(c), overflow="fold", no_wrap=True, min_width=max(map(len, numbers)))
        else:
            table.add_column(Text(c), overflow="fold")
    for t in texts:  # plain Text: a value such as '[infinity]' is shown, not read as Rich markup
        table.add_row(*[Text(v) for v in t])
    Console(width=terminal_width(), soft_wrap=False).print(table)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def ci_text(stat, pct: bool = False) -> str | None:
    """'mean [low, high]' of a bootstrap estimate (anything with ``mean``, ``low``, ``high``); None without a mean."""
    if stat.mean is None:
        return None
    f = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:+.3f}")
    return f"{f(stat.mean)} [{f(stat.low)}, {f(stat.high)}]"


def pylist(table) -> list[dict]:
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


PIPE_WIDTH = 100_000  # written to a file or a pipe: no terminal to fit, so no cell is ever wrapped


def terminal_width() -> int:
    """The terminal's width; written to a file or a pipe, as wide as the table is (nothing wrapped: a program
    reading the output sees each row on one line)."""
    import shutil

    if sys.stdout.isatty():
        return max(40, shutil.get_terminal_size((120, 20)).columns)
    return PIPE_WIDTH


def cell(v, digits: int | None = 6) -> str:
    """A value as text: floats with ``digits`` significant digits (enough for similarities such
    as 0.999989 and 0.999984 to differ), or all of them (CSV); -0 as 0."""
    if isinstance(v, float):
        if v == 0:
            v = 0.0
        return repr(v) if digits is None else f"{v:.{digits}g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=json_default)
    return "" if v is None else str(v)


def json_default(v):
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


def text_format_option(fn):
    """--format for commands that write a file: csv prints their main table's rows."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format (csv: the rows of the main table).")(fn)
