"""The storage layer: the one place that reads and writes a database directory.

Manifest and kept versions (``versions``), the writer lock and commits (``writer``), pinned
reads (``reader``), file creation and checksums (``files``), and the operator's tools
(``maintenance``: history, restore, vacuum, verify). The indexing pipeline and the query
layer both sit on top of it; it imports neither (docs: docs/database-format.md).
"""

from .files import TMP_SUFFIX, new_file, write_parquet
from .maintenance import (Damage, RestoreResult, VacuumResult, VerifyResult, VersionInfo, history, parse_duration, restore,
                          vacuum, verify)
from .reader import (Snapshot, batch_rows_for, committed_keys, fixed_list_to_numpy, iter_part_batches, iter_profiles, iter_raw_profiles, profile_columns,
                     profiles_to_numpy, read_index, read_stats, write_index)
from .versions import is_database, list_versions, read_current, read_version
from .writer import DATA_DIRS, LOCK, DatabaseWriter

__all__ = [
    "TMP_SUFFIX", "new_file", "write_parquet", "Damage", "RestoreResult", "VacuumResult", "VerifyResult", "VersionInfo",
    "history", "parse_duration", "restore", "vacuum", "verify", "Snapshot", "committed_keys", "fixed_list_to_numpy",
    "batch_rows_for", "iter_part_batches", "iter_profiles", "iter_raw_profiles", "profile_columns", "profiles_to_numpy", "read_index", "read_stats", "write_index", "is_database", "list_versions", "read_current",
    "read_version", "DATA_DIRS", "LOCK", "DatabaseWriter",
]
