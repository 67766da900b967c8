"""Interventions (issue 7): edits on a model copy that are always undone, the three methods against their
controls, the dataset-level validation with bootstrap intervals, adversarial parameter saliency, fixing
an error group with its side effects, and clear errors for bad input."""

import copy
import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import saliencydb
from saliencydb.interventions import (LEAST_SALIENT, RANDOM, SALIENT, WHOLE_NETWORK, Bench, FilterEditor,
                                      adversarial_profiles, bootstrap_ci, choose_filters, edited, grad_scales,
                                      intervene, least_salient_filters, random_filters, salient_filters)
from saliencydb.saliency import ProfileEngine
from saliencydb.saliency.variants import agreement
from saliencydb.schemas import INTERVENTIONS_SCHEMA

from helpers import run_cli

N_UNITS = 16 + 32 + 64  # the small CNN's filters


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def same_params(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def bench(digits_db):
    with saliencydb.open(digits_db) as db:
        yield Bench(db)


@pytest.fixture(scope="module")
def mistake(bench):
    """A misclassified val sample: id, input, label, standardised profile."""
    sid = int(bench.db.ids_where("NOT correct", "val")[0])
    bench.prepare([sid])
    return {"id": sid, "x": bench.inputs([sid]), "y": torch.as_tensor(bench.labels([sid])), "z": bench.z([sid])[0]}


# -- the filter choices --------------------------------------------------------------------------

def test_filter_choices_salient_least_and_random():
    rng = np.random.default_rng(3)
    z = rng.normal(size=N_UNITS)
    for k in (1, 5, 10, 56):
        c = choose_filters(z, k, [0, 7, k])
        assert list(c) == [SALIENT, RANDOM, LEAST_SALIENT]
        assert set(c[SALIENT]) == set(np.argsort(z)[-k:]) and np.all(np.diff(z[c[SALIENT]]) <= 0)
        assert set(c[LEAST_SALIENT]) == set(np.argsort(z)[:k]) and np.all(np.diff(z[c[LEAST_SALIENT]]) >= 0)
        r = c[RANDOM]
        assert len(r) == len(set(r.tolist())) == k  # distinct
        assert not set(r.tolist()) & set(c[SALIENT].tolist())  # never a salient filter
        assert np.array_equal(r, choose_filters(z, k, [0, 7, k])[RANDOM])  # seeded
    draws = {tuple(random_filters(N_UNITS, 10, salient_filters(z, 10), [s, 1, 10])) for s in range(20)}
    assert len(draws) == 20  # random: different seeds give different sets
    counts = np.bincount(np.concatenate([random_filters(N_UNITS, 10, [], s) for s in range(400)]), minlength=N_UNITS)
    assert counts.min() > 0  # every unit can be drawn
    assert np.array_equal(least_salient_filters(-z, 4), salient_filters(z, 4))


# -- edits on the model copy -------------------------------------------------------------------------

def test_prune_zeroes_exactly_the_chosen_filters_and_is_undone(bench, mistake):
    units = salient_filters(mistake["z"], 10)
    layout, ref = bench.layout, bench.ex.model
    before = copy.deepcopy(bench.model.state_dict())
    with edited(bench.editor, "prune", units):
        now = bench.model.state_dict()
        changed = 0
        for name, t in now.items():
            layer = next((l for l in layout.layers if l.param_name == name), None)
            if layer is None:  # biases, batch norm, the linear head: untouched
                assert torch.equal(t, before[name]), name
                continue
            mine = [u - layer.offset for u in units if layer.offset <= u < layer.stop]
            others = [c for c in range(layer.out_channels) if c not in mine]
            assert torch.all(t[mine] == 0) and torch.equal(t[others], before[name][others]), name
            changed += len(mine)
        assert changed == 10
        # the edited model predicts what a hand-pruned copy of the stored model predicts
        hand = copy.deepcopy(ref)
        with torch.no_grad():
            for u in units:
                li = int(layout.layer_of([u])[0])
                dict(hand.named_parameters())[layout.layers[li].param_name][u - layout.layers[li].offset] = 0
            want = F.softmax(hand(mistake["x"]), 1)[0, mistake["y"]]
        got = bench.evaluate([mistake["id"]])["true_conf"][0]
        assert got == pytest.approx(float(want), abs=1e-6)
    assert same_params(bench.model, ref)  # restored bit for bit


def test_finetune_step_is_a_hand_sgd_step_on_the_chosen_filters(bench, mistake):
    units = salient_filters(mistake["z"], 7)
    lr = 1e-2
    hand = copy.deepcopy(bench.ex.model).eval()
    loss = F.cross_entropy(hand(mistake["x"]), mistake["y"], reduction="sum")
    loss.backward()
    grads = bench.gradient([mistake["id"]])
    expect = {n: p.detach().clone() for n, p in hand.named_parameters()}
    for u in units:
        layer = bench.layout.layers[int(bench.layout.layer_of([u])[0])]
        c = u - layer.offset
        expect[layer.param_name][c] -= lr * dict(hand.named_parameters())[layer.param_name].grad[c]
    with edited(bench.editor, "finetune", units, grads=grads, lr=lr):
        for n, p in bench.model.named_parameters():
            torch.testing.assert_close(p.detach(), expect[n], rtol=0, atol=1e-7)
            if n not in {l.param_name for l in bench.layout.layers}:
                assert torch.equal(p, dict(hand.named_parameters())[n]), n  # not a filter: unchanged
        moved = sum(int((p.detach() != dict(hand.named_parameters())[n].detach()).flatten(1).any(1).sum())
                    for n, p in bench.model.named_parameters() if p.dim() == 4)
        assert moved == 7
    assert same_params(bench.model, bench.ex.model)


def test_control_gradients_are_rescaled_to_the_salient_norm(bench, mistake):
    grads = bench.gradient([mistake["id"]])
    choices = choose_filters(mistake["z"], 10, [0, mistake["id"], 10])
    scales = grad_scales(bench.editor, choices, grads)
    target = bench.editor.grad_norm(choices[SALIENT], grads)
    assert scales[SALIENT] == 1.0 and target > 0
    lr = 1e-3
    for name in (RANDOM, LEAST_SALIENT):
        assert bench.editor.grad_norm(choices[name], grads) * scales[name] == pytest.approx(target, rel=1e-9)
        with edited(bench.editor, "finetune", choices[name], grads=grads, lr=lr, scale=scales[name]):
            step = sum(float((p.detach().double() - q.detach().double()).pow(2).sum())
                       for p, q in zip(bench.editor.weights, FilterEditor(bench.ex.model, bench.layout).weights)) ** 0.5
        assert step == pytest.approx(lr * target, rel=1e-4)  # the control moves the model as far as the salient step
    assert same_params(bench.model, bench.ex.model)


def test_perturb_is_seeded_and_undone(bench, mistake):
    units = salient_filters(mistake["z"], 5)
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    with edited(bench.editor, "perturb", units, sigma=1e-3, generator=g()):
        first = [w.detach().clone() for w in bench.editor.weights]
    with edited(bench.editor, "perturb", units, sigma=1e-3, generator=g()):
        second = [w.detach().clone() for w in bench.editor.weights]
        diff = torch.cat([(w - r).detach().flatten() for w, r in zip(second, FilterEditor(bench.ex.model, bench.layout).weights)])
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    n = int((diff != 0).sum())
    assert n == sum(bench.layout.layers[int(li)].n_params for li in bench.layout.layer_of(units))
    assert 0.5e-3 < float(diff[diff != 0].std()) < 2e-3
    assert same_params(bench.model, bench.ex.model)


def test_an_error_inside_an_edit_still_restores(bench, mistake):
    with pytest.raises(RuntimeError):
        with edited(bench.editor, "prune", salient_filters(mistake["z"], 20)):
            raise RuntimeError("boom")
    assert same_params(bench.model, bench.ex.model)


def test_intervene_restores_after_every_attempt(bench, mistake):
    for method in ("prune", "perturb", "finetune"):
        r = intervene(bench, mistake["id"], method, top_k=5, n_neighbors=4)
        assert same_params(bench.model, bench.ex.model), method
        names = [a["filters"] for a in r["attempts"]]
        assert names == [SALIENT, RANDOM, LEAST_SALIENT] + ([WHOLE_NETWORK] if method == "finetune" else [])
        for a in r["attempts"]:
            assert a["delta_true_conf"] == pytest.approx(a["true_conf_after"] - r["sample"]["true_conf"], abs=1e-9)
        if method == "finetune":
            assert len(r["neighbors"]) == 4 and mistake["id"] not in r["neighbors"]
            assert all(a["neighbors"] == 4 for a in r["attempts"])


# -- the commands ------------------------------------------------------------------------------------

def test_intervene_command_never_changes_the_weights_file(digits_copy, trained_weights):
    before = sha256(trained_weights)
    with saliencydb.open(digits_copy) as db:
        sid = int(db.ids_where("NOT correct", "val")[1])
    for method in ("prune", "perturb", "finetune"):
        r = run_cli("intervene", "--db", digits_copy, "--id", sid, "--method", method, "--top-k", 3, "--format", "json")
        doc = json.loads(r.output)
        assert doc["sample"]["sample_id"] == sid and doc["k"] == 3 and doc["recorded"]
        assert sha256(trained_weights) == before, method
    table = run_cli("intervene", "--db", digits_copy, "--id", sid, "--method", "prune", "--top-k", 3, "--no-record")
    assert "weights file is unchanged" in table.output and "not recorded" in table.output
    with saliencydb.open(digits_copy) as db:  # 3 + 3 + 4 attempts recorded, one part per run
        files = db.manifest.tables["interventions"]
    rows = [r for f in files for r in pq.read_table(digits_copy / f).to_pylist()]
    assert len(rows) == 10 and len(files) == 3
    assert {r["scope"] for r in rows} == {"sample"} and {r["sample_id"] for r in rows} == {sid}
    assert [r["sigma"] for r in rows[3:6]] == [1e-3] * 3 and rows[0]["sigma"] is None and rows[9]["filters"] == WHOLE_NETWORK


def test_validate_intervals_hold_the_mean_and_plot(digits_db, tmp_path):
    out = tmp_path / "validate.png"
    r = run_cli("validate", "--db", digits_db, "--split", "val", "--method", "prune", "--ks", "1,4", "--limit", 12,
                "--bootstrap", 300, "--out", out, "--format", "json")
    doc = json.loads(r.output)
    assert doc["samples"] == 12 and doc["ks"] == [1, 4] and doc["which"] == "misclassified"
    assert [(row["k"], row["filters"]) for row in doc["rows"]] == [(k, f) for k in (1, 4) for f in (SALIENT, RANDOM, LEAST_SALIENT)]
    for row in doc["rows"]:
        for m in ("delta_true_conf", "correct_after", "delta_pred_conf"):
            s = row[m]
            assert s["n"] == 12 and s["low"] <= s["mean"] <= s["high"], (row["k"], row["filters"], m)
    for p in doc["paired_delta_true_conf"]:
        s = p["salient_minus_random"]
        assert s["low"] <= s["mean"] <= s["high"]
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 600
    # the table names its intervals; --correct runs on correctly classified samples
    t = run_cli("validate", "--db", digits_db, "--split", "val", "--method", "perturb", "--ks", "2", "--limit", 5,
                "--bootstrap", 50, "--correct")
    assert "95% CI" in t.output and "correct samples of val" in t.output and "still correct" in t.output


def test_validate_finetune_scores_neighbours(digits_db):
    r = run_cli("validate", "--db", digits_db, "--split", "val", "--method", "finetune", "--ks", "3", "--limit", 6,
                "--neighbors", 5, "--bootstrap", 100, "--format", "json")
    doc = json.loads(r.output)
    assert [row["filters"] for row in doc["rows"]] == [SALIENT, RANDOM, LEAST_SALIENT, WHOLE_NETWORK]
    for row in doc["rows"]:
        for m in ("nb_delta_true_conf", "nb_corrected_share", "delta_true_conf"):
            s = row[m]
            assert s["mean"] is None or s["low"] <= s["mean"] <= s["high"]
        assert row["nb_delta_true_conf"]["n"] == 6


def test_a_sweep_computes_each_baseline_once_and_one_forward_per_edit(digits_db):
    from saliencydb.interventions import ValidationSettings, validate
    from saliencydb.interventions.sweep import select_samples

    with saliencydb.open(digits_db) as db:
        b = Bench(db)
        rows_seen, calls = [], []
        b.model.register_forward_pre_hook(lambda m, inp: (rows_seen.append(inp[0].shape[0]), calls.append(1)) and None)
        validate(b, "val", "prune", ValidationSettings(ks=[1, 2], limit=5, n_boot=20))
        assert sum(rows_seen) == 5 + 5 * 2 * 3  # the baselines once, then each edit on its own sample
        assert len(calls) == 1 + 5 * 2 * 3  # the baselines in one batch
        rows_seen.clear()
        validate(b, "val", "finetune", ValidationSettings(ks=[1], limit=5, n_boot=20, n_neighbors=3))
        chosen = select_samples(db, "val", limit=5, seed=0)
        new = len(set(b.neighbors(chosen, 3).ravel().tolist()) - set(chosen.tolist()))
        # cached baselines: only the neighbours' are new; per sample one gradient pass and 4 edits x (1 + 3 neighbours)
        assert sum(rows_seen) == new + 5 * (1 + 4 * (1 + 3))
        assert same_params(b.model, b.ex.model)


def test_bootstrap_ci():
    rng = np.random.default_rng(0)
    v = rng.exponential(size=200)
    s = bootstrap_ci(v, 2000, np.random.default_rng(1))
    assert s["low"] < s["mean"] < s["high"] and s["mean"] == pytest.approx(v.mean()) and s["n"] == 200
    assert bootstrap_ci([1.0, None, 1.0], 10, rng) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 2}
    assert bootstrap_ci([None], 10, rng)["mean"] is None


def test_fix_group_writes_one_row_per_attempt(digits_copy, trained_weights):
    before = sha256(trained_weights)
    run_cli("clusters", "--db", digits_copy, "--n-clusters", 3)
    r = run_cli("fix-group", "--db", digits_copy, "--cluster", 1, "--method", "prune", "--top-k", 5, "--format", "json")
    doc = json.loads(r.output)
    assert [a["filters"] for a in doc["attempts"]] == [SALIENT, RANDOM, LEAST_SALIENT]
    with saliencydb.open(digits_copy) as db:
        blamed = [row["unit_id"] for row in db.sql("SELECT unit_id FROM blame WHERE cluster = 1 ORDER BY rank LIMIT 5").to_pylist()]
        members = db.sql("SELECT count(*) AS n FROM clusters WHERE cluster = 1").to_pylist()[0]["n"]
        splits = [r["split"] for r in db.sql("SELECT DISTINCT split FROM samples JOIN clusters USING (sample_id) "
                                             "WHERE cluster = 1 ORDER BY 1").to_pylist()]
        where = ", ".join(f"'{s}'" for s in splits)
        n, acc = db.sql(f"SELECT count(*) AS n, avg(correct::INT) AS a FROM samples WHERE split IN ({where})").to_pylist()[0].values()
    a = doc["attempts"][0]
    assert a["unit_ids"] == blamed and a["group_size"] == members and doc["splits"] == splits and doc["scored"] == n
    assert a["accuracy_before"] == pytest.approx(acc, abs=2 / n)
    assert a["net_accuracy_change"] == pytest.approx(a["accuracy_after"] - a["accuracy_before"])
    assert a["accuracy_after"] * n == pytest.approx(a["accuracy_before"] * n + a["corrected"] - a["group_broken"]
                                                    - a["broken"] + a["fixed_elsewhere"])
    run_cli("fix-group", "--db", digits_copy, "--cluster", 0, "--method", "finetune", "--top-k", 5, "--lr", 1e-4)
    assert sha256(trained_weights) == before
    with saliencydb.open(digits_copy) as db:
        files = db.manifest.tables["interventions"]
    assert len(files) == 2
    tables = [pq.read_table(digits_copy / f) for f in files]
    assert all(t.schema.equals(INTERVENTIONS_SCHEMA) for t in tables)
    rows = [r for t in tables for r in t.to_pylist()]
    assert [r["filters"] for r in rows] == [SALIENT, RANDOM, LEAST_SALIENT, SALIENT, RANDOM, LEAST_SALIENT, WHOLE_NETWORK]
    assert [r["cluster"] for r in rows] == [1] * 3 + [0] * 4 and {r["scope"] for r in rows} == {"cluster"}
    assert len({r["attempt_id"] for r in rows}) == 7 and len({r["run_id"] for r in rows}) == 2
    assert rows[0]["unit_ids"] == blamed and rows[6]["unit_ids"] == [] and rows[6]["k"] is None
    assert rows[3]["lr"] == 1e-4 and rows[0]["lr"] is None and rows[5]["grad_scale"] > 0
    assert rows[0]["split"] == ",".join(splits) and rows[0]["scored"] == n and all(r["broken"] is not None for r in rows)


# -- adversarial parameter saliency -------------------------------------------------------------------

class SmoothNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.tanh(self.c1(x))
        x = F.softplus(self.c2(x))
        return self.head(x.mean(dim=(2, 3)))


def test_adversarial_profiles_agree_with_the_plain_profile_at_tiny_eps():
    torch.manual_seed(0)
    model = SmoothNet().eval()
    x, y = torch.randn(5, 1, 12, 12), torch.tensor([0, 1, 2, 3, 0])
    ref = copy.deepcopy(model)
    plain = ProfileEngine(model).profile(x, y).raw
    for maximize in (True, False):
        adv = adversarial_profiles(model, x, y, 1e-4, steps=10, maximize=maximize)
        assert same_params(model, ref)
        assert adv.raw.shape == plain.shape
        assert torch.allclose(adv.delta_norm, torch.full((5,), 1e-4, dtype=adv.delta_norm.dtype), rtol=1e-4)
        for i in range(5):
            assert agreement(adv.raw[i].numpy(), plain[i].numpy())["cosine"] > 0.99
        moved = adv.loss_after - adv.loss_before
        assert bool(torch.all(moved > 0)) if maximize else bool(torch.all(moved < 0))
    # to first order the profile is eps * raw / |grad|
    adv = adversarial_profiles(model, x, y, 1e-4, steps=10)
    torch.testing.assert_close(adv.raw.double() * (adv.grad_norm.double() / 1e-4)[:, None], plain.double(), rtol=2e-2, atol=1e-7)


def test_adversarial_command(digits_db):
    r = run_cli("adversarial", "--db", digits_db, "--split", "val", "--limit", 4, "--eps", "1e-5,0.5", "--steps", 5,
                "--format", "json")
    doc = json.loads(r.output)
    assert doc["samples"] == 4 and [(row["eps"], row["direction"]) for row in doc["rows"]] == [
        (1e-5, "max"), (1e-5, "min"), (0.5, "max"), (0.5, "min")]
    tiny = doc["rows"][0]
    assert tiny["cosine_raw"] > 0.99 and tiny["top10_overlap_raw"] >= 0.9 and tiny["cosine_std"] > 0.99
    assert doc["rows"][2]["mean_delta_loss"] > 0 > doc["rows"][3]["mean_delta_loss"]
    assert "*_raw" in run_cli("adversarial", "--db", digits_db, "--limit", 2, "--eps", "0.001", "--steps", 2).output


# -- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["intervene", "--id", 999999, "--method", "prune"], "no sample with id 999999"),
    (["intervene", "--id", "{id}", "--method", "prune", "--top-k", 113], "--top-k 113 is out of range"),
    (["intervene", "--id", "{id}", "--method", "prune", "--top-k", 57], "use 1 <= k <= 56"),
    (["intervene", "--id", "{id}", "--method", "prune", "--top-k", 0], "--top-k 0 is out of range"),
    (["intervene", "--id", "{id}", "--method", "finetune", "--lr", -1], "--lr must be a positive number"),
    (["validate", "--split", "val", "--method", "prune", "--ks", "1,x"], "is not a comma-separated list of positive integers"),
    (["validate", "--split", "val", "--method", "prune", "--ks", "1,,5"], "is not a comma-separated list of positive integers"),
    (["validate", "--split", "val", "--method", "prune", "--ks", "0,5"], "--ks value 0 is out of range"),
    (["validate", "--split", "val", "--method", "prune", "--ks", "5,500"], "--ks value 500 is out of range"),
    (["validate", "--split", "nope", "--method", "prune"], "unknown split 'nope'"),
    (["validate", "--split", "val", "--method", "prune", "--limit", 0], "--limit must be at least 1"),
    (["validate", "--split", "val", "--method", "prune", "--out", "{tmp}/a.jpg"], "must end with .png"),
    (["adversarial", "--eps", "a,b"], "is not a comma-separated list of numbers"),
    (["adversarial", "--eps", "0,0.1"], "give positive numbers"),
    (["fix-group", "--cluster", 0, "--method", "prune"], "no clusters yet; run `saliencydb clusters"),
])
def test_bad_input_is_one_clear_line(digits_db, bench, args, message, tmp_path):
    sid = int(bench.db.ids_where("NOT correct", "val")[0])
    args = [str(a).format(id=sid, tmp=tmp_path) for a in args]
    r = run_cli(args[0], "--db", digits_db, *args[1:], expect=None)
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert "Traceback" not in r.output


def test_bad_cluster_and_k_for_fix_group(digits_copy):
    run_cli("clusters", "--db", digits_copy, "--n-clusters", 3)
    for args, message in (([ "--cluster", 7, "--method", "prune"], "no cluster 7; the clusters are 0, 1, 2"),
                          (["--cluster", 0, "--method", "prune", "--top-k", 200], "--top-k 200 is out of range")):
        r = run_cli("fix-group", "--db", digits_copy, *args, expect=None)
        lines = r.output.strip().splitlines()
        assert r.exit_code != 0 and len(lines) == 1 and message in lines[0], r.output
    r = run_cli("fix-group", "--db", digits_copy, "--cluster", 0, "--method", "perturb", expect=None)
    assert r.exit_code == 2 and "Traceback" not in r.output  # click's usage error: perturb is not offered for groups
    with saliencydb.open(digits_copy) as db:
        assert "interventions" not in db.manifest.tables
