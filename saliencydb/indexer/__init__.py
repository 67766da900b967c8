"""The pipeline: batches -> profiles -> Parquet parts + statistics -> FAISS indexes.

The pipeline imports torch and is loaded on first use: the query layer needs only the
storage readers (``store``, ``vectors``) and starts without it.
"""

from ..lazy import lazy_attributes

__all__ = ["Indexer", "JobReport", "DatabaseWriter", "restat", "update_indexes"]
__getattr__ = lazy_attributes(__name__, {"Indexer": ".pipeline", "JobReport": ".pipeline", "restat": ".pipeline",
                                         "update_indexes": ".pipeline", "DatabaseWriter": "..storage"})
