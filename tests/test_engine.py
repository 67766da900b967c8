"""The batched engine equals the one-sample-at-a-time autograd definition."""

import copy
import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

from saliencydb.saliency import ProfileEngine, UnitLayout, reference_profiles
from saliencydb.models.inference import outputs_from_logits


class SharedConv(nn.Module):
    """Applies one conv module twice (weight sharing across depth)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.fc(h.mean(dim=(2, 3)))


class OddConvs(nn.Module):
    """Padding modes, 'same' padding with an even kernel, dilation, stride, groups, 1x1 strided."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect")
        self.b = nn.Conv2d(6, 6, 4, padding="same", groups=3, bias=False)
        self.c = nn.Conv2d(6, 12, 3, stride=2, dilation=2, padding=2, padding_mode="circular")
        self.d = nn.Conv2d(12, 12, 1, stride=2)
        self.e = nn.Conv2d(12, 12, 3, groups=12, padding="valid")
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        for conv in (self.a, self.b, self.c, self.d, self.e):
            x = torch.nn.functional.silu(conv(x))
        return self.fc(x.mean(dim=(2, 3)))


class InputFan(nn.Module):
    """The input feeds two convs and the first call of a shared conv; optionally a non-conv op too."""

    def __init__(self, also_direct: bool = False):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 1)
        self.shared = nn.Conv2d(3, 3, 3, padding=1)
        self.mix = nn.Conv2d(6, 3, 1)
        self.fc = nn.Linear(3, 4)
        self.also_direct = also_direct

    def forward(self, x):
        h = torch.relu(self.a(x)) + torch.tanh(self.b(x))
        s = self.shared(x)
        h = self.shared(torch.relu(self.mix(h) + s))
        if self.also_direct:  # the input also reaches the loss without passing a conv
            h = h + x.mean(1, keepdim=True)
        return self.fc(h.mean(dim=(2, 3)))


def _seeded(cls, **kw):
    torch.manual_seed(0)
    return cls(**kw).eval()


def _tv(name, **kw):
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kw).eval()


MODELS = {
    "resnet18": (lambda: _tv("resnet18"), 32),
    "resnet50": (lambda: _tv("resnet50"), 32),
    "vgg19": (lambda: _tv("vgg19"), 32),
    "inception_v3": (lambda: _tv("inception_v3", aux_logits=False, init_weights=False), 75),
    "densenet121": (lambda: _tv("densenet121"), 32),
    "mobilenet_v3_small": (lambda: _tv("mobilenet_v3_small"), 32),
    "shared_conv": (lambda: SharedConv().eval(), 12),
    "odd_convs": (lambda: OddConvs().eval(), 17),
    "input_fan": (lambda: _seeded(InputFan), 9),
    "input_fan_direct": (lambda: _seeded(InputFan, also_direct=True), 9),
}


def _batch(model, size, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    channels = next(p for p in model.parameters() if p.dim() == 4).shape[1]
    x = torch.randn(n, channels, size, size, generator=g)
    out_dim = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    y = torch.randint(0, out_dim, (n,), generator=g)
    return x, y


def _layer_rel_errors(layout, got, want):
    """Per sample and layer: max |got - want| / max |want| (0 where the layer's gradient is zero)."""
    errs = []
    for layer in layout.layers:
        g, w = got[:, layer.offset : layer.stop], want[:, layer.offset : layer.stop]
        scale = w.abs().amax(dim=1)
        err = (g - w).abs().amax(dim=1)
        errs.append(torch.where(scale > 0, err / scale.clamp_min(1e-300), err))
    return torch.stack(errs, dim=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_engine_matches_per_sample_autograd_float32(name):
    build, size = MODELS[name]
    model = build()
    x, y = _batch(model, size)
    got = ProfileEngine(model).profile(x, y).raw
    # the definition evaluated in float64: a float32 one-sample autograd is itself off by up to
    # 15% on densenet121 on AVX-512 CPUs (oneDNN's batch-1 convolution backward), so it cannot be the yardstick
    want = reference_profiles(copy.deepcopy(model).double(), x.double(), y).float()
    layout = UnitLayout.from_module(model)
    assert got.shape == want.shape == (3, layout.n_units)
    assert want.abs().sum() > 0
    # relative error of every layer's profile of every sample, float32
    assert _layer_rel_errors(layout, got, want).max().item() <= 1e-4
    # and the whole profile, as a vector
    assert ((got - want).norm(dim=1) / want.norm(dim=1)).max().item() <= 1e-4


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shared_conv", "odd_convs", "densenet121", "input_fan", "input_fan_direct"])
def test_engine_matches_reference_elementwise_float64(name):
    """In float64, rounding is out of the way: every unit agrees to 1e-9 relative."""
    build, size = MODELS[name]
    model = build().double()
    x, y = _batch(model, size)
    x = x.double()
    got = ProfileEngine(model).profile(x, y).raw
    want = reference_profiles(model, x, y).double()
    # raw is float32 storage; the comparison is against the float32-rounded truth
    torch.testing.assert_close(got.double(), want.float().double(), rtol=1e-6, atol=1e-30)


def test_hand_checkable_single_filter():
    """One 1x1 conv on a 1x1 image, linear head: the gradient is known in closed form."""
    conv = nn.Conv2d(2, 2, 1, bias=False)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]).reshape(2, 2, 1, 1))
        head.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.5]]))
    model = nn.Sequential(conv, nn.Flatten(), head).eval()
    x = torch.tensor([[3.0, -1.0]]).reshape(1, 2, 1, 1)
    y = torch.tensor([0])
    out = ProfileEngine(model).profile(x, y)
    h = torch.tensor([3.0, -2.0])  # conv output
    logits = head.weight @ h
    p = logits.softmax(0)
    dlogits = p - torch.tensor([1.0, 0.0])
    dh = head.weight.T @ dlogits
    expected = (dh[:, None] * torch.tensor([3.0, -1.0])[None, :]).abs().mean(1)
    torch.testing.assert_close(out.raw[0], expected)
    torch.testing.assert_close(out.feature[0], h)
    assert out.pred.item() == int(logits.argmax())
    torch.testing.assert_close(out.loss[0], -p[0].log())


def test_batch_size_and_order_invariance():
    model = MODELS["resnet18"][0]()
    x, y = _batch(model, 32, n=6)
    full = ProfileEngine(model).profile(x, y).raw
    parts = torch.cat([ProfileEngine(model).profile(x[i : i + 2], y[i : i + 2]).raw for i in range(0, 6, 2)])
    layout = UnitLayout.from_module(model)
    assert _layer_rel_errors(layout, parts, full).max().item() <= 1e-4
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    shuffled = ProfileEngine(model).profile(x[perm], y[perm]).raw
    assert _layer_rel_errors(layout, shuffled, full[perm]).max().item() <= 1e-4


def test_small_memory_blocks_give_the_same_answer():
    model = MODELS["odd_convs"][0]()
    x, y = _batch(model, 17, n=5)
    big = ProfileEngine(model).profile(x, y).raw
    tiny = ProfileEngine(model, block_bytes=1).profile(x, y).raw  # one sample per block
    assert _layer_rel_errors(UnitLayout.from_module(model), tiny, big).max().item() <= 1e-5


def test_model_and_inputs_left_as_found():
    model = MODELS["shared_conv"][0]()
    model.train()
    model.fc.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    x, y = _batch(model, 12)
    x_copy, y_copy = x.clone(), y.clone()
    ProfileEngine(model).profile(x, y)
    assert model.training and all(m.training for m in model.modules())
    assert not model.fc.weight.requires_grad and model.stem.weight.requires_grad
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy) and not x.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_is_used_even_for_a_training_model():
    model = MODELS["resnet18"][0]()
    x, y = _batch(model, 32)
    want = reference_profiles(model, x, y)
    model.train()
    got = ProfileEngine(model).profile(x, y).raw
    assert model.training
    assert _layer_rel_errors(UnitLayout.from_module(model), got, want).max().item() <= 1e-4


def test_outputs_per_sample():
    model = MODELS["resnet18"][0]()
    x, y = _batch(model, 32, n=4)
    out = ProfileEngine(model).profile(x, y)
    with torch.no_grad():
        logits = model(x)
        feat = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.feature, feat)
    expected = outputs_from_logits(logits, y)
    assert torch.equal(out.pred, logits.argmax(1))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(out.true_conf, expected["true_conf"])
    assert out.feature.shape == (4, 512)


def test_layout_order_and_counts():
    assert UnitLayout.from_module(_tv("resnet18")).n_units == 4800
    assert UnitLayout.from_module(_tv("vgg19")).n_units == 5504
    assert UnitLayout.from_module(_tv("densenet121")).n_units == 10240
    assert UnitLayout.from_module(_tv("resnet50")).n_units == 26560
    layout = UnitLayout.from_module(MODELS["shared_conv"][0]())
    assert [l.name for l in layout.layers] == ["stem", "shared"]
    assert UnitLayout.from_dict(layout.to_dict()) == layout
    cols = layout.columns()
    assert list(cols["channel"][:9]) == [0, 1, 2, 3, 4, 5, 6, 7, 0]
    assert list(layout.layer_of([0, 7, 8, 15])) == [0, 0, 1, 1]


@pytest.mark.parametrize("strategy", ["bmm", "mm", "conv", "offsets"])
@pytest.mark.parametrize("name", ["resnet18", "odd_convs", "shared_conv", "mobilenet_v3_small"])
def test_every_reduction_strategy_is_exact(name, strategy):
    """Each per-layer strategy the engine may pick (choose_reduction) gives the reference profile."""
    build, size = MODELS[name]
    model = build()
    x, y = _batch(model, size, n=4)
    got = ProfileEngine(model, strategy=strategy, block_bytes=1 << 16).profile(x, y).raw
    want = reference_profiles(model, x, y)
    assert _layer_rel_errors(UnitLayout.from_module(model), got, want).max().item() <= 1e-4


def test_unknown_strategy_is_refused():
    from saliencydb.errors import ModelError

    with pytest.raises(ModelError, match="unknown engine strategy"):
        ProfileEngine(MODELS["shared_conv"][0](), strategy="magic")


def _conv_backward_runs(engine, x, y) -> int:
    """How many convolution backward kernels one engine pass runs (from the autograd profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine.profile(x, y)
    return sum(1 for ev in prof.events() if ev.name == "ConvolutionBackward0")


@pytest.mark.parametrize("name, skipped", [("resnet18", 1), ("input_fan", 3), ("input_fan_direct", 0), ("vgg19", 0)])
def test_backward_stops_at_the_convolutions_that_read_the_input(name, skipped):
    """The input's own gradient is never formed when only convs read the input (resnet18: conv1;
    input_fan: a, b and the first call of shared). Not when the input also feeds another op,
    nor when a conv output is modified in place (vgg19's inplace ReLU): then the full pass runs."""
    build, size = MODELS[name]
    model = build()
    x, y = _batch(model, size, n=2)
    engine = ProfileEngine(model)
    engine.profile(x, y)  # a first pass, as the indexer runs many
    calls = []
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    assert _conv_backward_runs(engine, x, y) == len(calls) - skipped


def test_no_activation_outlives_the_pass():
    """Nothing of a pass's graph is kept once profile returns, even with the cyclic GC off."""
    model = MODELS["resnet18"][0]()
    x, y = _batch(model, 32, n=2)
    engine = ProfileEngine(model)
    seen = []
    handles = [m.register_forward_hook(lambda m, i, out: seen.append(weakref.ref(out))) for m in (model.conv1, model.layer4)]
    gc.collect()
    gc.disable()
    try:
        engine.profile(x, y)
        engine.profile(x, y)
        assert len(seen) == 4 and all(ref() is None for ref in seen)
    finally:
        gc.enable()
        for h in handles:
            h.remove()


def test_workspace_stays_within_block_bytes():
    model = MODELS["resnet18"][0]()
    x, y = _batch(model, 32, n=8)
    want = reference_profiles(model, x, y)
    for block in (1 << 20, 1 << 17):
        engine = ProfileEngine(model, block_bytes=block)
        got = engine.profile(x, y).raw
        assert 0 < engine.workspace_bytes <= block
        assert _layer_rel_errors(UnitLayout.from_module(model), got, want).max().item() <= 1e-4


@pytest.mark.parametrize("strategy", [None, "bmm", "gram"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shared_conv", "odd_convs", "input_fan"])
def test_rms_aggregate_matches_the_per_sample_definition(name, strategy):
    """The approximate aggregate is itself computed exactly: the per-sample RMS of dL/dw per filter,
    whichever strategy computes it (the Gram form included), in float32 and float64."""
    build, size = MODELS[name]
    model = build()
    x, y = _batch(model, size)
    layout = UnitLayout.from_module(model)
    got = ProfileEngine(model, aggregate="rms", strategy=strategy).profile(x, y).raw
    want = reference_profiles(model, x, y, aggregate="rms")
    assert _layer_rel_errors(layout, got, want).max().item() <= 1e-4
    assert not torch.allclose(got, reference_profiles(model, x, y), rtol=1e-2, atol=0)  # not the mean_abs quantity
    model64, x64 = model.double(), x.double()
    got64 = ProfileEngine(model64, aggregate="rms", strategy=strategy).profile(x64, y).raw.double()
    want64 = reference_profiles(model64, x64, y, aggregate="rms").double()
    torch.testing.assert_close(got64, want64.float().double(), rtol=1e-6, atol=1e-30)


def test_rms_of_tiny_gradients_does_not_underflow():
    """Gradients around 1e-25 square to below float32's range; the RMS is still right to 1e-5."""
    model = MODELS["resnet18"][0]()
    with torch.no_grad():
        model.fc.weight.mul_(1e-24)
    x, y = _batch(model, 32)
    got = ProfileEngine(model, aggregate="rms").profile(x, y).raw.double()
    want = reference_profiles(copy.deepcopy(model).double(), x.double(), y, aggregate="rms").double()
    assert 0 < want.max() < 1e-18
    assert ((got - want).abs().amax(1) / want.abs().amax(1)).max().item() <= 1e-5
    # the reference's float32 form scales before squaring too
    want32 = reference_profiles(model, x, y, aggregate="rms").double()
    assert ((want32 - want).abs().amax(1) / want.abs().amax(1)).max().item() <= 1e-5


def test_unknown_aggregate_is_refused():
    from saliencydb.errors import ModelError, SpecError

    with pytest.raises(SpecError, match="unknown profile aggregate 'l3'"):
        ProfileEngine(MODELS["shared_conv"][0](), aggregate="l3")
    with pytest.raises(ModelError, match="unknown engine strategy 'gram' for the mean_abs aggregate"):
        ProfileEngine(MODELS["shared_conv"][0](), strategy="gram")
