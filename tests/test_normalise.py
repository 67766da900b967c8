"""Profile normalisations: each transformation against a numpy reference, their invariances, the
stored dL/dlogits norms against autograd, and the database choosing, recording and switching one."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saliencydb.saliency.normalise import NORMALISATIONS, Normaliser, dlogit_norms, prescale, running_stats

from helpers import run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "format2-db"


def _reference(raw, name, dlogit, mean, std):
    """The definition, written out: prescale per sample, then (v - mean) / std per unit."""
    raw = raw.astype(np.float64)
    if name == "zscore-unitnorm":
        norms = np.sqrt((raw**2).sum(axis=1, keepdims=True))
        raw = raw / np.where(norms > 0, norms, 1.0)
    elif name == "zscore-dlogit":
        raw = raw / np.where(dlogit > 0, dlogit, 1.0)[:, None]
    return (raw - mean) / std


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    raw = rng.gamma(2.0, 1e-3, size=(50, 12)).astype(np.float32) * rng.uniform(0.1, 10, size=(50, 1)).astype(np.float32)
    raw[3] = 0.0  # a sample whose gradient vanished
    dlogit = rng.uniform(0.01, 1.4, size=50)
    dlogit[3] = 0.0
    return raw, dlogit


@pytest.mark.parametrize("name", NORMALISATIONS)
def test_each_normalisation_is_its_definition(rows, name):
    raw, dlogit = rows
    stats = running_stats([(raw[:20], dlogit[:20]), (raw[20:], dlogit[20:])], name, raw.shape[1])
    scaled = _reference(raw, name, dlogit, 0.0, 1.0)
    np.testing.assert_allclose(stats.mean, scaled.mean(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(stats.std, scaled.std(axis=0, ddof=1), rtol=1e-10)
    z = Normaliser(name, stats.mean, stats.std)(raw, dlogit)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, _reference(raw, name, dlogit, stats.mean, stats.std), rtol=1e-5, atol=1e-5)
    # the differentiable form (used by input-space saliency) is the same function
    zt = torch.stack([Normaliser(name, stats.mean, stats.std).torch(torch.tensor(r, dtype=torch.float64),
                                                                    torch.tensor(d, dtype=torch.float64))
                      for r, d in zip(raw, dlogit)])
    np.testing.assert_allclose(zt.numpy(), _reference(raw, name, dlogit, stats.mean, stats.std), rtol=1e-9, atol=1e-9)


def test_unitnorm_ignores_the_scale_of_a_profile(rows):
    raw, dlogit = rows
    n = Normaliser("zscore-unitnorm", np.full(12, 0.2), np.full(12, 0.1))
    for c in (1e-6, 0.5, 3.0, 1e4):
        np.testing.assert_allclose(n(raw * np.float32(c)), n(raw), rtol=1e-5, atol=1e-4)
    # the paper's z-score is not scale-free: the same scaling moves it
    plain = Normaliser("zscore", np.full(12, 0.2), np.full(12, 0.1))
    assert np.abs(plain(raw * np.float32(3.0)) - plain(raw)).max() > 1e-3


def test_dlogit_removes_the_common_factor(rows):
    raw, dlogit = rows
    n = Normaliser("zscore-dlogit", np.zeros(12), np.ones(12))
    c = np.random.default_rng(1).uniform(0.1, 10, size=(50, 1))
    np.testing.assert_allclose(n(raw * c, dlogit * c[:, 0]), n(raw, dlogit), rtol=1e-5, atol=1e-5)
    assert not np.allclose(n(raw * c, dlogit), n(raw, dlogit), rtol=1e-3)


def test_dlogit_needs_every_sample_norm(rows):
    from saliencydb.errors import SpecError

    raw, dlogit = rows
    bad = dlogit.copy()
    bad[7] = np.nan
    with pytest.raises(SpecError, match="re-index"):
        prescale(raw, "zscore-dlogit", bad)
    with pytest.raises(SpecError, match="unknown profile normalisation"):
        prescale(raw, "zscore-l1")


def test_dlogit_norm_is_the_cross_entropy_gradient():
    torch.manual_seed(0)
    logits = torch.randn(6, 10, dtype=torch.float64) * 3
    y = torch.tensor([0, 3, 9, 9, 2, 5])
    got = dlogit_norms(logits, y)
    for i in range(6):
        li = logits[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(li, y[i : i + 1]), li)
        assert abs(float(g.norm()) - float(got[i])) < 1e-12


# -- the database ------------------------------------------------------------------------------


def _jcli(*args):
    return json.loads(run_cli(*args, "--format", "json").stdout)


def _stored(db):
    import saliencydb

    with saliencydb.open(db) as d:
        t = d.sql("SELECT sample_id, split, label, raw_profile, dlogit_norm FROM samples ORDER BY sample_id")
        units = d.sql("SELECT mean, std FROM units ORDER BY unit_id")
    raw = np.array(t.column("raw_profile").to_pylist(), dtype=np.float32)
    return (t.column("sample_id").to_numpy(), np.array(t.column("split").to_pylist()), raw,
            t.column("dlogit_norm").to_numpy().astype(np.float64), units.column("mean").to_numpy(), units.column("std").to_numpy())


def test_stored_dlogit_norms_match_the_model(digits_db, trained_weights):
    from saliencydb.data import Transform, parse_data_spec
    from saliencydb.data.zoo import small_cnn

    ids, splits, _, dlogit, _, _ = _stored(digits_db)
    assert np.isfinite(dlogit).all() and (dlogit > 0).all() and (dlogit < np.sqrt(2) + 1e-6).all()
    import saliencydb

    with saliencydb.open(digits_db) as d:
        keys = d.sql("SELECT key, label FROM samples WHERE split = 'val' ORDER BY sample_id LIMIT 5").to_pylist()
    model = small_cnn()
    model.load_state_dict(torch.load(trained_weights))
    model.eval()
    source, tf = parse_data_spec("builtin:mnist5k:val"), Transform.preset("mnist")
    index = {source.key(i): i for i in range(len(source))}
    for j, row in enumerate(keys):
        x = tf(source.load(index[row["key"]]))[None]
        logits = model(x).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([row["label"]])), logits)
        assert abs(float(g.norm()) - dlogit[j]) < 1e-5


@pytest.mark.parametrize("name", ["zscore-unitnorm", "zscore-dlogit"])
def test_restat_switches_the_normalisation_everywhere(digits_copy, name):
    before = _jcli("mistakes", "--db", digits_copy, "--normalisation", name, "--bootstrap", 50)
    assert before["normalisation"] == name and before["stored"] is False
    # the query-time statistics are over the database's reference splits (here: val)
    out = run_cli("restat", "--db", digits_copy, "--normalisation", name, "--splits", "val").stdout
    assert out.startswith(f"{name} statistics over val")
    manifest = json.loads((digits_copy / "manifest.json").read_text())
    assert manifest["normalisation"] == name
    ids, splits, raw, dlogit, mean, std = _stored(digits_copy)
    ref = _reference(raw[splits == "val"], name, dlogit[splits == "val"], 0.0, 1.0)
    np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=0, ddof=1), rtol=1e-9)
    z = _reference(raw, name, dlogit, mean, std)
    import saliencydb

    with saliencydb.open(digits_copy) as d:
        assert d.normalisation == name and not d.overridden
        # the zscores view, the top units and the search vectors all use it
        view = d.sql("SELECT z FROM zscores WHERE sample_id = 7 ORDER BY unit_id").column("z").to_numpy()
        np.testing.assert_allclose(view, z[list(ids).index(7)], rtol=1e-6, atol=1e-6)
        vec = d.vectors("saliency", [7])[0]
        ref_vec = z[list(ids).index(7)] / np.linalg.norm(z[list(ids).index(7)])
        np.testing.assert_allclose(vec, ref_vec, atol=1e-5)
        hits = d.neighbors(7, k=3)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    sims = unit @ unit[list(ids).index(7)]
    order = [int(ids[i]) for i in np.argsort(-sims, kind="stable") if ids[i] != 7][:3]
    assert [n["sample_id"] for n in hits.neighbors] == order
    # the stored index gives what the query-time normalisation gave before the switch
    after = _jcli("mistakes", "--db", digits_copy, "--bootstrap", 50)
    assert after["stored"] is True and after["normalisation"] == name
    assert after["splits"] == before["splits"]


def test_index_time_choice_is_recorded_and_kept(tmp_path, trained_weights):
    db = tmp_path / "db"
    args = ["--model", "python:saliencydb.data.zoo:small_cnn", "--weights", trained_weights, "--workers", 0]
    run_cli("index", "--db", db, "--data", "builtin:mnist5k:val", "--limit", 120, "--normalisation", "zscore-unitnorm", *args)
    assert json.loads((db / "manifest.json").read_text())["normalisation"] == "zscore-unitnorm"
    _, _, raw, dlogit, mean, std = _stored(db)
    ref = _reference(raw, "zscore-unitnorm", dlogit, 0.0, 1.0)
    np.testing.assert_allclose(mean, ref.mean(axis=0), rtol=1e-9, atol=1e-12)
    # continuing (no --normalisation) keeps it; asking for another is refused with one line
    run_cli("index", "--db", db, "--data", "builtin:mnist5k:val", "--limit", 150, *args)
    assert json.loads((db / "manifest.json").read_text())["normalisation"] == "zscore-unitnorm"
    r = run_cli("index", "--db", db, "--data", "builtin:mnist5k:val", "--normalisation", "zscore", *args, expect=1)
    assert "uses the zscore-unitnorm normalisation" in r.output and "restat" in r.output
    assert len(r.output.strip().splitlines()) == 1
    # the paper's default is not written down: older versions read the manifest unchanged
    plain = tmp_path / "plain"
    run_cli("index", "--db", plain, "--data", "builtin:mnist5k:val", "--limit", 60, *args)
    assert "normalisation" not in json.loads((plain / "manifest.json").read_text())


def test_query_time_normalisation_stores_nothing(digits_copy):
    import saliencydb
    from saliencydb.errors import QueryError

    commit = json.loads((digits_copy / "manifest.json").read_text())["commit"]
    r = run_cli("clusters", "--db", digits_copy, "--n-clusters", 3, "--normalisation", "zscore-unitnorm")
    assert "nothing was stored (--normalisation zscore-unitnorm" in r.output
    assert json.loads((digits_copy / "manifest.json").read_text())["commit"] == commit
    with saliencydb.open(digits_copy, normalisation="zscore-dlogit") as d:
        assert d.overridden
        with pytest.raises(QueryError, match="are not stored"):
            d.clusters(3)
        result = d.clusters(3, write=False)
    assert result.run.endswith(":norm=zscore-dlogit")
    # the paper's normalisation asked by name is the database's own: stored as usual
    r = run_cli("mistakes", "--db", digits_copy, "--normalisation", "zscore", "--bootstrap", 20)
    assert "nothing was stored" not in r.output
    assert json.loads((digits_copy / "manifest.json").read_text())["commit"] == commit + 1


def test_old_database_refuses_dlogit_but_not_unitnorm(tmp_path):
    db = tmp_path / "old"
    shutil.copytree(FIXTURE, db)
    r = run_cli("mistakes", "--db", db, "--normalisation", "zscore-dlogit", "--bootstrap", 10, expect=1)
    assert "cannot use zscore-dlogit" in r.output and "re-index" in r.output
    assert len(r.output.strip().splitlines()) == 1
    out = _jcli("neighbors", "--db", db, "--id", 3, "-k", 2, "--normalisation", "zscore-unitnorm")
    assert len(out["neighbors"]) == 2
    # the old parts, without the dlogit_norm column, are still whole
    assert _jcli("verify", "--db", db)["ok"] is True


def test_unknown_normalisation_is_one_line(digits_db):
    r = run_cli("mistakes", "--db", digits_db, "--normalisation", "l1", expect=2)
    assert "Invalid value for '--normalisation'" in r.output
    import saliencydb
    from saliencydb.errors import QueryError

    with pytest.raises(QueryError, match="unknown profile normalisation"):
        saliencydb.open(digits_db, normalisation="l1")
