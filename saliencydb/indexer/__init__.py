"""The pipeline: batches -> profiles -> Parquet parts + statistics -> FAISS indexes."""

from .pipeline import Indexer, JobReport
from .writer import DatabaseWriter

__all__ = ["Indexer", "JobReport", "DatabaseWriter"]
