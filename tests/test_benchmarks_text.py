"""benchmarks/profiles.py on text models: a tiny BERT, engine against the loop (a smoke run; no timing is asserted)."""

import json
import subprocess
import sys

from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "profiles.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_profiles_text_cases_agree_with_the_loop():
    """A sequence classifier and a masked-LM (one [MASK] per row), every second row half padding."""
    out = _run("--case", "bert_tiny:16:4", "--case", "bert_tiny_mlm:16:4", "--text-padding", "half",
               "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert [c["model"] for c in report["cases"]] == ["bert_tiny", "bert_tiny_mlm"]
    for case, classes in zip(report["cases"], (2, 30522)):
        assert case["modality"] == "text" and case["padding"] == "half" and case["in_channels"] is None
        assert case["num_classes"] == classes and case["n_units"] > 0
        assert case["real_tokens"] == 2 * 16 + 2 * 8  # rows 1 and 3 have 8 real tokens
        methods = {r["method"]: r for r in case["methods"]}
        assert list(methods) == ["loop", "engine", "engine_rms", "train_step", "vmap"]
        for name in ("loop", "engine", "engine_rms", "train_step"):
            assert methods[name]["error"] is None and methods[name]["samples_per_s"] > 0, methods[name]
        assert methods["engine"]["max_rel_err"] <= 1e-3 and methods["engine"]["samples_over_tol"] == 0
        assert 0.5 < methods["engine_rms"]["spearman_vs_engine"] <= 1.0
        vmap = methods["vmap"]
        assert vmap["skipped"] and vmap["error"] is None and vmap["samples_per_s"] is None
    assert "bert_tiny@L16 b4 half-padded" in out.stderr and "skipped: not run for text models" in out.stderr


def test_profiles_help_documents_text_cases_and_rejects_long_sequences():
    out = _run("--help")
    assert out.returncode == 0 and "bert_small:128:32" in out.stdout and "bert_small_mlm" in out.stdout
    out = _run("--case", "bert_tiny:513:2")
    assert out.returncode == 2 and "sequence lengths 1 to 512" in out.stderr
