"""The ``interventions`` table: one row per attempt (``INTERVENTIONS_SCHEMA``), appended in one commit per run."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from ..schemas import INTERVENTIONS_SCHEMA

TABLE = "interventions"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class AttemptRun:
    """What every attempt of one run shares, the columns of its rows that do not depend on the attempt.

    The run: ``run_id``, the ``command`` (intervene, fix-group), the ``method`` and its ``scope`` (sample, cluster).
    The edit: its ``seed`` and the ``weights_sha256`` of the model copied; ``lr`` (finetune) and ``sigma`` (perturb).
    The target: ``sample_id`` (scope sample), or ``cluster`` of the clustering ``cluster_run``; its ``split``(s).
    """

    run_id: str
    command: str
    method: str
    scope: str
    seed: int = 0
    weights_sha256: str = ""
    lr: float | None = None
    sigma: float | None = None
    sample_id: int | None = None
    cluster: int | None = None
    cluster_run: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class AttemptScores:
    """What one attempt changed, the columns of its row that the attempt measured.

    Its targets: how many (``targets``), how many were wrong before, how many it ``corrected``.
    Elsewhere (None: not measured): the correct samples it ``broken``, the wrong ones it ``fixed_elsewhere``.
    Over everything scored: how many (``scored``), the accuracy before and after (None: not measured).
    On the targets: the mean change of the true-class and of the predicted-class confidence.
    """

    targets: int = 0
    targets_wrong_before: int = 0
    corrected: int = 0
    broken: int | None = None
    fixed_elsewhere: int | None = None
    scored: int = 0
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    delta_true_conf: float = 0.0
    delta_pred_conf: float = 0.0


def attempt_record(run: AttemptRun, attempt, scores: AttemptScores) -> dict:
    """One row of the interventions table for the attempt ``attempt`` (an ``Attempt`` or ``GroupAttempt``: its
    ``k``, ``filters``, ``unit_ids``, ``grad_scale``) of the run ``run``, with what it changed, ``scores``."""
    return {
        "attempt_id": uuid.uuid4().hex[:12], "run_id": run.run_id, "time": datetime.now(timezone.utc),
        "command": run.command, "method": run.method, "scope": run.scope, "sample_id": run.sample_id,
        "cluster": run.cluster, "cluster_run": run.cluster_run, "split": run.split, "k": attempt.k,
        "filters": attempt.filters, "unit_ids": [int(u) for u in attempt.unit_ids],
        "lr": run.lr if run.method == "finetune" else None, "sigma": run.sigma if run.method == "perturb" else None,
        "grad_scale": attempt.grad_scale, "seed": int(run.seed),
        "targets": int(scores.targets), "targets_wrong_before": int(scores.targets_wrong_before),
        "corrected": int(scores.corrected), "broken": scores.broken, "fixed_elsewhere": scores.fixed_elsewhere,
        "scored": int(scores.scored), "accuracy_before": scores.accuracy_before, "accuracy_after": scores.accuracy_after,
        "delta_true_conf": float(scores.delta_true_conf), "delta_pred_conf": float(scores.delta_pred_conf),
        "weights_sha256": run.weights_sha256,
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
