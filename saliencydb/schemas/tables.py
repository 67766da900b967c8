"""Arrow schemas of every table a database holds. The on-disk format is specified here
and in docs/database-format.md; nothing else defines a column."""

from __future__ import annotations

import pyarrow as pa

from .profiles import DEFAULT_PROFILE_DTYPE, PROFILE_EXP

FORMAT_VERSION = 2  # 2: versions/, pins/, per-file checksums, derived-table bases (format 1 is read and upgraded)


def samples_schema(n_units: int, feature_dim: int, profile_dtype: str = DEFAULT_PROFILE_DTYPE) -> pa.Schema:
    """One row per profiled sample; ``raw_profile`` is the unstandardised profile. A model without a
    feature vector (``feature_dim`` 0: a TorchScript file takes no hooks) has no ``feature`` column.
    A float16 database (``profile_dtype``, schemas.profiles) stores ``raw_profile`` as halffloat
    ``raw * 2**profile_exp``, with the int16 ``profile_exp`` column after it."""
    feature = [pa.field("feature", pa.list_(pa.float32(), feature_dim), nullable=False)] if feature_dim > 0 else []
    half = profile_dtype == "float16"
    profile = [pa.field("raw_profile", pa.list_(pa.float16() if half else pa.float32(), n_units), nullable=False)]
    profile += [pa.field(PROFILE_EXP, pa.int16(), nullable=False)] if half else []
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
            *profile,
            *feature,
            # ||dL/dlogits||_2 (the zscore-dlogit normalisation's scale); null in parts written before it was stored
            pa.field("dlogit_norm", pa.float32()),
            # the sentence of a text sample (data.text); null for images, and in parts written before it was stored
            pa.field("text", pa.string()),
        ]
    )


def scan_schema(schema: pa.Schema) -> pa.Schema:
    """The samples schema a scan reads the parts with: a float16 ``raw_profile`` read as float32 (Arrow
    casts on scan; DuckDB cannot scan halffloat). The values are still the stored ``raw * 2**profile_exp``."""
    i = schema.get_field_index("raw_profile")
    field = schema.field(i)
    return schema.set(i, field.with_type(pa.list_(pa.float32(), field.type.list_size)))


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

INTERVENTIONS_SCHEMA = pa.schema(
    [
        # one row per attempt: one model edit (a filter choice of one command run), scored against its baseline
        pa.field("attempt_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),  # the command run the attempt belongs to
        pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("command", pa.string(), nullable=False),  # intervene | fix-group
        pa.field("method", pa.string(), nullable=False),  # prune | perturb | finetune
        pa.field("scope", pa.string(), nullable=False),  # sample | cluster
        pa.field("sample_id", pa.int64()),  # scope sample
        pa.field("cluster", pa.int32()),  # scope cluster
        pa.field("cluster_run", pa.string()),  # the clustering run the cluster number belongs to
        pa.field("split", pa.string()),  # split(s) re-scored, comma-separated
        pa.field("k", pa.int32()),  # filters edited; null for the whole-network step
        pa.field("filters", pa.string(), nullable=False),  # salient | random | least_salient | whole_network
        pa.field("unit_ids", pa.list_(pa.int32()), nullable=False),  # empty for the whole-network step
        pa.field("lr", pa.float64()),  # finetune step size
        pa.field("sigma", pa.float64()),  # perturb noise standard deviation
        pa.field("grad_scale", pa.float64()),  # finetune: factor that gave the gradient the salient filters' norm
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("targets", pa.int64(), nullable=False),  # samples the attempt tried to fix (1, or the group size)
        pa.field("targets_wrong_before", pa.int64(), nullable=False),
        pa.field("corrected", pa.int64(), nullable=False),  # targets wrong before, right after
        pa.field("broken", pa.int64()),  # previously correct samples outside the targets now wrong (null: not scored)
        pa.field("fixed_elsewhere", pa.int64()),  # previously wrong samples outside the targets now right
        pa.field("scored", pa.int64(), nullable=False),  # samples evaluated after the edit
        pa.field("accuracy_before", pa.float64()),  # over the re-scored split(s); null when not scored
        pa.field("accuracy_after", pa.float64()),
        pa.field("delta_true_conf", pa.float64(), nullable=False),  # mean over the targets
        pa.field("delta_pred_conf", pa.float64(), nullable=False),  # mean, confidence of each target's original prediction
        pa.field("weights_sha256", pa.string(), nullable=False),
    ]
)


# the tables listed under ``tables`` in the manifest, by name
TABLE_SCHEMAS = {"failures": FAILURES_SCHEMA, "ingests": INGESTS_SCHEMA, "knn": KNN_SCHEMA, "clusters": CLUSTERS_SCHEMA,
                 "blame": BLAME_SCHEMA, "triage": TRIAGE_SCHEMA, "interventions": INTERVENTIONS_SCHEMA}
