"""``saliencydb mask``: the selected units as a boolean mask per weight tensor (safetensors), checked
against the top-k computed here from the stored profiles, the blame table and the stored model."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import saliencydb
from saliencydb.interventions import MaskResult, write_mask
from saliencydb.models.stored import load_stored_model
from saliencydb.saliency import UnitLayout

from helpers import run_cli

SAMPLE = 5


def _layout(db) -> UnitLayout:
    with saliencydb.open(db) as d:
        return UnitLayout.from_dict(d.manifest.units)


def _params(db) -> dict[str, torch.Tensor]:
    with saliencydb.open(db) as d:
        return {n: p.detach() for n, p in load_stored_model(d.manifest).module.named_parameters()}


def _expected(layout: UnitLayout, unit_ids) -> set[tuple[str, int]]:
    layer_of = layout.layer_of(np.asarray(unit_ids))
    return {(layout.layers[int(li)].name, int(u) - layout.layers[int(li)].offset) for u, li in zip(unit_ids, layer_of)}


def _selected(layout: UnitLayout, masks: dict[str, torch.Tensor]) -> set[tuple[str, int]]:
    """(layer, channel) of every unit whose weights are all True; fails on a unit that is partly True."""
    chosen = set()
    for layer in layout.layers:
        m = masks[layer.param_name]
        units = m.t() if layer.kind == "linear-in" else m
        flat = units.reshape(units.shape[0], -1)
        assert torch.equal(flat.all(dim=1), flat.any(dim=1)), f"{layer.param_name}: a unit is only partly masked"
        chosen |= {(layer.name, int(o)) for o in torch.nonzero(flat.all(dim=1)).flatten()}
    return chosen


def _check_shapes(layout: UnitLayout, masks: dict, params: dict) -> None:
    assert set(masks) == {l.param_name for l in layout.layers}
    for name, m in masks.items():
        assert m.dtype == torch.bool
        assert tuple(m.shape) == tuple(params[name].shape)


def test_a_samples_mask_holds_its_top_k_filters_and_prunes_exactly_them(digits_db, tmp_path):
    out = tmp_path / "mask.safetensors"
    r = run_cli("mask", "--db", digits_db, "--id", SAMPLE, "--top-k", 7, "--out", out)
    layout, params = _layout(digits_db), _params(digits_db)
    with saliencydb.open(digits_db) as d:
        z = d.z([SAMPLE])[0]
        commit = d.commit
    top = np.argsort(-z, kind="stable")[:7]
    masks = load_file(out)
    _check_shapes(layout, masks, params)
    assert len(masks) == 3 and all(m.dim() == 4 for m in masks.values())
    assert _selected(layout, masks) == _expected(layout, top)
    assert sum(int(m.sum()) for m in masks.values()) == sum(layout.layers[int(li)].n_params for li in layout.layer_of(top))
    for layer in layout.layers:  # applying the mask zeroes exactly the selected filters, and nothing else
        w, m = params[layer.param_name], masks[layer.param_name]
        pruned = w * ~m
        for o in range(layer.out_channels):
            if (layer.name, o) in _expected(layout, top):
                assert (w[o] != 0).any() and (pruned[o] == 0).all()
            else:
                assert torch.equal(pruned[o], w[o])
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["selection"] == f"id={SAMPLE}" and meta["k"] == "7" and meta["unit_kind"] == "conv-filter"
    assert meta["commit"] == str(commit) and meta["database"] == str(digits_db.resolve())
    lines = r.output.strip().splitlines()
    assert lines[-1] == f"wrote {out}: 7 of {layout.n_units} units ({sum(int(m.sum()) for m in masks.values())} weights) " \
                        f"masked in {sum(bool(m.any()) for m in masks.values())} tensors"
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed


def test_json_csv_and_the_library_agree(digits_db, tmp_path):
    doc = json.loads(run_cli("mask", "--db", digits_db, "--id", SAMPLE, "--top-k", 4, "--out", tmp_path / "a.safetensors",
                             "--format", "json").stdout)
    with saliencydb.open(digits_db) as d:
        z = d.z([SAMPLE])[0]
        result = write_mask(d, sample_id=SAMPLE, top_k=4, out=tmp_path / "b.safetensors")
    assert isinstance(result, MaskResult)
    top = np.argsort(-z, kind="stable")[:4]
    assert [u["unit_id"] for u in doc["units"]] == top.tolist() == [u.unit_id for u in result.units]
    assert [u["z"] for u in doc["units"]] == pytest.approx(z[top].tolist())
    assert sum(p["true"] for p in doc["parameters"]) == doc["masked_weights"] == result.masked_weights
    assert [p["name"] for p in doc["parameters"]] == [l.param_name for l in _layout(digits_db).layers]
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)
    csv = run_cli("mask", "--db", digits_db, "--id", SAMPLE, "--top-k", 4, "--out", tmp_path / "c.safetensors",
                  "--format", "csv").stdout.strip().splitlines()
    assert csv[0] == "rank,unit_id,layer,channel,z,parameter" and len(csv) == 5
    assert [int(line.split(",")[1]) for line in csv[1:]] == top.tolist()


def test_a_clusters_mask_holds_its_most_blamed_filters(digits_copy, tmp_path):
    with saliencydb.open(digits_copy) as d:
        before = d.commit
    r = run_cli("mask", "--db", digits_copy, "--cluster", 1, "--top-k", 3, "--out", tmp_path / "x.safetensors", expect=1)
    assert "no clusters table" in r.output and len(r.output.strip().splitlines()) == 1
    run_cli("clusters", "--db", digits_copy, "--n-clusters", 3)
    out = tmp_path / "group.safetensors"
    doc = json.loads(run_cli("mask", "--db", digits_copy, "--cluster", 1, "--top-k", 6, "--out", out, "--format", "json").stdout)
    with saliencydb.open(digits_copy) as d:
        blame = d.sql("SELECT run, unit_id, layer, channel FROM blame WHERE cluster = 1 AND rank <= 6 ORDER BY rank").to_pylist()
    assert [u["unit_id"] for u in doc["units"]] == [b["unit_id"] for b in blame]
    assert doc["run"] == blame[0]["run"] and doc["cluster"] == 1
    layout = _layout(digits_copy)
    masks = load_file(out)
    _check_shapes(layout, masks, _params(digits_copy))
    assert _selected(layout, masks) == {(b["layer"], b["channel"]) for b in blame}
    # naming the run gives the same mask; an unknown run, an unknown cluster or an older version are one line
    again = tmp_path / "again.safetensors"
    run_cli("mask", "--db", digits_copy, "--cluster", 1, "--run", blame[0]["run"], "--top-k", 6, "--out", again)
    assert all(torch.equal(masks[n], m) for n, m in load_file(again).items())
    for args, text in [(("--cluster", 1, "--run", "nope"), "no clusters run"), (("--cluster", 9), "no cluster 9"),
                       (("--cluster", 1, "--as-of", before), "no clusters table")]:
        r = run_cli("mask", "--db", digits_copy, *args, "--top-k", 3, "--out", tmp_path / "bad.safetensors", expect=1)
        assert text in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "bad.safetensors").exists()


@pytest.mark.parametrize("axis", ["out", "in"])
def test_linear_units_are_whole_rows_or_columns(tmp_path, axis):
    from saliencydb.demo import train_demo_model

    weights = train_demo_model(tmp_path / "cache", model="vit", epochs=1)
    db = tmp_path / "vdb"
    run_cli("index", "--db", db, "--model", "python:saliencydb.data.zoo:small_vit", "--weights", weights,
            "--data", "builtin:mnist5k:val", "--limit", 40, "--workers", 0, *(["--linear-units", "in"] if axis == "in" else []))
    layout, params = _layout(db), _params(db)
    assert layout.kind == f"linear-{axis}"
    out = tmp_path / "vit.safetensors"
    run_cli("mask", "--db", db, "--id", 3, "--top-k", 12, "--out", out)
    with saliencydb.open(db) as d:
        top = np.argsort(-d.z([3])[0], kind="stable")[:12]
    masks = load_file(out)
    _check_shapes(layout, masks, params)
    assert all(m.dim() == 2 for m in masks.values())
    assert _selected(layout, masks) == _expected(layout, top)
    for (name, ch) in _expected(layout, top):  # the whole row W[o, :] (or column W[:, j]) and nothing across it
        layer = next(l for l in layout.layers if l.name == name)
        m = masks[layer.param_name]
        line = m[ch] if axis == "out" else m[:, ch]
        assert line.all() and line.numel() == layer.n_params
    assert sum(int(m.sum()) for m in masks.values()) == sum(layout.layers[int(li)].n_params for li in layout.layer_of(top))
    assert any(not m.any() for m in masks.values())  # layers without a selected unit are present, all False


def test_bad_input_is_one_line(digits_db, tmp_path):
    good = tmp_path / "m.safetensors"
    n_units = _layout(digits_db).n_units
    cases = [
        (("--id", SAMPLE, "--top-k", 0, "--out", good), "--top-k must lie in"),
        (("--id", SAMPLE, "--top-k", n_units + 1, "--out", good), f"1..{n_units}"),
        (("--id", SAMPLE, "--top-k", 3, "--out", tmp_path / "x.pt"), "must end with .safetensors"),
        (("--id", SAMPLE, "--top-k", 3, "--out", tmp_path / "missing" / "m.safetensors"), "does not exist"),
        (("--id", SAMPLE, "--top-k", 3, "--out", digits_db / "m.safetensors"), "inside the database directory"),
        (("--cluster", 9, "--top-k", 3, "--out", good), "no clusters table"),
        (("--id", SAMPLE, "--cluster", 0, "--top-k", 3, "--out", good), "exactly one of --id"),
        (("--top-k", 3, "--out", good), "exactly one of --id"),
        (("--id", 10 ** 6, "--top-k", 3, "--out", good), "no sample with id"),
    ]
    for args, text in cases:
        r = run_cli("mask", "--db", digits_db, *args, expect=1)
        assert text in r.output and len(r.output.strip().splitlines()) == 1, (args, r.output)
    assert not good.exists() and not (digits_db / "m.safetensors").exists()
    assert not (tmp_path / "x.pt").exists()
