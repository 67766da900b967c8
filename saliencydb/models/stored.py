"""A database's model: what the manifest records of it, and loading it back checked against
those records (its weights hash, and the hash of its code file: a ``python:`` model's module, an
``hf:`` directory's config.json)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data.transforms import Transform
from ..errors import ModelError
from ..schemas import Manifest
from ..schemas.manifest import ModelRecord
from .loading import LoadedModel, absolute_spec, file_sha256, load_model, model_file


def code_file(spec: str) -> Path | None:
    """The file whose hash the manifest keeps as ``code_sha256``: a ``python:`` model's module, or the
    config.json of an ``hf:`` model's directory (its architecture; the weights hash covers the rest)."""
    path = model_file(spec) if spec.startswith(("python:", "hf:")) else None
    return path / "config.json" if path is not None and spec.startswith("hf:") else path


def model_record(model: LoadedModel, transform: Transform, num_classes_arg: int | None, aggregate: str,
                 transform_source: str | None = None) -> ModelRecord:
    """The manifest's ``model`` entry for a model loaded from its spec (docs/database-format.md)."""
    code = code_file(model.spec)
    return ModelRecord(
        spec=absolute_spec(model.spec),
        code_sha256=file_sha256(code) if code is not None and code.is_file() else None,
        weights=os.path.abspath(model.weights) if model.weights and os.path.exists(model.weights) else model.weights,
        weights_sha256=model.weights_sha256,
        num_classes=model.num_classes,
        num_classes_arg=num_classes_arg,
        class_names=model.class_names,
        transform=transform.to_dict(),
        scripted=model.scripted,
        aggregate=aggregate,
        transform_source=transform_source,
        random_seed=model.random_seed,
    )


def load_stored_model(manifest: Manifest) -> LoadedModel:
    """The database's model, checked against the stored weights hash."""
    rec = manifest.model
    code = code_file(rec.spec) if rec.code_sha256 else None
    if code is not None:
        if not code.is_file():
            raise ModelError(f"the database's model file {code} is gone; put it back (sha256 {rec.code_sha256[:12]}), "
                             "or index into a new database")
        if file_sha256(code) != rec.code_sha256:
            raise ModelError(f"the database's model file {code} changed since the database was made (sha256 "
                             f"{rec.code_sha256[:12]}, now {file_sha256(code)[:12]}); restore the original file, "
                             "or index into a new database")
    task = rec.transform.get("task") if rec.transform.get("kind") == "tokens" else None
    model = load_model(rec.spec, rec.weights, rec.num_classes_arg, task, random_seed=rec.random_seed)
    if model.weights_sha256 != rec.weights_sha256 and rec.random_seed is not None:
        raise ModelError(
            f"the database holds model {rec.spec} with random weights drawn under seed {rec.random_seed} (sha256 "
            f"{rec.weights_sha256[:12]}), but drawing them again gives {model.weights_sha256[:12]}: torch's random "
            "generator or the architecture's initialisation changed since (another torch version?); use the "
            "versions the database was made with, or index into a new database"
        )
    if model.weights_sha256 != rec.weights_sha256:
        raise ModelError(
            f"the database holds model {rec.spec} with weights {rec.weights or 'default'} "
            f"(sha256 {rec.weights_sha256[:12]}), but those weights now hash to {model.weights_sha256[:12]}; "
            "restore the original weights file, or index into a new database"
        )
    return model


def initialised_at_random(model: LoadedModel, num_classes: int | None) -> bool:
    """Whether a model given without weights gets random ones: a torchvision or timm architecture, or
    a python: factory or hf: directory whose weights differ between two builds under different seeds
    (a factory that loads its own weights builds the same model every time; an hf: directory whose
    weights miss a layer, e.g. a new classifier head, gets that layer at random)."""
    if model.weights is not None or model.scripted or model.random_seed is not None:
        return False
    if model.spec.startswith(("torchvision:", "timm:")):
        return True
    with torch.random.fork_rng():
        torch.manual_seed(int(model.weights_sha256[:8], 16))
        again = load_model(model.spec, None, num_classes)
    return again.weights_sha256 != model.weights_sha256
