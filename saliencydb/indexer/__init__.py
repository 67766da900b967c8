"""The pipeline: batches -> profiles -> Parquet parts + statistics -> FAISS indexes.

The pipeline imports torch and is loaded on first use: the query layer needs only the
storage readers (``store``, ``vectors``) and starts without it.
"""

import importlib

_LAZY = {"Indexer": ".pipeline", "JobReport": ".pipeline", "restat": ".pipeline", "update_indexes": ".pipeline",
         "DatabaseWriter": ".writer"}

__all__ = ["Indexer", "JobReport", "DatabaseWriter", "restat", "update_indexes"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
