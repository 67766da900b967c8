"""Arrow schemas of every table, the manifest and its format version."""

from .profiles import (DEFAULT_PROFILE_DTYPE, PROFILE_DTYPES, PROFILE_EXP, decode_profiles, encode_profiles,
                       profile_bytes)
from .manifest import DERIVED_TABLES, MANIFEST, Manifest, manifest_problem, now_iso
from .tables import (
    BLAME_SCHEMA,
    CLUSTERS_SCHEMA,
    FAILURES_SCHEMA,
    FORMAT_VERSION,
    INGESTS_SCHEMA,
    INTERVENTIONS_SCHEMA,
    KNN_SCHEMA,
    TABLE_SCHEMAS,
    TRIAGE_SCHEMA,
    UNITS_SCHEMA,
    samples_schema,
    scan_schema,
)

__all__ = [
    "DERIVED_TABLES", "MANIFEST", "Manifest", "manifest_problem", "now_iso",
    "BLAME_SCHEMA", "CLUSTERS_SCHEMA", "FAILURES_SCHEMA", "FORMAT_VERSION", "INGESTS_SCHEMA", "INTERVENTIONS_SCHEMA", "KNN_SCHEMA", "TABLE_SCHEMAS", "TRIAGE_SCHEMA", "UNITS_SCHEMA",
    "samples_schema", "scan_schema",
    "DEFAULT_PROFILE_DTYPE", "PROFILE_DTYPES", "PROFILE_EXP", "decode_profiles", "encode_profiles",
    "profile_bytes",
]
