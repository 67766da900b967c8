"""Helpers shared by the tests: run the CLI, make real image folders."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from saliencydb.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, expect: int | None = 0):
    """Run the CLI in-process; return the click Result."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert result.exit_code == expect, result.output
    return result


def run_cli_subprocess(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saliencydb.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=kw.pop("cwd", ROOT), **kw)


def make_image_folder(root: Path, classes=("cat", "dog", "eel"), per_class=4, size=(40, 36), seed=0) -> Path:
    """Real PNG and JPEG files of random pictures, one folder per class."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            arr[..., ci % 3] //= 2  # a little class signal
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / c / f"img{i}.{ext}")
    return root
