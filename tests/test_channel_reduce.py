"""How an input-space map reduces a pixel's colour channels: ``max-abs`` (max_c |g|, the default) or ``abs-max``
(|max_c g|, the paper authors' code). By hand, against an independent torch.func reference on tiny models,
and through every command that draws the map (explain, its gallery, check, serve, the report) on a
database of real RGB pictures and a small CNN with three input channels."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad

import saliencydb
from saliencydb.cli.explaining import CHANNEL_REDUCTIONS as CLI_CHOICES
from saliencydb.errors import ModelError
from saliencydb.explain import Explainer
from saliencydb.saliency import UnitLayout
from saliencydb.saliency.input_space import CHANNEL_REDUCTIONS, input_saliency, reduce_channels

from helpers import make_image_folder, run_cli


def test_the_two_reductions_by_hand():
    # pixel (0, 0): channels (-3, 1, 2); pixel (0, 1): (-1, -4, -2), negative everywhere; pixel (0, 2): (0.5, 0.25, 0)
    g = torch.tensor([[-3.0, -1.0, 0.5], [1.0, -4.0, 0.25], [2.0, -2.0, 0.0]]).reshape(1, 3, 1, 3)
    assert reduce_channels(g, "max-abs").tolist() == [[[3.0, 4.0, 0.5]]]
    assert reduce_channels(g, "abs-max").tolist() == [[[2.0, 1.0, 0.5]]]
    assert reduce_channels(g).tolist() == [[[3.0, 4.0, 0.5]]]  # the default is max-abs
    one = torch.tensor([[-3.0, 1.0], [0.0, -0.5]]).reshape(1, 1, 2, 2)  # one channel: both are |g|
    assert torch.equal(reduce_channels(one, "max-abs"), one.abs()[:, 0]) and torch.equal(reduce_channels(one, "abs-max"), one.abs()[:, 0])
    with pytest.raises(ModelError) as excinfo:
        reduce_channels(g, "abs")
    assert str(excinfo.value) == "unknown channel reduction 'abs'; use max-abs or abs-max"
    assert CHANNEL_REDUCTIONS == CLI_CHOICES == ("max-abs", "abs-max")


class TinyRGB(nn.Module):
    """Conv (in_channels -> 3), tanh, strided conv (3 -> 4), mean pool, linear: 7 units; smooth everywhere."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).mean(dim=(2, 3)))


def _signed_reference(model, x, y, mean, std, top_k):
    """The signed input gradient (B, C, H, W) of the boosted objective, by torch.func, one sample at a time."""
    layout = UnitLayout.from_module(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    names = [l.param_name for l in layout.layers]
    mean_t, std_t = torch.tensor(mean, dtype=x.dtype), torch.tensor(std, dtype=x.dtype)

    def z_of(x1, y1):
        def loss(w):
            return F.cross_entropy(functional_call(model, {**params, **w}, (x1[None],)), y1[None])

        g = grad(loss)({n: params[n] for n in names})
        return (torch.cat([g[n].abs().flatten(1).mean(1) for n in names]) - mean_t) / std_t

    out = []
    for i in range(x.shape[0]):
        target = z_of(x[i], y[i]).detach().clone()
        target[torch.topk(target, top_k).indices] *= 100.0
        out.append(grad(lambda x1: F.cosine_similarity(z_of(x1, y[i]), target, dim=0))(x[i]))
    return torch.stack(out)


def test_input_saliency_reduces_the_signed_gradient_as_asked():
    torch.manual_seed(0)
    model = TinyRGB(3).double().eval()
    x, y = torch.randn(2, 3, 7, 7, dtype=torch.float64), torch.tensor([0, 2])
    rng = np.random.default_rng(0)
    mean, std = rng.uniform(0, 0.05, 7), rng.uniform(0.5, 1.5, 7)
    g = _signed_reference(model, x, y, mean, std, top_k=2)
    max_abs = input_saliency(model, x, y, mean, std, top_k=2)
    abs_max = input_saliency(model, x, y, mean, std, top_k=2, channel_reduce="abs-max")
    assert torch.allclose(max_abs, g.abs().amax(dim=1), rtol=1e-9, atol=1e-15)
    assert torch.allclose(abs_max, g.amax(dim=1).abs(), rtol=1e-9, atol=1e-15)
    differs = (max_abs - abs_max).abs() > 1e-12
    assert 0 < int(differs.sum()) < differs.numel()  # pixels whose largest |g| is a negative channel, and others
    assert bool((abs_max <= max_abs).all())
    with pytest.raises(ModelError, match="unknown channel reduction"):
        input_saliency(model, x, y, mean, std, channel_reduce="max")


def test_one_channel_images_give_the_same_map_with_both():
    torch.manual_seed(1)
    model = TinyRGB(1).eval()
    x, y = torch.randn(2, 1, 6, 6), torch.tensor([1, 0])
    mean, std = np.zeros(7), np.ones(7)
    a = input_saliency(model, x, y, mean, std, top_k=3)
    assert float(a.max()) > 0 and torch.equal(a, input_saliency(model, x, y, mean, std, top_k=3, channel_reduce="abs-max"))


# -- the commands, on real RGB pictures ---------------------------------------------------------------

@pytest.fixture(scope="module")
def rgb_db(tmp_path_factory):
    """12 RGB pictures in 3 classes, indexed with a small CNN of 3 input channels at (seeded) random weights."""
    root = tmp_path_factory.mktemp("rgb")
    images = make_image_folder(root / "images", size=(20, 20))
    (root / "rgb.py").write_text("import torch\nfrom saliencydb.data.zoo import small_cnn\n\n\ndef factory():\n"
                                 "    torch.manual_seed(0)\n    return small_cnn(num_classes=3, in_channels=3)\n")
    db = root / "db"
    run_cli("index", "--db", db, "--model", f"python:{root / 'rgb.py'}:factory", "--random-weights", "--data",
            f"imagefolder:{images}", "--transform", "mode=RGB,size=20,mean=0.5/0.5/0.5,std=0.25/0.25/0.25",
            "--quiet", "--workers", 0)
    return db


@pytest.fixture(scope="module")
def both_maps(rgb_db):
    """Sample 3's input-space map with each reduction, from the library."""
    with saliencydb.open(rgb_db) as d:
        ex = Explainer(d)
        s = ex.sample(3)
        units = ex.top_units(s.z, 10)
        return {how: ex.input_map(s.x, s.y, units=units, channel_reduce=how)[0] for how in CHANNEL_REDUCTIONS}


def test_explain_channel_reduce(rgb_db, both_maps, tmp_path):
    max_abs, abs_max = both_maps["max-abs"], both_maps["abs-max"]
    assert max_abs.shape == (20, 20) and bool((abs_max <= max_abs).all()) and float(np.abs(max_abs - abs_max).max()) > 0
    docs = {}
    for how in (None, "max-abs", "abs-max"):
        extra = [] if how is None else ["--channel-reduce", how]
        out = tmp_path / f"{how}.png"
        docs[how] = json.loads(run_cli("explain", "--db", rgb_db, "--id", 3, "--out", out, *extra, "--format", "json").output)
        assert out.is_file()
    assert docs[None] == {**docs["max-abs"], "out": docs[None]["out"]}  # max-abs is the default
    for how, doc in docs.items():
        want = both_maps[how or "max-abs"]
        assert doc["map"]["channel_reduce"] == (how or "max-abs")
        assert doc["map"]["max"] == pytest.approx(float(want.max()), rel=1e-5)
        assert doc["map"]["mean"] == pytest.approx(float(want.mean()), rel=1e-5)
    assert docs["abs-max"]["map"]["mean"] < docs["max-abs"]["map"]["mean"]
    assert docs["abs-max"]["boosted_units"] == docs["max-abs"]["boosted_units"]  # only the map changes
    table = run_cli("explain", "--db", rgb_db, "--id", 3, "--out", tmp_path / "t.png", "--channel-reduce", "abs-max").output
    assert "\ninput-space map (channels abs-max): the top 5% of pixels hold " in table
    bad = run_cli("explain", "--db", rgb_db, "--id", 3, "--out", tmp_path / "b.png", "--channel-reduce", "abs", expect=2)
    assert "Invalid value for '--channel-reduce': 'abs' is not one of 'max-abs', 'abs-max'." in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "b.png").exists()


def test_gallery_and_check_take_the_channel_reduction(rgb_db, tmp_path):
    run_cli("explain", "--db", rgb_db, "--errors", "--limit", 2, "--out", tmp_path / "g", "--channel-reduce", "abs-max", "-q")
    assert "a pixel's colour channels reduced by abs-max" in (tmp_path / "g" / "index.html").read_text()
    runs = {how: json.loads(run_cli("check", "--db", rgb_db, "--id", 3, "--what", "masking", "--top-p", 10,
                                    "--channel-reduce", how, "--format", "json").output) for how in CHANNEL_REDUCTIONS}
    assert runs["max-abs"] != runs["abs-max"]  # the pixels masked follow the map
    r = run_cli("check", "--db", rgb_db, "--id", 3, "--what", "smoothgrad", "--channel-reduce", "abs-max", expect=1)
    assert r.output == ("Error: --channel-reduce applies to input-space (pixel) maps; smoothgrad (parameter saliency) "
                        "draws none: drop it\n")


def test_serve_takes_channel_reduce_as_a_query_parameter(rgb_db, both_maps):
    from starlette.testclient import TestClient

    from saliencydb.serve import create_app

    client = TestClient(create_app(rgb_db), raise_server_exceptions=False, base_url="http://localhost")
    default, plain, other = (client.get(f"/img/3/map.png{q}") for q in ("", "?channel_reduce=max-abs", "?channel_reduce=abs-max"))
    assert default.status_code == plain.status_code == other.status_code == 200
    assert default.content == plain.content != other.content
    bad = client.get("/img/3/map.png?channel_reduce=abs")
    assert bad.status_code == 400 and bad.text == "channel_reduce must be max-abs or abs-max, not 'abs'"
    cam = client.get("/img/3/gradcam.png?channel_reduce=abs-max")
    assert cam.status_code == 400 and cam.text == "channel_reduce applies to the input-space map (map.png), not to GradCAM"
    page = client.get("/sample/3?channel_reduce=abs-max").text
    assert 'src="/img/3/map.png?channel_reduce=abs-max"' in page and "input-space saliency (abs-max)" in page
    assert '<a href="/sample/3">show max-abs</a>' in page
    page = client.get("/sample/3").text
    assert 'src="/img/3/map.png"' in page and '<a href="/sample/3?channel_reduce=abs-max">show abs-max</a>' in page


def test_the_report_names_its_channel_reduction(rgb_db, tmp_path):
    from saliencydb.report import write_report

    pages = {how: write_report(rgb_db, tmp_path / f"{how}.html", max_mistakes=3, channel_reduce=how).read_text()
             for how in CHANNEL_REDUCTIONS}
    for how, page in pages.items():
        assert f"a pixel&#x27;s colour channels reduced by {how};" in page or f"a pixel's colour channels reduced by {how};" in page
        assert page.count('data-role="input-saliency"') == 3
    maps = {how: [line for line in page.split("<img") if 'data-role="input-saliency"' in line] for how, page in pages.items()}
    assert maps["max-abs"] != maps["abs-max"]
    with pytest.raises(ModelError, match="unknown channel reduction 'abs'"):
        write_report(rgb_db, tmp_path / "bad.html", channel_reduce="abs")
    assert not (tmp_path / "bad.html").exists()
