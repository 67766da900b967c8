"""The reference implementation's ImageNet statistics, shipped with the package.

Levin et al.'s code (github LevinRoman/parameter-space-saliency, MIT licence) published the
per-filter mean and standard deviation of the raw saliency over the ImageNet validation set for
torchvision's pretrained ``resnet50``, ``vgg19``, ``densenet121`` and ``inception_v3``
(``IMAGENET1K_V1``). ``index --stats reference:NAME`` standardises with them, as the paper did,
without indexing 50,000 images first (``saliencydb/reference_stats/README.md``).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from ..errors import SpecError
from .layout import UnitLayout
from .stats import STD_FLOOR

REFERENCE_MODELS = ("resnet50", "vgg19", "densenet121", "inception_v3")
PREFIX = "reference:"


def check_stats_spec(spec: str | None) -> str | None:
    """``reference:NAME`` -> NAME (None stays None); SpecError for anything else."""
    if spec is None:
        return None
    name = spec[len(PREFIX):] if spec.startswith(PREFIX) else None
    if name not in REFERENCE_MODELS:
        raise SpecError(f"--stats {spec!r} is unknown; use reference:NAME with NAME one of {', '.join(REFERENCE_MODELS)}")
    return name


def reference_stats(name: str, layout: UnitLayout) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per unit of the reference statistics of ``name``, checked unit by unit against
    ``layout`` (parameter name and channel); std floored like computed statistics (dead filters: 1)."""
    import pyarrow.parquet as pq

    path = resources.files("saliencydb") / "reference_stats" / f"{name}-filter-stats.parquet"
    with resources.as_file(path) as file:
        t = pq.read_table(file)
    if layout.kind != "conv-filter":
        raise SpecError(f"--stats reference:{name} holds conv-filter statistics; this database has {layout.kind} units")
    if t.num_rows != layout.n_units:
        raise SpecError(f"--stats reference:{name} has {t.num_rows:,} filters but the model has {layout.n_units:,}; "
                        f"use it with torchvision:{name} only")
    params, channels = t.column("param").to_pylist(), t.column("channel").to_numpy()
    want = [(l.param_name, c) for l in layout.layers for c in range(l.out_channels)]
    for (p, c), (wp, wc) in zip(zip(params, channels), want):
        if p != wp or int(c) != wc:
            raise SpecError(f"--stats reference:{name} does not match the model's filters (reference {p}[{c}], model "
                            f"{wp}[{wc}]); use it with torchvision:{name} only")
    std = t.column("std").to_numpy()
    return t.column("mean").to_numpy(), np.where(std <= STD_FLOOR, 1.0, std)
