"""Arrow schemas of every table a database holds. The on-disk format is specified here
and in the README's "Database layout"; nothing else defines a column."""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = 1


def samples_schema(n_units: int, feature_dim: int) -> pa.Schema:
    """One row per profiled sample; ``raw_profile`` is the unstandardised profile."""
    return pa.schema(
        [
            pa.field("sample_id", pa.int64(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("key", pa.string(), nullable=False),
            pa.field("label", pa.int32(), nullable=False),
            pa.field("label_name", pa.string()),
            pa.field("pred", pa.int32(), nullable=False),
            pa.field("pred_name", pa.string()),
            pa.field("correct", pa.bool_(), nullable=False),
            pa.field("loss", pa.float32(), nullable=False),
            pa.field("true_conf", pa.float32(), nullable=False),
            pa.field("pred_conf", pa.float32(), nullable=False),
            pa.field("raw_profile", pa.list_(pa.float32(), n_units), nullable=False),
            pa.field("feature", pa.list_(pa.float32(), feature_dim), nullable=False),
        ]
    )


UNITS_SCHEMA = pa.schema(
    [
        pa.field("unit_id", pa.int32(), nullable=False),
        pa.field("layer", pa.string(), nullable=False),
        pa.field("layer_index", pa.int32(), nullable=False),
        pa.field("channel", pa.int32(), nullable=False),
        pa.field("n_params", pa.int32(), nullable=False),
        pa.field("mean", pa.float64(), nullable=False),
        pa.field("std", pa.float64(), nullable=False),
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

INGESTS_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("command", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("start", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("end", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("added", pa.int64(), nullable=False),
        pa.field("skipped", pa.int64(), nullable=False),
        pa.field("failed", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
    ]
)

KNN_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("rank", pa.int16(), nullable=False),
        pa.field("neighbor_id", pa.int64(), nullable=False),
        pa.field("similarity", pa.float32(), nullable=False),
        pa.field("space", pa.string(), nullable=False),
    ]
)

CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("distance", pa.float32(), nullable=False),
        pa.field("run", pa.string(), nullable=False),
    ]
)

BLAME_SCHEMA = pa.schema(
    [
        pa.field("run", pa.string(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),
        pa.field("unit_id", pa.int32(), nullable=False),
        pa.field("layer", pa.string(), nullable=False),
        pa.field("channel", pa.int32(), nullable=False),
        pa.field("mean_z", pa.float32(), nullable=False),
    ]
)

TRIAGE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),  # -1: a new failure mode
        pa.field("similarity", pa.float32(), nullable=False),  # cosine to the nearest group's centroid
        pa.field("run", pa.string(), nullable=False),
    ]
)
