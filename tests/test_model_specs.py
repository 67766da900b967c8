"""Model specs timm:NAME and hf:DIR: real timm and transformers models (tiny ones), loaded offline."""

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from helpers import make_image_folder, run_cli, run_cli_subprocess
from saliencydb.data.transforms import Transform
from saliencydb.errors import ModelError, SpecError
from saliencydb.models import HFImageClassifier, initialised_at_random, load_model, load_stored_model, model_record
from saliencydb.models.loading import file_sha256, state_dict_sha256
from saliencydb.schemas import Manifest

MEAN, STD = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)


def one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message, message
    return message


def _same_logits(loaded, original: torch.nn.Module, x: torch.Tensor, hf: bool = False) -> None:
    with torch.no_grad():
        want = original.eval()(pixel_values=x).logits if hf else original.eval()(x)
        torch.testing.assert_close(loaded.module(x), want, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- timm


def test_timm_model_and_its_default_transform() -> None:
    loaded = load_model("timm:resnet18", num_classes=3)
    assert (loaded.num_classes, loaded.class_names, loaded.weights, loaded.scripted) == (3, None, None, False)
    assert type(loaded.module).__module__.startswith("timm.") and not loaded.module.training
    assert loaded.module(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    cfg = resolve_data_config({}, model=timm.create_model("resnet18"))
    resize = next(t for t in create_transform(**cfg).transforms if isinstance(t, torchvision.transforms.Resize))
    t = loaded.default_transform
    assert (t.mode, t.crop, t.resize, t.size) == ("RGB", cfg["input_size"][1], resize.size, None)
    assert (t.mean, t.std, t.interpolation) == (cfg["mean"], cfg["std"], cfg["interpolation"])
    # the same tensor as timm's own evaluation transform
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8))
    torch.testing.assert_close(t(img), create_transform(**cfg)(img), atol=1e-5, rtol=0)
    assert initialised_at_random(loaded, 3)


def test_timm_unknown_names_and_tags() -> None:
    with pytest.raises(SpecError) as excinfo:
        load_model("timm:nope_not_a_model")
    assert "timm.list_models('" in one_line(excinfo)
    with pytest.raises(SpecError) as excinfo:  # a weights name is checked before any download
        load_model("timm:resnet18", weights="no_such_tag")
    assert "a1_in1k" in one_line(excinfo) and "DEFAULT" in one_line(excinfo)
    with pytest.raises(SpecError) as excinfo:
        load_model("timm:resnet18", weights="resnet50.a1_in1k")
    assert "resnet18" in one_line(excinfo)


def test_timm_weights_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    original = timm.create_model("resnet18", num_classes=4)
    torch.save(original.state_dict(), tmp_path / "r18.pth")
    save_file(original.state_dict(), tmp_path / "r18.safetensors")
    for name in ("r18.pth", "r18.safetensors"):
        loaded = load_model("timm:resnet18", weights=str(tmp_path / name))  # 4 classes, read off the file
        assert (loaded.num_classes, loaded.weights) == (4, str(tmp_path / name))
        assert loaded.weights_sha256 == state_dict_sha256(original)
        assert not initialised_at_random(loaded, None)
    _same_logits(loaded, original, torch.randn(2, 3, 48, 48))
    state = original.state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(ModelError) as excinfo:
        load_model("timm:resnet18", weights=str(tmp_path / "missing.pth"))
    assert "missing keys layer1.0.conv1.weight" in one_line(excinfo)


def test_timm_published_weights_offline_are_one_line(tmp_path: Path) -> None:
    """The hub's offline mode (an empty cache, no network): DEFAULT cannot be had, said in one line."""
    images = make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th")}
    r = run_cli_subprocess("index", "--db", tmp_path / "db", "--model", "timm:resnet18", "--weights", "DEFAULT",
                           "--data", f"imagefolder:{images}", "--quiet", env=env, timeout=120)
    assert r.returncode != 0
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: could not download timm weights resnet18.a1_in1k") and "--weights" in line, r.stderr
    assert not (tmp_path / "db").exists()


def test_timm_model_indexes_end_to_end(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3, size=(32, 32))
    db = tmp_path / "db"
    args = ["index", "--db", db, "--model", "timm:resnet18", "--num-classes", "2",
            "--transform", "mode=RGB,size=32,mean=0.5/0.5/0.5,std=0.5/0.5/0.5", "--data", f"imagefolder:{images}", "--quiet"]
    refused = run_cli(*args, expect=1)
    assert "--random-weights" in refused.output
    r = run_cli(*args, "--random-weights")
    assert "6 samples added, 0 already there, 0 failed" in r.output
    from saliencydb import query

    with query.open(db) as database:
        manifest = database.manifest
        assert (manifest.rows(), manifest.model.spec, manifest.model.code_sha256) == (6, "timm:resnet18", None)
        assert (manifest.model.weights, manifest.model.random_seed) == (None, 0)
        # random weights on purpose are re-drawn under their seed: the stored model reloads, the same weights
        assert load_stored_model(manifest).weights_sha256 == manifest.model.weights_sha256
    # so every command that reloads the model works: ingest into another split, resume
    run_cli("ingest", "--db", db, "--data", f"imagefolder:{images}", "--split", "again", "--quiet")
    with query.open(db) as database:
        z = database.sql("SELECT split, list(raw_profile[1] ORDER BY key) AS p FROM samples GROUP BY split ORDER BY split")
        assert z.num_rows == 2 and z.column("p")[0] == z.column("p")[1]  # the same weights profile the images the same
    other = run_cli(*[a if a != db else tmp_path / "db3" for a in args], "--random-weights", "--seed", "3")
    assert "6 samples added" in other.output
    with query.open(tmp_path / "db3") as database:
        assert database.manifest.model.random_seed == 3 and database.manifest.model.weights_sha256 != manifest.model.weights_sha256


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "fox"}
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = ViTForImageClassification(config).eval()
    path = tmp_path_factory.mktemp("hf") / "vit"
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=list(MEAN), image_std=list(STD)).save_pretrained(path)
    return path, model


def test_hf_image_classifier(vit_dir) -> None:
    path, original = vit_dir
    loaded = load_model(f"hf:{path}")
    assert (loaded.num_classes, loaded.class_names, loaded.weights, loaded.scripted) == (3, ["cat", "dog", "fox"], None, False)
    assert isinstance(loaded.module, HFImageClassifier) and isinstance(loaded.module.model, ViTForImageClassification)
    assert not loaded.module.training
    assert loaded.default_transform == Transform("RGB", 32, 32, None, MEAN, STD, "bilinear")
    assert loaded.weights_sha256 == state_dict_sha256(HFImageClassifier(original))
    assert next(iter(loaded.module.state_dict())).startswith("model.vit.")
    _same_logits(loaded, original, torch.randn(4, 3, 32, 32), hf=True)
    # the transform gives what the saved image processor gives
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    want = ViTImageProcessor.from_pretrained(path)(img, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(loaded.default_transform(img), want.float(), atol=1e-5, rtol=0)
    assert load_model(f"hf:{path}", task="image-classification").weights_sha256 == loaded.weights_sha256


def test_hf_convnext_with_and_without_processor(tmp_path: Path) -> None:
    torch.manual_seed(1)
    original = ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=2))
    original.save_pretrained(tmp_path / "cnx")
    loaded = load_model(f"hf:{tmp_path / 'cnx'}")
    assert (loaded.num_classes, loaded.class_names, loaded.default_transform) == (2, None, None)  # LABEL_0, LABEL_1
    _same_logits(loaded, original, torch.randn(2, 3, 32, 32), hf=True)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, image_mean=list(MEAN), image_std=list(STD),
                           resample=3).save_pretrained(tmp_path / "cnx")
    # ConvNeXt's processor below 384 px: shorter side to int(32 / 0.875) = 36, centre crop 32
    assert load_model(f"hf:{tmp_path / 'cnx'}").default_transform == Transform("RGB", 36, 32, None, MEAN, STD, "bicubic")


def test_hf_spec_errors(vit_dir, tmp_path: Path) -> None:
    path, _ = vit_dir
    bert = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=2)
    BertForSequenceClassification(bert).save_pretrained(tmp_path / "bert")
    cases = [
        ((f"hf:{tmp_path / 'bert'}",), {}, "holds no tokenizer"),  # a text model saved without its tokenizer
        ((f"hf:{path}",), {"task": "masked-lm"}, "(image-classification); --task masked-lm would load it with layers"),
        ((f"hf:{path}",), {"task": "segmentation"}, "unknown task 'segmentation'"),
        ((f"hf:{path}", str(tmp_path / "w.pt")), {}, "drop --weights"),
        ((f"hf:{path}",), {"num_classes": 5}, "--num-classes 5 does not match the 3 labels"),
        ((f"hf:{tmp_path / 'missing'}",), {}, f"directory {tmp_path / 'missing'} does not exist"),
        ((f"hf:{tmp_path}",), {}, "is not a Hugging Face model directory"),
        (("timm:resnet18",), {"task": "image-classification"}, "only for hf: models"),
    ]
    for args, kwargs, needle in cases:
        with pytest.raises(SpecError) as excinfo:
            load_model(*args, **kwargs)
        assert needle in one_line(excinfo)


def test_hf_model_stored_and_loaded_back(vit_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = vit_dir
    copy = tmp_path / "vit"
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    monkeypatch.chdir(tmp_path)
    loaded = load_model("hf:vit")  # relative: recorded absolute
    assert not initialised_at_random(loaded, None)
    record = model_record(loaded, loaded.default_transform, None, "mean_abs")
    assert record.spec == f"hf:{copy.resolve()}" and record.weights is None
    assert record.code_sha256 == file_sha256(copy / "config.json")
    manifest = Manifest(model=record, units={}, feature_dim=0)
    monkeypatch.chdir(path.parent)
    assert load_stored_model(manifest).weights_sha256 == loaded.weights_sha256
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"fox"', '"wolf"'))
    with pytest.raises(ModelError) as excinfo:
        load_stored_model(manifest)
    assert "config.json changed since the database was made" in one_line(excinfo)
