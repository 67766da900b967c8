"""Interventions on one sample: its salient filters against the controls, at one or several k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results import Result
from .bench import Bench
from .filters import RANDOM, SALIENT, WHOLE_NETWORK, check_k, choose_filters, draw_seed, random_filters
from .methods import DEFAULT_LR, DEFAULT_SIGMA, check_method, check_params, edited, grad_scales, noise_generator

DEFAULT_NEIGHBORS = 10
# the effect on the neighbours, present (finetune) when the neighbours were scored with the sample
NEIGHBOR_FIELDS = ("neighbors", "nb_wrong_before", "nb_corrected", "nb_corrected_share", "nb_broken", "nb_delta_true_conf")


@dataclass
class Attempt(Result):
    """One edit (a filter choice at one k) of one sample, and its effect on the sample and its neighbours."""

    k: int | None  # None: the whole-network step
    filters: str  # salient, random, least_salient or whole_network
    unit_ids: list[int]
    grad_scale: float | None  # finetune: the control's gradient rescaling factor
    delta_true_conf: float
    delta_pred_conf: float
    true_conf_after: float
    pred_conf_after: float
    pred_after: int
    pred_name_after: str
    correct_after: bool
    corrected: bool
    broken: bool
    # the neighbours scored in the same forward pass (finetune); all None, and left out of the JSON, otherwise
    neighbors: int | None = None
    nb_wrong_before: int | None = None
    nb_corrected: int | None = None
    nb_corrected_share: float | None = None  # None: no neighbour was misclassified
    nb_broken: int | None = None
    nb_delta_true_conf: float | None = None

    def to_dict(self) -> dict:
        doc = super().to_dict()
        if self.neighbors is None:
            for name in NEIGHBOR_FIELDS:
                del doc[name]
        return doc


@dataclass
class InterventionSample(Result):
    """The sample intervened on: its stored labels and the loaded model's baseline."""

    sample_id: int
    split: str
    key: str
    label: int
    label_name: str
    pred: int
    pred_name: str
    correct: bool  # as stored
    true_conf: float  # recomputed with the loaded model: the baseline every change is measured from
    pred_conf: float
    baseline_correct: bool


@dataclass
class Intervention(Result):
    """An ``intervene`` result: the sample, the method and one attempt per filter choice."""

    sample: InterventionSample
    method: str
    k: int
    seed: int
    lr: float | None  # finetune only
    sigma: float | None  # perturb only
    neighbors: list[int] | None  # finetune: the saliency neighbours scored with the sample
    attempts: list[Attempt]
    run_id: str | None = None  # set by the caller that records the attempts
    recorded: str | None = None  # the interventions part written (None: not recorded)

    def rows(self) -> list[dict]:
        """One row per attempt (the CSV output)."""
        keys = ["filters", "k", "unit_ids", "delta_true_conf", "delta_pred_conf", "true_conf_after", "pred_conf_after",
                "pred_name_after", "correct_after", "grad_scale"]
        if self.method == "finetune":
            keys += ["nb_wrong_before", "nb_corrected", "nb_corrected_share", "nb_broken", "nb_delta_true_conf"]
        return [{key: getattr(a, key) for key in keys} for a in self.attempts]


def sample_attempts(bench: Bench, sample_id: int, method: str, ks, *, z: np.ndarray, lr: float = DEFAULT_LR,
                    sigma: float = DEFAULT_SIGMA, seed: int = 0, neighbors: np.ndarray | None = None,
                    random_draws: int = 1) -> list[Attempt]:
    """Every filter choice at every k (and, for finetune, the whole-network step) on one sample.

    The caller has ``prepare``d the sample and its ``neighbors`` (used by finetune: they are scored under
    each edited model in the same forward pass as the sample). The sample's gradient is computed once and
    shared by all choices and ks; each edit is undone before the next. With ``random_draws`` N > 1, each k
    has N random attempts: draw 0 (seed ``[seed, sample_id, k]``) in the order of the choices, draws 1..N-1
    (seeds ``draw_seed(seed, sample_id, k, d)``) after the least-salient attempt; finetune rescales each
    draw's gradient to the salient norm."""
    ids = np.array([sample_id], dtype=np.int64)
    if neighbors is not None:
        ids = np.concatenate([ids, np.asarray(neighbors, dtype=np.int64)])
    grads = bench.gradient([sample_id]) if method == "finetune" else None
    edit = dict(bench=bench, method=method, ids=ids, grads=grads, lr=lr, sigma=sigma)
    rows = []
    for k in ks:
        choices = choose_filters(z, k, draw_seed(seed, sample_id, k))
        scales = grad_scales(bench.editor, choices, grads) if grads is not None else {c: None for c in choices}
        for ci, (name, units) in enumerate(choices.items()):
            rows.append(_attempt(k, name, units, scales[name], noise_generator(seed, sample_id, k, ci), **edit))
        random_ci = list(choices).index(RANDOM)
        for d in range(1, random_draws):
            units = random_filters(len(z), k, choices[SALIENT], draw_seed(seed, sample_id, k, d))
            scale = (grad_scales(bench.editor, {SALIENT: choices[SALIENT], RANDOM: units}, grads)[RANDOM]
                     if grads is not None else None)
            rows.append(_attempt(k, RANDOM, units, scale, noise_generator(seed, sample_id, k, random_ci, d), **edit))
    if method == "finetune":
        with edited(bench.editor, method, None, grads=grads, lr=lr):
            ev = bench.evaluate(ids)
        rows.append(attempt_row(None, WHOLE_NETWORK, np.array([], dtype=np.int64), None, ev, bench.class_names))
    return rows


def _attempt(k: int, name: str, units: np.ndarray, scale, generator, *, bench: Bench, method: str, ids: np.ndarray,
             grads, lr: float, sigma: float) -> Attempt:
    """One edit of the model (undone afterwards), scored on ``ids`` (the target first)."""
    with edited(bench.editor, method, units, grads=grads, lr=lr, scale=1.0 if scale is None else scale, sigma=sigma,
                generator=generator):
        ev = bench.evaluate(ids)
    return attempt_row(k, name, units, scale, ev, bench.class_names)


def attempt_row(k, filters: str, units: np.ndarray, scale, ev: dict, class_names) -> Attempt:
    """The effect of one edit on the target (row 0 of ``ev``) and on its neighbours (the other rows)."""
    pred = int(ev["pred"][0])
    attempt = Attempt(
        k=k, filters=filters, unit_ids=[int(u) for u in units], grad_scale=scale,
        delta_true_conf=float(ev["delta_true_conf"][0]), delta_pred_conf=float(ev["delta_pred_conf"][0]),
        true_conf_after=float(ev["true_conf"][0]), pred_conf_after=float(ev["pred_conf"][0]),
        pred_after=pred, pred_name_after=class_names[pred], correct_after=bool(ev["correct"][0]),
        corrected=bool(ev["correct"][0] and not ev["correct_before"][0]),
        broken=bool(ev["correct_before"][0] and not ev["correct"][0]),
    )
    if len(ev["pred"]) > 1:
        before, after = ev["correct_before"][1:], ev["correct"][1:]
        wrong = int((~before).sum())
        fixed = int((~before & after).sum())
        attempt.neighbors = int(len(before))
        attempt.nb_wrong_before = wrong
        attempt.nb_corrected = fixed
        # share of the neighbours that were misclassified and are now correct (None: none was misclassified)
        attempt.nb_corrected_share = fixed / wrong if wrong else None
        attempt.nb_broken = int((before & ~after).sum())
        attempt.nb_delta_true_conf = float(ev["delta_true_conf"][1:].mean())
    return attempt


def intervene(bench: Bench, sample_id: int, method: str, *, top_k: int = 10, lr: float = DEFAULT_LR,
              sigma: float = DEFAULT_SIGMA, seed: int = 0, n_neighbors: int = DEFAULT_NEIGHBORS) -> Intervention:
    """Prune / perturb / fine-tune the top-k salient filters of one stored sample, and the same with k random
    filters, the k least salient filters and (finetune) the whole network; on a copy of the model."""
    check_method(method)
    check_params(lr, sigma)
    bench.db.sample(sample_id)  # one clear line for an unknown id
    k = check_k(top_k, bench.n_units)
    bench.prepare([sample_id])
    z = bench.z([sample_id])[0]
    neighbors = None
    if method == "finetune":
        neighbors = bench.neighbors([sample_id], n_neighbors)[0]
        bench.prepare(neighbors)
    sample = _sample(bench, sample_id)
    attempts = sample_attempts(bench, sample_id, method, [k], z=z, lr=lr, sigma=sigma, seed=seed, neighbors=neighbors)
    return Intervention(
        sample=sample, method=method, k=k, seed=seed,
        lr=lr if method == "finetune" else None, sigma=sigma if method == "perturb" else None,
        neighbors=None if neighbors is None else [int(i) for i in neighbors], attempts=attempts,
    )


def _sample(bench: Bench, sample_id: int) -> InterventionSample:
    """The stored sample with the loaded model's confidences, the baseline every change is measured from."""
    meta = bench.db.sample(sample_id)
    base = bench.baseline([sample_id])
    return InterventionSample(
        **{k_: meta[k_] for k_ in ("sample_id", "split", "key", "label", "label_name", "pred", "pred_name", "correct")},
        true_conf=float(base["true_conf"][0]), pred_conf=float(base["pred_conf"][0]),
        baseline_correct=bool(base["correct"][0]),
    )


def sample_records(result: Intervention, *, run_id: str, weights_sha256: str) -> list[dict]:
    """One interventions-table row per attempt of an ``intervene`` result (finetune: neighbours count as 'elsewhere')."""
    from .record import AttemptRun, AttemptScores, attempt_record

    s = result.sample
    wrong_before = int(not s.baseline_correct)
    run = AttemptRun(run_id=run_id, command="intervene", method=result.method, scope="sample", seed=result.seed,
                     weights_sha256=weights_sha256, lr=result.lr, sigma=result.sigma, sample_id=s.sample_id, split=s.split)
    return [attempt_record(run, a, AttemptScores(
        targets=1, targets_wrong_before=wrong_before, corrected=int(a.corrected),
        broken=a.nb_broken, fixed_elsewhere=a.nb_corrected, scored=1 + (a.neighbors or 0),
        delta_true_conf=a.delta_true_conf, delta_pred_conf=a.delta_pred_conf,
    )) for a in result.attempts]
