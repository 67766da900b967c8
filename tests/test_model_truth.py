"""Class names, preprocessing and random weights come from the model actually loaded, checked against the
frameworks' own answers (transformers' logits and id2label, torchvision's models), not against saliencydb."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from helpers import make_image_folder, run_cli
from saliencydb.data.transforms import Transform
from saliencydb.models.loading import load_model
from saliencydb.models.names import imagenet_synsets


def _sql(db, query):
    return json.loads(run_cli("sql", "--db", db, "--format", "json", query).stdout)


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ Hugging Face sequence classifier


@pytest.fixture(scope="module")
def reversed_classifier(tmp_path_factory):
    """A tiny BERT sequence classifier whose id2label is NOT in sorted order: 0 = pos, 1 = neg."""
    from saliencydb.data.zoo import save_tiny_text_model

    out = tmp_path_factory.mktemp("rev") / "model"
    words = "the movie was good bad fine awful great dull".split()
    save_tiny_text_model(out, words, task="sequence-classification", num_labels=2, id2label={0: "pos", 1: "neg"}, seed=3)
    return out


SENTENCES = ["the movie was good", "the movie was bad", "the movie was great", "the movie was dull",
             "the movie was fine", "the movie was awful", "good", "bad bad bad"]


def _transformers_says(model_dir: Path, sentences: list[str]) -> list[str]:
    """transformers' own prediction: argmax of its logits, named by its config's id2label."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(**tok(sentences, return_tensors="pt", padding=True)).logits
    return [model.config.id2label[int(i)] for i in logits.argmax(-1)]


@pytest.mark.parametrize("form", ["names", "indices"])
def test_text_classifier_classes_are_its_id2label(reversed_classifier, tmp_path, form):
    truth = _transformers_says(reversed_classifier, SENTENCES)
    labels = ["pos", "neg"] * 4  # the data's labels; as indices, 0 = pos and 1 = neg, the model's ids
    rows = [{"text": t, "label": lab if form == "names" else {"pos": 0, "neg": 1}[lab]} for t, lab in zip(SENTENCES, labels)]
    data = _jsonl(tmp_path / "rev.jsonl", rows)
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", f"hf:{reversed_classifier}", "--data", f"jsonl:{data}", "-q")
    got = _sql(db, "SELECT text, label, label_name, pred, pred_name, correct FROM samples ORDER BY sample_id")
    assert [r["text"] for r in got] == SENTENCES
    assert [r["pred_name"] for r in got] == truth  # what transformers predicts, by its own names
    assert [r["label_name"] for r in got] == labels
    assert [r["label"] for r in got] == [{"pos": 0, "neg": 1}[lab] for lab in labels]  # the model's class ids
    assert [r["correct"] for r in got] == [p == lab for p, lab in zip(truth, labels)]
    assert json.loads((db / "manifest.json").read_text())["model"]["class_names"] == ["pos", "neg"]


def test_labels_the_model_does_not_have(reversed_classifier, tmp_path):
    some = _jsonl(tmp_path / "some.jsonl", [{"text": "the movie was good", "label": "pos"},
                                            {"text": "the movie was bad", "label": "meh"}])
    r = run_cli("index", "--db", tmp_path / "db", "--model", f"hf:{reversed_classifier}", "--data", f"jsonl:{some}", "-q",
                expect=2)
    assert "1 samples added" in r.output and "label 'meh' is not one of the database's classes (pos, neg)" in r.output
    assert "note: 1 of the data's labels are not classes of the model (meh)" in r.output
    none = _jsonl(tmp_path / "none.jsonl", [{"text": "the movie was good", "label": "positive"},
                                            {"text": "the movie was bad", "label": "negative"}])
    r = run_cli("index", "--db", tmp_path / "db2", "--model", f"hf:{reversed_classifier}", "--data", f"jsonl:{none}", "-q",
                expect=1)
    assert r.output.startswith("Error: none of the data's labels (negative, positive) is a class of the model (pos, neg)")
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "db2" / "manifest.json").exists()


# ------------------------------------------------------------------ Hugging Face image classifier


@pytest.fixture(scope="module")
def unsorted_vit(tmp_path_factory):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(1)
    labels = {0: "zebra", 1: "ant", 2: "cat"}
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                       intermediate_size=64, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    out = tmp_path_factory.mktemp("vit") / "vit"
    ViTForImageClassification(config).eval().save_pretrained(out)
    return out


TRANSFORM = "mode=RGB,size=32,mean=0.5/0.5/0.5,std=0.5/0.5/0.5"


@pytest.mark.parametrize("form", ["folders", "csv-indices"])
def test_image_classifier_classes_are_its_id2label(unsorted_vit, tmp_path, form):
    from transformers import ViTForImageClassification

    images = make_image_folder(tmp_path / "imgs", classes=("zebra", "ant", "cat"), per_class=2, size=(32, 32))
    files = sorted(images.rglob("*.*"))
    if form == "folders":
        data = f"imagefolder:{images}"
    else:
        ids = {"zebra": 0, "ant": 1, "cat": 2}
        (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{f},{ids[f.parent.name]}\n" for f in files))
        data = f"csv:{tmp_path / 'l.csv'}"
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", f"hf:{unsorted_vit}", "--transform", TRANSFORM, "--data", data, "-q")
    got = {Path(r["key"]).name + Path(r["key"]).parent.name if form == "folders" else r["key"]: r
           for r in _sql(db, "SELECT key, label, label_name, pred_name FROM samples")}
    model = ViTForImageClassification.from_pretrained(unsorted_vit).eval()
    t = Transform.parse(TRANSFORM)
    for f in files:
        with torch.no_grad():
            logits = model(pixel_values=t(Image.open(f))[None]).logits
        row = next(r for k, r in got.items() if k.endswith(f.name + f.parent.name) or k == str(f) or k.endswith(f"{f.parent.name}/{f.name}"))
        assert row["pred_name"] == model.config.id2label[int(logits.argmax())]
        assert row["label_name"] == f.parent.name and row["label"] == model.config.label2id[f.parent.name]


# ------------------------------------------------------------------ torchvision, timm, python: with stored names


def _checkpoint(path: Path, module: torch.nn.Module, **extra) -> Path:
    torch.save({"state_dict": module.state_dict(), **extra}, path)
    return path


def test_checkpoint_names_order_the_classes(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=2).eval()
    weights = _checkpoint(tmp_path / "r18.pt", net, class_names=["dog", "cat"])  # dog = 0: not sorted
    images = make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3, size=(32, 32))
    db = tmp_path / "db"
    r = run_cli("index", "--db", db, "--model", "torchvision:resnet18", "--weights", weights, "--transform", TRANSFORM,
                "--data", f"imagefolder:{images}", "-q")
    assert "note:" not in r.output  # the names are the checkpoint's: nothing is assumed
    t = Transform.parse(TRANSFORM)
    for row in _sql(db, "SELECT key, label, label_name, pred_name FROM samples"):
        f = images / row["key"] if not Path(row["key"]).is_absolute() else Path(row["key"])
        with torch.no_grad():
            pred = int(net(t(Image.open(f))[None]).argmax())
        assert row["pred_name"] == ["dog", "cat"][pred]
        assert (row["label_name"], row["label"]) == (f.parent.name, ["dog", "cat"].index(f.parent.name))


@pytest.mark.parametrize("key,value", [("classes", ["b", "a"]), ("idx_to_class", {0: "b", 1: "a"}),
                                       ("class_to_idx", {"a": 1, "b": 0})])
def test_checkpoint_name_forms(tmp_path, key, value):
    from saliencydb.data.zoo import small_cnn

    weights = _checkpoint(tmp_path / "w.pt", small_cnn(num_classes=2), **{key: value})
    loaded = load_model("python:saliencydb.data.zoo:small_cnn", str(weights), 2)
    assert loaded.class_names == ["b", "a"]


def test_bad_checkpoint_names_are_one_line(tmp_path):
    from saliencydb.data.zoo import small_cnn

    weights = _checkpoint(tmp_path / "w.pt", small_cnn(num_classes=2), class_names=["a", "a"])
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=1, size=(28, 28))
    r = run_cli("index", "--db", tmp_path / "db", "--model", "python:saliencydb.data.zoo:small_cnn", "--num-classes", 2,
                "--weights", weights, "--transform", "mnist", "--data", f"imagefolder:{images}", expect=1)
    assert r.output.startswith("Error: weights file") and "'class_names' entry is not a list of distinct class names" in r.output


def test_timm_imagenet_names_come_from_timm():
    timm = pytest.importorskip("timm")  # installed by make install (the timm extra): never skipped in CI
    from saliencydb.models.names import timm_names

    names = timm_names(timm.create_model("resnet18", pretrained=False))
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and len(set(names)) == 1000
    assert timm_names(timm.create_model("resnet18", pretrained=False, num_classes=3)) is None


def test_model_without_names(tmp_path):
    from saliencydb.data.zoo import small_cnn

    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(small_cnn(num_classes=3).state_dict(), weights)
    images = make_image_folder(tmp_path / "imgs", classes=("cat", "dog", "eel"), per_class=1, size=(28, 28))
    args = ["--model", "python:saliencydb.data.zoo:small_cnn", "--weights", weights, "--transform", "mnist", "-q"]
    r = run_cli("index", "--db", tmp_path / "db", *args, "--num-classes", 3, "--data", f"imagefolder:{images}")
    assert "note: the model names no classes: the data's 3 label names, sorted, are taken as its class indices " \
           "(cat = 0, dog = 1, eel = 2)" in r.output
    two = make_image_folder(tmp_path / "two", classes=("cat", "dog"), per_class=1, size=(28, 28))
    r = run_cli("index", "--db", tmp_path / "db2", *args, "--num-classes", 3, "--data", f"imagefolder:{two}", expect=1)
    assert r.output.startswith("Error: the model names none of its 3 classes and the data names 2 (cat, dog)")
    digits = make_image_folder(tmp_path / "digits", classes=("2", "0"), per_class=1, size=(28, 28))
    run_cli("index", "--db", tmp_path / "db3", *args, "--num-classes", 3, "--data", f"imagefolder:{digits}")
    assert sorted((r["label"], r["label_name"]) for r in _sql(tmp_path / "db3", "SELECT label, label_name FROM samples")) \
        == [(0, "0"), (2, "2")]  # folders named by class index are those classes


def test_imagenet_synset_folders_are_class_indices(tmp_path):
    """ImageNet folders named by WordNet id (a few of the 1,000) are the classes of those ids' positions."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18().eval()  # 1000 classes
    weights = tmp_path / "r18.pt"
    torch.save(net.state_dict(), weights)
    syn = imagenet_synsets()
    chosen = (syn[1], syn[417], syn[999])
    images = make_image_folder(tmp_path / "imgs", classes=chosen, per_class=1, size=(32, 32))
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", "torchvision:resnet18", "--weights", weights, "--transform", TRANSFORM,
            "--data", f"imagefolder:{images}", "-q")
    got = sorted((r["label"], r["label_name"]) for r in _sql(db, "SELECT label, label_name FROM samples"))
    assert got == [(1, syn[1]), (417, syn[417]), (999, syn[999])]
    assert syn[:3] == ("n01440764", "n01443537", "n01484850") and len(syn) == 1000 and list(syn) == sorted(syn)


# ------------------------------------------------------------------ preprocessing follows the weights


def test_local_torchvision_file_transform_is_a_stated_guess(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "inc.pt"
    torch.save(torchvision.models.resnet18(num_classes=2).state_dict(), weights)
    loaded = load_model("torchvision:resnet18", str(weights))
    v1 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert (loaded.default_transform.resize, loaded.default_transform.crop) == (v1.resize_size[0], v1.crop_size[0]) == (256, 224)
    assert loaded.transform_source.startswith("a guess for a local weights file: the preprocessing of torchvision's "
                                              "ResNet18_Weights.IMAGENET1K_V1")
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=1, size=(40, 40))
    r = run_cli("index", "--db", tmp_path / "db", "--model", "torchvision:resnet18", "--weights", weights,
                "--data", f"imagefolder:{images}", "-q")
    assert "note: the input transform (resize=256,crop=224," in r.output and "is a guess for a local weights file" in r.output
    info = run_cli("info", "--db", tmp_path / "db").output
    assert "transform  resize=256,crop=224," in info and "a guess for a local weights file" in info


def test_each_published_weights_bring_their_own_transform():
    """The transform recorded for published weights is that member's, not DEFAULT's (ResNet-50 V1: 256/224)."""
    from saliencydb.models.loading import _torchvision_guess

    v1 = Transform.from_torchvision(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    v2 = Transform.from_torchvision(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    assert (v1.resize, v1.crop, v2.resize, v2.crop) == (256, 224, 232, 224)
    guess, said = _torchvision_guess(torchvision.models.ResNet50_Weights, "x")
    assert guess == v1 and "IMAGENET1K_V1" in said


def _seeded_resnet50(tmp_path: Path) -> str:
    (tmp_path / "seeded.py").write_text("import torch, torchvision\n\ndef resnet50(num_classes=2):\n"
                                        "    torch.manual_seed(0)\n    return torchvision.models.resnet50(num_classes=num_classes)\n")
    return f"python:{tmp_path / 'seeded.py'}:resnet50"


def test_reference_stats_bring_their_preprocessing(tmp_path):
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=1, size=(64, 48))
    spec = _seeded_resnet50(tmp_path)
    r = run_cli("index", "--db", tmp_path / "db", "--model", spec, "--num-classes", 2, "--stats", "reference:resnet50",
                "--data", f"imagefolder:{images}", "-q")
    m = json.loads((tmp_path / "db" / "manifest.json").read_text())["model"]
    assert Transform.from_dict(m["transform"]) == Transform("RGB", 256, 224, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert m["transform_source"].startswith("the preprocessing the reference:resnet50 statistics were computed with")
    assert "note: --stats reference:resnet50 were computed with torchvision's IMAGENET1K_V1 weights" in r.output
    other = run_cli("index", "--db", tmp_path / "db2", "--model", spec, "--num-classes", 2, "--stats", "reference:resnet50",
                    "--transform", "resize=32,crop=32,mode=RGB,mean=0.5/0.5/0.5,std=0.5/0.5/0.5", "--data", f"imagefolder:{images}", "-q")
    assert "2 samples added" in other.output and "--transform resize=32,crop=32,mode=RGB,mean=0.5/0.5/0.5,std=0.5/0.5/0.5 gives the model other inputs, standardised with those statistics all the same" in other.output


def test_reference_stats_refuse_other_published_weights(tmp_path):
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=1, size=(32, 32))
    for weights in ("IMAGENET1K_V2", "DEFAULT"):  # ResNet-50's DEFAULT is V2: refused before any download
        r = run_cli("index", "--db", tmp_path / "db", "--model", "torchvision:resnet50", "--weights", weights,
                    "--stats", "reference:resnet50", "--data", f"imagefolder:{images}", expect=1)
        assert r.output.startswith("Error: --stats reference:resnet50 were computed with torchvision's IMAGENET1K_V1 "
                                   "weights, not ResNet50_Weights.IMAGENET1K_V2")


# ------------------------------------------------------------------ random weights on purpose


def test_torchvision_random_weights_never_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=1, size=(32, 32))
    db = tmp_path / "db"
    args = ["--model", "torchvision:resnet18", "--num-classes", 3, "--random-weights", "--seed", 5, "--transform", TRANSFORM]
    run_cli("index", "--db", db, *args, "--data", f"imagefolder:{images}", "--limit", 2, "-q")
    run_cli("index", "--db", db, *args, "--data", f"imagefolder:{images}", "-q")  # resumes: the same weights again
    assert not (tmp_path / "empty-hub").exists()
    m = json.loads((db / "manifest.json").read_text())["model"]
    assert (m["weights"], m["random_seed"]) == (None, 5)
    torch.manual_seed(5)
    want = torchvision.models.resnet18(num_classes=3)
    from saliencydb.models.loading import state_dict_sha256

    assert m["weights_sha256"] == state_dict_sha256(want)  # the seed's weights, as torchvision draws them
    run_cli("ingest", "--db", db, "--data", f"imagefolder:{images}", "--split", "again", "-q")
    got = _sql(db, "SELECT split, list(loss ORDER BY key) AS l FROM samples GROUP BY split ORDER BY split")
    # the same weights: the same losses (to float32 rounding: a job smaller than a batch runs unpadded)
    assert len(got) == 2 and np.allclose(got[0]["l"], got[1]["l"], rtol=1e-5, atol=0)
    run_cli("explain", "--db", db, "--id", 0, "--out", tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 0


@pytest.mark.parametrize("extra,message", [
    (["--seed", "3"], "Error: --seed draws random weights: pass it with --random-weights"),
    (["--random-weights", "--seed", str(2**70)], "Error: --seed 1180591620717411303424 is out of range"),
    (["--random-weights", "--seed", "-1"], "Error: --seed -1 is out of range"),
    (["--random-weights", "--weights", "w.pt"], "Error: model spec 'python:saliencydb.data.zoo:small_cnn': --random-weights "
                                                "draws the weights; drop --weights"),
])
def test_random_weights_misuse_is_one_line(tmp_path, extra, message):
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=1, size=(28, 28))
    r = run_cli("index", "--db", tmp_path / "db", "--model", "python:saliencydb.data.zoo:small_cnn", "--transform", "mnist",
                "--data", f"imagefolder:{images}", *extra, expect=1)
    assert r.output.startswith(message) and len(r.output.strip().splitlines()) == 1


def test_torchscript_refuses_random_weights(tmp_path):
    from saliencydb.data.zoo import small_cnn

    path = tmp_path / "m.pt"
    torch.jit.script(small_cnn().eval()).save(str(path))
    images = make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=1, size=(28, 28))
    r = run_cli("index", "--db", tmp_path / "db", "--model", path, "--transform", "mnist", "--random-weights",
                "--data", f"imagefolder:{images}", expect=1)
    assert "a TorchScript file carries its own weights; drop --random-weights" in r.output


def test_random_weights_are_the_seeds_for_every_spec():
    a = load_model("python:saliencydb.data.zoo:small_cnn", random_seed=1)
    b = load_model("python:saliencydb.data.zoo:small_cnn", random_seed=1)
    c = load_model("python:saliencydb.data.zoo:small_cnn", random_seed=2)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    before = torch.random.get_rng_state()
    load_model("torchvision:resnet18", random_seed=0, num_classes=2)
    assert torch.equal(before, torch.random.get_rng_state())  # the caller's generator is left alone
    assert np.isfinite(a.module(torch.zeros(1, 1, 28, 28)).detach().numpy()).all()


@pytest.mark.parametrize("spec", ["imagenet", "mnist", "resize=232,crop=224,mode=RGB,mean=0.5/0.5/0.5,std=0.2/0.2/0.2,interpolation=bicubic"])
def test_info_writes_the_transform_as_index_reads_it(spec):
    from saliencydb.cli.queries import _transform_spec

    t = Transform.parse(spec)
    assert _transform_spec(t.to_dict()) == t.to_spec() and Transform.parse(_transform_spec(t.to_dict())) == t


def test_python_and_timm_models_name_their_classes(tmp_path):
    """A python: model's class_names attribute, and a timm model's checkpoint names, are the stored names of
    what the model itself predicts."""
    timm = pytest.importorskip("timm")  # installed by make install (the timm extra): never skipped in CI
    (tmp_path / "named.py").write_text(
        "import torch\nfrom saliencydb.data.zoo import small_cnn\n\ndef named(num_classes=3):\n"
        "    torch.manual_seed(4)\n    m = small_cnn(num_classes=3)\n    m.class_names = ['z', 'y', 'x']\n    return m\n")
    images = make_image_folder(tmp_path / "imgs", classes=("x", "y", "z"), per_class=2, size=(28, 28))
    db = tmp_path / "db"
    run_cli("index", "--db", db, "--model", f"python:{tmp_path / 'named.py'}:named", "--transform", "mnist",
            "--data", f"imagefolder:{images}", "-q")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=3, zero_init_last=False).eval()
    weights = _checkpoint(tmp_path / "t.pt", net, classes=["y", "z", "x"])
    tdb = tmp_path / "tdb"
    run_cli("index", "--db", tdb, "--model", "timm:resnet18", "--weights", weights, "--transform", "resize=32,crop=32," +
            "mode=RGB,mean=0.5/0.5/0.5,std=0.5/0.5/0.5", "--data", f"imagefolder:{images}", "-q")
    import importlib.util

    spec = importlib.util.spec_from_file_location("named_factory", tmp_path / "named.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for database, model, names, t in ((db, mod.named().eval(), ["z", "y", "x"], Transform.parse("mnist")),
                                      (tdb, net, ["y", "z", "x"], Transform.parse("resize=32,crop=32,mode=RGB,mean=0.5/0.5/0.5,std=0.5/0.5/0.5"))):
        rows = _sql(database, "SELECT key, label, label_name, pred_name FROM samples")
        assert len(rows) == 6
        for row in rows:
            f = images / row["key"] if not Path(row["key"]).is_absolute() else Path(row["key"])
            with torch.no_grad():
                pred = int(model(t(Image.open(f))[None]).argmax())
            assert row["pred_name"] == names[pred]
            assert (row["label_name"], row["label"]) == (f.parent.name, names.index(f.parent.name))
