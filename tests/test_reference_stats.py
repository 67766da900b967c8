"""The reference implementation's ImageNet statistics, shipped with the package: exactly its numbers,
matched filter by filter to the model, used by `index --stats reference:NAME`, and refused otherwise."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torchvision
from PIL import Image

from helpers import ROOT, run_cli
from saliencydb.errors import SpecError
from saliencydb.saliency import UnitLayout
from saliencydb.saliency.reference_stats import reference_stats

SHIPPED = ROOT / "saliencydb" / "reference_stats"


@pytest.mark.parametrize("name,kwargs", [("resnet50", {}), ("vgg19", {}), ("densenet121", {}),
                                         ("inception_v3", {"aux_logits": True, "init_weights": False})])
def test_each_model_matches_its_torchvision_layout(name, kwargs):
    layout = UnitLayout.from_module(getattr(torchvision.models, name)(**kwargs))
    mean, std = reference_stats(name, layout)
    t = pq.read_table(SHIPPED / f"{name}-filter-stats.parquet")
    assert len(mean) == layout.n_units == t.num_rows
    np.testing.assert_array_equal(mean, t.column("mean").to_numpy())
    raw_std = t.column("std").to_numpy()
    np.testing.assert_array_equal(std, np.where(raw_std <= 1e-14, 1.0, raw_std))  # dead filters floored, as computed ones
    assert (SHIPPED / "README.md").read_text().count("MIT") >= 1
    assert sum(p.stat().st_size for p in SHIPPED.glob("*.parquet")) < 2 * 2**20


def test_another_model_is_refused():
    with pytest.raises(SpecError, match="has 26,560 filters but the model has"):
        reference_stats("resnet50", UnitLayout.from_module(torchvision.models.resnet18()))


def _images(root, n=3):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_index_with_reference_statistics(tmp_path):
    data = _images(tmp_path / "imgs")
    db = tmp_path / "db"
    # a seeded factory: the same weights on every build, so the database can load the model back (ingest)
    (tmp_path / "seeded.py").write_text("import torch, torchvision\n\ndef resnet50(num_classes=2):\n"
                                        "    torch.manual_seed(0)\n    return torchvision.models.resnet50(num_classes=num_classes)\n")
    args = ["--model", f"python:{tmp_path / 'seeded.py'}:resnet50", "--num-classes", 2, "--transform",
            "mode=RGB,size=40,mean=0.485/0.456/0.406,std=0.229/0.224/0.225", "--workers", 0]
    run_cli("index", "--db", db, "--data", f"imagefolder:{data}", "--stats", "reference:resnet50", *args)
    stats = json.loads((db / "manifest.json").read_text())["stats"]
    assert stats["source"] == "reference:resnet50" and stats["frozen"] is True and stats["splits"] == []
    info = json.loads(run_cli("info", "--db", db, "--format", "json").stdout)
    assert info["statistics"]["source"] == "reference:resnet50"
    assert "reference:resnet50: the reference implementation's ImageNet statistics" in run_cli("info", "--db", db).stdout
    import saliencydb

    with saliencydb.open(db) as d:
        mean, std = d.stats
        z = d.z([0])[0]
        raw = d.rows("raw_profile", [0])[0]
    want_mean, want_std = reference_stats("resnet50", UnitLayout.from_module(torchvision.models.resnet50()))
    np.testing.assert_array_equal(mean, want_mean)
    np.testing.assert_allclose(z, (raw - want_mean) / want_std, rtol=1e-5, atol=1e-5)
    # another normalisation needs statistics over this database's samples: one line
    r = run_cli("mistakes", "--db", db, "--normalisation", "zscore-unitnorm", expect=1)
    assert "statistics from reference:resnet50" in r.output and len(r.output.strip().splitlines()) == 1
    # indexing on keeps them; asking again for them on an existing database is refused
    run_cli("ingest", "--db", db, "--data", f"imagefolder:{data}", "--split", "more", "--workers", 0)
    assert json.loads((db / "manifest.json").read_text())["stats"]["source"] == "reference:resnet50"
    r = run_cli("index", "--db", db, "--data", f"imagefolder:{data}", "--stats", "reference:vgg19", *args, expect=1)
    assert "--stats applies when a database is created" in r.output


@pytest.mark.parametrize("stats,message", [("reference:resnet50", "has 26,560 filters but the model has 4,800"),
                                           ("reference:vit", "is unknown"), ("imagenet", "is unknown")])
def test_bad_stats_are_one_line_and_write_nothing(tmp_path, stats, message):
    data = _images(tmp_path / "imgs", 1)
    r = run_cli("index", "--db", tmp_path / "db", "--data", f"imagefolder:{data}", "--model", "python:torchvision.models:resnet18",
                "--random-weights", "--num-classes", 2, "--transform", "mode=RGB,size=40,mean=0.5/0.5/0.5,std=0.5/0.5/0.5",
                "--stats", stats, "--workers", 0, expect=1)
    assert message in r.output and r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "db" / "manifest.json").exists()
