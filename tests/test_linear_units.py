"""Linear units (linear-out rows, linear-in columns of nn.Linear weights and attention projections):
the batched engine against the one-sample-at-a-time autograd definition on real architectures, the
layout's choices and exclusions, and a ViT database built, queried and explained through the CLI."""

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

from helpers import run_cli
from saliencydb.errors import ModelError
from saliencydb.saliency import ProfileEngine, UnitLayout, reference_profiles


def _worst(model, x, y, units="linear", axis="out", dtype=torch.float32, block_bytes=None):
    """Largest relative error per layer of the engine against the reference, and the layout."""
    with torch.no_grad():  # heads initialised at zero (torchvision's ViT) would stop every gradient before them
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.abs().max() > 0:
                nn.init.normal_(m.weight, std=0.02)
    model = model.to(dtype).eval()
    x = x.to(dtype)
    layout = UnitLayout.from_module(model, units, axis)
    kw = {} if block_bytes is None else {"block_bytes": block_bytes}
    got = ProfileEngine(model, layout=layout, **kw).profile(x, y).raw.double()
    ref = reference_profiles(model, x, y, layout).double()
    worst = 0.0
    for layer in layout.layers:
        a, b = got[:, layer.offset : layer.stop], ref[:, layer.offset : layer.stop]
        assert b.abs().max() > 0, layer.name  # every layer reaches the loss: the comparison means something
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst, layout


class TokenMLP(nn.Module):
    """Linear layers on a token sequence (B, T, features), one of them applied twice (shared weights)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 12), nn.Linear(12, 12), nn.Linear(12, 3)

    def forward(self, x):
        t = torch.relu(self.a(x.reshape(x.shape[0], 4, 8)))
        t = torch.tanh(self.b(t))
        return self.head(self.b(t).mean(1))


def _tiny_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                mlp_dim=64, num_classes=4)


CASES = {
    "mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)), (6, 1, 4, 4), 5),
    "token-mlp": (TokenMLP, (5, 1, 4, 8), 3),
    "torchvision-vit": (_tiny_vit, (3, 3, 32, 32), 4),
    "torchvision-convnext_tiny": (lambda: torchvision.models.convnext_tiny(num_classes=4), (2, 3, 32, 32), 4),
    "torchvision-swin_t": (lambda: torchvision.models.swin_t(num_classes=4), (2, 3, 64, 64), 4),
    "torchvision-vit_b_16": (lambda: torchvision.models.vit_b_16(num_classes=4), (2, 3, 224, 224), 4),
    "timm-vit_tiny_patch16_224": (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=4), (2, 3, 224, 224), 4),
    "timm-deit_tiny_patch16_224": (lambda: timm.create_model("deit_tiny_patch16_224", num_classes=4), (2, 3, 224, 224), 4),
}


@pytest.mark.parametrize("axis", ["out", "in"])
@pytest.mark.parametrize("case", list(CASES))
def test_engine_is_the_definition(case, axis):
    build, shape, classes = CASES[case]
    torch.manual_seed(0)
    model = build()
    x, y = torch.randn(*shape), torch.randint(0, classes, (shape[0],))
    worst, layout = _worst(model, x, y, "linear", axis)
    assert layout.kind == f"linear-{axis}" and worst <= 1e-4, (case, worst)
    if case in ("mlp", "token-mlp", "torchvision-vit"):  # float64 too (the profile is stored in float32)
        worst64, _ = _worst(model, x, y, "linear", axis, torch.float64)
        assert worst64 <= 1e-6, (case, worst64)


def test_all_units_mix_filters_and_linear_layers_in_parameter_order():
    from saliencydb.data.zoo import small_cnn

    torch.manual_seed(0)
    model = small_cnn()
    worst, layout = _worst(model, torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)), "all", "in")
    assert worst <= 1e-4
    assert layout.kind == "mixed" and [l.kind for l in layout.layers] == ["conv", "conv", "conv", "linear-in"]
    assert layout.layers[-1].out_channels == 64 and layout.layers[-1].n_params == 10  # columns of the (10, 64) head


def test_blocks_smaller_than_one_sample_gradient_are_exact():
    """A block bound below one sample's gradient forms it a slice of units at a time."""
    torch.manual_seed(1)
    model = TokenMLP()
    x, y = torch.randn(4, 1, 4, 8), torch.randint(0, 3, (4,))
    for axis in ("out", "in"):
        worst, _ = _worst(model, x, y, "linear", axis, block_bytes=64)
        assert worst <= 1e-4


def test_hugging_face_models_are_exact(tmp_path):
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTConfig, ViTForImageClassification

    from saliencydb.models import load_model

    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_hidden_layers=2, hidden_size=32,
                                              num_attention_heads=2, intermediate_size=64, num_labels=3))
    vit.save_pretrained(tmp_path / "vit")
    cnx = ConvNextForImageClassification(ConvNextConfig(num_channels=3, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3))
    cnx.save_pretrained(tmp_path / "cnx")
    for name in ("vit", "cnx"):
        model = load_model(f"hf:{tmp_path / name}").module
        x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
        for axis in ("out", "in"):
            worst, layout = _worst(model, x, y, "linear", axis)
            assert worst <= 1e-4, (name, axis, worst)


def test_profiles_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    model = _tiny_vit().eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)
    layout = UnitLayout.from_module(model, "linear")
    engine = ProfileEngine(model, layout=layout)
    x, y = torch.randn(5, 3, 32, 32), torch.tensor([0, 1, 2, 3, 0])
    together = engine.profile(x, y).raw
    alone = engine.profile(x[2:3], y[2:3]).raw
    assert torch.allclose(together[2], alone[0], rtol=1e-5, atol=1e-9)


def test_auto_keeps_filters_for_cnns_and_takes_linear_layers_for_vits():
    assert UnitLayout.from_module(torchvision.models.resnet18(), "auto") == UnitLayout.from_module(torchvision.models.resnet18())
    assert UnitLayout.from_module(torchvision.models.vgg11(), "auto").kind == "conv-filter"  # 8 convs, 3 huge linears
    vit = UnitLayout.from_module(_tiny_vit(), "auto")
    assert vit.kind == "linear-out"
    why = dict(vit.excluded)
    assert "a conv weight" in why["conv_proj.weight"] and "positional" in why["encoder.pos_embedding"]
    assert not any("ln" in name for name in why)  # normalisation weights are 1-D: neither units nor listed


def test_embeddings_and_weights_tied_to_them_are_not_units():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mid, self.decoder = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10)
            self.decoder.weight = self.emb.weight

        def forward(self, x):
            return self.decoder(torch.tanh(self.mid(self.emb(x))).mean(1))

    layout = UnitLayout.from_module(Tied(), "linear")
    assert [l.param_name for l in layout.layers] == ["mid.weight"]
    assert dict(layout.excluded)["emb.weight"] == "an embedding table (tied to a linear layer's weight)"


def test_functional_weights_and_models_without_units_are_refused():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):  # the weight is used without calling its module
            return self.head(torch.tanh(nn.functional.linear(x.flatten(1), self.proj.weight)))

    model = Functional()
    with pytest.raises(ModelError, match="not applied through its module"):
        ProfileEngine(model, layout=UnitLayout.from_module(model, "linear")).profile(torch.randn(2, 1, 4, 4),
                                                                                     torch.tensor([0, 1]))
    # Swin V2's position-bias MLP runs once for the whole batch: no per-sample gradient to separate
    swin2 = torchvision.models.swin_v2_t(num_classes=3)
    with pytest.raises(ModelError, match="not the batch"):
        ProfileEngine(swin2, layout=UnitLayout.from_module(swin2, "linear")).profile(torch.randn(2, 3, 64, 64),
                                                                                     torch.tensor([0, 1]))

    class NoWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(10))

        def forward(self, x):
            return x.flatten(1)[:, :10] * self.scale

    assert UnitLayout.from_module(NoWeights(), "auto").layers == ()
    with pytest.raises(ModelError, match="no convolution weights"):
        ProfileEngine(NoWeights())


def test_a_vit_database_end_to_end(tmp_path):
    """Index (auto: linear units), info, neighbours, mistakes, clusters, explain, ingest: the small ViT."""
    from saliencydb.demo import train_demo_model

    weights = train_demo_model(tmp_path / "cache", model="vit", epochs=2)
    db = tmp_path / "db"
    args = ["--model", "python:saliencydb.data.zoo:small_vit", "--weights", weights, "--workers", 0]
    run_cli("index", "--db", db, "--data", "builtin:mnist5k:val", "--limit", 150, *args)
    units = json.loads((db / "manifest.json").read_text())["units"]
    assert units["kind"] == "linear-out" and units["n_units"] == 458
    assert {e["param"] for e in units["excluded"]} == {"cls", "pos", "patch.weight"}
    info = json.loads(run_cli("info", "--db", db, "--format", "json").stdout)
    assert info["units"]["kind"] == "linear-out" and len(info["units"]["excluded"]) == 3
    near = json.loads(run_cli("neighbors", "--db", db, "--id", 3, "-k", 4, "--format", "json").stdout)
    assert len(near["neighbors"]) == 4
    run_cli("mistakes", "--db", db, "--bootstrap", 20)
    groups = json.loads(run_cli("clusters", "--db", db, "--n-clusters", 2, "--all", "--format", "json").stdout)
    assert groups["clusters"][0]["top_units"][0]["layer"].startswith(("blocks.", "head"))
    out = tmp_path / "x.png"
    run_cli("explain", "--db", db, "--id", 3, "--out", out)
    assert out.stat().st_size > 0
    run_cli("ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 40, "--workers", 0)
    assert json.loads(run_cli("info", "--db", db, "--format", "json").stdout)["samples"] == 190
    # asking for other units than the database's is one line
    r = run_cli("index", "--db", db, "--data", "builtin:mnist5k:val", "--units", "conv", *args, expect=1)
    assert "stores linear-out units" in r.output and len(r.output.strip().splitlines()) == 1


def test_an_mlp_database_and_a_model_without_units_through_the_cli(tmp_path):
    (tmp_path / "models.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "def mlp():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))\n\n"
        "class Scale(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.s = nn.Parameter(torch.ones(10))\n"
        "    def forward(self, x):\n        return x.flatten(1)[:, :10] * self.s\n\n"
        "def scale(num_classes=10):\n    return Scale()\n")
    db = tmp_path / "db"
    base = ["--data", "builtin:mnist5k:val", "--limit", 60, "--workers", 0, "--random-weights"]
    run_cli("index", "--db", db, "--model", f"python:{tmp_path / 'models.py'}:mlp", "--linear-units", "in", *base)
    info = json.loads(run_cli("info", "--db", db, "--format", "json").stdout)
    assert info["units"]["kind"] == "linear-in" and info["units"]["count"] == 784 + 32
    out = tmp_path / "mlp.png"
    result = json.loads(run_cli("explain", "--db", db, "--id", 0, "--out", out, "--format", "json").stdout)
    assert result["gradcam"] is None and out.stat().st_size > 0  # no convolution: no GradCAM panel
    r = run_cli("index", "--db", tmp_path / "none", "--model", f"python:{tmp_path / 'models.py'}:scale", "--num-classes", 10,
                *base, expect=1)
    assert "no convolution or linear weights to profile" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "none" / "manifest.json").exists()


def test_a_hugging_face_vit_indexes_with_linear_units(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=28, patch_size=7, num_channels=1, num_hidden_layers=1, hidden_size=16,
                       num_attention_heads=2, intermediate_size=32, num_labels=10)
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", f"hf:{tmp_path / 'vit'}", "--transform", "mode=L,size=28,mean=0.5,std=0.5",
            "--data", "builtin:mnist5k:val", "--limit", 30, "--workers", 0)
    info = json.loads(run_cli("info", "--db", db, "--format", "json").stdout)
    assert info["units"]["kind"] == "linear-out" and info["samples"] == 30
    assert any("patch_embeddings" in e for e in info["units"]["excluded"])
    assert len(json.loads(run_cli("neighbors", "--db", db, "--id", 1, "-k", 3, "--format", "json").stdout)["neighbors"]) == 3


def test_a_weight_used_both_through_its_module_and_functionally_is_caught():
    """The first sample is checked against the definition: a second, hidden use of a weight is refused."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.head = nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):
            h = self.proj(x.flatten(1))
            return self.head(torch.tanh(h + nn.functional.linear(torch.tanh(h), self.proj.weight)))

    torch.manual_seed(0)
    model = Twice()
    engine = ProfileEngine(model, layout=UnitLayout.from_module(model, "linear"))
    with pytest.raises(ModelError, match="differs from its definition"):
        engine.profile(torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2]))


def test_timm_convnext_atto_with_all_units_is_exact():
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=4)
    for axis in ("out", "in"):
        worst, layout = _worst(model, torch.randn(2, 3, 64, 64), torch.tensor([1, 3]), "all", axis)
        assert worst <= 1e-4 and layout.kind == "mixed"
