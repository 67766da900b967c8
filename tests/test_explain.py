"""Explanations: input-space saliency (exact against independent references), GradCAM, the explain /
profile-plot / check commands and the gallery, on a small CNN trained on real digits."""

import base64
import io
import json
import re

import matplotlib
import matplotlib.pyplot
import matplotlib.text
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.func import functional_call, grad

import saliencydb
from saliencydb.data import Transform, parse_data_spec
from saliencydb.data.zoo import small_cnn
from saliencydb.explain.maps import display_map, gradcam, spearman
from saliencydb.saliency import UnitLayout, reference_profiles
from saliencydb.saliency.input_space import input_saliency, random_units
from saliencydb.saliency.variants import agreement, smoothgrad_profiles

from helpers import run_cli


# -- tiny hand-sized models -----------------------------------------------------------------

class TinyReLU(nn.Module):
    """Conv-BN-ReLU, strided conv, global pool, linear: 3 + 4 = 7 units."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        return self.fc(F.relu(self.c2(h)).mean(dim=(2, 3)))


class TinyTanh(nn.Module):
    """Smooth everywhere, so central finite differences apply."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).mean(dim=(2, 3)))


def _tiny_relu():
    torch.manual_seed(0)
    m = TinyReLU()
    with torch.no_grad():  # non-trivial running statistics, so eval mode matters
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _stats(n_units, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 0.05, n_units), rng.uniform(0.5, 1.5, n_units)


def _func_reference(model, x, y, mean, std, top_k=None, units=None):
    """The map by torch.func transforms (functional_call + grad of grad), one sample at a time."""
    layout = UnitLayout.from_module(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    names = [l.param_name for l in layout.layers]
    mean_t, std_t = torch.tensor(mean, dtype=x.dtype), torch.tensor(std, dtype=x.dtype)

    def z_of(x1, y1):
        def loss(w):
            return F.cross_entropy(functional_call(model, ({**params, **w}, buffers), (x1[None],)), y1[None])

        g = grad(loss)({n: params[n] for n in names})
        return (torch.cat([g[n].abs().flatten(1).mean(1) for n in names]) - mean_t) / std_t

    out = []
    for i in range(x.shape[0]):
        target = z_of(x[i], y[i]).detach().clone()
        idx = torch.as_tensor(units) if units is not None else torch.topk(target, top_k).indices
        target[idx] *= 100.0
        g = grad(lambda x1: F.cosine_similarity(z_of(x1, y[i]), target, dim=0))(x[i])
        out.append(g.abs().amax(0))
    return torch.stack(out)


# -- input-space saliency: exactness and invariances --------------------------------------------

def test_input_saliency_matches_torch_func_reference():
    model = _tiny_relu()
    torch.manual_seed(1)
    x, y = torch.randn(2, 2, 7, 7), torch.tensor([0, 2])
    mean, std = _stats(7)
    got = input_saliency(model, x, y, mean, std, top_k=2)
    want = _func_reference(model, x, y, mean, std, top_k=2)
    assert got.shape == (2, 7, 7)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7 * float(want.abs().max()))
    assert float(got.max()) > 0
    got_u = input_saliency(model, x, y, mean, std, units=[1, 5])
    want_u = _func_reference(model, x, y, mean, std, units=[1, 5])
    assert torch.allclose(got_u, want_u, rtol=1e-4, atol=1e-7 * float(want_u.abs().max()))
    assert not torch.allclose(got_u, got)  # the boosted units matter


def _profile64(model, x, y):
    """The raw profile by the definition: plain autograd of one sample's loss, |dL/dW| averaged per filter."""
    weights = [p for p in model.parameters() if p.dim() == 4]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), weights)
    return torch.cat([g.abs().flatten(1).mean(1) for g in grads])


def test_input_saliency_matches_finite_differences():
    """Central differences (float64) of cos(s(x), b) with b fixed at x0."""
    torch.manual_seed(2)
    model = TinyTanh().double().eval()
    x0, y = torch.randn(1, 1, 6, 6, dtype=torch.float64), torch.tensor([1])
    mean, std = _stats(7, seed=3)
    mean_t, std_t = torch.tensor(mean), torch.tensor(std)

    def z(x):
        return (_profile64(model, x, y) - mean_t) / std_t

    b = z(x0)
    top = torch.topk(b, 3).indices
    b[top] *= 100.0
    eps, fd = 1e-6, torch.zeros(36, dtype=torch.float64)
    for j in range(36):
        d = torch.zeros(36, dtype=torch.float64)
        d[j] = eps
        d = d.view(1, 1, 6, 6)
        fd[j] = (F.cosine_similarity(z(x0 + d), b, dim=0) - F.cosine_similarity(z(x0 - d), b, dim=0)) / (2 * eps)
    got = input_saliency(model, x0, y, mean, std, top_k=3)[0]
    assert got.dtype == torch.float64
    assert torch.allclose(got.flatten(), fd.abs(), rtol=1e-5, atol=1e-9 * float(fd.abs().max()))


def test_input_saliency_invariances_and_model_left_alone():
    model = _tiny_relu()
    model.train()  # the caller's mode: must be restored (and BN statistics must not move)
    model.c2.bias.requires_grad_(False)
    bn_before = model.bn.running_mean.clone()
    torch.manual_seed(4)
    x, y = torch.randn(2, 2, 7, 7), torch.tensor([1, 0])
    x_copy, y_copy = x.clone(), y.clone()
    mean, std = _stats(7)
    both = input_saliency(model, x, y, mean, std, top_k=3)
    one = torch.cat([input_saliency(model, x[i : i + 1], y[i : i + 1], mean, std, top_k=3) for i in range(2)])
    assert torch.equal(both, one)
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy) and not x.requires_grad
    assert model.training and model.bn.training and torch.equal(model.bn.running_mean, bn_before)
    assert not model.c2.bias.requires_grad and model.c1.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    model.eval()
    assert torch.equal(input_saliency(model, x, y, mean, std, top_k=3), both)  # eval mode was used


def test_input_saliency_rejects_bad_arguments():
    model = _tiny_relu()
    x, y = torch.randn(1, 2, 7, 7), torch.tensor([0])
    mean, std = _stats(7)
    with pytest.raises(saliencydb.errors.ModelError, match="mean/std"):
        input_saliency(model, x, y, mean[:3], std)
    with pytest.raises(saliencydb.errors.ModelError, match="unit ids"):
        input_saliency(model, x, y, mean, std, units=[7])
    with pytest.raises(saliencydb.errors.ModelError, match="top-k"):
        input_saliency(model, x, y, mean, std, top_k=8)


def test_random_units():
    a = random_units(112, 10, seed=3)
    assert len(set(a.tolist())) == 10 and a.min() >= 0 and a.max() < 112 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, random_units(112, 10, seed=3)) and not np.array_equal(a, random_units(112, 10, seed=4))
    with pytest.raises(saliencydb.errors.ModelError):
        random_units(5, 6, 0)


def test_gradcam_is_cam_for_a_global_pool_linear_model():
    """With conv -> global average pool -> linear, GradCAM equals CAM: ReLU(sum_k W[c, k] A_k) / (H W)."""
    torch.manual_seed(5)
    conv, fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 3)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    x, target = torch.randn(2, 1, 8, 8), torch.tensor([2, 0])
    cam = gradcam(model, x, target)
    with torch.no_grad():
        a = conv(x)
        want = F.relu(torch.einsum("bk,bkhw->bhw", fc.weight[target], a)) / 64
    assert cam.shape == (2, 8, 8) and np.allclose(cam, want.numpy(), atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())


def test_spearman_and_display_map():
    a = np.array([3.0, 1.0, 2.0, 5.0])
    assert spearman(a, a**3) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    # ties get average ranks: ranks [1.5, 1.5, 3, 4] vs [1, 2, 3, 4] -> r = 0.9486833
    assert spearman(np.array([1.0, 1.0, 2.0, 3.0]), np.arange(4.0)) == pytest.approx(0.9486833, abs=1e-6)
    m = np.zeros((10, 10))
    m[4, 4] = 10.0
    d = display_map(m)
    assert d.shape == (10, 10) and d.min() >= 0 and d.max() == pytest.approx(1.0)
    assert d[4, 4] == d.max() and d[0, 0] == 0 and d[4, 5] > 0  # blurred around the peak, nothing far away


def test_smoothgrad_profiles_and_agreement():
    model = _tiny_relu()
    torch.manual_seed(6)
    x, y = torch.randn(2, 2, 7, 7), torch.tensor([0, 1])
    plain = reference_profiles(model, x, y)
    zero = smoothgrad_profiles(model, x, y, level=0.0, n=3)
    assert torch.allclose(zero.raw, plain, rtol=1e-5, atol=1e-8) and zero.preds.shape == (2, 3)
    tiny = smoothgrad_profiles(model, x, y, level=1e-4, n=8, seed=1)
    big = smoothgrad_profiles(model, x, y, level=0.5, n=8, seed=1)
    for i in range(2):
        assert agreement(plain[i], tiny.raw[i], k=3)["cosine"] > 0.999
        assert float(big.noise_std[i]) == pytest.approx(0.5 * float(x[i].max() - x[i].min()), rel=1e-5)
    assert agreement([1, 2, 3, 4], [4, 3, 2, 1], k=2)["topk_overlap"] == 0.0


# -- the commands, on the trained digits model ----------------------------------------------------

@pytest.fixture(scope="module")
def mistake(digits_db):
    """The most confident mistake of the val split: its metadata."""
    with saliencydb.open(digits_db) as db:
        sid = db.sql("SELECT sample_id FROM samples WHERE split = 'val' AND NOT correct "
                     "ORDER BY pred_conf DESC LIMIT 1").to_pylist()[0]["sample_id"]
        return db.sample(sid)


@pytest.fixture(scope="module")
def own_model(trained_weights):
    """The trained model and input of a sample, built here without the explain package."""
    model = small_cnn()
    model.load_state_dict(torch.load(trained_weights))
    source = parse_data_spec("builtin:mnist5k:val")
    index = {source.key(i): i for i in range(len(source))}
    transform = Transform.preset("mnist")
    return model.eval(), lambda key: transform(source.load(index[key]))[None]


def test_explain_writes_png_and_json(digits_db, mistake, tmp_path):
    out = tmp_path / "explain.png"
    r = run_cli("explain", "--db", digits_db, "--id", mistake["sample_id"], "--out", out, "--format", "json")
    doc = json.loads(r.output)
    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        assert img.format == "PNG" and 1000 <= img.width <= 2000 and 600 <= img.height <= 1200
    assert doc["sample"]["sample_id"] == mistake["sample_id"] and doc["sample"]["correct"] is False
    assert doc["confidences"]["pred_conf"] == pytest.approx(mistake["pred_conf"])
    assert doc["confidences"]["true_conf"] == pytest.approx(mistake["true_conf"])
    with saliencydb.open(digits_db) as db:  # the top units agree with the database's own SQL macro
        want = db.sql(f"SELECT unit_id, layer, channel, z FROM top_units({mistake['sample_id']}, 10)").to_pylist()
    assert [u["unit_id"] for u in doc["top_units"]] == [w["unit_id"] for w in want]
    for got, w in zip(doc["top_units"], want):
        assert (got["layer"], got["channel"]) == (w["layer"], w["channel"]) and got["z"] == pytest.approx(w["z"], abs=1e-3)
    assert doc["boosted_units"] == doc["top_units"]
    m = doc["map"]
    assert m["height"] == m["width"] == 28 and 0 < m["mean"] <= m["p90"] <= m["p99"] <= m["max"]
    assert 0.05 < m["top5pct_mass"] < 1 and -1 <= m["spearman_vs_gradcam"] <= 1
    assert doc["gradcam"]["layer"] == "features.6" and doc["gradcam"]["target"] == mistake["pred"]
    table = run_cli("explain", "--db", digits_db, "--id", mistake["sample_id"], "--out", out)
    assert "boosted units" in table.output and f"wrote {out}" in table.output and "Spearman with GradCAM" in table.output


def test_explain_units_option_boosts_those_units(digits_db, mistake, tmp_path):
    r = run_cli("explain", "--db", digits_db, "--id", mistake["sample_id"], "--out", tmp_path / "u.png",
                "--units", "features.3:5, 0:2", "--format", "json")
    doc = json.loads(r.output)
    assert [u["unit_id"] for u in doc["boosted_units"]] == [2, 16 + 5]
    assert [(u["layer"], u["channel"]) for u in doc["boosted_units"]] == [("features.0", 2), ("features.3", 5)]
    assert len(doc["top_units"]) == 10


@pytest.mark.parametrize("args, message", [
    (["--id", 999999, "--out", "{tmp}/a.png"], "no sample with id 999999"),
    (["--id", "{id}", "--out", "{tmp}/missing/a.png"], "does not exist; create it first"),
    (["--id", "{id}", "--out", "{tmp}/a.jpg"], "must end with .png"),
    (["--id", "{id}", "--out", "{tmp}/a.png", "--units", "conv9:1"], "is not LAYER:CHANNEL"),
    (["--id", "{id}", "--out", "{tmp}/a.png", "--units", "features.0:16"], "channel must be an integer in 0..15"),
    (["--id", "{id}", "--out", "{tmp}/a.png", "--units", "features.0"], "is not LAYER:CHANNEL"),
    (["--id", "{id}", "--out", "{tmp}/a.png", "--top-k", "0"], "--top-k must lie in 1..112"),
    (["--out", "{tmp}/a.png"], "give --id ID for one sample's figure, or --errors"),
    (["--errors", "--out", "{tmp}/missing/g"], "does not exist; create it first"),
    (["--errors", "--split", "nope", "--out", "{tmp}/g"], "unknown split 'nope'"),
])
def test_explain_bad_input_is_one_clear_line(digits_db, mistake, tmp_path, args, message):
    args = [str(a).format(tmp=tmp_path, id=mistake["sample_id"]) for a in args]
    r = run_cli("explain", "--db", digits_db, *args, expect=None)
    assert r.exit_code != 0
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert "Traceback" not in r.output and not (tmp_path / "a.png").exists()


def test_masking_changes_the_confidence_it_claims(digits_db, mistake, own_model):
    r = run_cli("check", "--db", digits_db, "--id", mistake["sample_id"], "--what", "masking", "--format", "json")
    doc = json.loads(r.output)
    assert doc["fill"] == "mean" and doc["fill_value"] == [0.0] and doc["top_p"] == 5.0
    salient = next(row for row in doc["results"] if row["masked_by"] == "salient units")
    # recompute: own model, own image, database statistics, top units from SQL, own masking
    model, image = own_model
    x, y = image(mistake["key"]), torch.tensor([mistake["label"]])
    with saliencydb.open(digits_db) as db:
        mean, std = db.stats
        units = [u["unit_id"] for u in db.sql(f"SELECT unit_id FROM top_units({mistake['sample_id']}, 10)").to_pylist()]
    m = input_saliency(model, x, y, mean, std, units=units)[0].flatten()
    n = round(0.05 * 28 * 28)
    masked = x.clone().flatten()
    masked[torch.argsort(-m, stable=True)[:n]] = 0.0
    with torch.no_grad():
        p0 = F.softmax(model(x), 1)[0]
        p1 = F.softmax(model(masked.view(1, 1, 28, 28)), 1)[0]
    pred = mistake["pred"]
    assert salient["pixels"] == n
    assert salient["true_conf_before"] == pytest.approx(float(p0[y]), abs=1e-5)
    assert salient["true_conf_after"] == pytest.approx(float(p1[y]), abs=1e-5)
    assert salient["pred_conf_before"] == pytest.approx(float(p0[pred]), abs=1e-5)
    assert salient["pred_conf_after"] == pytest.approx(float(p1[pred]), abs=1e-5)
    assert salient["delta_true_conf"] == pytest.approx(float(p1[y] - p0[y]), abs=1e-5)
    assert salient["pred_after"] == int(p1.argmax())
    assert abs(salient["delta_true_conf"]) + abs(salient["delta_pred_conf"]) > 1e-4  # masking did something
    assert {row["masked_by"] for row in doc["results"]} == {"salient units", "random units", "random pixels"}


def test_find_corrections_lists_only_real_rises(digits_db):
    r = run_cli("check", "--db", digits_db, "--what", "masking", "--split", "val", "--find-corrections",
                "--limit", "8", "--min-rise", "0.1", "--format", "json")
    doc = json.loads(r.output)
    assert doc["mistakes"] == 8 and doc["found"] == len(doc["samples"])
    with saliencydb.open(digits_db) as db:
        for row in doc["samples"]:
            meta = db.sample(row["sample_id"])
            assert not meta["correct"] and meta["split"] == "val"
            assert row["rise"] >= 0.1 and row["rise"] == pytest.approx(row["true_conf_after"] - row["true_conf_before"])
            assert row["true_conf_before"] == pytest.approx(meta["true_conf"], abs=1e-5)
    assert [row["rise"] for row in doc["samples"]] == sorted((row["rise"] for row in doc["samples"]), reverse=True)
    bad = run_cli("check", "--db", digits_db, "--what", "smoothgrad", "--split", "val", "--find-corrections", expect=None)
    assert bad.exit_code != 0 and "--find-corrections goes with --what masking" in bad.output


def test_randomization_lowers_the_rank_correlation(digits_db, mistake):
    r = run_cli("check", "--db", digits_db, "--id", mistake["sample_id"], "--what", "randomization",
                "--stats-samples", "64", "--format", "json")
    steps = json.loads(r.output)["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2, 3, 4]
    assert steps[0]["spearman"] == pytest.approx(1.0) and steps[0]["randomized"] == "(none)"
    assert steps[1]["randomized"] == "classifier" and steps[-1]["randomized"].endswith("features.0")
    later = [s["spearman"] for s in steps[1:]]
    assert max(later) < 0.8 and later[-1] < 0.5, steps


def test_smoothgrad_with_tiny_noise_agrees_with_plain_profile(digits_db, mistake):
    r = run_cli("check", "--db", digits_db, "--id", mistake["sample_id"], "--what", "smoothgrad",
                "--levels", "0.0001,0.5", "--n-noise", "8", "--format", "json")
    tiny, big = json.loads(r.output)["levels"]
    assert tiny["level"] == 0.0001 and tiny["cosine"] > 0.99 and tiny["topk_overlap"] >= 0.9
    assert tiny["prediction_changed"] is False and tiny["share_pred_changed"] == 0.0
    assert big["cosine"] < tiny["cosine"]
    bad = run_cli("check", "--db", digits_db, "--id", mistake["sample_id"], "--what", "smoothgrad", "--levels", "a,b",
                  expect=None)
    assert bad.exit_code != 0 and len(bad.output.strip().splitlines()) == 1


def test_profile_plot_groups(digits_db, tmp_path):
    out = tmp_path / "groups.png"
    r = run_cli("profile-plot", "--db", digits_db, "--split", "val", "--out", out, "--format", "json")
    doc = json.loads(r.output)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width >= 1000
    with saliencydb.open(digits_db) as db:
        n_ok, n_bad = db.sql("SELECT sum(correct::int), sum((NOT correct)::int) FROM samples WHERE split = 'val'").to_pylist()[0].values()
        z = db.sql("SELECT avg((s.raw_profile[u.unit_id + 1] - u.mean) / u.std) AS z FROM samples s, units u "
                   "WHERE s.split = 'val' AND NOT s.correct AND u.layer = 'features.3'").to_pylist()[0]["z"]
    correct, incorrect = doc["groups"]
    assert (correct["count"], incorrect["count"]) == (n_ok, n_bad)
    assert next(l for l in incorrect["layers"] if l["layer"] == "features.3")["mean_z"] == pytest.approx(z, rel=1e-4)
    assert all(l["mean_z"] > 0 for l in incorrect["layers"])  # mistakes lean on their filters harder
    bad = run_cli("profile-plot", "--db", digits_db, "--cluster", "0", "--out", out, expect=None)
    assert bad.exit_code != 0 and "run `saliencydb clusters` first" in bad.output


def test_profile_plot_of_a_cluster(digits_copy, tmp_path):
    run_cli("clusters", "--db", digits_copy, "--n-clusters", "3", "--format", "json")
    r = run_cli("profile-plot", "--db", digits_copy, "--cluster", "1", "--out", tmp_path / "c.png", "--format", "json")
    doc = json.loads(r.output)
    assert doc["scope"] == "cluster 1" and doc["groups"][0]["count"] == 0 and doc["groups"][1]["count"] > 0
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_gallery_is_one_self_contained_page(digits_db, tmp_path):
    out = tmp_path / "gallery"
    r = run_cli("explain", "--db", digits_db, "--split", "val", "--errors", "--limit", "2", "--out", out, "--format", "json")
    doc = json.loads(r.output)
    page = (out / "index.html").read_text()
    assert len(doc["mistakes"]) == 2 and doc["mistakes"][0]["pred_conf"] >= doc["mistakes"][1]["pred_conf"]
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) == 2 * (3 + 5) and all(s.startswith("data:image/png;base64,") for s in srcs)
    with Image.open(io.BytesIO(base64.b64decode(srcs[0].split(",", 1)[1]))) as img:
        assert img.format == "PNG" and img.width >= 96
    assert page.count("class='card'") == 2 and "<script" not in page and "href=" not in page


def test_file_writing_commands_print_their_main_table_as_csv(digits_db, mistake, tmp_path):
    """explain, profile-plot and check take --format csv: a header line and the rows of the table
    they print, the same numbers as their JSON."""
    import csv
    import io

    def rows(*args):
        out = run_cli(*args, "--format", "csv").output
        return list(csv.DictReader(io.StringIO(out)))

    def doc(*args):
        return json.loads(run_cli(*args, "--format", "json").output)

    args = ("explain", "--db", digits_db, "--id", mistake["sample_id"], "--out", tmp_path / "e.png")
    got, want = rows(*args), doc(*args)["boosted_units"]
    assert list(got[0]) == ["rank", "unit_id", "layer", "channel", "z"] and len(got) == len(want) == 10
    assert [int(r["unit_id"]) for r in got] == [u["unit_id"] for u in want]
    args = ("profile-plot", "--db", digits_db, "--split", "val", "--out", tmp_path / "p.png")
    got = rows(*args)
    assert list(got[0]) == ["layer", "mean z (correct)", "mean z (incorrect)"] and len(got) == 3
    incorrect = {l["layer"]: l["mean_z"] for l in doc(*args)["groups"][1]["layers"]}
    assert all(float(r["mean z (incorrect)"]) == pytest.approx(incorrect[r["layer"]], rel=1e-3) for r in got)
    args = ("check", "--db", digits_db, "--id", mistake["sample_id"], "--what", "smoothgrad", "--levels", "0.01,0.1", "--n-noise", "4")
    got, want = rows(*args), doc(*args)["levels"]
    assert [float(r["level"]) for r in got] == [0.01, 0.1] and list(got[0]) == list(want[0])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_explain_figure_text_stays_inside_and_labels_do_not_overlap(arch):
    import torchvision

    from saliencydb.explain.figures import build_explain_figure

    layout = UnitLayout.from_module(torchvision.models.get_model(arch, weights=None, num_classes=10))
    rng = np.random.default_rng(0)
    z = rng.normal(size=layout.n_units)
    top = [{"layer": layout.layers[-1].name, "channel": c} for c in range(8)]
    meta = {"sample_id": 123456, "split": "validation-2026", "key": "some/rather/long/path/to/an/image/file_000123456.JPEG",
            "label_name": "a long class name, with commas", "pred_name": "another long class name", "correct": False,
            "true_conf": 0.12345, "pred_conf": 0.87654}
    img = rng.random((32, 32, 3))
    fig = build_explain_figure(image=img, input_map=rng.random((32, 32)), cam=rng.random((32, 32)), z=z, layout=layout,
                               boosted=[0, 5, layout.n_units - 1], meta=meta, top_rows=top)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 10
    for t in texts:
        b = t.get_window_extent(renderer)
        assert b.x0 >= box.x0 - 1 and b.x1 <= box.x1 + 1 and b.y0 >= box.y0 - 1 and b.y1 <= box.y1 + 1, t.get_text()
    profile_ax = fig.axes[-1]
    labels = [t.get_window_extent(renderer) for t in profile_ax.get_xticklabels() if t.get_text()]
    assert len(labels) >= 10
    for a, b in zip(labels, labels[1:]):
        assert not a.overlaps(b)
    matplotlib.pyplot.close(fig)
