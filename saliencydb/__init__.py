"""saliencydb: a database of parameter-space saliency profiles."""

__version__ = "0.1.0"


def open(path, *, as_of: int | None = None, normalisation: str | None = None):  # noqa: A001
    """Open the database at ``path`` for reading: its current version, or ``as_of`` a kept
    commit, pinned until ``close()``; ``normalisation``: see the profiles through another
    profile normalisation than the database's own. See :class:`saliencydb.query.Database`."""
    from .query import open as _open

    return _open(path, as_of=as_of, normalisation=normalisation)
