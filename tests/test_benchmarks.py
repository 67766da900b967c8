"""The benchmark scripts run and report what the README quotes (smoke runs; no timing is asserted)."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT


def _run(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_profiles_quick_reports_every_method_and_agreement():
    report = _run("profiles.py", "--quick")
    assert report["machine"]["malloc"] == "freed memory kept (as the CLI)"
    for case in report["cases"]:
        methods = {r["method"]: r for r in case["methods"]}
        assert list(methods) == ["loop", "engine", "engine_rms", "train_step", "vmap"]
        assert all(r["samples_per_s"] > 0 and r["error"] is None for r in methods.values())
        assert methods["engine"]["max_rel_err"] <= 1e-3  # the engine equals the loop
        assert 0.5 < methods["engine_rms"]["spearman_vs_engine"] <= 1.0
        assert 0 < methods["engine_rms"]["top10_vs_engine"] <= 1.0
        assert methods["engine"]["ratio_vs_loop"] == methods["engine"]["samples_per_s"] / methods["loop"]["samples_per_s"]


def test_approximate_reports_agreement_and_both_statistics():
    report = _run("approximate.py")
    assert report["spearman"] > 0.9 and 0.5 < report["top10_overlap"] <= 1 and 0.5 < report["knn_overlap"] <= 1
    for name in ("mean_abs", "rms"):
        r = report["aggregates"][name]
        assert r["samples_per_s"] > 0 and 0 < r["correct_neighbors_of_incorrect"] < r["correct_neighbors_of_correct"] <= 1


def test_index_end_to_end_separates_start_up():
    report = _run("index_e2e.py", "--images", "24", "--batch-size", "8", "--loop-samples", "2", "--repeats", "1")
    assert report["images"] == 24 and report["index_end_to_end_samples_per_s"] > 0 and report["bare_loop_samples_per_s"] > 0
    assert 0 < report["startup_seconds"] < report["index_seconds"]
    assert abs(report["index_job_seconds"] + report["startup_seconds"] - report["index_seconds"]) <= 0.02  # rounding


def test_fidelity_reports_every_normalisation_against_the_baselines(tmp_path):
    """One dataset and one seed: every statistic, with intervals, and the script's own check that its
    neighbours are the tool's (an assertion inside the script)."""
    report = _run("fidelity.py", "--seeds", "0", "--datasets", "sklearn-digits", "--cache-dir", str(tmp_path))
    run = report["runs"]["sklearn-digits/seed0"]
    assert run["samples"] == 719 and 0 < run["mistakes"] < 100
    assert list(run["normalisations"]) == ["zscore", "zscore-unitnorm", "zscore-dlogit"]
    for name, row in run["normalisations"].items():
        for stat in ("same_confusion", "mistakes", "gap_vs_loss"):
            e = row[stat]
            assert e["low"] <= e["mean"] <= e["high"] and e["n"] == run["mistakes"]
        assert 0 < row["purity_random"] <= row["purity"] <= 1
        assert ("vs_zscore" in row) == (name != "zscore")
        assert row["gap_vs_loss"]["mean"] == pytest.approx(row["same_confusion"]["mean"] - run["baselines"]["loss"]["same_confusion"])
    # the random baseline is the exact expectation: far below what the profile finds
    assert run["baselines"]["random"]["same_confusion"] < run["normalisations"]["zscore"]["same_confusion"]["low"]
