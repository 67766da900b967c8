"""The indexing job: a data source -> batched profiles -> Parquet parts, statistics and FAISS
indexes, written through ``storage.DatabaseWriter`` (docs/architecture.md).

The job imports torch and is loaded on first use.
"""

from ..lazy import lazy_attributes

__all__ = ["Indexer", "JobReport", "restat", "update_indexes"]
__getattr__ = lazy_attributes(__name__, {"Indexer": ".pipeline", "JobReport": ".pipeline", "restat": ".pipeline",
                                         "update_indexes": ".pipeline"})
