"""The demo's trained weights ship with the package: their bytes match the recorded SHA-256, their name matches
the current recipe, they are package data, they give the accuracy the README prints, and ``demo --train``
trains instead (with no more threads than the cores it may use) and says its numbers may differ."""

import fnmatch
import hashlib
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import saliencydb.demo as demo
from saliencydb.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_the_shipped_file_has_the_recorded_hash(model):
    name, sha256 = demo.SHIPPED_WEIGHTS[model]
    path = ROOT / "saliencydb" / "demo_weights" / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    assert demo.shipped_weights(model) == path.resolve()


def test_a_changed_or_missing_file_is_one_line(tmp_path, monkeypatch):
    name, _ = demo.SHIPPED_WEIGHTS["cnn"]
    shutil.copy(demo.WEIGHTS_DIR / name, tmp_path / name)
    data = bytearray((tmp_path / name).read_bytes())
    data[len(data) // 2] ^= 1  # one bit of one weight
    (tmp_path / name).write_bytes(bytes(data))
    monkeypatch.setattr(demo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ModelError, match=r"SHA-256 .* not the recorded .*saliencydb demo --train"):
        demo.shipped_weights("cnn")
    (tmp_path / name).unlink()
    with pytest.raises(ModelError, match="missing"):
        demo.shipped_weights("cnn")


@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_the_shipped_name_is_that_of_the_current_recipe(model):
    """A change of RECIPE (or of the model's overrides) changes the name train_demo_model gives its weights: the
    shipped file must then be made again (saliencydb/demo_weights/README.md), or this fails."""
    assert demo.SHIPPED_WEIGHTS[model][0] == demo.weights_name(model)
    assert demo.weights_name(model) != demo.weights_name(model, epochs=demo.RECIPE["epochs"] + 1)


def test_the_shipped_files_are_package_data():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["saliencydb"]
    shipped = [p.relative_to(ROOT / "saliencydb").as_posix() for p in (ROOT / "saliencydb" / "demo_weights").iterdir()]
    assert {name for name, _ in demo.SHIPPED_WEIGHTS.values()} <= {Path(p).name for p in shipped}
    for path in shipped:
        assert any(fnmatch.fnmatch(path, g) for g in globs), path


def _readme_accuracy(line_start: str) -> tuple[str, int]:
    """The accuracy and mistakes the README's demo output prints on its line starting with ``line_start``."""
    m = re.search(rf"^{re.escape(line_start)}.* with (\d+\.\d)% accuracy: (\d+) mistakes\.$", README, re.M)
    assert m, line_start
    return m.group(1), int(m.group(2))


@pytest.mark.parametrize("model, line", [("cnn", "A small CNN trained"), ("vit", "A small vision transformer trained")])
def test_the_shipped_model_has_the_readme_accuracy(model, line):
    """A plain forward pass of the shipped model over the 2,000 held-out digits, outside the indexing pipeline."""
    from saliencydb.data import parse_data_spec
    from saliencydb.models import load_model

    loaded = load_model(demo.DEMO_MODELS[model][0], str(demo.shipped_weights(model)))
    source = parse_data_spec(demo.VAL_DATA)
    x = torch.stack([source.default_transform(source.load(i)) for i in range(len(source))])
    y = torch.tensor([source.label(i) for i in range(len(source))])
    with torch.no_grad():
        pred = torch.cat([loaded.module.eval()(b) for b in x.split(500)]).argmax(1)
    mistakes = int((pred != y).sum())
    assert (f"{1 - mistakes / len(y):.1%}"[:-1], mistakes) == _readme_accuracy(line)


def test_usable_cores_follow_the_affinity_and_the_cgroup_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(demo.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    quota = tmp_path / "cpu.max"
    monkeypatch.setattr(demo, "CGROUP_CPU_MAX", quota)
    assert demo.usable_cores() == 4  # no quota file
    quota.write_text("max 100000\n")
    assert demo.usable_cores() == 4
    quota.write_text("250000 100000\n")  # 2.5 CPUs of time
    assert demo.usable_cores() == 2
    quota.write_text("50000 100000\n")
    assert demo.usable_cores() == 1


def test_training_uses_no_more_threads_than_usable_cores(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(demo, "usable_cores", lambda: 1)
    monkeypatch.setattr(demo, "_fit", lambda *a: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    demo.train_demo_model(tmp_path, epochs=1)
    assert seen == [1] and torch.get_num_threads() == before


def test_demo_train_trains_here_and_says_the_numbers_may_differ(tmp_path, monkeypatch):
    from saliencydb.cli import cli

    monkeypatch.setitem(demo.RECIPE, "epochs", 1)  # the recipe's shape, one epoch: seconds, not minutes
    cache = tmp_path / "cache"
    r = CliRunner().invoke(cli, ["demo", "--train", "--quiet", "--no-report", "--db", str(tmp_path / "db"),
                                 "--cache-dir", str(cache)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    trained = cache / demo.weights_name("cnn")
    assert trained.is_file() and trained.name != demo.SHIPPED_WEIGHTS["cnn"][0]
    second = r.stdout.splitlines()[1]
    assert "trained on this machine's CPU" in second and "seed 0, 1 epochs" in second
    assert "may differ from the README's" in r.stdout and "ship with saliencydb" not in r.stdout
    import saliencydb

    with saliencydb.open(tmp_path / "db") as d:
        assert d.manifest.model.weights == str(trained.resolve())
