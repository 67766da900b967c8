"""The shared-mistake baselines against brute-force definitions, and in the `mistakes` command."""

import json

import numpy as np
import pytest

from helpers import run_cli
from saliencydb.query.baselines import baseline_shares


def _split(n=60, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n)
    wrong = rng.random(n) < 0.3
    pred = np.where(wrong, (label + rng.integers(1, classes, n)) % classes, label)
    loss = np.round(rng.gamma(1.0, 1.0, n), 1)  # rounded: many ties
    return label == pred, label, pred, loss


def _shares(i, nb, correct, label, pred):
    nb = np.asarray(nb)
    return correct[nb].mean(), ((label[nb] == label[i]) & (pred[nb] == pred[i])).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_baselines_match_their_definitions(seed):
    correct, label, pred, loss = _split(seed=seed)
    k, n = 5, len(label)
    got = baseline_shares(correct, label, pred, loss, k)
    rank = np.argsort(np.argsort(loss, kind="stable"), kind="stable")  # position in loss order
    for i in range(n):
        others = [j for j in range(n) if j != i]
        want = _shares(i, others, correct, label, pred)  # every other sample: the exact expectation
        np.testing.assert_allclose([got["random"][0][i], got["random"][1][i]], want)
        same = [j for j in others if label[j] == label[i]]
        want = _shares(i, same, correct, label, pred) if same else (np.nan, np.nan)
        np.testing.assert_allclose([got["label"][0][i], got["label"][1][i]], want)
        # the k others of closest loss; ties go to the nearer place in loss order, then to the lower one
        nearest = sorted(others, key=lambda j: (abs(loss[j] - loss[i]), abs(rank[j] - rank[i]), rank[j] > rank[i]))[:k]
        np.testing.assert_allclose([got["loss"][0][i], got["loss"][1][i]], _shares(i, nearest, correct, label, pred))


def test_baselines_do_not_depend_on_sample_order():
    correct, label, pred, loss = _split(n=40, seed=3)
    perm = np.random.default_rng(0).permutation(len(label))
    a = baseline_shares(correct, label, pred, loss, 4)
    b = baseline_shares(correct[perm], label[perm], pred[perm], loss[perm], 4)
    for name in ("random", "label"):
        np.testing.assert_allclose(a[name][0][perm], b[name][0])
        np.testing.assert_allclose(a[name][1][perm], b[name][1])


def test_mistakes_prints_the_baselines(digits_copy):
    doc = json.loads(run_cli("mistakes", "--db", digits_copy, "--format", "json", "--bootstrap", 20, "--no-store").stdout)
    val = doc["splits"]["val"]
    base = val["baselines"]
    assert list(base) == ["loss", "label", "random"]
    # the random expectation over a mistake's neighbours: the split's correct share among the others
    n, c = val["samples"], val["correct"]
    assert base["random"]["correct_neighbors_of_incorrect"]["mean"] == pytest.approx(c / (n - 1))
    assert base["random"]["correct_neighbors_of_correct"]["mean"] == pytest.approx((c - 1) / (n - 1))
    table = run_cli("mistakes", "--db", digits_copy, "--bootstrap", 20, "--no-store").stdout
    assert "baseline:loss" in table and "baseline:random" in table
    assert "val: a mistake's neighbours make its exact confusion: saliency" in table and "loss-matched" in table
