"""Reproducibility: the same model, data and options give the same bytes, whatever the timing noise.

Each convolution's reduction strategy and block are chosen by a rule on shapes (never by timing);
the strategies round differently, so a timed choice made two runs of `index` differ in the last bits.
"""

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torchvision

from saliencydb.saliency import ProfileEngine
from saliencydb.saliency.engine import LayerShape, choose_reduction

from helpers import run_cli

CNN = "python:saliencydb.data.zoo:small_cnn"


def _resnet18_batch(n: int = 6):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)


def _erratic_clock():
    """A clock under which every later measurement looks faster than the one before: a choice made by
    timing would pick the last candidate tried, not the one it picks on a quiet machine."""
    ticks = itertools.count(1)
    total = [0.0]

    def clock() -> float:
        total[0] += 1.0 / next(ticks)
        return total[0]

    return clock


def test_two_engines_give_the_same_bytes_whatever_the_clock_says(monkeypatch):
    model, x, y = _resnet18_batch()
    first = ProfileEngine(model)
    a = first.profile(x, y)
    for name in ("perf_counter", "monotonic", "time", "process_time"):
        monkeypatch.setattr(time, name, _erratic_clock())
    second = ProfileEngine(model)
    b = second.profile(x, y)
    assert first.choices == second.choices
    assert {name for name, _ in first.choices.values()} >= {"bmm", "conv", "offsets"}  # several strategies in play
    for field in ("raw", "logits", "loss", "feature", "true_conf", "pred_conf"):
        assert getattr(a, field).numpy().tobytes() == getattr(b, field).numpy().tobytes(), field
    # each choice is the rule's, on the layer's shape alone
    for shape, choice in second.choices.items():
        assert choice == choose_reduction(shape, second.block_bytes, 1)


def test_the_choice_does_not_depend_on_the_batch_size():
    """The last, smaller batch of a job (and a later ingest) reduces every layer the way the others did."""
    model, x, y = _resnet18_batch(8)
    big, small = ProfileEngine(model), ProfileEngine(model)
    big.profile(x, y)
    small.profile(x[:3], y[:3])
    assert big.choices == small.choices and len(big.choices) >= 6


def test_cudnn_never_times_its_algorithms_during_a_pass(monkeypatch):
    """cuDNN's benchmark mode picks convolution algorithms by timing them: off (and deterministic algorithms
    only) inside the pass, whatever the caller set; the caller's flags are back afterwards."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    model, x, y = _resnet18_batch(2)
    seen = []
    model.conv1.register_forward_hook(lambda *a: seen.append((torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)))
    ProfileEngine(model).profile(x, y)
    assert seen == [(False, True)]
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic


def _shape(c, h, o, k, stride=1, padding=0, groups=1, device="cpu"):
    ho = (h + 2 * padding - k) // stride + 1
    return LayerShape((k, k), (stride, stride), (1, 1), (padding, padding), groups, (c, h, h), (o, ho, ho), 4, device)


def test_the_rule_on_typical_layer_shapes():
    mib8 = 8 * 2**20
    assert choose_reduction(_shape(64, 56, 64, 3, padding=1), mib8, 1)[0] == "conv"  # a large map: the kernel
    assert choose_reduction(_shape(3, 224, 64, 7, 2, 3), mib8, 1) == ("conv", 1)  # an input layer: one sample a call
    assert choose_reduction(_shape(256, 2, 256, 3, padding=1), mib8, 1)[0] == "offsets"  # a 2x2 map
    assert choose_reduction(_shape(256, 14, 512, 1, 2), mib8, 1)[0] == "bmm"  # 1x1: no patches to form
    assert choose_reduction(_shape(512, 7, 512, 3, padding=1), mib8, 1) == ("mm", 256)  # 9 MiB per sample
    assert choose_reduction(_shape(96, 14, 96, 5, padding=2, groups=96), mib8, 1)[0] == "bmm"  # depthwise
    assert choose_reduction(_shape(512, 4, 512, 3, padding=1), mib8, 2)[0] == "gram"  # rms, few positions
    assert choose_reduction(_shape(64, 56, 64, 3, padding=1, device="cuda"), mib8, 1)[0] == "bmm"
    # a forced strategy keeps its own block rule; one that does not apply falls back to bmm
    assert choose_reduction(_shape(96, 14, 96, 5, padding=2, groups=96), mib8, 1, "conv")[0] == "bmm"
    for strategy in ("bmm", "mm", "conv", "offsets"):
        name, block = choose_reduction(_shape(64, 8, 64, 3, padding=1), 2**16, 1, strategy)
        assert name == strategy and block >= 1


def _index(db: Path, weights: Path, *extra, data: str = "builtin:mnist5k:val"):
    run_cli("index", "--db", db, "--model", CNN, "--weights", weights, "--data", data,
            "--batch-size", 32, "--commit-every", 64, "--workers", 0, "--quiet", *extra)


def _tables(db: Path) -> dict[str, list[Path]]:
    """The current manifest's sample parts, units table and index files, in order."""
    m = json.loads((db / "manifest.json").read_text())
    parts = [db / p["file"] for p in m["parts"]]
    return {"parts": parts, "units": [db / m["stats"]["file"]], "indexes": [db / e["file"] for e in m["indexes"].values()]}


def _same_values(a: Path, b: Path, columns: list[str] | None = None) -> None:
    """The tables of two Parquet files hold the same values, bit for bit (``columns``: only those)."""
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema == tb.schema and ta.num_rows == tb.num_rows > 0
    for name in columns or ta.column_names:
        ca, cb = ta.column(name).combine_chunks(), tb.column(name).combine_chunks()
        if name in ("raw_profile", "feature"):
            ca, cb = ca.flatten(), cb.flatten()
        va, vb = ca.to_numpy(zero_copy_only=False), cb.to_numpy(zero_copy_only=False)
        if va.dtype.kind == "f":  # bit for bit: NaNs and signed zeros included
            va, vb = va.view(f"u{va.itemsize}"), vb.view(f"u{vb.itemsize}")
        assert np.array_equal(va, vb), f"{a.name}: column {name} differs"


def test_two_index_runs_store_the_same_bytes(tmp_path, cnn_weights):
    """Two `index` runs of the same data and weights: the same profiles, statistics and indexes, byte for
    byte (200 samples in batches of 32 and parts of 64: a short last batch and a short last part)."""
    a, b = tmp_path / "a", tmp_path / "b"
    _index(a, cnn_weights, "--limit", 200)
    _index(b, cnn_weights, "--limit", 200)
    ta, tb = _tables(a), _tables(b)
    assert len(ta["parts"]) == 4 and [p.relative_to(a) for p in ta["parts"]] == [p.relative_to(b) for p in tb["parts"]]
    for kind in ("parts", "units"):
        for pa_, pb_ in zip(ta[kind], tb[kind]):
            _same_values(pa_, pb_)
            assert pa_.read_bytes() == pb_.read_bytes(), pa_.name  # no time stamp in them: the files are equal
    assert len(ta["indexes"]) == 2
    for fa, fb in zip(ta["indexes"], tb["indexes"]):
        assert fa.read_bytes() == fb.read_bytes(), fa.name
    # and the answers
    ask = ("neighbors", "--id", 7, "-k", 5, "--format", "json")
    assert run_cli(*ask[:1], "--db", a, *ask[1:]).output == run_cli(*ask[:1], "--db", b, *ask[1:]).output


def test_a_resumed_index_and_an_ingest_use_the_same_arithmetic(tmp_path, cnn_weights):
    """`index --limit` resumed later (at a batch boundary) stores what one run stores, statistics
    included; `ingest` into that database profiles a split exactly as `index` does."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _index(whole, cnn_weights, "--limit", 128)
    _index(resumed, cnn_weights, "--limit", 64)
    _index(resumed, cnn_weights, "--limit", 128)
    tw, tr = _tables(whole), _tables(resumed)
    assert len(tw["parts"]) == len(tr["parts"]) == 2
    for kind in ("parts", "units", "indexes"):
        for fw, fr in zip(tw[kind], tr[kind]):
            assert fw.read_bytes() == fr.read_bytes(), (kind, fw.name)
    # ingest the train digits into `whole`; index them on their own: the same profiles
    run_cli("ingest", "--db", whole, "--data", "builtin:mnist5k:train", "--split", "train", "--limit", 40,
            "--batch-size", 32, "--workers", 0, "--quiet")
    alone = tmp_path / "alone"
    _index(alone, cnn_weights, "--limit", 40, "--split", "train", data="builtin:mnist5k:train")
    ingested = [p for p in _tables(whole)["parts"] if "/train/" in p.as_posix()]
    assert len(ingested) == 1
    profile = ["key", "label", "pred", "loss", "true_conf", "pred_conf", "raw_profile", "feature", "dlogit_norm"]
    _same_values(ingested[0], _tables(alone)["parts"][0], profile)  # the sample ids differ: 128.. against 0..


def test_a_resume_off_a_batch_boundary_stores_the_same_bytes(tmp_path, cnn_weights):
    """Resumed after 50 samples (not a multiple of the batch of 32): every batch of a job of at least one batch
    is padded to the batch size (indexer.profile.pad_rows), so no sample's numbers depend on its batch-mates."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _index(whole, cnn_weights, "--limit", 128)
    _index(resumed, cnn_weights, "--limit", 50)
    _index(resumed, cnn_weights, "--limit", 128)
    profile = ["key", "label", "pred", "loss", "true_conf", "pred_conf", "raw_profile", "feature", "dlogit_norm"]
    tw, tr = _tables(whole), _tables(resumed)
    read = lambda files: pa.concat_tables([pq.read_table(f, columns=profile) for f in files])  # noqa: E731
    a, b = read(tw["parts"]), read(tr["parts"])
    assert a.num_rows == b.num_rows == 128 and a.equals(b)
    # the statistics are merged part by part in float64 (Chan's formula): other part boundaries round the
    # merge differently, far below float32 (the profiles' precision), never more
    for fw, fr in zip(tw["units"], tr["units"]):
        uw, ur = pq.read_table(fw), pq.read_table(fr)
        for column in ("mean", "std"):
            np.testing.assert_allclose(uw.column(column).to_numpy(), ur.column(column).to_numpy(), rtol=1e-12, atol=0)
