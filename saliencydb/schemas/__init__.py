"""Arrow schemas of every table, the manifest and its format version."""

from .manifest import MANIFEST, TMP_SUFFIX, Manifest, now_iso, read_manifest, write_atomic, write_manifest
from .tables import (
    BLAME_SCHEMA,
    CLUSTERS_SCHEMA,
    FAILURES_SCHEMA,
    FORMAT_VERSION,
    INGESTS_SCHEMA,
    INTERVENTIONS_SCHEMA,
    KNN_SCHEMA,
    TRIAGE_SCHEMA,
    UNITS_SCHEMA,
    samples_schema,
)

__all__ = [
    "MANIFEST", "TMP_SUFFIX", "Manifest", "now_iso", "read_manifest", "write_atomic", "write_manifest",
    "BLAME_SCHEMA", "CLUSTERS_SCHEMA", "FAILURES_SCHEMA", "FORMAT_VERSION", "INGESTS_SCHEMA", "INTERVENTIONS_SCHEMA", "KNN_SCHEMA", "TRIAGE_SCHEMA", "UNITS_SCHEMA",
    "samples_schema",
]
