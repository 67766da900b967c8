"""saliencydb: a database of parameter-space saliency profiles."""

__version__ = "0.1.0"


def open(path):  # noqa: A001
    """Open the database at ``path`` for reading; see :class:`saliencydb.query.Database`."""
    from .query import open as _open

    return _open(path)
