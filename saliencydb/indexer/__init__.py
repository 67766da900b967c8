"""The pipeline: batches -> profiles -> Parquet parts + statistics -> FAISS indexes."""

from .pipeline import Indexer, JobReport, restat, update_indexes
from .writer import DatabaseWriter

__all__ = ["Indexer", "JobReport", "DatabaseWriter", "restat", "update_indexes"]
