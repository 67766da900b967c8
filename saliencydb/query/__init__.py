"""The query layer: the Database object, neighbours, shared-mistake metrics, clusters, SQL."""

from .database import Database, open

__all__ = ["Database", "open"]
