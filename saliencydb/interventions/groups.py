"""Fixing a whole error group, with its side effects.

The group's most blamed filters (the top-k of the cluster's mean standardised profile, the ``blame``
table) are pruned, or take one fine-tuning step on the SUMMED loss of the group's members; the same is
done to k random filters (outside the blamed ones), to the k least blamed filters and (finetune) to
the whole network. Each attempt is scored on every sample of the group's split(s): how many of the
group are corrected, how many previously correct samples break, how many other mistakes get fixed,
the accuracy before and after, and the same per cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QueryError
from ..results import Result
from .bench import Bench
from .filters import LEAST_SALIENT, RANDOM, SALIENT, WHOLE_NETWORK, check_k, random_filters
from .methods import DEFAULT_LR, check_method, check_params, edited, grad_scales

GROUP_METHODS = ("prune", "finetune")


@dataclass
class GroupAttempt(Result):
    """One edit (a filter choice) of a group fix, scored on every sample of the group's split(s)."""

    k: int | None  # None: the whole-network step
    filters: str
    unit_ids: list[int]
    grad_scale: float | None
    group_size: int
    group_wrong_before: int
    corrected: int  # in the group
    group_broken: int
    broken: int  # correct samples outside the group now wrong
    fixed_elsewhere: int  # mistakes outside the group now correct
    accuracy_before: float
    accuracy_after: float
    net_accuracy_change: float
    delta_true_conf: float  # mean over the group
    delta_pred_conf: float


@dataclass
class ClusterEffect(Result):
    """Mistakes in one cluster before and after each attempt (``wrong_after``: filter choice -> count; in the
    JSON, one key ``wrong_after_<choice>`` each)."""

    cluster: int
    target: bool
    size: int
    wrong_before: int
    wrong_after: dict[str, int]

    def to_dict(self) -> dict:
        doc = super().to_dict()
        after = doc.pop("wrong_after")
        return {**doc, **{f"wrong_after_{name}": n for name, n in after.items()}}


@dataclass
class GroupFix(Result):
    """A ``fix_group`` result."""

    cluster: int
    cluster_run: str
    method: str
    k: int
    seed: int
    lr: float | None  # finetune only
    splits: list[str]
    members: list[int]
    scored: int  # samples scored (every sample of ``splits``)
    accuracy_before: float
    attempts: list[GroupAttempt]
    clusters: list[ClusterEffect]
    run_id: str | None = None  # set by the caller that records the attempts
    recorded: str | None = None  # the interventions part written (None: not recorded)

    def rows(self) -> list[dict]:
        """One row per attempt (the CSV output)."""
        return [{"filters": a.filters, "k": a.k, "units": a.unit_ids, "corrected_in_group": a.corrected,
                 "broken_elsewhere": a.broken, "fixed_elsewhere": a.fixed_elsewhere,
                 "accuracy_before": a.accuracy_before, "accuracy_after": a.accuracy_after,
                 "net_accuracy_change": a.net_accuracy_change, "d_true_conf_group": a.delta_true_conf}
                for a in self.attempts]


def group_members(db, cluster: int) -> tuple[np.ndarray, str]:
    """Sample ids of ``cluster`` and the clustering run it belongs to."""
    known = [r[0] for r in db._execute("SELECT DISTINCT cluster FROM clusters ORDER BY 1").fetchall()]
    if not known:
        raise QueryError("the database has no clusters yet; run `saliencydb clusters --db DB` first")
    if cluster not in known:
        raise QueryError(f"no cluster {cluster}; the clusters are {', '.join(map(str, known))}")
    rows = db._execute("SELECT sample_id, run FROM clusters WHERE cluster = ? ORDER BY sample_id", [int(cluster)]).fetchall()
    return np.array([r[0] for r in rows], dtype=np.int64), rows[0][1]


def blamed_ranking(db, cluster: int, n_units: int) -> np.ndarray:
    """All unit ids of ``cluster``'s blame ranking, most blamed first."""
    ranking = db._execute("SELECT unit_id FROM blame WHERE cluster = ? ORDER BY rank", [int(cluster)]).fetchnumpy()["unit_id"]
    if len(ranking) != n_units:
        raise QueryError(f"the blame table holds {len(ranking)} of the {n_units} units for cluster {cluster}; "
                         "rerun `saliencydb clusters --db DB`")
    return ranking.astype(np.int64)


def fix_group(bench: Bench, cluster: int, method: str, *, top_k: int = 10, lr: float = DEFAULT_LR,
              seed: int = 0) -> GroupFix:
    """Try to fix cluster ``cluster`` by editing its most blamed filters (and the controls); score the side effects."""
    check_method(method, GROUP_METHODS)
    check_params(lr, 1.0)
    db = bench.db
    members, cluster_run = group_members(db, cluster)
    k = check_k(top_k, bench.n_units)
    ranking = blamed_ranking(db, cluster, bench.n_units)
    top = ranking[:k]
    choices = {SALIENT: top, RANDOM: random_filters(bench.n_units, k, top, [seed, cluster, k]),
               LEAST_SALIENT: ranking[::-1][:k].copy()}
    bench.prepare(members)
    splits = sorted(set(bench.splits(members)))
    scored = np.concatenate([db.ids_where(split=s) for s in splits])
    bench.prepare(scored)
    base = bench.baseline(scored)
    in_group = np.isin(scored, members)
    assigned = dict(db._execute("SELECT sample_id, cluster FROM clusters").fetchall())
    cluster_of = np.array([assigned.get(int(i), -1) for i in scored], dtype=np.int64)
    grads = bench.gradient(members) if method == "finetune" else None
    scales = grad_scales(bench.editor, choices, grads) if grads is not None else {c: None for c in choices}
    attempts_in = [(name, units, scales[name]) for name, units in choices.items()]
    if method == "finetune":
        attempts_in.append((WHOLE_NETWORK, None, None))
    acc_before = float(base["correct"].mean())
    attempts, after = [], {}
    for name, units, scale in attempts_in:
        with edited(bench.editor, method, units, grads=grads, lr=lr, scale=1.0 if scale is None else scale):
            ev = bench.evaluate(scored)
        attempts.append(_group_attempt(name, None if units is None else k, units, scale, ev, in_group, acc_before))
        after[name] = ev["correct"]
    return GroupFix(
        cluster=int(cluster), cluster_run=cluster_run, method=method, k=k, seed=seed,
        lr=lr if method == "finetune" else None, splits=splits, members=[int(i) for i in members],
        scored=int(len(scored)), accuracy_before=acc_before, attempts=attempts,
        clusters=_cluster_effects(cluster, cluster_of, base["correct"], after),
    )


def _group_attempt(name: str, k: int | None, units, scale, ev: dict, in_group: np.ndarray,
                   acc_before: float) -> GroupAttempt:
    """The scores of one edit: in the group, elsewhere, and the accuracy over everything scored."""
    before, after = ev["correct_before"], ev["correct"]
    acc_after = float(after.mean())
    return GroupAttempt(
        k=k, filters=name, unit_ids=[] if units is None else [int(u) for u in units], grad_scale=scale,
        group_size=int(in_group.sum()), group_wrong_before=int((in_group & ~before).sum()),
        corrected=int((in_group & ~before & after).sum()),
        group_broken=int((in_group & before & ~after).sum()),
        broken=int((~in_group & before & ~after).sum()),
        fixed_elsewhere=int((~in_group & ~before & after).sum()),
        accuracy_before=acc_before, accuracy_after=acc_after, net_accuracy_change=acc_after - acc_before,
        delta_true_conf=float(ev["delta_true_conf"][in_group].mean()),
        delta_pred_conf=float(ev["delta_pred_conf"][in_group].mean()),
    )


def _cluster_effects(target: int, cluster_of: np.ndarray, correct_before: np.ndarray,
                     correct_after: dict[str, np.ndarray]) -> list[ClusterEffect]:
    """Mistakes per cluster (samples in no cluster: -1, left out) before and after each attempt."""
    effects = []
    for c in sorted(set(cluster_of.tolist()) - {-1}):
        sel = cluster_of == c
        effects.append(ClusterEffect(
            cluster=int(c), target=bool(c == target), size=int(sel.sum()), wrong_before=int((sel & ~correct_before).sum()),
            wrong_after={name: int((sel & ~after).sum()) for name, after in correct_after.items()}))
    return effects


def group_records(result: GroupFix, *, run_id: str, weights_sha256: str) -> list[dict]:
    """One interventions-table row per attempt of a ``fix_group`` result."""
    from .record import AttemptRun, AttemptScores, attempt_record

    run = AttemptRun(run_id=run_id, command="fix-group", method=result.method, scope="cluster", seed=result.seed,
                     weights_sha256=weights_sha256, lr=result.lr, cluster=result.cluster,
                     cluster_run=result.cluster_run, split=",".join(result.splits))
    return [attempt_record(run, a, AttemptScores(
        targets=a.group_size, targets_wrong_before=a.group_wrong_before,
        corrected=a.corrected, broken=a.broken, fixed_elsewhere=a.fixed_elsewhere, scored=result.scored,
        accuracy_before=a.accuracy_before, accuracy_after=a.accuracy_after,
        delta_true_conf=a.delta_true_conf, delta_pred_conf=a.delta_pred_conf,
    )) for a in result.attempts]
