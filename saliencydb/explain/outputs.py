"""Output paths of explanation figures, checked before any model work (no torch needed)."""

from __future__ import annotations

from pathlib import Path

from ..errors import QueryError

IMAGE_SUFFIXES = (".png",)


def check_out_file(path: str | Path, suffixes=IMAGE_SUFFIXES) -> Path:
    """The output file path, refused early (before any model work) when it cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise QueryError(f"--out {str(path)!r} must end with {' or '.join(suffixes)}")
    if path.is_dir():
        raise QueryError(f"--out {str(path)!r} is a directory; give a file name such as {path / 'explain.png'}")
    if not path.parent.is_dir():
        raise QueryError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist; create it first")
    return path
