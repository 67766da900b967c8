"""End-to-end `saliencydb index` throughput against the bare one-sample-at-a-time loop.

    python benchmarks/index_e2e.py [--images 1024] [--size 256] [--model resnet18] [--batch-size 16]

Writes a folder of real JPEG files, a random-weight torchvision model as a state-dict file,
then times the whole `saliencydb index` command in a subprocess (start-up, JPEG decoding,
the ImageNet transform, profiling, Parquet parts, statistics and FAISS indexes included)
and the bare autograd loop on the same preprocessed images, in this process after its
imports (the loop's best case; median of --repeats runs after a warm-up). Prints samples/s,
the ratio, and how much of the command's time was start-up (imports, model loading)
rather than the job it records in its `ingests` table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import torch
import torchvision
from PIL import Image

from saliencydb.data import parse_data_spec
from saliencydb.models import load_model
from saliencydb.memory import keep_freed_memory
from saliencydb.saliency import reference_profiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", type=int, default=256, help="side of the JPEG files (the transform crops 224)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--loop-samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the loop (median)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    keep_freed_memory()  # the loop gets the malloc settings the `saliencydb` command runs with
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(args.images):
            d = tmp / "images" / f"class{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(base).resize((args.size, args.size), Image.BILINEAR)
            img.save(d / f"{i}.jpg", quality=90)
        torch.manual_seed(0)
        weights = tmp / "weights.pt"
        torch.save(torchvision.models.get_model(args.model, num_classes=10).state_dict(), weights)
        cmd = [sys.executable, "-m", "saliencydb.cli", "index", "--db", str(tmp / "db"), "--model",
               f"torchvision:{args.model}", "--weights", str(weights), "--data", f"imagefolder:{tmp / 'images'}",
               "--batch-size", str(args.batch_size), "--quiet"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        index_s = time.perf_counter() - t
        (job_s,) = duckdb.sql(f"SELECT epoch(max(\"end\") - min(start)) FROM read_parquet('{tmp / 'db'}/ingests/*.parquet')").fetchall()[0]
        # the bare loop on the same images, already decoded and transformed (its best case)
        model = load_model(f"torchvision:{args.model}", str(weights))
        source = parse_data_spec(f"imagefolder:{tmp / 'images'}")
        n = min(args.loop_samples, len(source))
        x = torch.stack([model.default_transform(source.load(i)) for i in range(n)])
        y = torch.tensor([source.label(i) for i in range(n)])
        reference_profiles(model.module, x[:2], y[:2])
        runs = []
        for _ in range(max(1, args.repeats)):
            t = time.perf_counter()
            reference_profiles(model.module, x, y)
            runs.append(time.perf_counter() - t)
        loop_s = statistics.median(runs)
    result = {
        "model": args.model, "images": args.images, "jpeg_side": args.size, "batch_size": args.batch_size,
        "index_end_to_end_samples_per_s": round(args.images / index_s, 2),
        "index_seconds": round(index_s, 2),
        "index_job_seconds": round(job_s, 2),
        "startup_seconds": round(index_s - job_s, 2),
        "bare_loop_samples_per_s": round(n / loop_s, 2),
        "ratio_index_over_loop": round((args.images / index_s) / (n / loop_s), 2),
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.model}, {args.images} JPEGs of {args.size}px -> 224px crops, batch {args.batch_size}, {os.cpu_count()} cores")
    print(f"  saliencydb index, end to end: {result['index_end_to_end_samples_per_s']:.1f} samples/s ({index_s:.1f}s, "
          f"of which {index_s - job_s:.1f}s start-up before the job)")
    print(f"  bare per-sample loop:         {result['bare_loop_samples_per_s']:.1f} samples/s (pre-decoded inputs, {n} samples, "
          f"median of {len(runs)})")
    print(f"  ratio: {result['ratio_index_over_loop']:.2f}x")


if __name__ == "__main__":
    main()
