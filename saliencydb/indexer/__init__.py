"""The indexing job: a data source -> batched profiles -> Parquet parts, statistics and FAISS
indexes, written through ``storage.DatabaseWriter`` (docs/architecture.md).

One module per step: ``plan`` (open the database, list what is still to do), ``profile``
(batches -> rows), ``commit`` (parts, statistics, indexes), with ``job`` running them on one
process and ``sharded`` on every rank of a torchrun job; ``restat`` recomputes the statistics.
The modules import torch and are loaded on first use.
"""

from ..lazy import lazy_attributes

__all__ = ["IndexOptions", "Indexer", "JobReport", "RestatResult", "restat", "torchrun_job", "update_indexes"]
__getattr__ = lazy_attributes(__name__, {"IndexOptions": ".job", "Indexer": ".job", "JobReport": ".job", "RestatResult": ".restat",
                                         "restat": ".restat", "update_indexes": ".commit",
                                         "torchrun_job": ".sharded"})
