"""The ``interventions`` table: one row per attempt (``INTERVENTIONS_SCHEMA``), appended in one commit per run."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pyarrow as pa

from ..schemas import INTERVENTIONS_SCHEMA

TABLE = "interventions"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def attempt_record(*, run_id: str, command: str, method: str, scope: str, attempt, seed: int,
                   weights_sha256: str, lr: float | None = None, sigma: float | None = None,
                   sample_id: int | None = None, cluster: int | None = None, cluster_run: str | None = None,
                   split: str | None = None, targets: int, targets_wrong_before: int, corrected: int,
                   broken: int | None = None, fixed_elsewhere: int | None = None, scored: int,
                   accuracy_before: float | None = None, accuracy_after: float | None = None,
                   delta_true_conf: float, delta_pred_conf: float) -> dict:
    """One row of the interventions table for the attempt ``attempt`` (an ``Attempt`` or ``GroupAttempt``: its
    ``k``, ``filters``, ``unit_ids``, ``grad_scale``)."""
    return {
        "attempt_id": uuid.uuid4().hex[:12], "run_id": run_id, "time": datetime.now(timezone.utc),
        "command": command, "method": method, "scope": scope, "sample_id": sample_id, "cluster": cluster,
        "cluster_run": cluster_run, "split": split, "k": attempt.k, "filters": attempt.filters,
        "unit_ids": [int(u) for u in attempt.unit_ids], "lr": lr if method == "finetune" else None,
        "sigma": sigma if method == "perturb" else None, "grad_scale": attempt.grad_scale, "seed": int(seed),
        "targets": int(targets), "targets_wrong_before": int(targets_wrong_before), "corrected": int(corrected),
        "broken": broken, "fixed_elsewhere": fixed_elsewhere, "scored": int(scored),
        "accuracy_before": accuracy_before, "accuracy_after": accuracy_after,
        "delta_true_conf": float(delta_true_conf), "delta_pred_conf": float(delta_pred_conf),
        "weights_sha256": weights_sha256,
    }


def attempts_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=INTERVENTIONS_SCHEMA)


def write_attempts(db_path, records: list[dict], *, wait: bool = False) -> str | None:
    """Append the rows to the database's interventions table in one commit; returns the part's file."""
    if not records:
        return None
    from ..storage.derived import DerivedWriter

    with DerivedWriter(db_path, wait=wait, operation=f"{records[0]['command']} (interventions)") as w:
        return w.append(TABLE, attempts_table(records))
