"""Typed results: every library call that answers a question returns a dataclass derived from
``Result``, never a nested dict (docs/architecture.md, "Results").

- ``to_dict()`` is the documented JSON document (what ``--format json`` prints), its keys in
  field order; nested results become dicts too.
- ``rows()`` is the flat rows of the command's table and CSV output.
- ``result["key"]`` reads a key of that JSON document, for scripts written against the
  dict results of earlier versions.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def plain(value: Any) -> Any:
    """A value with every result (or other dataclass) in it turned into its JSON dict."""
    if isinstance(value, Result) or (dataclasses.is_dataclass(value) and hasattr(value, "to_dict")):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Result:
    """Base of the typed results (a dataclass mixin)."""

    #: fields kept on the object but left out of the JSON document
    internal: tuple[str, ...] = ()
    #: fields left out of the JSON document while they are None (e.g. a text sample's sentence)
    optional: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in self.internal and not (f.name in self.optional and getattr(self, f.name) is None)}

    def rows(self) -> list[dict]:
        """The flat rows of the table/CSV output; a result without a table has one row, its document."""
        return [self.to_dict()]

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]
