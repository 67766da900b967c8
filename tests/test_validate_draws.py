"""validate's random control over several seeded draws per sample (--random-draws), and the seed sweep over
the built-in model (seed-sweep). Every expected value is computed here through the library's own building
blocks (the filter choices, the edits and the bench), not copied from the implementation."""

import csv
import io
import json

import numpy as np
import pytest

import saliencydb
from saliencydb.interventions import (RANDOM, SALIENT, Bench, ValidationSettings, choose_filters, edited, grad_scales,
                                      intervene, random_filters, salient_filters, validate)
from saliencydb.interventions.methods import noise_generator
from saliencydb.interventions.sweep import select_samples

from helpers import run_cli

K = 2
LIMIT = 3
# a metric of validate -> the bench's output it is taken from
OUTPUT = {"delta_true_conf": "delta_true_conf", "correct_after": "correct", "delta_pred_conf": "delta_pred_conf"}


@pytest.fixture(scope="module")
def bench(digits_db):
    with saliencydb.open(digits_db) as db:
        yield Bench(db)


@pytest.fixture
def reference(digits_db):
    """A fresh bench, never used by ``validate``: the independent computations run on it. Its baselines are
    computed as validate computes them (the selected samples in one batch), so that the changes compare exactly."""
    with saliencydb.open(digits_db) as db:
        yield Bench(db)


def _selected(ref: Bench, limit: int = LIMIT) -> list[int]:
    ids = select_samples(ref.db, "val", limit=limit, seed=0)
    assert len(ids) == limit
    ref.prepare(ids)
    return ids.tolist()


def _random_edit(ref: Bench, sid: int, k: int, seed_key, method: str = "prune", generator=None) -> tuple[np.ndarray, dict]:
    """k random filters of ``sid`` outside its salient top-k, drawn with ``seed_key``, edited; the bench's scores."""
    ref.prepare([sid])
    z = ref.z([sid])[0]
    units = random_filters(len(z), k, salient_filters(z, k), seed_key)
    with edited(ref.editor, method, units, generator=generator):
        ev = ref.evaluate([sid])
    return units, ev


def _cli_json(*args):
    return json.loads(run_cli(*args, "--format", "json").output)


def _random_row(doc: dict, k: int) -> dict:
    (row,) = [r for r in doc["rows"] if r["k"] == k and r["filters"] == RANDOM]
    return row


@pytest.mark.parametrize("method", ["prune", "perturb"])
def test_one_draw_is_the_single_draw_of_before(digits_db, bench, reference, method):
    doc = _cli_json("validate", "--db", digits_db, "--split", "val", "--method", method, "--ks", K, "--limit", LIMIT,
                    "--bootstrap", 20, "--random-draws", 1)
    assert doc["random_draws"] == 1
    ids = _selected(reference)
    values = {m: [] for m in OUTPUT}
    for sid in ids:
        # earlier versions: one draw seeded [seed, sample_id, k]; perturb's noise seeded (seed, sample, k, choice 1)
        units, ev = _random_edit(reference, sid, K, [0, sid, K], method, noise_generator(0, sid, K, 1))
        for m in values:
            values[m].append(float(ev[OUTPUT[m]][0]))
        # intervene (one draw) picks the same random filters with the same effect
        one = intervene(reference, sid, method, top_k=K, seed=0)
        (a,) = [a for a in one.attempts if a.filters == RANDOM]
        assert a.unit_ids == units.tolist() and a.delta_true_conf == values["delta_true_conf"][-1]
    row = _random_row(doc, K)
    for m, vs in values.items():
        assert row[m]["n"] == LIMIT and row[m]["mean"] == pytest.approx(np.mean(vs), abs=1e-12), m
    lib = validate(bench, "val", method, ValidationSettings(ks=[K], limit=LIMIT, n_boot=20, random_draws=1))
    assert lib.sample_ids == ids
    for m, vs in values.items():
        assert lib.per_sample[(K, RANDOM)][m] == vs, m


def test_the_random_value_of_a_sample_is_the_mean_of_its_draws(digits_db, bench, reference):
    draws = 4
    result = validate(bench, "val", "prune", ValidationSettings(ks=[K], limit=LIMIT, n_boot=50, random_draws=draws))
    assert result.random_draws == draws
    ids = _selected(reference)
    assert result.sample_ids == ids
    per = result.per_sample[(K, RANDOM)]
    single = validate(bench, "val", "prune", ValidationSettings(ks=[K], limit=LIMIT, n_boot=50, random_draws=1)).per_sample[(K, RANDOM)]
    for i, sid in enumerate(ids):
        seeds = [[0, sid, K]] + [[0, sid, K, d] for d in range(1, draws)]
        edits = [_random_edit(reference, sid, K, s) for s in seeds]
        assert len({tuple(u.tolist()) for u, _ in edits}) > 1  # the draws are not all the same filters
        for m in OUTPUT:
            own = [float(ev[OUTPUT[m]][0]) for _, ev in edits]
            assert per[m][i] == pytest.approx(np.mean(own), abs=1e-12), (sid, m)
        assert per["correct_after"][i] in {0.0, 0.25, 0.5, 0.75, 1.0}
    assert per["delta_true_conf"] != single["delta_true_conf"]  # 4 draws are not the first draw alone
    # the salient filters do not depend on the draws; the interval is over the per-sample means
    assert result.per_sample[(K, SALIENT)] == validate(bench, "val", "prune", ValidationSettings(ks=[K], limit=LIMIT, n_boot=50)).per_sample[(K, SALIENT)]
    (row,) = [r for r in result.table if r.k == K and r.filters == RANDOM]
    assert row.delta_true_conf.mean == pytest.approx(np.mean(per["delta_true_conf"]), abs=1e-12)
    (paired,) = result.paired_delta_true_conf
    diff = np.array(result.per_sample[(K, SALIENT)]["delta_true_conf"]) - np.array(per["delta_true_conf"])
    assert paired.salient_minus_random.mean == pytest.approx(diff.mean(), abs=1e-12) and paired.salient_minus_random.n == LIMIT


def test_finetune_rescales_each_draw_to_the_salient_gradient(bench, reference):
    draws, limit, lr = 3, 2, 1e-3
    result = validate(bench, "val", "finetune", ValidationSettings(ks=[K], limit=limit, n_boot=20, random_draws=draws, n_neighbors=2))
    ids = _selected(reference, limit)
    for i, sid in enumerate(ids):
        z = reference.z([sid])[0]
        grads = reference.gradient([sid])
        values = []
        for d in range(draws):
            c = choose_filters(z, K, [0, sid, K] if d == 0 else [0, sid, K, d])
            scale = grad_scales(reference.editor, c, grads)[RANDOM]
            with edited(reference.editor, "finetune", c[RANDOM], grads=grads, lr=lr, scale=scale):
                values.append(float(reference.evaluate([sid])["delta_true_conf"][0]))
        assert result.per_sample[(K, RANDOM)]["delta_true_conf"][i] == pytest.approx(np.mean(values), abs=1e-6)


def test_random_draws_in_the_json_and_the_table(digits_db):
    doc = _cli_json("validate", "--db", digits_db, "--split", "val", "--method", "prune", "--ks", 1, "--limit", 2,
                    "--bootstrap", 10)
    assert doc["random_draws"] == 10  # the command's default
    assert "per_sample" not in doc and "sample_ids" not in doc
    text = run_cli("validate", "--db", digits_db, "--split", "val", "--method", "prune", "--ks", 1, "--limit", 2,
                   "--bootstrap", 10, "--random-draws", 3, "--quiet").output
    assert "random control: mean of 3 draws per sample" in " ".join(text.split())


@pytest.mark.parametrize("value", [0, -2])
def test_bad_random_draws_is_one_line(digits_db, value):
    r = run_cli("validate", "--db", digits_db, "--split", "val", "--method", "prune", "--random-draws", value, expect=None)
    lines = r.output.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and "Traceback" not in r.output, r.output
    assert lines[0] == f"Error: --random-draws must be at least 1, got {value}"


# -- the seed sweep --------------------------------------------------------------------------------

SWEEP = ("seed-sweep", "--data", "builtin:mnist5k:val", "--seeds", "0,1", "--method", "prune", "--epochs", 1,
         "--limit", 3, "--ks", 1, "--bootstrap", 50, "--random-draws", 2, "--quiet")


def test_seed_sweep_trains_indexes_and_reuses(tmp_path):
    doc = json.loads(run_cli(*SWEEP, "--cache-dir", tmp_path, "--format", "json").output)
    assert doc["model_seeds"] == [0, 1] and doc["ks"] == [1] and doc["epochs"] == 1 and doc["random_draws"] == 2
    runs = doc["runs"]
    assert [r["model_seed"] for r in runs] == [0, 1]
    dbs = sorted((tmp_path / "databases").iterdir())
    assert [d.name.split("-")[:2] for d in dbs] == [["mnist5k", "seed0"], ["mnist5k", "seed1"]]
    assert sorted(r["database"] for r in runs) == [str(d) for d in dbs]
    for r in runs:
        with saliencydb.open(r["database"]) as db:
            assert db.manifest.model.weights_sha256 == r["weights_sha256"]
            assert len(db.ids_where(split="val")) == r["samples"] == 2000
            assert len(db.ids_where("NOT correct", "val")) == r["mistakes"] > 0
        assert r["validated"] == 3 and [p["k"] for p in r["paired_delta_true_conf"]] == [1]
        s = r["paired_delta_true_conf"][0]["salient_minus_random"]
        assert s["n"] == 3 and s["low"] <= s["mean"] <= s["high"]
    assert runs[0]["weights_sha256"] != runs[1]["weights_sha256"]  # two seeds, two models
    (summary,) = doc["summary"]
    assert summary["seeds"] == 2 and summary["above_zero"] + summary["contains_zero"] + summary["below_zero"] == 2
    means = [r["paired_delta_true_conf"][0]["salient_minus_random"]["mean"] for r in runs]
    assert summary["mean"] == pytest.approx(np.mean(means))

    weights = sorted(tmp_path.glob("*.pt"))
    assert len(weights) == 2
    before = {w: w.stat().st_mtime_ns for w in weights}
    commits = [_commit(d) for d in dbs]
    rows = list(csv.DictReader(io.StringIO(run_cli(*SWEEP, "--cache-dir", tmp_path, "--format", "csv").output)))
    assert {w: w.stat().st_mtime_ns for w in sorted(tmp_path.glob("*.pt"))} == before  # not retrained
    assert sorted((tmp_path / "databases").iterdir()) == dbs and [_commit(d) for d in dbs] == commits  # not re-indexed
    assert [(r["model_seed"], r["k"]) for r in rows] == [("0", "1"), ("1", "1")]
    assert [float(r["salient_minus_random"]) for r in rows] == pytest.approx(means)  # the same databases, the same answer
    text = " ".join(run_cli(*SWEEP, "--cache-dir", tmp_path).output.split())
    assert "random control: mean of 2 draws per sample" in text
    assert (f"k=1: salient - random interval above 0 in {summary['above_zero']} of 2 seeds, contains 0 in "
            f"{summary['contains_zero']}, below 0 in {summary['below_zero']}") in text


def _commit(db) -> int:
    with saliencydb.open(db) as d:
        return d.info().commit


@pytest.mark.parametrize("args, message", [
    (["--data", "csv:x.csv"], "a seed sweep trains the built-in model"),
    (["--data", "builtin:mnist5k:train"], "give the validation split, builtin:mnist5k:val"),
    (["--data", "builtin:mnist5k:all"], "give the validation split"),
    (["--data", "builtin:nope:val"], "unknown builtin 'nope'"),
    (["--seeds", "0,x"], "--seeds '0,x' is not a comma-separated list"),
    (["--seeds", ""], "is not a comma-separated list"),
    (["--random-draws", 0], "--random-draws must be at least 1, got 0"),
    (["--ks", 500], "--ks value 500 is out of range"),
])
def test_seed_sweep_bad_input_is_one_line(tmp_path, args, message):
    base = {"--data": "builtin:mnist5k:val", "--seeds": "0,1", "--method": "prune"}
    extra = dict(zip(args[::2], args[1::2]))
    options = [str(v) for kv in {**base, **extra}.items() for v in kv]
    r = run_cli("seed-sweep", *options, "--cache-dir", tmp_path, "--quiet", expect=None)
    lines = r.output.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert not any(tmp_path.iterdir())  # refused before any training


def test_parse_seeds_drops_repeats():
    from saliencydb.seeds import parse_seeds

    assert parse_seeds("2, 0,2,1") == [2, 0, 1]
