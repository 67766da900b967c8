"""Every model kind through every command: torchvision, timm, python:, TorchScript, Hugging Face image and text
models, each a tiny one with a local weights file, through the real CLI: index -> ingest (a second split) ->
neighbors (both spaces) -> mistakes -> clusters -> explain -> verify -> a page of the web app. A TorchScript
model takes no hooks, so its database has no feature vectors: every feature-space comparison says so in one
line, and the commands that show both spaces show the saliency space and say the feature space is absent.
Also: what a failure while building the indexes leaves behind, and what a database without samples says."""

import json
import os
import re
from pathlib import Path

import duckdb
import pytest
import torch

from helpers import run_cli, run_cli_subprocess

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")  # torch.jit notices

DIGITS = "mode=RGB,size=28,mean=0.5/0.5/0.5,std=0.5/0.5/0.5"  # the built-in digits as 28x28 RGB, no resizing
KINDS = ["torchvision", "timm", "python", "torchscript", "hf-image", "hf-text"]
N_VAL, N_TRAIN = 16, 8
NO_FEATURES = "has no feature vectors (its model, a TorchScript file, takes no hooks); use --space saliency"
WORDS = "the a film movie was is good bad great awful fine dull plot actor story".split()


def _state_dict(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _torchscript(root: Path, cnn_weights: Path) -> Path:
    from saliencydb.data.zoo import small_cnn

    model = small_cnn()
    model.load_state_dict(torch.load(cnn_weights))
    path = root / "cnn-ts.pt"
    torch.jit.script(model.eval()).save(str(path))
    return path


def _hf_vit(root: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=28, patch_size=7, num_channels=3, num_hidden_layers=1, hidden_size=16,
                       num_attention_heads=2, intermediate_size=32, num_labels=10)
    ViTForImageClassification(config).eval().save_pretrained(root / "vit")
    return root / "vit"


def _sentences(path: Path, n: int, seed: int) -> Path:
    """``n`` short reviews as JSON lines, labelled by their adjective."""
    import random

    rng, rows = random.Random(seed), []
    for _ in range(n):
        word = rng.choice(["good", "great", "fine", "bad", "awful", "dull"])
        rows.append({"text": f"the {rng.choice(['film', 'movie', 'story'])} was {word} .",
                     "label": "positive" if word in ("good", "great", "fine") else "negative"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[str, str]:
    """Two CSVs of real digit PNGs, every class in each (the built-in splits are sorted by class)."""
    from saliencydb.data import parse_data_spec

    root = tmp_path_factory.mktemp("digits")
    specs = []
    for split, n in (("val", N_VAL), ("train", N_TRAIN)):
        src = parse_data_spec(f"builtin:mnist5k:{split}")
        (root / split).mkdir()
        lines = ["path,label"]
        for j in range(n):
            i = j * (len(src) // n) + j % 3
            src.load(i).save(root / split / f"{i}.png")
            lines.append(f"{split}/{i}.png,{src.label(i)}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
        specs.append(f"csv:{root / f'{split}.csv'}")
    return specs[0], specs[1]


def _model_args(kind: str, root: Path, cnn_weights: Path, digits: tuple[str, str]) -> tuple[list, str, str]:
    """The model options of ``index`` for ``kind``, and the data of its two splits."""
    val, train = digits
    if kind == "torchvision":
        import torchvision

        torch.manual_seed(0)
        w = _state_dict(torchvision.models.resnet18(num_classes=10), root / "resnet18.pt")
        return ["--model", "torchvision:resnet18", "--weights", w, "--num-classes", 10, "--transform", DIGITS], val, train
    if kind == "timm":
        import timm

        torch.manual_seed(0)
        # zero_init_last=False: timm's zero-initialised last norms make a random resnet18 answer every digit alike
        w = _state_dict(timm.create_model("resnet18", num_classes=10, zero_init_last=False), root / "timm-resnet18.pt")
        return ["--model", "timm:resnet18", "--weights", w, "--transform", DIGITS], val, train
    if kind == "python":
        return ["--model", "python:saliencydb.data.zoo:small_cnn", "--weights", cnn_weights, "--transform", "mnist"], val, train
    if kind == "torchscript":
        return ["--model", _torchscript(root, cnn_weights), "--transform", "mnist"], val, train
    if kind == "hf-image":
        return ["--model", f"hf:{_hf_vit(root)}", "--transform", DIGITS], val, train
    from saliencydb.data.zoo import save_tiny_text_model

    save_tiny_text_model(root / "bert", WORDS, arch="bert", task="sequence-classification", seed=0,
                         id2label={0: "negative", 1: "positive"})
    data = [f"jsonl:{_sentences(root / f'{s}.jsonl', n, i)}" for i, (s, n) in enumerate((("val", N_VAL), ("train", N_TRAIN)))]
    return ["--model", f"hf:{root / 'bert'}"], *data


def _one_line_error(r, needle: str) -> None:
    """A refusal: non-zero exit, one line naming the problem, no traceback."""
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.output


def _json(*args):
    r = run_cli(*args, "--format", "json")
    return json.loads(r.stdout), r


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_on_every_model_kind(kind, tmp_path, cnn_weights, digits):
    from starlette.testclient import TestClient

    from saliencydb.serve import create_app

    model, val, train = _model_args(kind, tmp_path, cnn_weights, digits)
    db, text = tmp_path / "db", kind == "hf-text"
    features = kind != "torchscript"
    r = run_cli("index", "--db", db, *model, "--data", val, "--limit", N_VAL, "--batch-size", 8, "--quiet")
    assert f"val: {N_VAL} samples added, 0 already there, 0 failed" in r.output
    r = run_cli("ingest", "--db", db, "--data", train, "--split", "train", "--limit", N_TRAIN, "--batch-size", 8, "--quiet")
    assert f"train: {N_TRAIN} samples added, 0 already there, 0 failed" in r.output
    rows, _ = _json("sql", "--db", db, "SELECT sample_id, split, key, label FROM samples ORDER BY sample_id")
    ids, key = {row["sample_id"] for row in rows}, {row["sample_id"]: row["key"] for row in rows}
    assert len(ids) == N_VAL + N_TRAIN and sum(row["split"] == "train" for row in rows) == N_TRAIN
    assert len({row["label"] for row in rows}) == (2 if text else 10)
    # a database without feature vectors stores no feature column (plain DuckDB over its Parquet parts)
    columns = [c[0] for c in duckdb.sql(f"DESCRIBE SELECT * FROM read_parquet('{db}/samples/**/*.parquet')").fetchall()]
    assert ("feature" in columns) == features and "raw_profile" in columns

    # neighbours: saliency in every database; feature where the model has a feature vector, else one line
    first_train = min(row["sample_id"] for row in rows if row["split"] == "train")
    near, _ = _json("neighbors", "--db", db, "--id", first_train, "-k", 3)
    assert near["query"]["sample_id"] == first_train and near["space"] == "saliency"
    got = [n["sample_id"] for n in near["neighbors"]]
    assert len(got) == 3 and set(got) <= ids - {first_train}
    if features:
        far, _ = _json("neighbors", "--db", db, "--id", first_train, "-k", 3, "--space", "feature")
        assert len(far["neighbors"]) == 3 and {n["sample_id"] for n in far["neighbors"]} <= ids - {first_train}
    else:
        _one_line_error(run_cli("neighbors", "--db", db, "--id", first_train, "--space", "feature", expect=None), NO_FEATURES)

    # a new input profiled with the stored model finds its stored copy first (TorchScript: the per-sample definition)
    labels = {row["sample_id"]: row["label"] for row in rows}
    if text:
        sentence = json.loads(Path(train[len("jsonl:"):]).read_text().splitlines()[0])
        new = ["--text", sentence["text"], "--label", sentence["label"]]
    else:
        new = ["--image", Path(train[len("csv:"):]).parent / key[first_train], "--label", labels[first_train]]
    for space in ("saliency", "feature") if features else ("saliency",):
        fresh, _ = _json("neighbors", "--db", db, *new, "-k", 3, "--space", space)
        assert fresh["query"]["sample_id"] is None and fresh["query"]["label"] == labels[first_train]
        same = [n["sample_id"] for n in fresh["neighbors"] if n["similarity"] > 0.999]  # ties: inputs the model sees alike
        assert first_train in same and fresh["neighbors"][0]["sample_id"] in same, fresh

    # the shared-mistake statistics: both spaces, or the saliency space and a note that the feature space is absent
    report, r = _json("mistakes", "--db", db, "-k", 3, "--bootstrap", 20, "--quiet")
    assert {s: report["splits"][s]["samples"] for s in ("val", "train")} == {"val": N_VAL, "train": N_TRAIN}
    assert all(e["correct"] + e["incorrect"] == e["samples"] for e in report["splits"].values())
    assert all(("feature" in report["splits"][s]) == features and "saliency" in report["splits"][s] for s in ("val", "train"))
    assert ("the feature space is absent" in r.stderr) != features and ("note" in report) != features
    table = run_cli("mistakes", "--db", db, "-k", 3, "--bootstrap", 20, "--quiet", "--no-store").stdout
    assert ("│ feature " in table) == features and "│ saliency " in table

    groups, _ = _json("clusters", "--db", db, "--all", "--n-clusters", 2)
    assert groups["n_clusters"] == 2 and sum(g["size"] for g in groups["clusters"]) == N_VAL + N_TRAIN

    explained = run_cli("explain", "--db", db, "--id", first_train, "--out", tmp_path / "x.png").stdout
    assert explained.startswith(f"sample {first_train} (train, {key[first_train]})"), explained
    if not text:
        assert (tmp_path / "x.png").stat().st_size > 1000

    assert "no damage" in run_cli("verify", "--db", db).output

    # the web app's sample page: the sample, its saliency neighbours, the feature ones or the absent note
    client = TestClient(create_app(db), raise_server_exceptions=False, base_url="http://localhost")
    page = client.get(f"/sample/{first_train}")
    assert page.status_code == 200 and f"key <code>{key[first_train]}</code>" in page.text
    shown = [int(i) for i in re.findall(r'data-sample="(\d+)" data-rank', page.text)]
    assert len(shown) >= (2 if features else 1) * (N_TRAIN - 1) and set(shown) <= ids - {first_train}
    assert ('id="feature-neighbors" data-absent="1"' in page.text) != features
    if not features:
        assert "no feature vectors: its model, a TorchScript file, takes no hooks" in page.text
        assert "the feature space is absent" in client.get("/").text
        api = client.get(f"/api/neighbors/{first_train}?space=feature")
        assert api.status_code == 400 and NO_FEATURES in api.json()["error"]
    if text:  # a sentence has no pixels: each picture is refused in one line that names it
        for picture, what in (("map", "an input-space map"), ("gradcam", "GradCAM")):
            refused = client.get(f"/img/{first_train}/{picture}.png")
            assert refused.status_code == 400 and f"{what} works on images" in refused.text
    else:  # the pictures the page shows: the image, its input-space map, GradCAM (no hooks: one line)
        assert client.get(f"/img/{first_train}.png").status_code == 200
        assert client.get(f"/img/{first_train}/map.png").status_code == 200
        cam = client.get(f"/img/{first_train}/gradcam.png")
        assert cam.status_code == 200 if features else "TorchScript model does not take" in cam.text


def test_a_torchscript_report_shows_the_saliency_space_and_says_the_feature_space_is_absent(tmp_path, cnn_weights, digits):
    from saliencydb.report import write_report

    db = tmp_path / "db"
    model, val, _ = _model_args("torchscript", tmp_path, cnn_weights, digits)
    run_cli("index", "--db", db, *model, "--data", val, "--limit", 12, "--quiet")
    run_cli("mistakes", "--db", db, "-k", 3, "--bootstrap", 20, "--quiet")
    html = Path(write_report(db, tmp_path / "report.html")).read_text()
    assert 'data-absent="feature"' in html and "the feature-space baseline is absent" in html
    assert 'data-space="saliency"' in html and 'data-space="feature"' not in html
    assert "Saliency neighbours" in html and "Feature neighbours" not in html


def test_a_failure_while_building_the_indexes_leaves_the_last_version_whole(tmp_path, cnn_weights):
    db = tmp_path / "db"
    base = ["--quiet", "--workers", 0]
    run_cli("index", "--db", db, "--model", "python:saliencydb.data.zoo:small_cnn", "--weights", cnn_weights,
            "--data", "builtin:mnist5k:val", "--limit", 20, *base)
    before = json.loads((db / "manifest.json").read_text())
    ingest = ["ingest", "--db", db, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 10, *base]
    r = run_cli_subprocess(*ingest, env={**os.environ, "SALIENCYDB_FAIL_AT": "index-written"}, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    after = json.loads((db / "manifest.json").read_text())
    assert line.startswith(f"Error: building the statistics and indexes of '{db}' failed (RuntimeError: injected failure")
    assert f"stays at commit {after['commit']}, its last whole version" in line and "rerun the same command" in line
    assert "saliencydb verify" not in line  # not damage: the database is whole
    # the part committed before the failure is there; the index files of the failed step are not listed
    assert after["commit"] == before["commit"] + 1 and sum(p["rows"] for p in after["parts"]) == 30
    assert after["indexes"] == before["indexes"] and after["stats"]["file"] == before["stats"]["file"]
    assert "no damage" in run_cli("verify", "--db", db).output
    info, _ = _json("info", "--db", db)
    assert info["indexes"]["saliency"]["stale"] and info["samples"] == 30
    near, r = _json("neighbors", "--db", db, "--id", 25, "-k", 3, "--split", "train")
    assert {n["split"] for n in near["neighbors"]} == {"train"} and "searched exactly" in r.stderr
    # the rerun resumes and builds them
    assert "0 samples added, 10 already there" in run_cli(*ingest).output
    after = json.loads((db / "manifest.json").read_text())
    assert {s: e["ntotal"] for s, e in after["indexes"].items()} == {"saliency": 30, "feature": 30}
    assert "no damage" in run_cli("verify", "--db", db).output


def test_a_database_without_samples_says_so(tmp_path, cnn_weights, digits):
    """An index killed before its first part was committed leaves a database with no samples: every reader says so
    in one line (it said "ids run None..None"), and the rerun fills it."""
    db = tmp_path / "db"
    model, val, _ = _model_args("torchscript", tmp_path, cnn_weights, digits)
    index = ["index", "--db", db, *model, "--data", val, "--limit", 8, "--quiet", "--workers", 0]
    r = run_cli_subprocess(*index, env={**os.environ, "SALIENCYDB_CRASH_AT": "part-written:1"}, timeout=300)
    assert r.returncode == -9
    for args in (["neighbors", "--id", 0], ["mistakes"], ["clusters"], ["explain", "--id", 0, "--out", tmp_path / "x.png"]):
        _one_line_error(run_cli(args[0], "--db", db, *args[1:], expect=None), f"database '{db}' holds no samples yet")
    assert "8 samples added" in run_cli(*index).output
    assert len(_json("neighbors", "--db", db, "--id", 0, "-k", 2)[0]["neighbors"]) == 2


def test_torchscript_answers_as_its_python_model(tmp_path, cnn_weights, digits):
    """The same weights as a python: model and as a TorchScript file: the same stored profiles, the same adversarial
    profiles and intervention (the bench's copy of a scripted model keeps leaf parameters); the checks that need
    module hooks are refused in one line."""
    val = digits[0]
    dbs = {}
    for kind in ("python", "torchscript"):
        model, _, _ = _model_args(kind, tmp_path, cnn_weights, digits)
        dbs[kind] = tmp_path / kind
        run_cli("index", "--db", dbs[kind], *model, "--data", val, "--quiet")
    q = "SELECT key, pred, loss, raw_profile FROM read_parquet('{}/samples/**/*.parquet') ORDER BY key"
    a, b = (duckdb.sql(q.format(dbs[k])).fetchall() for k in ("python", "torchscript"))
    assert [r[:2] for r in a] == [r[:2] for r in b] and len(a) == N_VAL
    assert max(abs(x - y) / max(abs(x), 1e-12) for ra, rb in zip(a, b) for x, y in zip(ra[3], rb[3])) < 1e-4
    answers = {}
    for kind, db in dbs.items():
        adv, _ = _json("adversarial", "--db", db, "--limit", 4, "--steps", 2, "--eps", 0.5)
        tune, _ = _json("intervene", "--db", db, "--id", 3, "--method", "finetune", "--top-k", 2, "--no-record")
        answers[kind] = ([{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in adv["rows"]],
                         [(t["filters"], t["unit_ids"], round(t["true_conf_after"], 5)) for t in tune["attempts"]])
    assert answers["python"] == answers["torchscript"]
    for what in ("randomization", "smoothgrad"):
        r = run_cli("check", "--db", dbs["torchscript"], "--id", 3, "--what", what, expect=None)
        _one_line_error(r, "a TorchScript model takes no hooks and exposes no layers")
