"""Write the report: open the database, gather what it found, render it as one self-contained HTML
page, and put the page in place atomically."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import QueryError
from ..progress import NullProgress
from ..query import open as open_db
from ..saliency.input_space import check_channel_reduce
from ..storage.files import write_atomic
from .gather import gather
from .render import render


def write_report(db_path, out_path, *, progress=None, max_mistakes: int = 40, channel_reduce: str = "max-abs") -> Path:
    """Write a self-contained HTML report of the database at ``db_path`` to ``out_path``.

    Every picture is embedded as a PNG data URI and the style sheet is inline: the file opens from
    disk in any browser, with no scripts and no other files. It is written to a temporary file next
    to ``out_path`` and renamed over it, so readers never see half a report. Returns ``out_path``.
    ``channel_reduce``: how the mistakes' input-space maps reduce a pixel's colour channels, ``max-abs`` or
    ``abs-max`` (``saliency.input_space.reduce_channels``).
    """
    if isinstance(max_mistakes, bool) or not isinstance(max_mistakes, int) or max_mistakes < 0:
        raise QueryError(f"max_mistakes must be a non-negative integer, got {max_mistakes!r}")
    check_channel_reduce(channel_reduce)
    progress = progress or NullProgress()
    out = Path(out_path)
    with open_db(db_path) as db:
        data = gather(db, progress=progress, max_mistakes=max_mistakes, channel_reduce=channel_reduce)
    page = render(data, progress=progress)
    os.makedirs(out.parent, exist_ok=True)
    write_atomic(out, page.encode("utf-8"))
    return out
